// The recurrent cells of audio models (CRNN keyword spotters): LSTM and GRU, float32, as ONNX defines them
// with the default activations (LSTM sigmoid / tanh / tanh, GRU sigmoid / tanh), no peepholes, no clip,
// directions forward, reverse and bidirectional, GRU's linear_before_reset 0 or 1, layout 0 (time major;
// the compiler puts Transposes around layout 1). sequence_lens, when given, must be T for every batch row.
//
// One output, the format's single-output rule: Y, Y_h (and LSTM's Y_c) stacked along axis 0,
// (T + 1, D, B, H) for GRU and (T + 2, D, B, H) for LSTM; the compiler slices ONNX's outputs out of it.
//
// Per direction: the input projection of every time step is one GEMM, X (T * B, I) x W^T (I, G * H), plus
// the biases; then each step is one GEMM of the hidden state, h (B, H) x R^T (H, G * H), and the gates'
// sigmoid / tanh rows (graph_vecmath.hpp). Constant W and R are transposed once, at load; others per run.
#include <cstring>

#include "graph_ops_more.hpp"
#include "graph_kernels.hpp"
#include "graph_vecmath.hpp"

namespace edgefleet::graph {
namespace {

using vecmath::sigmoid_rows;
using vecmath::tanh_rows;

// C (b, n) = A (b, k) x B (k, n), B with leading dimension ldb: the hidden state's product of one step.
// The GEMM kernel even for one batch row: a row-times-matrix loop, with its accumulators in registers
// or not, was 3-34% slower per cell (measured interleaved on LSTM 64 and GRU 32/64 cells, 25 steps).
void hidden_product(std::int64_t b, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda, const float* m,
                    std::int64_t ldb, float* c, std::int64_t ldc) {
    kernels::active().sgemm(static_cast<int>(b), static_cast<int>(n), static_cast<int>(k), a, static_cast<int>(lda), m,
                            static_cast<int>(ldb), c, static_cast<int>(ldc));
}

// (D, G * H, K) -> per direction (K, G * H): the B operand of the row-major sgemm.
void transpose_weights(const float* w, float* out, std::int64_t dirs, std::int64_t rows, std::int64_t k) {
    for (std::int64_t d = 0; d < dirs; ++d) {
        const float* src = w + d * rows * k;
        float* dst = out + d * rows * k;
        for (std::int64_t r = 0; r < rows; ++r) {
            for (std::int64_t j = 0; j < k; ++j) dst[j * rows + r] = src[r * k + j];
        }
    }
}

class RecurrentOp final : public Op {
public:
    RecurrentOp(const NodeSpec& spec, const std::vector<const Constant*>& constants)
        : lstm_(spec.op == "LSTM"), gates_(lstm_ ? 4 : 3) {
        const Attrs& a = spec.attrs;
        hidden_ = a.get_int("hidden_size", 0);
        EF_REQUIRE(hidden_ > 0, "hidden_size must be given and > 0");
        const std::string direction = a.get_str("direction", "forward");
        EF_REQUIRE(direction == "forward" || direction == "reverse" || direction == "bidirectional",
                   "direction must be forward, reverse or bidirectional, got " + direction);
        dirs_ = direction == "bidirectional" ? 2 : 1;
        reverse_ = direction == "reverse";
        lbr_ = a.get_int("linear_before_reset", 0) != 0;
        EF_REQUIRE(!lstm_ || !lbr_, "linear_before_reset is a GRU attribute");
        EF_REQUIRE(spec.inputs.size() <= (lstm_ ? 7u : 6u),
                   lstm_ ? "peepholes (input P) are not supported" : "GRU takes at most 6 inputs");
        for (int k : {1, 2}) {
            const Constant* c = k < static_cast<int>(constants.size()) ? constants[k] : nullptr;
            if (c == nullptr || c->shape.size() != 3) continue;
            std::vector<float>& packed = k == 1 ? w_packed_ : r_packed_;
            packed.resize(static_cast<std::size_t>(numel(c->shape)));
            transpose_weights(static_cast<const float*>(c->data()), packed.data(), c->shape[0], c->shape[1],
                              c->shape[2]);
        }
    }

