// What the quantization ops share (graph_ops_quantize.cpp: QuantizeLinear / DequantizeLinear;
// graph_ops_quant.cpp: QConv / QGemm): reading integer tensors, the int8/uint8 range, the reference's
// rounding, and the AVX2 loops of graph_quant_x86.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "graph_ops.hpp"

namespace edgefleet::graph {

#if defined(__x86_64__) || defined(_M_X64)
// AVX2 loops of graph_quant_x86.cpp, for whole blocks of 8 (each returns how many values it wrote; the
// caller does the rest with the same float32 steps): QuantizeLinear's round(x / scale) + zero point, and
// the requantization of int32 sums, (acc[c] + bias[c]) * mult[c] rounded + zero point. Both clamp to
// [lo, hi] and store bytes (u8 or s8), equal to the portable loops' (round half to even as nearbyint,
// which without SSE4.1 in the baseline build is a libm call per value).
std::int64_t quantize_avx2(const float* x, float scale, float zp, float lo, float hi, bool u8, char* y, std::int64_t n);
std::int64_t requantize_avx2(const std::int32_t* acc, const std::int32_t* bias, const float* mult, float zp, float lo,
                             float hi, bool u8, char* y, std::int64_t n);
#endif

namespace quant {

// Reads element i of an integer tensor of any supported dtype as int64.
inline std::int64_t int_at(const void* data, DType dtype, std::int64_t i) {
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
inline Range range_of(DType dtype) {
    return dtype == DType::u8 ? Range{0.0f, 255.0f} : Range{-128.0f, 127.0f};
}

// saturate(round_half_even(value) + zero_point) into [lo, hi] (the reference's `saturate`).
inline float requantize(float value, float zero_point, float lo, float hi) {
    return std::min(std::max(std::nearbyint(value) + zero_point, lo), hi);
}

std::unique_ptr<Op> make_quantize_op(const NodeSpec& spec);  // graph_ops_quantize.cpp

}  // namespace quant
}  // namespace edgefleet::graph
