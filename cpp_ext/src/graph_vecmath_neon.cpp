// The row loops of graph_vecmath.hpp in NEON registers (the "neon" tier on aarch64): exp and erf are
// the header's formulas, the same IEEE operations in the same order (vmulq then vaddq, no fused
// multiply-add; comparisons as selects so a NaN goes where the scalar ternaries send it), four lanes at
// a time and the scalar formula for the last n % 4. So they give the portable tier's bits.
// The activations' rows (Sigmoid, Tanh, HardSigmoid, HardSwish; graph_ops_unary.cpp runs them on the
// aarch64 tiers): the piecewise-linear two are the portable formula's bits; Sigmoid and Tanh are
// vectorised approximations (exp above, a rational tanh) within the parity tests' float tolerance of
// the libm formula, not its bits.
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

// tanh as the odd rational minimax fit of Eigen and onnxruntime's MLAS (degrees 13 / 6 in x), x clamped to
// +-7.90531110763549805 (where it rounds to +-1) and x itself for |x| < 0.0004; vmulq then vaddq, as the
// header's formulas. Within 3.9e-7 relative of float64 tanh over a dense grid (checked in numpy with the
// same float32 steps), where 1 - 2 / (e^2x + 1) would cancel near 0.
inline float32x4_t tanh4(float32x4_t x) {
    const float32x4_t c = clamp(x, -7.90531110763549805f, 7.90531110763549805f);
    const float32x4_t x2 = vmulq_f32(c, c);
    float32x4_t p = vdupq_n_f32(-2.76076847742355e-16f);
    p = mul_add(p, x2, 2.00018790482477e-13f);
    p = mul_add(p, x2, -8.60467152213735e-11f);
    p = mul_add(p, x2, 5.12229709037114e-08f);
    p = mul_add(p, x2, 1.48572235717979e-05f);
    p = mul_add(p, x2, 6.37261928875436e-04f);
    p = mul_add(p, x2, 4.89352455891786e-03f);
    float32x4_t q = vdupq_n_f32(1.19825839466702e-06f);
    q = mul_add(q, x2, 1.18534705686654e-04f);
    q = mul_add(q, x2, 2.26843463243900e-03f);
    q = mul_add(q, x2, 4.89352518554385e-03f);
    const float32x4_t y = vdivq_f32(vmulq_f32(p, c), q);
    return vbslq_f32(vcltq_f32(vabsq_f32(x), vdupq_n_f32(0.0004f)), x, y);
}

// The portable Sigmoid's two branches with the header's exp: e = e^-|x|, then 1 / (1 + e) for x >= 0 and
// e / (1 + e) below (a NaN takes the second, and stays NaN). Within 2.6e-7 relative of the libm formula.
inline float32x4_t sigmoid4(float32x4_t x) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    const float32x4_t e = exp4(vnegq_f32(vabsq_f32(x)));
    const float32x4_t d = vaddq_f32(one, e);
    return vbslq_f32(vcgeq_f32(x, vdupq_n_f32(0.0f)), vdivq_f32(one, d), vdivq_f32(e, d));
}

// min(max(a x + b, 0), 1) with std::max / std::min's selects (a NaN stays NaN, a -0 stays -0): the bits of
// the portable HardSigmoid.
inline float32x4_t hard_sigmoid4(float32x4_t x, float32x4_t alpha, float32x4_t beta) {
    const float32x4_t zero = vdupq_n_f32(0.0f), one = vdupq_n_f32(1.0f);
    float32x4_t v = vaddq_f32(vmulq_f32(alpha, x), beta);
    v = vbslq_f32(vcltq_f32(v, zero), zero, v);
    return vbslq_f32(vcltq_f32(one, v), one, v);
}

}  // namespace

void sigmoid_rows_neon(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, sigmoid4(vld1q_f32(x + i)));
    if (i < n) {  // the last n % 4 through a padded vector: the same formula as the lanes
        float in[4] = {}, out[4];
        for (std::int64_t k = i; k < n; ++k) in[k - i] = x[k];
        vst1q_f32(out, sigmoid4(vld1q_f32(in)));
        for (std::int64_t k = i; k < n; ++k) y[k] = out[k - i];
    }
}

void tanh_rows_neon(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, tanh4(vld1q_f32(x + i)));
    if (i < n) {
        float in[4] = {}, out[4];
        for (std::int64_t k = i; k < n; ++k) in[k - i] = x[k];
        vst1q_f32(out, tanh4(vld1q_f32(in)));
        for (std::int64_t k = i; k < n; ++k) y[k] = out[k - i];
    }
}

void hard_sigmoid_rows_neon(const float* x, float* y, std::int64_t n, float alpha, float beta) {
    const float32x4_t a = vdupq_n_f32(alpha), b = vdupq_n_f32(beta);
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, hard_sigmoid4(vld1q_f32(x + i), a, b));
    for (; i < n; ++i) {
        const float v = alpha * x[i] + beta;
        const float lo = v < 0.0f ? 0.0f : v;
        y[i] = 1.0f < lo ? 1.0f : lo;
    }
}

// x * HardSigmoid(x; 1/6, 1/2): graph_ops.hpp's hard_swish, the same bits.
void hard_swish_rows_neon(const float* x, float* y, std::int64_t n) {
    constexpr float kSixth = static_cast<float>(1.0 / 6.0);
    const float32x4_t a = vdupq_n_f32(kSixth), b = vdupq_n_f32(0.5f);
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        vst1q_f32(y + i, vmulq_f32(v, hard_sigmoid4(v, a, b)));
    }
    for (; i < n; ++i) {
        const float v = kSixth * x[i] + 0.5f;
        const float lo = v < 0.0f ? 0.0f : v;
        y[i] = x[i] * (1.0f < lo ? 1.0f : lo);
    }
}

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
