// NEON kernels of the pools (contract in graph_ops_pool.hpp): MaxPool 2x2 / 2 with vld2 de-interleaving
// the column pairs, AveragePool's inner rows with 4 outputs in the lanes, GlobalAveragePool's 8 lanes as
// two vectors. The same operations per output as the portable loops, so the same bits.
#include "graph_ops_pool.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>
#include <limits>

namespace edgefleet::graph::pool {
namespace {

// std::max(best, v): best < v ? v : best (a NaN v leaves best; equal zeros keep best's sign).
inline float32x4_t fold(float32x4_t best, float32x4_t v) { return vbslq_f32(vcltq_f32(best, v), v, best); }

// Floats s[0], s[2], s[4], s[6], reading s[0..6] only (the last window's last column is s[6]).
inline float32x4_t even4(const float* s) {
    const float32x4_t a = vld1q_f32(s), b = vld1q_f32(s + 3);  // s0..s3, s3..s6
    return vcombine_f32(vget_low_f32(vuzp1q_f32(a, a)), vget_high_f32(vuzp2q_f32(b, b)));
}

}  // namespace

void max_2x2_neon(const float* x, float* y, const Window& w) {
    const float32x4_t lowest = vdupq_n_f32(-std::numeric_limits<float>::infinity());
    planes_2x2(x, y, w, 4, [lowest](const float* r0, const float* r1, float* o) {
        const float32x4x2_t a = vld2q_f32(r0), b = vld2q_f32(r1);
        vst1q_f32(o, fold(fold(fold(fold(lowest, a.val[0]), a.val[1]), b.val[0]), b.val[1]));
    });
}

void max_2x2_neon(const std::uint8_t* x, std::uint8_t* y, const Window& w) {
    planes_2x2(x, y, w, 16, [](const std::uint8_t* r0, const std::uint8_t* r1, std::uint8_t* o) {
        const uint8x16x2_t a = vld2q_u8(r0), b = vld2q_u8(r1);
        vst1q_u8(o, vmaxq_u8(vmaxq_u8(a.val[0], a.val[1]), vmaxq_u8(b.val[0], b.val[1])));
    });
}

void max_2x2_neon(const std::int8_t* x, std::int8_t* y, const Window& w) {
    planes_2x2(x, y, w, 16, [](const std::int8_t* r0, const std::int8_t* r1, std::int8_t* o) {
        const int8x16x2_t a = vld2q_s8(r0), b = vld2q_s8(r1);
        vst1q_s8(o, vmaxq_s8(vmaxq_s8(a.val[0], a.val[1]), vmaxq_s8(b.val[0], b.val[1])));
    });
}

std::int64_t average_row_neon(const float* corner, std::int64_t row_step, std::int64_t kh, std::int64_t kw,
                              std::int64_t sw, float* y, std::int64_t count) {
    const float32x4_t divisor = vdupq_n_f32(static_cast<float>(kh * kw));
    std::int64_t o = 0;
    for (; o + 4 <= count; o += 4) {
        float32x4_t sum = vdupq_n_f32(0.0f);
        const float* base = corner + o * sw;
        for (std::int64_t i = 0; i < kh; ++i) {
            const float* row = base + i * row_step;
            for (std::int64_t j = 0; j < kw; ++j) {
                sum = vaddq_f32(sum, sw == 1 ? vld1q_f32(row + j) : even4(row + j));
            }
        }
        vst1q_f32(y + o, vdivq_f32(sum, divisor));
    }
    return o;
}

float sum8_neon(const float* x, std::int64_t size) {
    float32x4_t lo = vdupq_n_f32(0.0f), hi = vdupq_n_f32(0.0f);
    std::int64_t i = 0;
    for (; i + 8 <= size; i += 8) {
        lo = vaddq_f32(lo, vld1q_f32(x + i));
        hi = vaddq_f32(hi, vld1q_f32(x + i + 4));
    }
    float lanes[8];
    vst1q_f32(lanes, lo);
    vst1q_f32(lanes + 4, hi);
    for (int l = 0; i < size; ++i, ++l) lanes[l] += x[i];
    return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

}  // namespace edgefleet::graph::pool

#endif  // aarch64
