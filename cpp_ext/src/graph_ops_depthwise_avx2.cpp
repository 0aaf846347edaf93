// The depthwise Conv's plane kernels in 256-bit registers (AVX2, chosen at run time with the other
// kernels; __attribute__((target)) keeps the rest of the build baseline x86-64): the products and sums of
// plane_portable in the same order, mul then add (no FMA), so every tier gives the same bits.
#include "graph_ops_depthwise.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace edgefleet::graph::depthwise {
namespace {

#define EF_AVX2 __attribute__((target("avx2,fma")))
// 8 floats at stride SW (1 or 2) from s; at stride 2 it reads s[0..15].
template <int SW>
EF_AVX2 inline __m256 load8(const float* s) {
    if (SW == 1) return _mm256_loadu_ps(s);
    const __m256 even = _mm256_shuffle_ps(_mm256_loadu_ps(s), _mm256_loadu_ps(s + 8), _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), _MM_SHUFFLE(3, 1, 2, 0)));
}

// plane_impl in 256-bit registers: the same products and sums in the same order (mul then add, no FMA).
// One accumulator would wait on each add's latency (kh * kw adds in a chain per block of 8 pixels), so
// R output rows are computed at once, each in its own register: R independent chains per tap.
template <int SW, int K, int R>
EF_AVX2 inline void row_blocks_avx2(const PlaneArgs& a, const __m256* w, std::int64_t oy, float* tail) {
    const Window& v = *a.win;
    const std::int64_t kh = K > 0 ? K : v.kh, kw = K > 0 ? K : v.kw;
    const __m256 bias = _mm256_set1_ps(a.bias), lo = _mm256_set1_ps(a.lo), hi = _mm256_set1_ps(a.hi);
    for (std::int64_t ox = 0; ox < v.ow; ox += kLanes) {
        __m256 acc[R];
        for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
        for (std::int64_t i = 0; i < kh; ++i) {
            const float* src = a.x + (oy * v.sh + i * v.dh) * a.pw + ox * SW;
            for (std::int64_t j = 0; j < kw; ++j) {
                const __m256 wv = K > 0 ? w[i * kw + j] : _mm256_set1_ps(a.w[i * kw + j]);
                for (int r = 0; r < R; ++r) {
                    acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(wv, load8<SW>(src + r * v.sh * a.pw + j * v.dw)));
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            float* out = a.y + (oy + r) * v.ow;
            const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(acc[r], bias), lo), hi);
            if (v.ow - ox >= kLanes) {
                _mm256_storeu_ps(out + ox, y);
            } else {
                _mm256_store_ps(tail, y);
                for (std::int64_t l = 0; l < v.ow - ox; ++l) out[ox + l] = tail[l];
            }
        }
    }
}

template <int SW, int K>
EF_AVX2 void rows_avx2(const PlaneArgs& a) {
    constexpr int kRows = 4;
    __m256 w[K > 0 ? K * K : 1];
    for (int t = 0; t < (K > 0 ? K * K : 0); ++t) w[t] = _mm256_set1_ps(a.w[t]);
    alignas(32) float tail[kLanes];
    std::int64_t oy = 0;
    for (; oy + kRows <= a.win->oh; oy += kRows) row_blocks_avx2<SW, K, kRows>(a, w, oy, tail);
    for (; oy < a.win->oh; ++oy) row_blocks_avx2<SW, K, 1>(a, w, oy, tail);
}

template <int SW>
EF_AVX2 void by_kernel_avx2(const PlaneArgs& a) {
    const Window& v = *a.win;
    if (v.kh == 3 && v.kw == 3) return rows_avx2<SW, 3>(a);
    if (v.kh == 5 && v.kw == 5) return rows_avx2<SW, 5>(a);
    rows_avx2<SW, 0>(a);
}

// B consecutive blocks of the flat walk from q, each in its own accumulator (independent add chains),
// stored with bias and clamp (flat_out's arithmetic, in registers).
template <int K, int B>
EF_AVX2 inline void flat_blocks_avx2(const PlaneArgs& a, const __m256* w, std::int64_t q, float* buf) {
    const Window& v = *a.win;
    const std::int64_t kh = K > 0 ? K : v.kh, kw = K > 0 ? K : v.kw;
    __m256 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = _mm256_setzero_ps();
    for (std::int64_t i = 0; i < kh; ++i) {
        for (std::int64_t j = 0; j < kw; ++j) {
            const __m256 wv = K > 0 ? w[i * kw + j] : _mm256_set1_ps(a.w[i * kw + j]);
            const float* s = a.x + q + i * v.dh * a.pw + j * v.dw;
            for (int b = 0; b < B; ++b) acc[b] = _mm256_add_ps(acc[b], _mm256_mul_ps(wv, _mm256_loadu_ps(s + b * kLanes)));
        }
    }
    const __m256 bias = _mm256_set1_ps(a.bias), lo = _mm256_set1_ps(a.lo), hi = _mm256_set1_ps(a.hi);
    for (int b = 0; b < B; ++b) {
        _mm256_store_ps(buf + q + b * kLanes, _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(acc[b], bias), lo), hi));
    }
}

// n floats from src to dst in vectors of 8 and a masked tail (the compiler would turn a copy loop into a
// memcpy call, which costs more than a keyword spotter's 5-float row).
EF_AVX2 inline void copy_row_avx2(float* dst, const float* src, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
    if (i == n) return;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - i)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(dst + i, mask, _mm256_maskload_ps(src + i, mask));
}

// The flat walk in 256-bit registers; 3 x 3 taps unrolled with their weights in registers.
template <int K>
EF_AVX2 void flat_avx2(const PlaneArgs& a) {
    constexpr int kBlocks = 4;
    __m256 w[K > 0 ? K * K : 1];
    for (int t = 0; t < (K > 0 ? K * K : 0); ++t) w[t] = _mm256_set1_ps(a.w[t]);
    alignas(64) float buf[kFlatMax];
    const std::int64_t span = flat_span(a);
    std::int64_t q = 0;
    for (; q + kBlocks * kLanes <= span; q += kBlocks * kLanes) flat_blocks_avx2<K, kBlocks>(a, w, q, buf);
    for (; q < span; q += kLanes) flat_blocks_avx2<K, 1>(a, w, q, buf);
    const Window& v = *a.win;
    for (std::int64_t oy = 0; oy < v.oh; ++oy) copy_row_avx2(a.y + oy * v.ow, buf + oy * a.pw, v.ow);
}

}  // namespace

EF_AVX2 void plane_avx2(const PlaneArgs& a) {
    if (flat(*a.win)) return a.win->kh == 3 && a.win->kw == 3 ? flat_avx2<3>(a) : flat_avx2<0>(a);
    if (a.win->sw == 1) return by_kernel_avx2<1>(a);
    if (a.win->sw == 2) return by_kernel_avx2<2>(a);
    plane_portable(a);
}

}  // namespace edgefleet::graph::depthwise
#endif
