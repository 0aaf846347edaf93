// float32 ops: Gemm, MatMul, element-wise (numpy broadcasting), Relu, Clip, Softmax. Conv is in
// graph_ops_conv.cpp, the pools in graph_ops_pool.cpp.
#include <cmath>
#include <cstring>
#include <limits>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_vecmath.hpp"

namespace edgefleet::graph {
namespace {

using kernels::active;

class GemmOp : public Op {
public:
    GemmOp(const Attrs& attrs, const Constant* b)
        : trans_a_(attrs.get_int("transA", 0) != 0),
          trans_b_(attrs.get_int("transB", 0) != 0),
          alpha_(static_cast<float>(attrs.get_float("alpha", 1.0))),
          beta_(static_cast<float>(attrs.get_float("beta", 1.0))),
          act_(Activation::from(attrs)) {
        if (b != nullptr && b->shape.size() == 2) {  // pre-pack a constant B as (K, N)
            const std::int64_t rows = b->shape[0], cols = b->shape[1];
            packed_ = aligned_buffer(static_cast<std::size_t>(rows * cols) * sizeof(float));
            auto* dst = static_cast<float*>(packed_.get());
            const auto* src = static_cast<const float*>(b->data());
            if (trans_b_) {
                for (std::int64_t r = 0; r < rows; ++r)
                    for (std::int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
            } else {
                std::memcpy(dst, src, static_cast<std::size_t>(rows * cols) * sizeof(float));
            }
        }
    }

    Shape infer(const std::vector<View>& in) const override {
        const Shape& a = *in[0].shape;
        const Shape& b = *in[1].shape;
        EF_REQUIRE(a.size() == 2 && b.size() == 2, "A and B must be 2-D, got " + shape_str(a) + " and " + shape_str(b));
        const std::int64_t m = trans_a_ ? a[1] : a[0], k = trans_a_ ? a[0] : a[1];
        const std::int64_t kb = trans_b_ ? b[1] : b[0], n = trans_b_ ? b[0] : b[1];
        EF_REQUIRE(k == kb, "inner dimensions differ: A " + shape_str(a) + ", B " + shape_str(b));
        if (in.size() > 2 && in[2].data != nullptr) {
            const Shape& c = *in[2].shape;
            EF_REQUIRE(c.size() <= 2, "C must have rank <= 2");
            const std::int64_t cm = c.size() == 2 ? c[0] : 1, cn = c.empty() ? 1 : c.back();
            EF_REQUIRE((cm == 1 || cm == m) && (cn == 1 || cn == n),
                    "C " + shape_str(c) + " does not broadcast to (" + std::to_string(m) + ", " + std::to_string(n) + ")");
        }
        return {m, n};
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        std::size_t bytes = trans_a_ ? static_cast<std::size_t>(numel(*in[0].shape)) * sizeof(float) + 64 : 0;
        if (!packed_ && trans_b_) bytes += static_cast<std::size_t>(numel(*in[1].shape)) * sizeof(float);
        return bytes;
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Shape& as = *in[0].shape;
        const Shape& bs = *in[1].shape;
        const std::int64_t m = (*out.shape)[0], n = (*out.shape)[1], k = trans_a_ ? as[0] : as[1];
        auto* free = static_cast<float*>(scratch);
        const float* a = in[0].as<float>();
        if (trans_a_) {
            transpose(a, as[0], as[1], free);
            a = free;
            free += (numel(as) + 15) / 16 * 16;
        }
        const float* b = packed_ ? static_cast<const float*>(packed_.get()) : in[1].as<float>();
        if (!packed_ && trans_b_) {
            transpose(in[1].as<float>(), bs[0], bs[1], free);
            b = free;
        }
        float* y = out.as<float>();
        parallel_sgemm(static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), a, static_cast<int>(k), b,
                       static_cast<int>(n), y, static_cast<int>(n));
        if (alpha_ != 1.0f) {
            for (std::int64_t i = 0; i < m * n; ++i) y[i] *= alpha_;
        }
        if (in.size() > 2 && in[2].data != nullptr) {
            const Shape& cs = *in[2].shape;
            const std::int64_t cm = cs.size() == 2 ? cs[0] : 1, cn = cs.empty() ? 1 : cs.back();
            const std::int64_t stride_m = cm == 1 ? 0 : cn, stride_n = cn == 1 ? 0 : 1;
            const float* c = in[2].as<float>();
            for (std::int64_t i = 0; i < m; ++i) {
                float* row = y + i * n;
                const float* crow = c + i * stride_m;
                if (beta_ == 1.0f && stride_n == 1) {
                    for (std::int64_t j = 0; j < n; ++j) row[j] += crow[j];
                } else {
                    for (std::int64_t j = 0; j < n; ++j) row[j] += beta_ * crow[j * stride_n];
                }
            }
        }
        act_.apply(y, m * n);
    }

private:
    static void transpose(const float* src, std::int64_t rows, std::int64_t cols, float* dst) {
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
    }

