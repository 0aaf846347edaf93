// QGemmVnni (graph_qgemm_vnni.hpp): packed int8 weights and a vpdpbusd micro-kernel of 8 rows x 32
// columns (16 zmm accumulators; per word of 4 k, A's 4 bytes broadcast, one vpdpbusd per accumulator).
// On aarch64 with the dot-product extension (the "neondot" tier) the same panels feed sdot, 4 rows x 16
// columns (16 int32x4 accumulators): sdot multiplies signed bytes, so the activations go in as int8
// (uint8 ones flipped to x - 128, and the zero point with them).
#include "graph_qgemm_vnni.hpp"

#include <algorithm>
#include <cstring>

#include "graph.hpp"
#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace edgefleet::graph {

std::unique_ptr<QGemmVnni> QGemmVnni::make(std::int64_t K, std::int64_t N,
                                           const std::function<std::int64_t(std::int64_t, std::int64_t)>& w) {
#if defined(__aarch64__)
    if (!kernels::cpu_has_dotprod()) return nullptr;
#endif
#if defined(__x86_64__) || defined(_M_X64) || defined(__aarch64__)
    // |sum| <= K * 255 * 128 (uint8 x int8) must stay inside int32, with room for the zero point's share.
    if (K <= 0 || N <= 0 || K > 16384) return nullptr;
    std::unique_ptr<QGemmVnni> q(new QGemmVnni());
    q->k_ = K, q->n_ = N, q->k4_ = (K + 3) / 4, q->blocks_ = (N + 31) / 32;
    q->panels_ = aligned_buffer(static_cast<std::size_t>(q->blocks_ * q->k4_ * 32 * 4));
    q->sums_ = aligned_buffer(static_cast<std::size_t>(q->blocks_ * 32) * sizeof(std::int32_t));
    auto* panel = static_cast<std::int8_t*>(q->panels_.get());
    auto* sums = static_cast<std::int32_t*>(q->sums_.get());
    for (std::int64_t b = 0; b < q->blocks_; ++b) {
        for (std::int64_t k4 = 0; k4 < q->k4_; ++k4) {
            for (std::int64_t c = 0; c < 32; ++c) {
                const std::int64_t n = b * 32 + c;
                for (std::int64_t t = 0; t < 4; ++t) {
                    const std::int64_t k = 4 * k4 + t;
                    const std::int64_t v = k < K && n < N ? w(k, n) : 0;
                    if (v < -128 || v > 127) return nullptr;
                    panel[((b * q->k4_ + k4) * 32 + c) * 4 + t] = static_cast<std::int8_t>(v);
                    sums[b * 32 + c] += static_cast<std::int32_t>(v);
                }
            }
        }
    }
    return q;
#else
    (void)K, (void)N, (void)w;
    return nullptr;
#endif
}

#if defined(__x86_64__) || defined(_M_X64)
namespace {

#define EF_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

// acc + 4 uint8 x int8 products per lane, in inline asm (the intrinsic makes GCC 12 copy the tied
// accumulators around, as graph_kernels_qgemm512.cpp notes for vpdpwssd).
EF_VNNI inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

inline std::int32_t word(const std::uint8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

EF_VNNI inline __mmask16 lanes_below(std::int64_t n) {
    return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1u);
}

// C[MR rows, the masked columns of one panel] = A[MR, 4 * k4s] . P - zx * sums.
template <int MR>
EF_VNNI inline void micro(std::int64_t k4s, const std::uint8_t* A, std::int64_t lda, const std::int32_t* P,
                          const std::int32_t* sums, std::int32_t zx, std::int32_t* C, std::int64_t ldc, __mmask16 m0,
                          __mmask16 m1) {
    __m512i acc[MR][2];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (std::int64_t k4 = 0; k4 < k4s; ++k4, P += 32) {
        const __m512i v0 = _mm512_load_si512(P), v1 = _mm512_load_si512(P + 16);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512i a = _mm512_set1_epi32(word(A + r * lda + 4 * k4));
            acc[r][0] = dpbusd(acc[r][0], a, v0);
            acc[r][1] = dpbusd(acc[r][1], a, v1);
        }
    }
    const __m512i z = _mm512_set1_epi32(zx);
    const __m512i s0 = _mm512_mullo_epi32(z, _mm512_load_si512(sums));
    const __m512i s1 = _mm512_mullo_epi32(z, _mm512_load_si512(sums + 16));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        _mm512_mask_storeu_epi32(C + r * ldc, m0, _mm512_sub_epi32(acc[r][0], s0));
        _mm512_mask_storeu_epi32(C + r * ldc + 16, m1, _mm512_sub_epi32(acc[r][1], s1));
    }
}

EF_VNNI void kernel(const std::uint8_t* A, std::int64_t lda, std::int64_t rows, std::int32_t zx, std::int64_t N,
                    std::int64_t k4s, std::int64_t blocks, const std::int32_t* panels, const std::int32_t* sums,
                    std::int32_t* C) {
    for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int32_t* P = panels + b * k4s * 32;
        const std::int32_t* s = sums + b * 32;
        const std::int64_t n = std::min<std::int64_t>(32, N - b * 32);
        const __mmask16 m0 = lanes_below(n), m1 = lanes_below(n - 16);
        std::int32_t* c = C + b * 32;
        std::int64_t i = 0;
        for (; i + 8 <= rows; i += 8) micro<8>(k4s, A + i * lda, lda, P, s, zx, c + i * N, N, m0, m1);
        const std::uint8_t* a = A + i * lda;
        c += i * N;
        switch (rows - i) {
            case 7: micro<7>(k4s, a, lda, P, s, zx, c, N, m0, m1); break;
            case 6: micro<6>(k4s, a, lda, P, s, zx, c, N, m0, m1); break;
            case 5: micro<5>(k4s, a, lda, P, s, zx, c, N, m0, m1); break;
            case 4: micro<4>(k4s, a, lda, P, s, zx, c, N, m0, m1); break;
            case 3: micro<3>(k4s, a, lda, P, s, zx, c, N, m0, m1); break;
            case 2: micro<2>(k4s, a, lda, P, s, zx, c, N, m0, m1); break;
            case 1: micro<1>(k4s, a, lda, P, s, zx, c, N, m0, m1); break;
            default: break;
        }
    }
}

}  // namespace
#endif

