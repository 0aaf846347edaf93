// The integer conv of QConvArgs in 256-bit registers, compiled for AVX2 + FMA with __attribute__((target))
// like graph_kernels_avx2.cpp, in two variants of one tile:
// - AVX-VNNI (Alder Lake and later cores without AVX-512): vpdpbusd, VEX encoded, emitted in inline asm
//   (so this file needs no avxvnni target; graph_kernels.cpp calls it only when the CPU has AVX-VNNI);
// - plain AVX2: the same 4 products per lane from two vpmaddwd on the even and odd bytes widened to
//   int16 (vpmaddubsw would saturate: 255 * 127 * 2 does not fit int16).
// Both are exact. Output channels across the lanes, a tile of up to 3 (VNNI) or 2 vectors by 4 pixels.
#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace edgefleet::graph::kernels {

bool cpu_has_avxvnni() {
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avxvnni");
}

namespace {

#define EF_AVX2 __attribute__((target("avx2,fma")))

constexpr int kPixels = 4;
constexpr int kLanes = 8;

inline std::int32_t load4(const std::uint8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// acc + vpdpbusd(x u8, w s8): 4 products per lane summed into int32 without saturation. In inline asm
// (as in graph_kernels_avx512.cpp: through the intrinsic GCC 12 also spills the tied accumulators).
EF_AVX2 inline __m256i dpbusd(__m256i acc, __m256i x, __m256i w) {
    asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(x), "x"(w));
    return acc;
}

template <bool kVnni, int NV>
EF_AVX2 inline void tile(const QConvArgs& a, int p0, int m0) {
    const int pixels = std::min(kPixels, a.p_end - p0);
    const std::uint8_t* xs[kPixels];
#pragma GCC unroll 4
    for (int i = 0; i < kPixels; ++i) {
        xs[i] = a.x + a.pix[p0 + std::min(i, pixels - 1)];  // past the end: the last pixel again
    }
    __m256i acc[NV][kPixels];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
#pragma GCC unroll 4
        for (int i = 0; i < kPixels; ++i) {
            acc[v][i] = _mm256_setzero_si256();
        }
    }
    const __m256i low_bytes = _mm256_set1_epi16(0x00FF);
    const std::int8_t* w = a.w + static_cast<std::ptrdiff_t>(m0) * 4;
    const std::ptrdiff_t row = static_cast<std::ptrdiff_t>(a.MP) * 4;
    for (int t = 0; t < a.K4; ++t, w += row) {
        const std::ptrdiff_t off = a.koff[t];
        __m256i even[NV], odd[NV];  // VNNI: the raw bytes in even; else bytes 0, 2 and 1, 3 as int16
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 4 * kLanes * v));
            if constexpr (kVnni) {
                even[v] = raw;
            } else {
                even[v] = _mm256_srai_epi16(_mm256_slli_epi16(raw, 8), 8);
                odd[v] = _mm256_srai_epi16(raw, 8);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < kPixels; ++i) {
            const __m256i x = _mm256_set1_epi32(load4(xs[i] + off));
            if constexpr (kVnni) {
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) {
                    acc[v][i] = dpbusd(acc[v][i], x, even[v]);
                }
            } else {
                const __m256i xe = _mm256_and_si256(x, low_bytes), xo = _mm256_srli_epi16(x, 8);
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) {
                    const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(xe, even[v]), _mm256_madd_epi16(xo, odd[v]));
                    acc[v][i] = _mm256_add_epi32(acc[v][i], sum);
                }
            }
        }
    }
    // Requantize with the reference's float32 steps, then write each channel's pixels.
    alignas(32) std::int32_t out[kPixels][3 * kLanes];
    const __m256 zero = _mm256_set1_ps(a.y_zero), lo = _mm256_set1_ps(a.lo), hi = _mm256_set1_ps(a.hi);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        const __m256 mult = _mm256_loadu_ps(a.mult + m0 + kLanes * v);
        const __m256i bias = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bias + m0 + kLanes * v));
#pragma GCC unroll 4
        for (int i = 0; i < kPixels; ++i) {
            const __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc[v][i], bias)), mult);
            const __m256 q = _mm256_add_ps(_mm256_round_ps(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zero);
            _mm256_store_si256(reinterpret_cast<__m256i*>(&out[i][kLanes * v]),
                               _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi)));
        }
    }
    const int channels = std::min(kLanes * NV, a.M - m0);
    auto* y = static_cast<std::uint8_t*>(a.y) + static_cast<std::ptrdiff_t>(m0) * a.P + p0;  // int8: same bytes
    for (int c = 0; c < channels; ++c, y += a.P) {
        for (int i = 0; i < pixels; ++i) {
            y[i] = static_cast<std::uint8_t>(out[i][c]);
        }
    }
}

// Equal bands of up to kVectors vectors (64 channels as 24 + 24 + 16 or 16 x 4), pixels inside.
template <bool kVnni>
EF_AVX2 void tiles(const QConvArgs& a) {
    constexpr int kVectors = kVnni ? 3 : 2;  // accumulators + operands within the 16 ymm registers
    const int total = (a.M + kLanes - 1) / kLanes, bands = (total + kVectors - 1) / kVectors;
    for (int band = 0, m0 = 0; band < bands; ++band) {
        const int vectors = (total * (band + 1)) / bands - (total * band) / bands;
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += kPixels) {
            if (vectors == 3) {
                tile<kVnni, kVectors>(a, p0, m0);  // only reached with kVectors == 3
            } else if (vectors == 2) {
                tile<kVnni, 2>(a, p0, m0);
            } else {
                tile<kVnni, 1>(a, p0, m0);
            }
        }
        m0 += vectors * kLanes;
    }
}

}  // namespace

void qconv_u8s8_avxvnni(const QConvArgs& a) { tiles<true>(a); }

void qconv_u8s8_avx2(const QConvArgs& a) { tiles<false>(a); }

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
