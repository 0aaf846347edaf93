// AVX2 + FMA kernels, compiled for that ISA function by function (__attribute__((target))) so the
// module as a whole still runs on any x86-64; graph_kernels.cpp calls them only when the CPU has both.
#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include "graph_simd_x86.hpp"

#include <algorithm>

namespace edgefleet::graph::kernels {

bool cpu_has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

namespace {

using x86::transpose8;

#define EF_AVX2 __attribute__((target("avx2,fma")))

EF_AVX2 inline __m256i tail_mask(int n) {  // the first n of 8 lanes
    alignas(32) static const std::int32_t lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 8 - n));
}

// MR rows of A times NV vectors of 8 columns of B, accumulated over K in registers.
template <int MR, int NV>
EF_AVX2 inline void block(int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    __m256 acc[MR][NV];
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v) {
            acc[r][v] = _mm256_setzero_ps();
        }
    }
    for (int k = 0; k < K; ++k) {
        __m256 b[NV];
        const float* row = B + static_cast<std::ptrdiff_t>(k) * ldb;
        for (int v = 0; v < NV; ++v) {
            b[v] = _mm256_loadu_ps(row + 8 * v);
        }
        for (int r = 0; r < MR; ++r) {
            const __m256 a = _mm256_broadcast_ss(A + static_cast<std::ptrdiff_t>(r) * lda + k);
            for (int v = 0; v < NV; ++v) {
                acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
            }
        }
    }
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v) {
            _mm256_storeu_ps(C + static_cast<std::ptrdiff_t>(r) * ldc + 8 * v, acc[r][v]);
        }
    }
}

// The last n < 8 columns: masked loads and stores.
template <int MR>
EF_AVX2 inline void block_tail(int n, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    const __m256i mask = tail_mask(n);
    __m256 acc[MR];
    for (int r = 0; r < MR; ++r) {
        acc[r] = _mm256_setzero_ps();
    }
    for (int k = 0; k < K; ++k) {
        const __m256 b = _mm256_maskload_ps(B + static_cast<std::ptrdiff_t>(k) * ldb, mask);
        for (int r = 0; r < MR; ++r) {
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + static_cast<std::ptrdiff_t>(r) * lda + k), b, acc[r]);
        }
    }
    for (int r = 0; r < MR; ++r) {
        _mm256_maskstore_ps(C + static_cast<std::ptrdiff_t>(r) * ldc, mask, acc[r]);
    }
}

// One band of MR rows across all N columns; NV wide blocks first (NV * 8 columns), then 8, then a tail.
template <int MR, int NV>
EF_AVX2 inline void band(int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    int j = 0;
    for (; j + 8 * NV <= N; j += 8 * NV) {
        block<MR, NV>(K, A, lda, B + j, ldb, C + j, ldc);
    }
    for (; j + 8 <= N; j += 8) {
        block<MR, 1>(K, A, lda, B + j, ldb, C + j, ldc);
    }
    if (j < N) {
        block_tail<MR>(N - j, K, A, lda, B + j, ldb, C + j, ldc);
    }
}

