// QuantizeLinear and DequantizeLinear, per tensor or per axis (int8, uint8, int32 in), with the
// reference's rounding (graph_ops_quant.hpp) and AVX2 blocks where the tier has them.
#include <cmath>
#include <cstring>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_ops_quant.hpp"
#include "graph_threads.hpp"

namespace edgefleet::graph {
namespace quant {
namespace {

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
                    dequantize(in[0], start, ax.inner, zp, scale[c], out.as<float>() + start);
                }
            }
        }
    }

private:
    // Typed loops (the compiler vectorises them); int32 and the rest through int_at.
    static void dequantize(const View& x, std::int64_t start, std::int64_t n, std::int64_t zp, float scale, float* y) {
        if (x.dtype == DType::u8 || x.dtype == DType::i8) {
            const auto z = static_cast<std::int32_t>(zp);
            if (x.dtype == DType::u8) {
                const std::uint8_t* v = x.as<std::uint8_t>() + start;
                for (std::int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<std::int32_t>(v[i]) - z) * scale;
            } else {
                const std::int8_t* v = x.as<std::int8_t>() + start;
                for (std::int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<std::int32_t>(v[i]) - z) * scale;
            }
            return;
        }
        for (std::int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(int_at(x.data, x.dtype, start + i) - zp) * scale;
    }

    static void quantize(const float* x, float scale, float zp, const View& out, std::int64_t start, std::int64_t n) {
        const Range r = range_of(out.dtype);
#if defined(__x86_64__) || defined(_M_X64)
        if (std::strcmp(kernels::active().isa, "portable") != 0) {
            const std::int64_t done = quantize_avx2(x, scale, zp, r.lo, r.hi, out.dtype == DType::u8,
                                                    static_cast<char*>(out.data) + start, n);
            x += done, start += done, n -= done;
        }
#endif
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

}  // namespace

std::unique_ptr<Op> make_quantize_op(const NodeSpec& spec) {
    EF_REQUIRE(spec.attrs.get_int("block_size", 0) == 0, "blocked quantization is not supported");
    return std::make_unique<QuantizeOp>(spec.attrs, spec.op == "QuantizeLinear");
}

}  // namespace quant
}  // namespace edgefleet::graph
