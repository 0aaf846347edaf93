// Vectorizable float32 exp and erf for the transformer ops (Softmax, Gelu, Erf), and the row loops that
// use them. libm's std::exp / std::erf are scalar calls (about 5 ns an element, most of a small
// encoder's Gelu and Softmax time); these are branch-free mul/add formulas the compiler turns into SIMD.
// On x86-64 the row loops are built for baseline SSE2, AVX2 and AVX-512 (GCC target_clones, picked once
// at load by the CPU); the formula is the same IEEE operations in every clone (no FMA contraction in
// this build), so results do not depend on the clone. Accuracy against float64 (checked on a dense
// grid): exp within 2 ulp; erf within 4.2e-7 absolute and relative, so exact Gelu within 1.5e-6
// absolute (where x < -5, 1 + erf cancels: about 5e-7 comes back for a true 1e-8).
#pragma once

#include <cstdint>
#include <cstring>

namespace edgefleet::graph::vecmath {

// e^x: x = n ln2 + r (n rounded to nearest with the 1.5 * 2^23 trick, no libm call, |r| <= ln2 / 2,
// ln2 split in two so n * ln2_hi is exact), e^r by its degree-6 Taylor polynomial, 2^n put in the
// exponent bits. x is clamped to [-87.3, 88] (n <= 127): below, e^x is under float32's normal range
// (about 1e-38 comes back instead of a denormal or 0). For Softmax, whose x - max is <= 0. NaN stays NaN.
inline float exp(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.0f ? 88.0f : x;
    constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float n = (x * 1.44269504088896341f + kShift) - kShift;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// erf(x) as an odd polynomial over an even one in x (a rational minimax fit on [-4, 4], the one Eigen
// and XLA use for float32); |x| >= 4 gives +-1 to float32 precision. A NaN stays NaN.
inline float erf(float x) {
    x = x < -4.0f ? -4.0f : x;
    x = x > 4.0f ? 4.0f : x;
    const float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x * p / q;
}

// The logistic sigmoid 1 / (1 + e^-x) with exp above (within 3 ulp where it is not tiny), and tanh: for
// |x| >= 1/16, sign(x) (1 - e) / (1 + e) with e = e^(-2|x|) (within 1e-7 absolute, 5e-7 relative), below it
// the Taylor series to x^7; branch-free, so loops of them vectorize. For the recurrent cells (LSTM, GRU)
// and the Sigmoid and Tanh nodes.
inline float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }
inline float tanh(float x) {
    const float a = x < 0.0f ? -x : x;
    const float e = exp(-2.0f * a);
    const float big = (1.0f - e) / (1.0f + e);
    const float x2 = x * x;
    const float small = a * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f))));
    const float r = a < 0.0625f ? small : big;
    return x < 0.0f ? -r : r;
}

void sigmoid_rows(const float* x, float* y, std::int64_t n);
void tanh_rows(const float* x, float* y, std::int64_t n);
void erf_rows(const float* x, float* y, std::int64_t n);
void gelu_rows(const float* x, float* y, std::int64_t n);  // 0.5 x (1 + erf(x / sqrt 2))
// Softmax's row: y = e^(x - max x) / sum e^(x - max x). The max and the sum keep 16 running lanes (lane l
// takes the elements i with i % 16 == l, in order; the lanes then folded as a tree, 8 + 8, 4 + 4, ...),
// so they vectorize and give the same result in every clone; the sum's order is not left-to-right.
void softmax_row(const float* x, float* y, std::int64_t n);
// LayerNormalization's row: y = (x - mean) * inv * scale + bias, mean and variance summed in float64 over
// 8 running lanes (lane l takes the elements i with i % 8 == l, in order; folded as a tree 4 + 4, 2 + 2,
// 1 + 1), inv = 1 / sqrt(var + epsilon) rounded to float32; the output in float32. scale_step and
// bias_step are 1 (one value per element) or 0 (one value for the row); bias may be null.
void layer_norm_row(const float* x, float* y, std::int64_t n, double epsilon, const float* scale,
                    std::int64_t scale_step, const float* bias, std::int64_t bias_step);
// The fused activations' passes (Activation in graph_ops.hpp) and the HardSwish node, in vectors of the
// active tier with the portable bits (graph_vecmath_act.cpp): y = hard_swish(x) (x may be y), and
// y = min(max(y, lo), hi) in place.
void hard_swish_rows(const float* x, float* y, std::int64_t n);
void clamp_rows(float* y, std::int64_t n, float lo, float hi);
// y[p * inner + j] = x[p * inner + j] * s[p] for p < planes (x may be y): Mul by a per-channel scale.
void scale_planes(const float* x, float* y, const float* s, std::int64_t planes, std::int64_t inner);
#if defined(__x86_64__) || defined(_M_X64)
// softmax_row in zmm registers with the same bits (graph_vecmath_avx512.cpp); softmax_row calls it when
// the "avx512" kernel tier is active.
void softmax_row_avx512(const float* x, float* y, std::int64_t n);
#endif
#if defined(__aarch64__)
// The same rows in NEON registers, the same bits (graph_vecmath_neon.cpp); the three above call them
// when the "neon" kernel tier is active.
void erf_rows_neon(const float* x, float* y, std::int64_t n);
void gelu_rows_neon(const float* x, float* y, std::int64_t n);
void softmax_row_neon(const float* x, float* y, std::int64_t n);
// The element-wise activations of graph_ops_unary.cpp (aarch64 tiers): HardSigmoid and HardSwish with the
// portable bits, Sigmoid (this exp) and Tanh (a rational fit) within 4e-7 relative of libm's; sigmoid_rows
// and tanh_rows call the last two (so the recurrent cells use them too).
void sigmoid_rows_neon(const float* x, float* y, std::int64_t n);
void tanh_rows_neon(const float* x, float* y, std::int64_t n);
void hard_sigmoid_rows_neon(const float* x, float* y, std::int64_t n, float alpha, float beta);
void hard_swish_rows_neon(const float* x, float* y, std::int64_t n);
#endif

}  // namespace edgefleet::graph::vecmath
