// The AVX-512 integer GEMM (the "avx512" tier's Table::qgemm_nt): C[m, n] = sum_k A[m, k] * B[n, k] in
// int32, A and B int16 rows (activations and weights with their zero points removed, |values| <= 255).
//
// The AVX2 kernel takes one dot product per output, across k, and ends each with a horizontal sum: at a
// transformer's 32 x 64 x 256 that sum costs as much as the products. Here outputs go across the lanes
// instead, as in the fp32 sgemm: B is repacked per call, 32 columns at a time, as (K/2, 32) int32 words
// each holding the pair (B[n, 2k], B[n, 2k + 1]); a micro-kernel keeps 8 rows x 32 columns of C in 16
// zmm accumulators and, per pair of k, broadcasts A's pair and adds both products to every lane with one
// vpdpwssd (AVX512-VNNI: int16 pairs multiplied, summed and accumulated in int32, without saturation).
// Integer sums are exact, so the result is the AVX2 and portable kernels' bit for bit.
#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace edgefleet::graph::kernels {
namespace {

#define EF_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

constexpr int kNr = 32;     // columns per panel: two zmm vectors of int32
constexpr int kMr = 8;      // rows per micro-kernel at most
constexpr int kMaxK2 = 256;  // pairs of k per panel pass (a 32 KB panel; longer K in chunks)

inline std::int32_t pair(const std::int16_t* p) {  // (p[0], p[1]) as one int32 word, p[0] low
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// acc + dot of int16 pairs, in inline asm: as with vpdpbusd (graph_kernels_avx512.cpp), the intrinsic
// makes GCC 12 copy the tied accumulators around.
EF_AVX512 inline __m512i dpwssd(__m512i acc, __m512i a, __m512i b) {
    asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

// C[MR rows, n <= 32 columns] (+)= A[MR, 2 * k2s] . P, P the packed panel (k2s x 32 words).
template <int MR>
EF_AVX512 inline void micro(int k2s, const std::int16_t* A, int lda, const std::int32_t* P, std::int32_t* C,
                            std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n, int n, bool accumulate) {
    __m512i acc[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int k2 = 0; k2 < k2s; ++k2, P += kNr) {
        const __m512i v0 = _mm512_load_si512(P), v1 = _mm512_load_si512(P + 16);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512i a = _mm512_set1_epi32(pair(A + static_cast<std::ptrdiff_t>(r) * lda + 2 * k2));
            acc[r][0] = dpwssd(acc[r][0], a, v0);
            acc[r][1] = dpwssd(acc[r][1], a, v1);
        }
    }
    alignas(64) std::int32_t out[kNr];
    for (int r = 0; r < MR; ++r) {
        _mm512_store_si512(out, acc[r][0]);
        _mm512_store_si512(out + 16, acc[r][1]);
        std::int32_t* c = C + r * ldc_m;
        for (int j = 0; j < n; ++j) c[j * ldc_n] = accumulate ? c[j * ldc_n] + out[j] : out[j];
    }
}

// B rows n0 .. n0 + n - 1 (n <= 32), pairs k2_0 .. k2_0 + k2s - 1, as the panel; zero words beyond n.
inline void pack(const std::int16_t* B, int ldb, int n, int k2_0, int k2s, std::int32_t* panel) {
    for (int j = 0; j < kNr; ++j) {
        if (j >= n) {
            for (int k2 = 0; k2 < k2s; ++k2) panel[k2 * kNr + j] = 0;
            continue;
        }
        const std::int16_t* row = B + static_cast<std::ptrdiff_t>(j) * ldb + 2 * k2_0;
        for (int k2 = 0; k2 < k2s; ++k2) panel[k2 * kNr + j] = pair(row + 2 * k2);
    }
}

}  // namespace

EF_AVX512 void qgemm_nt_avx512(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                               std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n) {
    if (M < 4) {  // a row or three: the panel would be packed for too little use
        qgemm_nt_avx2(M, N, K, A, lda, B, ldb, C, ldc_m, ldc_n);
        return;
    }
    alignas(64) std::int32_t panel[kMaxK2 * kNr];
    const int pairs = K / 2;  // K is a multiple of 16
    for (int k2_0 = 0; k2_0 < pairs || k2_0 == 0; k2_0 += kMaxK2) {
        const int k2s = std::min(kMaxK2, pairs - k2_0);
        const bool accumulate = k2_0 > 0;
        for (int j = 0; j < N; j += kNr) {
            const int n = std::min(kNr, N - j);
            pack(B + static_cast<std::ptrdiff_t>(j) * ldb, ldb, n, k2_0, k2s, panel);
            const std::int16_t* a = A + 2 * k2_0;
            std::int32_t* c = C + j * ldc_n;
            int i = 0;
            for (; i + kMr <= M; i += kMr) {
                micro<8>(k2s, a + static_cast<std::ptrdiff_t>(i) * lda, lda, panel, c + i * ldc_m, ldc_m, ldc_n, n,
                         accumulate);
            }
            const std::int16_t* ar = a + static_cast<std::ptrdiff_t>(i) * lda;
            std::int32_t* cr = c + i * ldc_m;
            switch (M - i) {
                case 7: micro<7>(k2s, ar, lda, panel, cr, ldc_m, ldc_n, n, accumulate); break;
                case 6: micro<6>(k2s, ar, lda, panel, cr, ldc_m, ldc_n, n, accumulate); break;
                case 5: micro<5>(k2s, ar, lda, panel, cr, ldc_m, ldc_n, n, accumulate); break;
                case 4: micro<4>(k2s, ar, lda, panel, cr, ldc_m, ldc_n, n, accumulate); break;
                case 3: micro<3>(k2s, ar, lda, panel, cr, ldc_m, ldc_n, n, accumulate); break;
                case 2: micro<2>(k2s, ar, lda, panel, cr, ldc_m, ldc_n, n, accumulate); break;
                case 1: micro<1>(k2s, ar, lda, panel, cr, ldc_m, ldc_n, n, accumulate); break;
                default: break;
            }
        }
        if (pairs == 0) break;
    }
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
