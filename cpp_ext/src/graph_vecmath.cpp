// The row loops of graph_vecmath.hpp, one clone per x86 SIMD width.
#include "graph_vecmath.hpp"

#include <cmath>
#include <cstring>
#include <limits>

#include "graph_kernels.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EF_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define EF_CLONES
#endif

namespace edgefleet::graph::vecmath {

#if defined(__aarch64__)
// The "neon" tier runs the explicit NEON rows (graph_vecmath_neon.cpp), with the same bits.
inline bool neon() { return kernels::neon_active(); }
#endif

EF_CLONES void sigmoid_rows(const float* x, float* y, std::int64_t n) {
#if defined(__aarch64__)
    if (neon()) return sigmoid_rows_neon(x, y, n);
#endif
    for (std::int64_t i = 0; i < n; ++i) y[i] = sigmoid(x[i]);
}

EF_CLONES void tanh_rows(const float* x, float* y, std::int64_t n) {
#if defined(__aarch64__)
    if (neon()) return tanh_rows_neon(x, y, n);
#endif
    for (std::int64_t i = 0; i < n; ++i) y[i] = tanh(x[i]);
}

EF_CLONES void erf_rows(const float* x, float* y, std::int64_t n) {
#if defined(__aarch64__)
    if (neon()) return erf_rows_neon(x, y, n);
#endif
    for (std::int64_t i = 0; i < n; ++i) y[i] = erf(x[i]);
}

EF_CLONES void gelu_rows(const float* x, float* y, std::int64_t n) {
#if defined(__aarch64__)
    if (neon()) return gelu_rows_neon(x, y, n);
#endif
    for (std::int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + erf(x[i] * 0.70710678118654752f));
}

EF_CLONES void softmax_row(const float* x, float* y, std::int64_t n) {
#if defined(__aarch64__)
    if (neon()) return softmax_row_neon(x, y, n);
#endif
#if defined(__x86_64__) || defined(_M_X64)
    if (std::strcmp(kernels::active().isa, "avx512") == 0) return softmax_row_avx512(x, y, n);
#endif
    constexpr int kLanes = 16;
    const std::int64_t body = n / kLanes * kLanes;
    float top[kLanes], sum[kLanes] = {};
    for (int l = 0; l < kLanes; ++l) top[l] = -std::numeric_limits<float>::infinity();
    for (std::int64_t i = 0; i < body; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) top[l] = top[l] < x[i + l] ? x[i + l] : top[l];
    }
    for (std::int64_t i = body; i < n; ++i) top[i - body] = top[i - body] < x[i] ? x[i] : top[i - body];
    for (int width = kLanes / 2; width >= 1; width /= 2) {  // a tree: 4 steps, not a 16-long chain
        for (int l = 0; l < width; ++l) top[l] = top[l] < top[l + width] ? top[l + width] : top[l];
    }
    const float shift = top[0];
    for (std::int64_t i = 0; i < n; ++i) y[i] = exp(x[i] - shift);
    for (std::int64_t i = 0; i < body; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) sum[l] += y[i + l];
    }
    for (std::int64_t i = body; i < n; ++i) sum[i - body] += y[i];
    for (int width = kLanes / 2; width >= 1; width /= 2) {
        for (int l = 0; l < width; ++l) sum[l] += sum[l + width];
    }
    for (std::int64_t i = 0; i < n; ++i) y[i] /= sum[0];
}

// Lanes in float64 (8 of them: one zmm) so the sums vectorize instead of waiting on one add chain.
EF_CLONES void layer_norm_row(const float* x, float* y, std::int64_t n, double epsilon, const float* scale,
                              std::int64_t scale_step, const float* bias, std::int64_t bias_step) {
    constexpr int kLanes = 8;
    const std::int64_t body = n / kLanes * kLanes;
    const auto fold = [](double* lanes) {
        for (int width = kLanes / 2; width >= 1; width /= 2) {
            for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
        }
        return lanes[0];
    };
    double sum[kLanes] = {};
    for (std::int64_t i = 0; i < body; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) sum[l] += static_cast<double>(x[i + l]);
    }
    for (std::int64_t i = body; i < n; ++i) sum[i - body] += static_cast<double>(x[i]);
    const double mean = fold(sum) / static_cast<double>(n);
    double var[kLanes] = {};
    for (std::int64_t i = 0; i < body; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
            const double d = static_cast<double>(x[i + l]) - mean;
            var[l] += d * d;
        }
    }
    for (std::int64_t i = body; i < n; ++i) {
        const double d = static_cast<double>(x[i]) - mean;
        var[i - body] += d * d;
    }
    const auto inv = static_cast<float>(1.0 / std::sqrt(fold(var) / static_cast<double>(n) + epsilon));
    const auto m = static_cast<float>(mean);
    if (scale_step == 1 && bias != nullptr && bias_step == 1) {  // the usual case: one loop the compiler vectorizes
        for (std::int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * inv * scale[i] + bias[i];
        return;
    }
    for (std::int64_t i = 0; i < n; ++i) {
        const float v = (x[i] - m) * inv * scale[i * scale_step];
        y[i] = bias != nullptr ? v + bias[i * bias_step] : v;
    }
}

}  // namespace edgefleet::graph::vecmath
