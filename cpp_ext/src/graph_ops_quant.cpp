// Quantization ops: QuantizeLinear, DequantizeLinear (per tensor or per axis; int8, uint8, int32 in) and
// the fused integer kernels QConv and QGemm (int8/uint8 x int8/uint8 -> int32, requantized).
#include <cmath>
#include <cstring>
#include <limits>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"

namespace edgefleet::graph {
namespace {

// Reads element i of an integer tensor of any supported dtype as int64.
std::int64_t int_at(const void* data, DType dtype, std::int64_t i) {
    switch (dtype) {
        case DType::u8: return static_cast<const std::uint8_t*>(data)[i];
        case DType::i8: return static_cast<const std::int8_t*>(data)[i];
        case DType::i32: return static_cast<const std::int32_t*>(data)[i];
        case DType::i64: return static_cast<const std::int64_t*>(data)[i];
        default: fail("expected an integer tensor");
    }
}

struct Range {
    float lo, hi;
};
Range range_of(DType dtype) {
    return dtype == DType::u8 ? Range{0.0f, 255.0f} : Range{-128.0f, 127.0f};
}

// saturate(round_half_even(value) + zero_point) into [lo, hi] (the reference's `saturate`).
inline float requantize(float value, float zero_point, float lo, float hi) {
    return std::min(std::max(std::nearbyint(value) + zero_point, lo), hi);
}

// (outer, channels, inner) of a per-axis parameter of `count` values over shape x.
struct Axis {
    std::int64_t outer, channels, inner;
};
Axis split_axis(const Shape& x, std::int64_t axis, std::int64_t count) {
    if (count == 1) return {1, 1, numel(x)};
    const auto a = static_cast<std::size_t>(normalize_axis(axis, static_cast<std::int64_t>(x.size())));
    EF_REQUIRE(x[a] == count, "per-axis scale has " + std::to_string(count) + " values; axis " + std::to_string(axis) +
                               " of " + shape_str(x) + " has " + std::to_string(x[a]));
    return {numel(Shape(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(a))), count,
            numel(Shape(x.begin() + static_cast<std::ptrdiff_t>(a) + 1, x.end()))};
}

class QuantizeOp : public Op {
public:
    QuantizeOp(const Attrs& attrs, bool quantize) : axis_(attrs.get_int("axis", 1)), quantize_(quantize) {}

    Shape infer(const std::vector<View>& in) const override {
        const Shape& scale = *in[1].shape;
        EF_REQUIRE(scale.size() <= 1, "scale must be a scalar or 1-D");
        if (in.size() > 2 && (in[2].data != nullptr || !in[2].shape->empty())) {
            EF_REQUIRE(numel(*in[2].shape) == numel(scale), "zero_point and scale must have the same shape");
        }
        split_axis(*in[0].shape, axis_, numel(scale));
        return *in[0].shape;
    }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Axis ax = split_axis(*in[0].shape, axis_, in[1].size());
        const float* scale = in[1].as<float>();
        const bool has_zp = in.size() > 2 && in[2].data != nullptr;
        for (std::int64_t o = 0; o < ax.outer; ++o) {
            for (std::int64_t c = 0; c < ax.channels; ++c) {
                const std::int64_t zp = has_zp ? int_at(in[2].data, in[2].dtype, c) : 0;
                const std::int64_t start = (o * ax.channels + c) * ax.inner;
                if (quantize_) {
                    quantize(in[0].as<float>() + start, scale[c], static_cast<float>(zp), out, start, ax.inner);
                } else {
                    float* y = out.as<float>() + start;
                    for (std::int64_t i = 0; i < ax.inner; ++i) {
                        y[i] = static_cast<float>(int_at(in[0].data, in[0].dtype, start + i) - zp) * scale[c];
                    }
                }
            }
        }
    }

private:
    static void quantize(const float* x, float scale, float zp, const View& out, std::int64_t start, std::int64_t n) {
        const Range r = range_of(out.dtype);
        if (out.dtype == DType::u8) {
            std::uint8_t* y = out.as<std::uint8_t>() + start;
            for (std::int64_t i = 0; i < n; ++i) y[i] = static_cast<std::uint8_t>(requantize(x[i] / scale, zp, r.lo, r.hi));
        } else {
            std::int8_t* y = out.as<std::int8_t>() + start;
            for (std::int64_t i = 0; i < n; ++i) y[i] = static_cast<std::int8_t>(requantize(x[i] / scale, zp, r.lo, r.hi));
        }
    }

