// The row loops of graph_vecmath.hpp, one clone per x86 SIMD width.
#include "graph_vecmath.hpp"

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
inline bool neon() { return std::strcmp(kernels::active().isa, "neon") == 0; }
#endif

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

}  // namespace edgefleet::graph::vecmath
