// The row loops of graph_vecmath.hpp in NEON registers (the "neon" tier on aarch64): exp and erf are
// the header's formulas, the same IEEE operations in the same order (vmulq then vaddq, no fused
// multiply-add; comparisons as selects so a NaN goes where the scalar ternaries send it), four lanes at
// a time and the scalar formula for the last n % 4. So they give the portable tier's bits.
#include "graph_vecmath.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <limits>

namespace edgefleet::graph::vecmath {
namespace {

inline float32x4_t mul_add(float32x4_t p, float32x4_t r, float c) { return vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(c)); }

// x < lo ? lo : x, then x > hi ? hi : x (a NaN x stays x).
inline float32x4_t clamp(float32x4_t x, float lo, float hi) {
    const float32x4_t l = vdupq_n_f32(lo), h = vdupq_n_f32(hi);
    x = vbslq_f32(vcltq_f32(x, l), l, x);
    return vbslq_f32(vcgtq_f32(x, h), h, x);
}

inline float32x4_t exp4(float32x4_t x) {
    x = clamp(x, -87.3f, 88.0f);
    const float32x4_t shift = vdupq_n_f32(12582912.0f);
    const float32x4_t n = vsubq_f32(vaddq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)), shift), shift);
    const float32x4_t r = vsubq_f32(vsubq_f32(x, vmulq_f32(n, vdupq_n_f32(0.693359375f))),
                                    vmulq_f32(n, vdupq_n_f32(-2.12194440e-4f)));
    float32x4_t p = vdupq_n_f32(1.0f / 5040.0f);
    p = mul_add(p, r, 1.0f / 720.0f);
    p = mul_add(p, r, 1.0f / 120.0f);
    p = mul_add(p, r, 1.0f / 24.0f);
    p = mul_add(p, r, 1.0f / 6.0f);
    p = mul_add(p, r, 0.5f);
    p = mul_add(p, r, 1.0f);
    p = mul_add(p, r, 1.0f);
    const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(bits));
}

inline float32x4_t erf4(float32x4_t x) {
    x = clamp(x, -4.0f, 4.0f);
    const float32x4_t x2 = vmulq_f32(x, x);
    float32x4_t p = vdupq_n_f32(-2.72614225801306e-10f);
    p = mul_add(p, x2, 2.77068142495902e-08f);
    p = mul_add(p, x2, -2.10102402082508e-06f);
    p = mul_add(p, x2, -5.69250639462346e-05f);
    p = mul_add(p, x2, -7.34990630326855e-04f);
    p = mul_add(p, x2, -2.95459980854025e-03f);
    p = mul_add(p, x2, -1.60960333262415e-02f);
    float32x4_t q = vdupq_n_f32(-1.45660718464996e-05f);
    q = mul_add(q, x2, -2.13374055278905e-04f);
    q = mul_add(q, x2, -1.68282697438203e-03f);
    q = mul_add(q, x2, -7.37332916720468e-03f);
    q = mul_add(q, x2, -1.42647390514189e-02f);
    return vdivq_f32(vmulq_f32(x, p), q);
}

}  // namespace

void erf_rows_neon(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, erf4(vld1q_f32(x + i)));
    for (; i < n; ++i) y[i] = erf(x[i]);
}

void gelu_rows_neon(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    const float32x4_t half = vdupq_n_f32(0.5f), one = vdupq_n_f32(1.0f), scale = vdupq_n_f32(0.70710678118654752f);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        vst1q_f32(y + i, vmulq_f32(vmulq_f32(half, v), vaddq_f32(one, erf4(vmulq_f32(v, scale)))));
    }
    for (; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + erf(x[i] * 0.70710678118654752f));
}

// softmax_row's 16 running lanes as 4 vectors (lane l of vector v is lane 4 v + l), folded by the same
// tree through memory.
void softmax_row_neon(const float* x, float* y, std::int64_t n) {
    constexpr int kLanes = 16;
    const std::int64_t body = n / kLanes * kLanes;
    float top[kLanes], sum[kLanes];
    float32x4_t t[4], s[4];
    for (int v = 0; v < 4; ++v) t[v] = vdupq_n_f32(-std::numeric_limits<float>::infinity()), s[v] = vdupq_n_f32(0.0f);
    for (std::int64_t i = 0; i < body; i += kLanes) {
        for (int v = 0; v < 4; ++v) {
            const float32x4_t e = vld1q_f32(x + i + 4 * v);
            t[v] = vbslq_f32(vcltq_f32(t[v], e), e, t[v]);  // top < x ? x : top
        }
    }
    for (int v = 0; v < 4; ++v) vst1q_f32(top + 4 * v, t[v]);
    for (std::int64_t i = body; i < n; ++i) top[i - body] = top[i - body] < x[i] ? x[i] : top[i - body];
    for (int width = kLanes / 2; width >= 1; width /= 2) {
        for (int l = 0; l < width; ++l) top[l] = top[l] < top[l + width] ? top[l + width] : top[l];
    }
    const float32x4_t shift = vdupq_n_f32(top[0]);
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, exp4(vsubq_f32(vld1q_f32(x + i), shift)));
    for (; i < n; ++i) y[i] = exp(x[i] - top[0]);
    for (std::int64_t j = 0; j < body; j += kLanes) {
        for (int v = 0; v < 4; ++v) s[v] = vaddq_f32(s[v], vld1q_f32(y + j + 4 * v));
    }
    for (int v = 0; v < 4; ++v) vst1q_f32(sum + 4 * v, s[v]);
    for (std::int64_t j = body; j < n; ++j) sum[j - body] += y[j];
    for (int width = kLanes / 2; width >= 1; width /= 2) {
        for (int l = 0; l < width; ++l) sum[l] += sum[l + width];
    }
    const float32x4_t total = vdupq_n_f32(sum[0]);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(y + i, vdivq_f32(vld1q_f32(y + i), total));
    for (; i < n; ++i) y[i] /= sum[0];
}

}  // namespace edgefleet::graph::vecmath
#endif