    bool trans_a_, trans_b_;
    float alpha_, beta_;
    Activation act_;
    std::shared_ptr<void> packed_;
};

// numpy broadcasting of two shapes (right-aligned); GraphError when they do not broadcast.
Shape broadcast(const Shape& a, const Shape& b) {
    const std::size_t rank = std::max(a.size(), b.size());
    Shape out(rank);
    for (std::size_t i = 0; i < rank; ++i) {
        const std::int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
        const std::int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
        EF_REQUIRE(da == db || da == 1 || db == 1, "shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
        out[i] = da == 1 ? db : da;
    }
    return out;
}

// Element strides of `shape` read as `out` (0 along broadcast dimensions).
std::vector<std::int64_t> broadcast_strides(const Shape& shape, const Shape& out) {
    std::vector<std::int64_t> strides(out.size(), 0);
    std::int64_t stride = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        const std::size_t o = i + out.size() - shape.size();
        strides[o] = shape[i] == 1 ? 0 : stride;
        stride *= shape[i];
    }
    return strides;
}

class MatMulOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override {
        Shape a = *in[0].shape, b = *in[1].shape;
        EF_REQUIRE(!a.empty() && !b.empty(), "MatMul needs inputs of rank >= 1");
        const bool a1 = a.size() == 1, b1 = b.size() == 1;
        if (a1) a.insert(a.begin(), 1);
        if (b1) b.push_back(1);
        EF_REQUIRE(a.back() == b[b.size() - 2], "inner dimensions differ: " + shape_str(*in[0].shape) + " and " +
                                                 shape_str(*in[1].shape));
        Shape out = broadcast(Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2));
        if (!a1) out.push_back(a[a.size() - 2]);
        if (!b1) out.push_back(b.back());
        return out;
    }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        Shape a = *in[0].shape, b = *in[1].shape;
        if (a.size() == 1) a.insert(a.begin(), 1);
        const bool b1 = b.size() == 1;
        if (b1) b.push_back(1);
        const std::int64_t m = a[a.size() - 2], k = a.back(), n = b.back();
        const float* pa = in[0].as<float>();
        const float* pb = in[1].as<float>();
        float* py = out.as<float>();
        if (b.size() == 2) {  // one GEMM: A's batch dimensions folded into its rows
            const std::int64_t rows = numel(a) / k;
            parallel_sgemm(static_cast<int>(rows), static_cast<int>(n), static_cast<int>(k), pa, static_cast<int>(k), pb,
                           static_cast<int>(n), py, static_cast<int>(n));
            return;
        }
        const Shape ba(a.begin(), a.end() - 2), bb(b.begin(), b.end() - 2);
        const Shape batch = broadcast(ba, bb);
        const auto sa = broadcast_strides(ba, batch), sb = broadcast_strides(bb, batch);
        std::vector<std::int64_t> index(batch.size(), 0);
        const std::int64_t count = numel(batch);
        for (std::int64_t t = 0; t < count; ++t) {
            std::int64_t oa = 0, ob = 0;
            for (std::size_t d = 0; d < batch.size(); ++d) {
                oa += index[d] * sa[d];
                ob += index[d] * sb[d];
            }
            parallel_sgemm(static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), pa + oa * m * k,
                           static_cast<int>(k), pb + ob * k * n, static_cast<int>(n), py + t * m * n,
                           static_cast<int>(n));
            for (std::size_t d = batch.size(); d-- > 0;) {
                if (++index[d] < batch[d]) break;
                index[d] = 0;
            }
        }
    }
};

struct MulF;

