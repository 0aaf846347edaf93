// AVX2 + FMA kernels, compiled for that ISA function by function (__attribute__((target))) so the
// module as a whole still runs on any x86-64; graph_kernels.cpp calls them only when the CPU has both.
#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace edgefleet::graph::kernels {

bool cpu_has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

namespace {

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

}  // namespace

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

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