    Shape infer(const std::vector<View>& in) const override {
        EF_REQUIRE(in.size() >= 3 && in[0].shape->size() == 3,
                   "X must be (seq_length, batch, input_size), got " + shape_str(*in[0].shape));
        const Shape& x = *in[0].shape;
        const std::int64_t t = x[0], b = x[1], i = x[2], gh = gates_ * hidden_;
        EF_REQUIRE(t >= 1, "X needs at least one time step");
        EF_REQUIRE(*in[1].shape == (Shape{dirs_, gh, i}), "W must be " + shape_str({dirs_, gh, i}) + ", got " +
                   shape_str(*in[1].shape));
        EF_REQUIRE(*in[2].shape == (Shape{dirs_, gh, hidden_}), "R must be " + shape_str({dirs_, gh, hidden_}) +
                   ", got " + shape_str(*in[2].shape));
        if (present(in, 3)) {
            EF_REQUIRE(*in[3].shape == (Shape{dirs_, 2 * gh}), "B must be " + shape_str({dirs_, 2 * gh}) +
                       ", got " + shape_str(*in[3].shape));
        }
        if (present(in, 4)) {
            EF_REQUIRE(in[4].dtype == DType::i32 && *in[4].shape == Shape{b}, "sequence_lens must be int32 (batch,)");
            if (in[4].data != nullptr) check_lengths(in[4], t);
        }
        for (int k : {5, 6}) {
            if (!present(in, k)) continue;
            EF_REQUIRE(*in[k].shape == (Shape{dirs_, b, hidden_}), std::string(k == 5 ? "initial_h" : "initial_c") +
                       " must be " + shape_str({dirs_, b, hidden_}) + ", got " + shape_str(*in[k].shape));
        }
        return {t + (lstm_ ? 2 : 1), dirs_, b, hidden_};
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape& /*out*/) const override {
        const Shape& x = *in[0].shape;
        const std::int64_t t = x[0], b = x[1], i = x[2], gh = gates_ * hidden_;
        // projections, step gates, h, c, r * h, its product, and W^T, R^T when not packed at load
        std::int64_t floats = t * b * gh + b * gh + 4 * b * hidden_ + gh;
        if (w_packed_.empty()) floats += dirs_ * gh * i;
        if (r_packed_.empty()) floats += dirs_ * gh * hidden_;
        return static_cast<std::size_t>(floats + 16 * 10) * sizeof(float);
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Shape& x = *in[0].shape;
        const std::int64_t t = x[0], b = x[1], i = x[2], h = hidden_, gh = gates_ * h;
        if (present(in, 4)) check_lengths(in[4], t);
        auto* next = static_cast<float*>(scratch);
        auto take = [&next](std::int64_t count) {
            float* at = next;
            next += (count + 15) / 16 * 16;
            return at;
        };
        float* proj = take(t * b * gh);
        float* step = take(b * gh);
        float* state = take(b * h);
        float* cell = take(b * h);
        float* reset_h = take(b * h);
        float* candidate = take(b * h);
        float* bias = take(gh);
        const float* wt = w_packed_.data();
        const float* rt = r_packed_.data();
        if (w_packed_.empty()) {
            float* packed = take(dirs_ * gh * i);
            transpose_weights(in[1].as<float>(), packed, dirs_, gh, i);
            wt = packed;
        }
        if (r_packed_.empty()) {
            float* packed = take(dirs_ * gh * h);
            transpose_weights(in[2].as<float>(), packed, dirs_, gh, h);
            rt = packed;
        }
        float* y = out.as<float>();
        const std::int64_t row = dirs_ * b * h;  // one time step of Y
        for (std::int64_t d = 0; d < dirs_; ++d) {
            const float* wb = present(in, 3) ? in[3].as<float>() + d * 2 * gh : nullptr;
            const float* rb = wb != nullptr ? wb + gh : nullptr;
            // every gate's bias in the projection, but GRU's recurrent bias of the candidate (Rbh), which
            // linear_before_reset puts inside the reset gate's product, and the default adds after it
            for (std::int64_t g = 0; g < gh; ++g) {
                const bool inside = !lstm_ && g >= 2 * h;
                bias[g] = wb == nullptr ? 0.0f : wb[g] + (inside ? 0.0f : rb[g]);
            }
            parallel_sgemm(static_cast<int>(t * b), static_cast<int>(gh), static_cast<int>(i), in[0].as<float>(),
                           static_cast<int>(i), wt + d * gh * i, static_cast<int>(gh), proj, static_cast<int>(gh));
            for (std::int64_t r = 0; r < t * b; ++r) {
                float* p = proj + r * gh;
                for (std::int64_t g = 0; g < gh; ++g) p[g] += bias[g];
            }
            init_state(in, 5, d, b, state);
            init_state(in, 6, d, b, cell);
            const float* rd = rt + d * gh * h;
            const float* rbh = rb != nullptr && !lstm_ ? rb + 2 * h : nullptr;
            for (std::int64_t s = 0; s < t; ++s) {
                const std::int64_t at = (reverse_ || d == 1) ? t - 1 - s : s;
                const float* xp = proj + at * b * gh;
                if (lstm_) {
                    lstm_step(xp, rd, b, step, state, cell);
                } else {
                    gru_step(xp, rd, rbh, b, step, state, reset_h, candidate);
                }
                std::memcpy(y + at * row + d * b * h, state, static_cast<std::size_t>(b * h) * sizeof(float));
            }
            std::memcpy(y + t * row + d * b * h, state, static_cast<std::size_t>(b * h) * sizeof(float));
            if (lstm_) std::memcpy(y + (t + 1) * row + d * b * h, cell, static_cast<std::size_t>(b * h) * sizeof(float));
        }
    }

private:
    static bool present(const std::vector<View>& in, std::size_t k) {
        return k < in.size() && in[k].shape != nullptr && !in[k].shape->empty();
    }

