// What the AVX-512 kernel files share (graph_kernels_avx512.cpp: channels in the lanes, int8, the FMA
// probe; graph_kernels_avx512_rows.cpp: pixels in the lanes; graph_kernels_avx512_s2.cpp: the same for
// stride 2): the target attribute, the lane masks, the pixels-in-lanes store, and the tiles the rows
// file hands convs to. Include first; x86-64 only.
#pragma once

#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 flags its own AVX-512 intrinsics (their "undefined" start values) as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#define EF_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

namespace edgefleet::graph::kernels {

constexpr int kLanes = 16;

EF_AVX512 inline __mmask16 lanes_below(int n) {  // the first n of 16 lanes (n may be <= 0 or > 16)
    return n >= kLanes ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

// The start of a tile: the lanes of its N vectors that hold one of the `count` outputs (pixels or
// channels) left from its first ...
template <int N>
EF_AVX512 inline void lane_masks(int count, __mmask16 (&mask)[N]) {
    #pragma GCC unroll 4
    for (int v = 0; v < N; ++v) mask[v] = lanes_below(count - kLanes * v);
}

// ... and its accumulators at zero.
template <int A, int B>
EF_AVX512 inline void zero_all(__m512 (&acc)[A][B]) {
    #pragma GCC unroll 16
    for (int i = 0; i < A; ++i) {
        #pragma GCC unroll 8
        for (int j = 0; j < B; ++j) acc[i][j] = _mm512_setzero_ps();
    }
}

// One tap of a pixels-in-lanes tile: each of R output channels' weights w[r] broadcast and times the
// tap's NP vectors of pixels, fma'd into that channel's accumulators (the chain store_rows ends).
template <int NP, int R>
EF_AVX512 inline void fma_rows(__m512 (&acc)[R][NP], const float* w, const __m512 (&x)[NP]) {
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        const __m512 wr = _mm512_set1_ps(w[r]);
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_fmadd_ps(wr, x[v], acc[r][v]);
    }
}

// The pixels-in-lanes tiles' store: R output channels from m0 by NP vectors of pixels from p0 (lanes
// in mask), + bias, clamp, and the residual with its clamp.
template <int NP, int R>
EF_AVX512 inline void store_rows(const ConvArgs& a, __m512 (&acc)[R][NP], const __mmask16 (&mask)[NP], int p0, int m0) {
    const __m512 lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
    const __m512 z_lo = _mm512_set1_ps(a.z_lo), z_hi = _mm512_set1_ps(a.z_hi);
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        const int m = m0 + r;
        if (m >= a.M) break;
        const __m512 bias = _mm512_set1_ps(a.bias[m]);
        const std::ptrdiff_t row = static_cast<std::ptrdiff_t>(m) * a.P + p0;
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) {
            __m512 value = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(acc[r][v], bias)));
            if (a.z != nullptr) {
                const __m512 z = _mm512_maskz_loadu_ps(mask[v], a.z + row + kLanes * v);
                value = _mm512_min_ps(z_hi, _mm512_max_ps(z_lo, _mm512_add_ps(value, z)));
            }
            _mm512_mask_storeu_ps(a.y + row + kLanes * v, mask[v], value);
        }
    }
}

// Output channels across the lanes, every pixel of [p_begin, p_end) (graph_kernels_avx512.cpp).
void conv_tiles_avx512(const ConvArgs& a);

// Stride-2 3-wide convs read in place, pixels in the lanes (graph_kernels_avx512_s2.cpp): ConvArgs::pad
// with sw == 2, kw == 3, dw == 1.
void conv_s2_avx512(const ConvArgs& a);

// 3x3 same-padded stride-1 convs on maps 8 wide (graph_kernels_avx512_w8.cpp): ConvArgs::pad that
// conv_pad8_fits.
void conv_w8_avx512(const ConvArgs& a);

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