EF_AVX2 inline std::int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// 8 output pixels from p0 x 8 output channels from m0: one weight load and 8 broadcasts per tap, then
// bias and clamp in registers and a transpose, so each channel's 8 pixels leave in one (masked) store.
EF_AVX2 inline void conv_tile(const ConvArgs& a, int p0, int m0) {
    const int pixels = std::min(8, a.p_end - p0);
    const std::int32_t* pix = a.pix + p0;
    const int last = pixels - 1;  // past the end: repeat the last pixel
    // Accumulators as named locals: an array whose address reaches the transpose stays in memory.
    const float *x0 = a.x + pix[0], *x1 = a.x + pix[std::min(1, last)], *x2 = a.x + pix[std::min(2, last)],
                *x3 = a.x + pix[std::min(3, last)], *x4 = a.x + pix[std::min(4, last)],
                *x5 = a.x + pix[std::min(5, last)], *x6 = a.x + pix[std::min(6, last)],
                *x7 = a.x + pix[std::min(7, last)];
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    const float* w = a.w + m0;
    const int K = a.K;
    const std::ptrdiff_t stride = a.MP;
    for (int k = 0; k < K; ++k, w += stride) {
        const __m256 wk = _mm256_loadu_ps(w);
        const std::ptrdiff_t off = a.koff[k];
        c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + off), wk, c0);
        c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(x1 + off), wk, c1);
        c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(x2 + off), wk, c2);
        c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(x3 + off), wk, c3);
        c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(x4 + off), wk, c4);
        c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(x5 + off), wk, c5);
        c6 = _mm256_fmadd_ps(_mm256_broadcast_ss(x6 + off), wk, c6);
        c7 = _mm256_fmadd_ps(_mm256_broadcast_ss(x7 + off), wk, c7);
    }
    __m256 acc[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
    const __m256 bias = _mm256_loadu_ps(a.bias + m0), lo = _mm256_set1_ps(a.lo), hi = _mm256_set1_ps(a.hi);
    for (int r = 0; r < 8; ++r) {  // max(lo, v), min(hi, v): a NaN v stays NaN, as with std::max / std::min
        acc[r] = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(acc[r], bias)));
    }
    transpose8(acc);
    const int channels = std::min(8, a.M - m0);
    float* y = a.y + static_cast<std::ptrdiff_t>(m0) * a.P + p0;
    if (pixels == 8) {
        for (int c = 0; c < channels; ++c) {
            _mm256_storeu_ps(y + static_cast<std::ptrdiff_t>(c) * a.P, acc[c]);
        }
    } else {
        const __m256i mask = tail_mask(pixels);
        for (int c = 0; c < channels; ++c) {
            _mm256_maskstore_ps(y + static_cast<std::ptrdiff_t>(c) * a.P, mask, acc[c]);
        }
    }
}

// Deep convs: NV vectors of 8 channels (up to 24) by 4 pixels, 12 accumulators fed by 3 weight loads and
// 4 broadcasts per tap (the 8 x 8 tile needs 9 loads per 8 FMAs); the few stores go through a buffer.
template <int NV>
EF_AVX2 inline void conv_tile_deep(const ConvArgs& a, int p0, int m0) {
    constexpr int kPixels = 4;
    const int pixels = std::min(kPixels, a.p_end - p0);
    const float* xs[kPixels];
#pragma GCC unroll 4
    for (int i = 0; i < kPixels; ++i) {
        xs[i] = a.x + a.pix[p0 + std::min(i, pixels - 1)];  // past the end: the last pixel again
    }
    __m256 acc[NV][kPixels];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
#pragma GCC unroll 4
        for (int i = 0; i < kPixels; ++i) {
            acc[v][i] = _mm256_setzero_ps();
        }
    }
    const float* w = a.w + m0;  // rows of MP (a multiple of 8) floats: every vector is inside
    for (int k = 0; k < a.K; ++k, w += a.MP) {
        const std::ptrdiff_t off = a.koff[k];
        __m256 wk[NV];
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) {
            wk[v] = _mm256_loadu_ps(w + 8 * v);
        }
#pragma GCC unroll 4
        for (int i = 0; i < kPixels; ++i) {
            const __m256 x = _mm256_broadcast_ss(xs[i] + off);
#pragma GCC unroll 3
            for (int v = 0; v < NV; ++v) {
                acc[v][i] = _mm256_fmadd_ps(x, wk[v], acc[v][i]);
            }
        }
    }
    alignas(32) float out[kPixels][24];
    const __m256 lo = _mm256_set1_ps(a.lo), hi = _mm256_set1_ps(a.hi);
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
        const __m256 bias = _mm256_loadu_ps(a.bias + m0 + 8 * v);
