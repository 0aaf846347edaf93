// The AVX-512 fp32 GEMM (the "avx512" tier's Table::sgemm): C[M,N] = A[M,K] * B[K,N], row-major.
//
// Register blocking: a micro-kernel keeps MR (up to 8) rows by 32 columns of C in 16 zmm accumulators;
// per step of k it loads 32 values of B (two vectors) and broadcasts MR values of A, so each load feeds
// MR (or 2) FMAs instead of the one or two of a 4 x 16 AVX2 block. Enough independent chains (16) cover
// the FMA latency on both a 2-FMA-port Xeon and a Zen 4 (which splits a zmm FMA in two halves).
// Packing: B is copied a panel (KC x 32 columns) at a time into a contiguous, zero-padded buffer, so the
// kernel streams it sequentially from L1 whatever ldb is (rows of B 1 KB apart alias in a few L1 sets
// otherwise) and the N tail needs no masked loads; each panel then serves every row block of A.
// Cache blocking: K in chunks of KC = 128 (a 16 KB panel stays in L1 beside A's rows); the first chunk
// starts the accumulators at zero, later ones reload C. Fewer than 4 rows (batch-1 Gemm): the AVX2
// kernel, whose 1 x 64 block keeps 8 chains in flight where packing would not pay.
// Every element of C is the same FMA chain in k order from zero (a chunk boundary only stores and
// reloads the float32 value), whatever MR, the panel or the rows a thread got: results do not depend on
// the blocking or on the thread count, and equal the AVX2 kernel's (the same chain).
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

constexpr int kNr = 32;   // columns per panel: two zmm vectors
constexpr int kKc = 128;  // K per panel
constexpr int kMr = 8;    // rows per micro-kernel at most

EF_AVX512 inline __mmask16 lanes_below(int n) {  // the first n of 16 lanes (n may be <= 0 or > 16)
    return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

// C[MR rows, up to 32 columns] (+)= A[MR, kc] * P[kc, 32], P a packed panel; c0, c1 mask the loads and
// stores of C's two vectors. accumulate: start from C (a later K chunk) instead of zero.
template <int MR>
EF_AVX512 inline void micro(int kc, const float* A, int lda, const float* P, float* C, int ldc, __mmask16 c0,
                            __mmask16 c1, bool accumulate) {
    __m512 acc[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        if (accumulate) {
            acc[r][0] = _mm512_maskz_loadu_ps(c0, C + static_cast<std::ptrdiff_t>(r) * ldc);
            acc[r][1] = _mm512_maskz_loadu_ps(c1, C + static_cast<std::ptrdiff_t>(r) * ldc + 16);
        } else {
            acc[r][0] = _mm512_setzero_ps();
            acc[r][1] = _mm512_setzero_ps();
        }
    }
    const float* a[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) a[r] = A + static_cast<std::ptrdiff_t>(r) * lda;
    for (int k = 0; k < kc; ++k, P += kNr) {
        const __m512 v0 = _mm512_load_ps(P), v1 = _mm512_load_ps(P + 16);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512 x = _mm512_set1_ps(a[r][k]);
            acc[r][0] = _mm512_fmadd_ps(x, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, v1, acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        _mm512_mask_storeu_ps(C + static_cast<std::ptrdiff_t>(r) * ldc, c0, acc[r][0]);
        _mm512_mask_storeu_ps(C + static_cast<std::ptrdiff_t>(r) * ldc + 16, c1, acc[r][1]);
    }
}

// Rows [0, M) of one panel, in blocks of 8 then one block of the rest.
EF_AVX512 inline void rows(int M, int kc, const float* A, int lda, const float* P, float* C, int ldc,
                           __mmask16 c0, __mmask16 c1, bool accumulate) {
    int i = 0;
    for (; i + kMr <= M; i += kMr) {
        micro<8>(kc, A + static_cast<std::ptrdiff_t>(i) * lda, lda, P,
                 C + static_cast<std::ptrdiff_t>(i) * ldc, ldc, c0, c1, accumulate);
    }
    const float* a = A + static_cast<std::ptrdiff_t>(i) * lda;
    float* c = C + static_cast<std::ptrdiff_t>(i) * ldc;
    switch (M - i) {
        case 7: micro<7>(kc, a, lda, P, c, ldc, c0, c1, accumulate); break;
        case 6: micro<6>(kc, a, lda, P, c, ldc, c0, c1, accumulate); break;
        case 5: micro<5>(kc, a, lda, P, c, ldc, c0, c1, accumulate); break;
        case 4: micro<4>(kc, a, lda, P, c, ldc, c0, c1, accumulate); break;
        case 3: micro<3>(kc, a, lda, P, c, ldc, c0, c1, accumulate); break;
        case 2: micro<2>(kc, a, lda, P, c, ldc, c0, c1, accumulate); break;
        case 1: micro<1>(kc, a, lda, P, c, ldc, c0, c1, accumulate); break;
        default: break;
    }
}

// B[kc rows, n < 32 columns] into a kc x 32 panel, zero columns beyond n.
EF_AVX512 inline void pack(int kc, int n, const float* B, int ldb, float* panel) {
    const __mmask16 m0 = lanes_below(n), m1 = lanes_below(n - 16);
    for (int k = 0; k < kc; ++k, B += ldb, panel += kNr) {
        _mm512_storeu_ps(panel, _mm512_maskz_loadu_ps(m0, B));
        _mm512_storeu_ps(panel + 16, _mm512_maskz_loadu_ps(m1, B + 16));
    }
}

}  // namespace

EF_AVX512 void sgemm_avx512(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                            int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; ++i) std::fill_n(C + static_cast<std::ptrdiff_t>(i) * ldc, N, 0.0f);
        return;
    }
    if (M < 4) {  // a row or three: B's values are used too few times to pay for packing
        sgemm_avx2(M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
    alignas(64) float panel[kKc * kNr];
    for (int k0 = 0; k0 < K; k0 += kKc) {
        const int kc = std::min(kKc, K - k0);
        const bool accumulate = k0 > 0;
        for (int j = 0; j < N; j += kNr) {
            const int n = std::min(kNr, N - j);
            const __mmask16 c0 = lanes_below(n), c1 = lanes_below(n - 16);
            pack(kc, n, B + static_cast<std::ptrdiff_t>(k0) * ldb + j, ldb, panel);
            rows(M, kc, A + k0, lda, panel, C + j, ldc, c0, c1, accumulate);
        }
    }
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