    std::int64_t axis_;
    bool quantize_;
};

// The constant parameters of QConv / QGemm, pre-packed: weights as int16 rows (w - w_zero_point) padded
// to a multiple of 16, one float multiplier and one int32 bias per output channel.
struct Packed {
    std::int64_t channels = 0, k = 0, kp = 0;
    std::shared_ptr<void> weights;  // int16 [channels][kp]
    std::vector<float> multiplier;
    std::vector<std::int32_t> bias;
    float x_zero = 0, y_zero = 0, lo = 0, hi = 0;
    std::int64_t x_zero_int = 0;
};

const Constant& need(const Constant* c, const char* what) {
    EF_REQUIRE(c != nullptr, std::string(what) + " must be a constant (the compiler fuses only constant weights)");
    return *c;
}

float scalar_f32(const Constant* c, const char* what) {
    const Constant& k = need(c, what);
    EF_REQUIRE(numel(k.shape) == 1, std::string(what) + " must be a scalar");
    return *static_cast<const float*>(k.data());
}

// w_at(channel, k) gives the weight; `channels` output channels of `k` inputs each.
template <typename W>
Packed pack(const std::vector<const Constant*>& c, std::int64_t channels, std::int64_t k, W w_at, DType out,
            bool relu, const Constant* bias) {
    Packed p;
    p.channels = channels, p.k = k, p.kp = kernels::round_up16(static_cast<int>(k));
    const float sx = scalar_f32(c[1], "x_scale"), sy = scalar_f32(c[6], "y_scale");
    const Constant& zx = need(c[2], "x_zero_point");
    const Constant& sw = need(c[4], "w_scale");
    const Constant& zw = need(c[5], "w_zero_point");
    const Constant& zy = need(c[7], "y_zero_point");
    EF_REQUIRE(numel(zx.shape) == 1 && numel(zy.shape) == 1, "x and y zero points must be scalars");
    EF_REQUIRE(numel(sw.shape) == 1 || numel(sw.shape) == channels, "w_scale must have 1 or one value per output channel");
    EF_REQUIRE(numel(zw.shape) == numel(sw.shape), "w_zero_point and w_scale must have the same size");
    p.x_zero_int = int_at(zx.data(), zx.dtype, 0);
    p.x_zero = static_cast<float>(p.x_zero_int);
    p.y_zero = static_cast<float>(int_at(zy.data(), zy.dtype, 0));
    const Range r = range_of(out);
    p.lo = relu ? std::max(r.lo, p.y_zero) : r.lo;
    p.hi = r.hi;
    p.weights = aligned_buffer(static_cast<std::size_t>(channels * p.kp) * sizeof(std::int16_t));
    auto* packed = static_cast<std::int16_t*>(p.weights.get());
    const auto* scales = static_cast<const float*>(sw.data());
    for (std::int64_t ch = 0; ch < channels; ++ch) {
        const std::int64_t q = numel(sw.shape) == 1 ? 0 : ch;
        const std::int64_t zero = int_at(zw.data(), zw.dtype, q);
        for (std::int64_t i = 0; i < k; ++i) packed[ch * p.kp + i] = static_cast<std::int16_t>(w_at(ch, i) - zero);
        p.multiplier.push_back((sx * scales[q]) / sy);  // float32 steps, as the reference
    }
    p.bias.assign(static_cast<std::size_t>(channels), 0);
    if (bias != nullptr) {
        EF_REQUIRE(bias->dtype == DType::i32 && numel(bias->shape) == channels, "bias must be int32 with one value per channel");
        std::memcpy(p.bias.data(), bias->data(), static_cast<std::size_t>(channels) * sizeof(std::int32_t));
    }
    return p;
}

template <typename T>
void requantize_rows(const std::int32_t* acc, const Packed& p, std::int64_t rows, std::int64_t cols, bool per_row,
                     T* out) {
    for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t c = 0; c < cols; ++c) {
            const std::int64_t ch = per_row ? r : c;
            const float value = static_cast<float>(acc[r * cols + c] + p.bias[ch]) * p.multiplier[ch];
            out[r * cols + c] = static_cast<T>(requantize(value, p.y_zero, p.lo, p.hi));
        }
    }
}

void requantize_any(const std::int32_t* acc, const Packed& p, std::int64_t rows, std::int64_t cols, bool per_row,
                    const View& out, std::int64_t offset) {
    if (out.dtype == DType::u8) {
        requantize_rows(acc, p, rows, cols, per_row, out.as<std::uint8_t>() + offset);
    } else {
        requantize_rows(acc, p, rows, cols, per_row, out.as<std::int8_t>() + offset);
    }
}