#pragma GCC unroll 4
        for (int i = 0; i < kPixels; ++i) {  // max(lo, v), min(hi, v): a NaN stays NaN, as std::max / min
            _mm256_store_ps(&out[i][8 * v], _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(acc[v][i], bias))));
        }
    }
    const int channels = std::min(8 * NV, a.M - m0);
    float* y = a.y + static_cast<std::ptrdiff_t>(m0) * a.P + p0;
    for (int c = 0; c < channels; ++c, y += a.P) {
        for (int i = 0; i < pixels; ++i) {
            y[i] = out[i][c];
        }
    }
}

}  // namespace

EF_AVX2 void conv_avx2(const ConvArgs& a) {
    if (a.K < 64) {  // shallow (first layers, small images): the 8 x 8 tile's transposed stores win
        for (int m0 = 0; m0 < a.M; m0 += 8) {
            for (int p0 = a.p_begin; p0 < a.p_end; p0 += 8) {
                conv_tile(a, p0, m0);
            }
        }
        return;
    }
    const int total = (a.M + 7) / 8, bands = (total + 2) / 3;
    for (int band = 0, m0 = 0; band < bands; ++band) {  // equal bands of up to 3 vectors
        const int vectors = (total * (band + 1)) / bands - (total * band) / bands;
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += 4) {
            switch (vectors) {
                case 3: conv_tile_deep<3>(a, p0, m0); break;
                case 2: conv_tile_deep<2>(a, p0, m0); break;
                default: conv_tile_deep<1>(a, p0, m0); break;
            }
        }
        m0 += vectors * 8;
    }
}

EF_AVX2 void sgemm_avx2(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    int i = 0;
    for (; i + 4 <= M; i += 4) {  // 4 rows x 16 columns: 8 accumulators, 6 loads per 8 FMAs
        band<4, 2>(N, K, A + static_cast<std::ptrdiff_t>(i) * lda, lda, B, ldb, C + static_cast<std::ptrdiff_t>(i) * ldc,
                   ldc);
    }
    for (; i < M; ++i) {  // single rows (batch-1 Gemm): 64 columns at once keep 8 FMA chains in flight
        band<1, 8>(N, K, A + static_cast<std::ptrdiff_t>(i) * lda, lda, B, ldb, C + static_cast<std::ptrdiff_t>(i) * ldc,
                   ldc);
    }
}

// int16 x int16 -> int32 dot products with _mm256_madd_epi16 (exact: |values| <= 255 here, so each pair
// sum fits easily). Four columns of B share each load of A.
EF_AVX2 void qgemm_nt_avx2(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                           std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n) {
    for (int m = 0; m < M; ++m) {
        const std::int16_t* a = A + static_cast<std::ptrdiff_t>(m) * lda;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const std::int16_t* b = B + static_cast<std::ptrdiff_t>(n) * ldb;
            __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
            for (int k = 0; k < K; k += 16) {
                const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
                acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(va, _mm256_loadu_si256(
                                                                        reinterpret_cast<const __m256i*>(b + k))));
                acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(va, _mm256_loadu_si256(
                                                                        reinterpret_cast<const __m256i*>(b + ldb + k))));
                acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(va, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                                                        b + 2 * ldb + k))));
                acc3 = _mm256_add_epi32(acc3, _mm256_madd_epi16(va, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                                                        b + 3 * ldb + k))));
            }
            std::int32_t* c = C + m * ldc_m + n * ldc_n;
            c[0] = hsum(acc0);
            c[ldc_n] = hsum(acc1);
            c[2 * ldc_n] = hsum(acc2);
            c[3 * ldc_n] = hsum(acc3);
        }
        for (; n < N; ++n) {
            const std::int16_t* b = B + static_cast<std::ptrdiff_t>(n) * ldb;
            __m256i acc = _mm256_setzero_si256();
            for (int k = 0; k < K; k += 16) {
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k)),
                                                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + k))));
            }
            C[m * ldc_m + n * ldc_n] = hsum(acc);
        }
    }
}

// The roofline's ceiling: 12 independent FMA chains (more than latency x issue width), no loads.
EF_AVX2 float fma_loop_avx2(long iterations) {
    __m256 acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    __m256 sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, acc[i]);
    return _mm256_cvtss_f32(sum);
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