template <typename F>
class BinaryOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override { return broadcast(*in[0].shape, *in[1].shape); }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        const float* a = in[0].as<float>();
        const float* b = in[1].as<float>();
        float* y = out.as<float>();
        const F f;
        const Shape& shape = *out.shape;
        const std::int64_t total = numel(shape);
        const std::int64_t na = in[0].size(), nb = in[1].size();
        if (na == total && nb == total) {
            for (std::int64_t i = 0; i < total; ++i) y[i] = f(a[i], b[i]);
        } else if (nb == 1 && na == total) {
            const float s = b[0];
            for (std::int64_t i = 0; i < total; ++i) y[i] = f(a[i], s);
        } else if (na == 1 && nb == total) {
            const float s = a[0];
            for (std::int64_t i = 0; i < total; ++i) y[i] = f(s, b[i]);
        } else if (total > 0 && !blocked(a, b, y, *in[0].shape, *in[1].shape, shape, f)) {
            general(a, b, y, *in[0].shape, *in[1].shape, shape, f);
        }
    }

private:
    // One operand full, the other constant over blocks of the output: its shape (right-aligned) is 1 on
    // the leading and trailing axes and the output's on the ones between (x * s with s (N, C, 1, 1) in a
    // squeeze-excite block, a per-channel (C, 1, 1) scale). false when the shapes are not of that form.
    static bool blocked(const float* a, const float* b, float* y, const Shape& as, const Shape& bs,
                        const Shape& shape, const F& f) {
        const std::int64_t total = numel(shape);
        const bool b_small = numel(as) == total;
        if (!b_small && numel(bs) != total) return false;
        const Shape& small = b_small ? bs : as;
        const std::size_t rank = shape.size(), pad = rank - small.size();
        std::size_t first = rank, last = rank;  // [first, last): the axes where small is the output's
        for (std::size_t d = 0; d < rank; ++d) {
            const std::int64_t s = d < pad ? 1 : small[d - pad];
            if (s == shape[d] && s != 1) {
                if (first == rank) first = d;
                else if (last != rank) return false;
            } else if (s == 1) {
                if (first != rank && last == rank) last = d;
            } else {
                return false;
            }
        }
        if (first == rank) return false;
        const std::int64_t outer = numel(Shape(shape.begin(), shape.begin() + static_cast<std::ptrdiff_t>(first)));
        const std::int64_t mid = numel(Shape(shape.begin() + static_cast<std::ptrdiff_t>(first),
                                             shape.begin() + static_cast<std::ptrdiff_t>(last)));
        const std::int64_t inner = numel(Shape(shape.begin() + static_cast<std::ptrdiff_t>(last), shape.end()));
        const float* full = b_small ? a : b;
        const float* part = b_small ? b : a;
        if (inner == 1) {  // the small operand is a row (a bias over the last axis): vectors along it
            for (std::int64_t o = 0; o < outer; ++o) {
                const float* src = full + o * mid;
                float* dst = y + o * mid;
                if (b_small) {
                    for (std::int64_t m = 0; m < mid; ++m) dst[m] = f(src[m], part[m]);
                } else {
                    for (std::int64_t m = 0; m < mid; ++m) dst[m] = f(part[m], src[m]);
                }
            }
            return true;
        }
        for (std::int64_t o = 0; o < outer; ++o) {
            if constexpr (std::is_same_v<F, MulF>) {  // squeeze-excite's channel scale: vectors of the tier
                vecmath::scale_planes(full + o * mid * inner, y + o * mid * inner, part, mid, inner);
                continue;
            }
            for (std::int64_t m = 0; m < mid; ++m) {
                const float s = part[m];
                const std::int64_t at = (o * mid + m) * inner;
                const float* src = full + at;
                float* dst = y + at;
                if (b_small) {
                    for (std::int64_t j = 0; j < inner; ++j) dst[j] = f(src[j], s);
                } else {
                    for (std::int64_t j = 0; j < inner; ++j) dst[j] = f(s, src[j]);
                }
            }
        }
        return true;
    }

    static void general(const float* a, const float* b, float* y, const Shape& as, const Shape& bs, const Shape& shape,
                        const F& f) {
        const auto sa = broadcast_strides(as, shape), sb = broadcast_strides(bs, shape);
        const std::size_t rank = shape.size();
        const std::int64_t inner = shape[rank - 1], ia = sa[rank - 1], ib = sb[rank - 1];
        std::vector<std::int64_t> index(rank, 0);
        const std::int64_t rows = numel(shape) / inner;
        for (std::int64_t r = 0; r < rows; ++r) {
            std::int64_t oa = 0, ob = 0;
            for (std::size_t d = 0; d + 1 < rank; ++d) {
                oa += index[d] * sa[d];
                ob += index[d] * sb[d];
            }
            float* out = y + r * inner;
            for (std::int64_t j = 0; j < inner; ++j) out[j] = f(a[oa + j * ia], b[ob + j * ib]);
            for (std::size_t d = rank - 1; d-- > 0;) {
                if (++index[d] < shape[d]) break;
                index[d] = 0;
            }
        }
    }
};