class QConvOp : public Op {
public:
    QConvOp(const NodeSpec& spec, const std::vector<const Constant*>& c, DType out)
        : attrs_(spec.attrs), group_(spec.attrs.get_int("group", 1)) {
        const Constant& w = need(c[3], "w");
        EF_REQUIRE(w.shape.size() == 4, "w must be 4-D (M, C/group, kH, kW)");
        w_shape_ = w.shape;
        const std::int64_t k = w.shape[1] * w.shape[2] * w.shape[3];
        const bool relu = spec.attrs.get_str("activation", "none") == "relu";
        EF_REQUIRE(relu || spec.attrs.get_str("activation", "none") == "none", "activation must be none or relu");
        EF_REQUIRE(group_ >= 1 && w.shape[0] % group_ == 0, "group must divide the output channels");
        packed_ = pack(c, w.shape[0], k, [&](std::int64_t ch, std::int64_t i) { return int_at(w.data(), w.dtype, ch * k + i); },
                       out, relu, c.size() > 8 ? c[8] : nullptr);
    }

    Window window(const View& x) const { return window_2d(*x.shape, w_shape_[2], w_shape_[3], attrs_, false); }

    Shape infer(const std::vector<View>& in) const override {
        const Window w = window(in[0]);
        EF_REQUIRE(w.c == w_shape_[1] * group_, "x has " + std::to_string(w.c) + " channels, w expects " +
                                                 std::to_string(w_shape_[1] * group_));
        return {w.n, w_shape_[0], w.oh, w.ow};
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        const Window w = window(in[0]);
        const std::int64_t p = w.oh * w.ow;
        return static_cast<std::size_t>(p * packed_.kp) * 2 + static_cast<std::size_t>(w_shape_[0] / group_ * p) * 4 + 64;
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Window w = window(in[0]);
        const std::int64_t p = w.oh * w.ow, m = w_shape_[0] / group_, cg = w.c / group_;
        auto* patches = static_cast<std::int16_t*>(scratch);
        auto* acc = reinterpret_cast<std::int32_t*>(static_cast<char*>(scratch) + (p * packed_.kp * 2 + 63) / 64 * 64);
        const auto* weights = static_cast<const std::int16_t*>(packed_.weights.get());
        for (std::int64_t n = 0; n < w.n; ++n) {
            for (std::int64_t g = 0; g < group_; ++g) {
                im2row(in[0], (n * w.c + g * cg) * w.h * w.w, cg, w, patches);
                kernels::active().qgemm_nt(static_cast<int>(m), static_cast<int>(p), static_cast<int>(packed_.kp),
                                           weights + g * m * packed_.kp, static_cast<int>(packed_.kp), patches,
                                           static_cast<int>(packed_.kp), acc, p, 1);
                requantize_group(acc, g * m, m, p, out, (n * w_shape_[0] + g * m) * p);
            }
        }
    }

private:
    // One row per output pixel: (x - x_zero_point) over (c, i, j), zero in the padding and up to kp.
    void im2row(const View& x, std::int64_t offset, std::int64_t channels, const Window& w, std::int16_t* rows) const {
        const std::vector<std::int32_t>& index = gather_.get(w, channels, true, packed_.kp);
        const auto zero = static_cast<std::int16_t>(packed_.x_zero_int);
        const std::size_t count = index.size();
        if (x.dtype == DType::u8) {
            const std::uint8_t* in = x.as<std::uint8_t>() + offset;
            for (std::size_t r = 0; r < count; ++r) rows[r] = index[r] >= 0 ? static_cast<std::int16_t>(in[index[r]] - zero) : 0;
        } else {
            const std::int8_t* in = x.as<std::int8_t>() + offset;
            for (std::size_t r = 0; r < count; ++r) rows[r] = index[r] >= 0 ? static_cast<std::int16_t>(in[index[r]] - zero) : 0;
        }
    }

    void requantize_group(const std::int32_t* acc, std::int64_t first, std::int64_t m, std::int64_t p, const View& out,
                          std::int64_t offset) const {
        for (std::int64_t o = 0; o < m; ++o) {
            const std::int64_t ch = first + o;
            for (std::int64_t i = 0; i < p; ++i) {
                const float value = static_cast<float>(acc[o * p + i] + packed_.bias[ch]) * packed_.multiplier[ch];
                const float q = requantize(value, packed_.y_zero, packed_.lo, packed_.hi);
                if (out.dtype == DType::u8) {
                    out.as<std::uint8_t>()[offset + o * p + i] = static_cast<std::uint8_t>(q);
                } else {
                    out.as<std::int8_t>()[offset + o * p + i] = static_cast<std::int8_t>(q);
                }
            }
        }
    }

