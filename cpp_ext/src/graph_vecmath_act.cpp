// hard_swish_rows, clamp_rows and scale_planes of graph_vecmath.hpp: the fused activations' passes over
// a conv's or a Gemm's output (Activation::finish / apply, graph_ops.hpp), the HardSwish node and Mul by
// a per-channel scale (squeeze-excite), in explicit vectors of the active tier (avx512: 16 lanes with a
// masked tail; avx2 and avxvnni: 8; portable: SSE2's 4; NEON rows on the aarch64 tiers). As scalar loops
// (through a const member the compiler reloaded the bounds each element; Mul runs in place, where its
// alias check sent the loop to the scalar copy) they never vectorised: HardSwish cost 13-20 us of a
// 16 k-float output (EfficientNet-Lite's stem and its 72-channel expansions), more than the conv itself,
// and the channel scale 2.5 us on 16 x 1024. The same IEEE operations in the same order as the scalar
// code (hard_swish: mul, then add, no fused multiply-add), max_ps / min_ps with the bound first, so a NaN
// goes where std::max / std::min send it: the portable bits on every tier.
#include <algorithm>
#include <cstring>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_vecmath.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 on _mm256_undefined_pd in its own headers
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"  // zmm values between EF_AVX512 functions only
#include <immintrin.h>
#endif

namespace edgefleet::graph::vecmath {
namespace {

constexpr float kSixth = static_cast<float>(1.0 / 6.0);

#if defined(__x86_64__) || defined(_M_X64)
#define EF_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))
#define EF_AVX2 __attribute__((target("avx2,fma")))

// The tier the kernel table runs (select_isa may force a lower one on this CPU): 2 avx512, 1 avx2 and
// avxvnni (AVX2 CPUs), 0 portable.
int tier() {
    const char* isa = kernels::active().isa;
    if (isa[0] != 'a') return 0;
    return std::strcmp(isa, "avx512") == 0 ? 2 : 1;
}

EF_AVX512 inline __m512 hard_swish16(__m512 v) {
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(kSixth), v), _mm512_set1_ps(0.5f));
    return _mm512_mul_ps(v, _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_setzero_ps(), t)));
}

EF_AVX512 void hard_swish_avx512(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, hard_swish16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, mask, hard_swish16(_mm512_maskz_loadu_ps(mask, x + i)));
    }
}

EF_AVX512 void clamp_avx512(float* y, std::int64_t n, float lo, float hi) {
    const __m512 l = _mm512_set1_ps(lo), h = _mm512_set1_ps(hi);
    std::int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_min_ps(h, _mm512_max_ps(l, _mm512_loadu_ps(y + i))));
    if (i < n) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, mask, _mm512_min_ps(h, _mm512_max_ps(l, _mm512_maskz_loadu_ps(mask, y + i))));
    }
}

EF_AVX2 std::int64_t hard_swish_avx2(const float* x, float* y, std::int64_t n) {
    const __m256 sixth = _mm256_set1_ps(kSixth), half = _mm256_set1_ps(0.5f);
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 t = _mm256_min_ps(one, _mm256_max_ps(zero, _mm256_add_ps(_mm256_mul_ps(sixth, v), half)));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, t));
    }
    return i;
}

EF_AVX2 std::int64_t clamp_avx2(float* y, std::int64_t n, float lo, float hi) {
    const __m256 l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_min_ps(h, _mm256_max_ps(l, _mm256_loadu_ps(y + i))));
    return i;
}

EF_AVX512 void scale_avx512(const float* x, float* y, const float* s, std::int64_t planes, std::int64_t inner) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (inner % 16)) - 1u);
    for (std::int64_t p = 0; p < planes; ++p, x += inner, y += inner) {
        const __m512 v = _mm512_set1_ps(s[p]);
        std::int64_t i = 0;
        for (; i + 16 <= inner; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), v));
        if (i < inner) _mm512_mask_storeu_ps(y + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), v));
    }
}

EF_AVX2 void scale_avx2(const float* x, float* y, const float* s, std::int64_t planes, std::int64_t inner) {
    for (std::int64_t p = 0; p < planes; ++p, x += inner, y += inner) {
        const __m256 v = _mm256_set1_ps(s[p]);
        std::int64_t i = 0;
        for (; i + 8 <= inner; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), v));
        for (; i < inner; ++i) y[i] = x[i] * s[p];
    }
}

std::int64_t hard_swish_sse(const float* x, float* y, std::int64_t n) {
    const __m128 sixth = _mm_set1_ps(kSixth), half = _mm_set1_ps(0.5f);
    const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m128 v = _mm_loadu_ps(x + i);
        const __m128 t = _mm_min_ps(one, _mm_max_ps(zero, _mm_add_ps(_mm_mul_ps(sixth, v), half)));
        _mm_storeu_ps(y + i, _mm_mul_ps(v, t));
    }
    return i;
}

std::int64_t clamp_sse(float* y, std::int64_t n, float lo, float hi) {
    const __m128 l = _mm_set1_ps(lo), h = _mm_set1_ps(hi);
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) _mm_storeu_ps(y + i, _mm_min_ps(h, _mm_max_ps(l, _mm_loadu_ps(y + i))));
    return i;
}
#endif

}  // namespace

void hard_swish_rows(const float* x, float* y, std::int64_t n) {
    std::int64_t i = 0;
#if defined(__x86_64__) || defined(_M_X64)
    const int t = tier();
    if (t == 2) return hard_swish_avx512(x, y, n);
    i = t == 1 ? hard_swish_avx2(x, y, n) : hard_swish_sse(x, y, n);
#elif defined(__aarch64__)
    if (kernels::neon_active()) return hard_swish_rows_neon(x, y, n);
#endif
    for (; i < n; ++i) y[i] = hard_swish(x[i]);
}

void scale_planes(const float* x, float* y, const float* s, std::int64_t planes, std::int64_t inner) {
#if defined(__x86_64__) || defined(_M_X64)
    const int t = tier();
    if (t == 2) return scale_avx512(x, y, s, planes, inner);
    if (t == 1) return scale_avx2(x, y, s, planes, inner);
#endif
    for (std::int64_t p = 0; p < planes; ++p, x += inner, y += inner) {
        const float v = s[p];
        for (std::int64_t i = 0; i < inner; ++i) y[i] = x[i] * v;
    }
}

void clamp_rows(float* y, std::int64_t n, float lo, float hi) {
    std::int64_t i = 0;
#if defined(__x86_64__) || defined(_M_X64)
    const int t = tier();
    if (t == 2) return clamp_avx512(y, n, lo, hi);
    i = t == 1 ? clamp_avx2(y, n, lo, hi) : clamp_sse(y, n, lo, hi);
#endif
    for (; i < n; ++i) y[i] = std::min(std::max(y[i], lo), hi);
}

}  // namespace edgefleet::graph::vecmath