struct AddF { float operator()(float a, float b) const { return a + b; } };
struct SubF { float operator()(float a, float b) const { return a - b; } };
struct MulF { float operator()(float a, float b) const { return a * b; } };
struct DivF { float operator()(float a, float b) const { return a / b; } };

class ClipOp : public Op {
public:
    explicit ClipOp(bool relu) : relu_(relu) {}
    Shape infer(const std::vector<View>& in) const override {
        for (std::size_t i = 1; i < in.size(); ++i) {
            EF_REQUIRE(in[i].shape->empty() || numel(*in[i].shape) == 1, "min and max must be scalars");
        }
        return *in[0].shape;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        float lo = relu_ ? 0.0f : -std::numeric_limits<float>::infinity();
        float hi = std::numeric_limits<float>::infinity();
        if (in.size() > 1 && in[1].data != nullptr) lo = *in[1].as<float>();
        if (in.size() > 2 && in[2].data != nullptr) hi = *in[2].as<float>();
        const float* x = in[0].as<float>();
        float* y = out.as<float>();
        const std::int64_t count = out.size();
        for (std::int64_t i = 0; i < count; ++i) y[i] = std::min(std::max(x[i], lo), hi);
    }

private:
    bool relu_;
};

class SoftmaxOp : public Op {
public:
    explicit SoftmaxOp(const Attrs& attrs)
        : axis_(attrs.get_int("axis", -1)), coerce_(attrs.get_int("coerce_2d", 0) != 0) {}
    Shape infer(const std::vector<View>& in) const override {
        normalize_axis(axis_, static_cast<std::int64_t>(in[0].shape->size()));
        return *in[0].shape;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& s = *in[0].shape;
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(s.size())));
        const std::int64_t outer = numel(Shape(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(axis)));
        std::int64_t n = s[axis];
        std::int64_t inner = numel(Shape(s.begin() + static_cast<std::ptrdiff_t>(axis) + 1, s.end()));
        if (coerce_) n *= inner, inner = 1;
        if (inner == 1) {  // the last axis (attention): contiguous rows, the exponentials in SIMD
            for (std::int64_t o = 0; o < outer; ++o) {
                const float* x = in[0].as<float>() + o * n;
                float* y = out.as<float>() + o * n;
                vecmath::softmax_row(x, y, n);
            }
            return;
        }
        for (std::int64_t o = 0; o < outer; ++o) {
            for (std::int64_t i = 0; i < inner; ++i) {
                const float* x = in[0].as<float>() + o * n * inner + i;
                float* y = out.as<float>() + o * n * inner + i;
                float top = -std::numeric_limits<float>::infinity();
                for (std::int64_t k = 0; k < n; ++k) top = std::max(top, x[k * inner]);
                float sum = 0.0f;
                for (std::int64_t k = 0; k < n; ++k) sum += (y[k * inner] = std::exp(x[k * inner] - top));
                for (std::int64_t k = 0; k < n; ++k) y[k * inner] /= sum;
            }
        }
    }

private:
    std::int64_t axis_;
    bool coerce_;
};

}  // namespace

std::unique_ptr<Op> make_float_op(const NodeSpec& spec, const std::vector<DType>&,
                                  const std::vector<const Constant*>& constants) {
    const std::string& op = spec.op;
    if (op == "Gemm") return std::make_unique<GemmOp>(spec.attrs, constants[1]);
    if (op == "MatMul") return std::make_unique<MatMulOp>();
    if (op == "Add") return std::make_unique<BinaryOp<AddF>>();
    if (op == "Sub") return std::make_unique<BinaryOp<SubF>>();
    if (op == "Mul") return std::make_unique<BinaryOp<MulF>>();
    if (op == "Div") return std::make_unique<BinaryOp<DivF>>();
    if (op == "Relu") return std::make_unique<ClipOp>(true);
    if (op == "Clip") return std::make_unique<ClipOp>(false);
    if (op == "Softmax") return std::make_unique<SoftmaxOp>(spec.attrs);
    return nullptr;
}

}  // namespace edgefleet::graph