    Attrs attrs_;
    std::int64_t group_;
    Shape w_shape_;
    Packed packed_;
    mutable GatherTable gather_;  // runs hold the GIL: never two at once
};

class QGemmOp : public Op {
public:
    QGemmOp(const std::vector<const Constant*>& c, const Attrs& attrs, DType out) {
        const Constant& b = need(c[3], "b");
        EF_REQUIRE(b.shape.size() == 2, "b must be 2-D (K, N)");
        k_ = b.shape[0], n_ = b.shape[1];
        const bool relu = attrs.get_str("activation", "none") == "relu";
        EF_REQUIRE(relu || attrs.get_str("activation", "none") == "none", "activation must be none or relu");
        packed_ = pack(c, n_, k_, [&](std::int64_t ch, std::int64_t i) { return int_at(b.data(), b.dtype, i * n_ + ch); },
                       out, relu, c.size() > 8 ? c[8] : nullptr);
    }

    Shape infer(const std::vector<View>& in) const override {
        Shape s = *in[0].shape;
        EF_REQUIRE(!s.empty() && s.back() == k_, "a must have shape (..., " + std::to_string(k_) + "), got " + shape_str(s));
        s.back() = n_;
        return s;
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape& out) const override {
        const std::int64_t rows = numel(*in[0].shape) / k_;
        return static_cast<std::size_t>(rows * packed_.kp) * 2 + 64 + static_cast<std::size_t>(numel(out)) * 4;
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const std::int64_t rows = numel(*in[0].shape) / k_;
        auto* a = static_cast<std::int16_t*>(scratch);
        auto* acc = reinterpret_cast<std::int32_t*>(static_cast<char*>(scratch) + (rows * packed_.kp * 2 + 63) / 64 * 64);
        const auto zero = static_cast<std::int16_t>(packed_.x_zero_int);
        for (std::int64_t r = 0; r < rows; ++r) {
            std::int16_t* row = a + r * packed_.kp;
            if (in[0].dtype == DType::u8) {
                const std::uint8_t* x = in[0].as<std::uint8_t>() + r * k_;
                for (std::int64_t i = 0; i < k_; ++i) row[i] = static_cast<std::int16_t>(x[i] - zero);
            } else {
                const std::int8_t* x = in[0].as<std::int8_t>() + r * k_;
                for (std::int64_t i = 0; i < k_; ++i) row[i] = static_cast<std::int16_t>(x[i] - zero);
            }
            std::fill(row + k_, row + packed_.kp, static_cast<std::int16_t>(0));
        }
        kernels::active().qgemm_nt(static_cast<int>(rows), static_cast<int>(n_), static_cast<int>(packed_.kp), a,
                                   static_cast<int>(packed_.kp), static_cast<const std::int16_t*>(packed_.weights.get()),
                                   static_cast<int>(packed_.kp), acc, n_, 1);
        requantize_any(acc, packed_, rows, n_, false, out, 0);
    }

private:
    std::int64_t k_ = 0, n_ = 0;
    Packed packed_;
};

}  // namespace

std::unique_ptr<Op> make_quant_op(const NodeSpec& spec, const std::vector<DType>&, DType out,
                                  const std::vector<const Constant*>& constants) {
    const std::string& op = spec.op;
    if (op == "QuantizeLinear" || op == "DequantizeLinear") {
        EF_REQUIRE(spec.attrs.get_int("block_size", 0) == 0, "blocked quantization is not supported");
        return std::make_unique<QuantizeOp>(spec.attrs, op == "QuantizeLinear");
    }
    if (op == "QConv" || op == "QGemm") {
        for (std::size_t i = 1; i < spec.inputs.size(); ++i) {
            EF_REQUIRE(spec.inputs[i] < 0 || constants[i] != nullptr, "every input but the first must be a constant");
        }
        std::vector<const Constant*> c = constants;
        c.resize(9, nullptr);
        if (op == "QConv") return std::make_unique<QConvOp>(spec, c, out);
        return std::make_unique<QGemmOp>(c, spec.attrs, out);
    }
    return nullptr;
}

}  // namespace edgefleet::graph