#if defined(__aarch64__)
namespace {

#define EF_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

// C[MR rows, n <= 16 columns from one panel half] = A[MR, 4 * k4s] . P - zx * sums; A int8 rows, P the
// panel's int32 words from its column 16 * half (32 words a k4).
template <int MR>
EF_DOTPROD void micro_dot(std::int64_t k4s, const std::int8_t* A, std::int64_t lda, const std::int32_t* P,
                          const std::int32_t* sums, std::int32_t zx, std::int32_t* C, std::int64_t ldc, std::int64_t n) {
    int32x4_t acc[MR][4];
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < 4; ++v) acc[r][v] = vdupq_n_s32(0);
    }
    for (std::int64_t k4 = 0; k4 < k4s; ++k4, P += 32) {
        int8x16_t wv[4];
        for (int v = 0; v < 4; ++v) wv[v] = vreinterpretq_s8_s32(vld1q_s32(P + 4 * v));
        for (int r = 0; r < MR; ++r) {
            std::int32_t word;
            std::memcpy(&word, A + r * lda + 4 * k4, sizeof word);
            const int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(word));
            for (int v = 0; v < 4; ++v) acc[r][v] = vdotq_s32(acc[r][v], wv[v], a);
        }
    }
    const int32x4_t z = vdupq_n_s32(zx);
    for (int r = 0; r < MR; ++r) {
        std::int32_t out[16];
        for (int v = 0; v < 4; ++v) vst1q_s32(out + 4 * v, vmlsq_s32(acc[r][v], z, vld1q_s32(sums + 4 * v)));
        std::copy(out, out + n, C + r * ldc);
    }
}

EF_DOTPROD void kernel_dot(const std::int8_t* A, std::int64_t lda, std::int64_t rows, std::int32_t zx, std::int64_t N,
                           std::int64_t k4s, std::int64_t blocks, const std::int32_t* panels, const std::int32_t* sums,
                           std::int32_t* C) {
    for (std::int64_t b = 0; b < 2 * blocks; ++b) {  // halves of 16 columns
        const std::int64_t n = std::min<std::int64_t>(16, N - b * 16);
        if (n <= 0) break;
        const std::int32_t* P = panels + (b / 2) * k4s * 32 + (b % 2) * 16;
        const std::int32_t* s = sums + b * 16;
        std::int32_t* c = C + b * 16;
        std::int64_t i = 0;
        for (; i + 4 <= rows; i += 4) micro_dot<4>(k4s, A + i * lda, lda, P, s, zx, c + i * N, N, n);
        for (; i < rows; ++i) micro_dot<1>(k4s, A + i * lda, lda, P, s, zx, c + i * N, N, n);
    }
}

}  // namespace
#endif

void QGemmVnni::run(const void* x, bool x_u8, std::int64_t x_zero, std::int64_t rows, void* scratch,
                    std::int32_t* acc) const {
#if defined(__x86_64__) || defined(_M_X64) || defined(__aarch64__)
#if defined(__aarch64__)
    constexpr bool kernel_u8 = false;  // sdot multiplies int8 by int8
#else
    constexpr bool kernel_u8 = true;  // vpdpbusd multiplies uint8 by int8
#endif
    // Rows of whole words in the kernel's type: the other type's bytes flipped (v + 128 for int8 into uint8,
    // v - 128 for uint8 into int8, and the zero point with them), the padding zero (it meets zero weights).
    const auto* a = static_cast<const std::uint8_t*>(x);
    std::int64_t lda = k_;
    auto zx = static_cast<std::int32_t>(x_zero);
    const bool flip = x_u8 != kernel_u8;
    if (flip || k_ % 4 != 0) {
        auto* copy = static_cast<std::uint8_t*>(scratch);
        lda = k4_ * 4;
        const std::uint8_t bit = flip ? 0x80 : 0;
        for (std::int64_t r = 0; r < rows; ++r) {
            const std::uint8_t* src = a + r * k_;
            std::uint8_t* dst = copy + r * lda;
            for (std::int64_t k = 0; k < k_; ++k) dst[k] = static_cast<std::uint8_t>(src[k] ^ bit);
            std::fill(dst + k_, dst + lda, std::uint8_t{0});
        }
        a = copy;
        if (flip) zx += kernel_u8 ? 128 : -128;
    }
#if defined(__aarch64__)
    kernel_dot(reinterpret_cast<const std::int8_t*>(a), lda, rows, zx, n_, k4_, blocks_,
               static_cast<const std::int32_t*>(panels_.get()), static_cast<const std::int32_t*>(sums_.get()), acc);
#else
    kernel(a, lda, rows, zx, n_, k4_, blocks_, static_cast<const std::int32_t*>(panels_.get()),
           static_cast<const std::int32_t*>(sums_.get()), acc);
#endif
#else
    (void)x, (void)x_u8, (void)x_zero, (void)rows, (void)scratch, (void)acc;
#endif
}

}  // namespace edgefleet::graph