    static void check_lengths(const View& lens, std::int64_t t) {
        const auto* v = lens.as<std::int32_t>();
        for (std::int64_t k = 0; k < lens.size(); ++k) {
            EF_REQUIRE(v[k] == t, "sequence_lens must equal the sequence length (" + std::to_string(t) +
                       ") for every batch row: ragged batches are not supported (row " + std::to_string(k) +
                       " has " + std::to_string(v[k]) + ")");
        }
    }

    void init_state(const std::vector<View>& in, std::size_t k, std::int64_t d, std::int64_t b, float* to) const {
        const std::int64_t n = b * hidden_;
        if (present(in, k)) {
            std::memcpy(to, in[k].as<float>() + d * n, static_cast<std::size_t>(n) * sizeof(float));
        } else {
            std::fill(to, to + n, 0.0f);
        }
    }

    // gates i, o, f, c (ONNX's order): c = f * c + i * tanh(g_c), h = o * tanh(c)
    void lstm_step(const float* xp, const float* rd, std::int64_t b, float* step, float* state, float* cell) const {
        const std::int64_t h = hidden_, gh = 4 * h;
        hidden_product(b, gh, h, state, h, rd, gh, step, gh);
        for (std::int64_t r = 0; r < b; ++r) {
            float* g = step + r * gh;
            const float* p = xp + r * gh;
            for (std::int64_t k = 0; k < gh; ++k) g[k] += p[k];
            sigmoid_rows(g, g, 3 * h);
            tanh_rows(g + 3 * h, g + 3 * h, h);
            float* c = cell + r * h;
            for (std::int64_t k = 0; k < h; ++k) c[k] = g[2 * h + k] * c[k] + g[k] * g[3 * h + k];
            float* s = state + r * h;
            tanh_rows(c, s, h);
            for (std::int64_t k = 0; k < h; ++k) s[k] *= g[h + k];
        }
    }

    // gates z, r, h: n = tanh(x_h + (r * h) R_h^T + Rb_h), or with linear_before_reset
    // tanh(x_h + r * (h R_h^T + Rb_h)); h = (1 - z) * n + z * h
    void gru_step(const float* xp, const float* rd, const float* rbh, std::int64_t b, float* step, float* state,
                  float* reset_h, float* candidate) const {
        const std::int64_t h = hidden_, gh = 3 * h;
        hidden_product(b, lbr_ ? gh : 2 * h, h, state, h, rd, gh, step, gh);  // the default's candidate needs r first
        for (std::int64_t r = 0; r < b; ++r) {
            float* g = step + r * gh;
            const float* p = xp + r * gh;
            for (std::int64_t k = 0; k < 2 * h; ++k) g[k] += p[k];
            sigmoid_rows(g, g, 2 * h);
            if (lbr_) {
                for (std::int64_t k = 0; k < h; ++k) {
                    g[2 * h + k] = p[2 * h + k] + g[h + k] * (g[2 * h + k] + (rbh ? rbh[k] : 0.0f));
                }
            } else {
                for (std::int64_t k = 0; k < h; ++k) reset_h[r * h + k] = g[h + k] * state[r * h + k];
            }
        }
        if (!lbr_) {
            hidden_product(b, h, h, reset_h, h, rd + 2 * h, gh, candidate, h);
        }
        for (std::int64_t r = 0; r < b; ++r) {
            float* g = step + r * gh;
            const float* p = xp + r * gh;
            if (!lbr_) {
                for (std::int64_t k = 0; k < h; ++k) {
                    g[2 * h + k] = p[2 * h + k] + candidate[r * h + k] + (rbh ? rbh[k] : 0.0f);
                }
            }
            tanh_rows(g + 2 * h, g + 2 * h, h);
            float* s = state + r * h;
            for (std::int64_t k = 0; k < h; ++k) s[k] = (1.0f - g[k]) * g[2 * h + k] + g[k] * s[k];
        }
    }

    bool lstm_;
    std::int64_t gates_;
    std::int64_t hidden_ = 0;
    std::int64_t dirs_ = 1;
    bool reverse_ = false;
    bool lbr_ = false;
    std::vector<float> w_packed_;  // (D, I, G * H) when W is a constant
    std::vector<float> r_packed_;  // (D, H, G * H) when R is a constant
};

}  // namespace

std::unique_ptr<Op> make_rnn_op(const NodeSpec& spec, const std::vector<const Constant*>& constants) {
    if (spec.op != "LSTM" && spec.op != "GRU") return nullptr;
    return std::make_unique<RecurrentOp>(spec, constants);
}

}  // namespace edgefleet::graph
