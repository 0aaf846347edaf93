// AVX-512 3x3 same-padded stride-1 convs on maps 8 pixels wide (ResNet's 128 -> 128 conv at 8x8),
// pixels in the lanes: a vector holds two output rows. The input's planes are copied once per call with
// a zero row above and below (h + 2 rows of 8, side by side), so tap (i, j) of the vector from output row
// r is one load from padded row r + i, column j - 1: lanes that fall off a row (column -1 or 8, lanes 0
// and 8 for j = 0, 7 and 15 for j = 2) are masked to zeros. A tile is 6 output channels by 4 vectors (the
// whole 8x8 map): per tap 4 loads of x and 6 broadcasts of W, so W streams through once per call, where
// the channels-in-lanes tiles (3 vectors of channels by 8 pixels, over a padded 10x10 copy) streamed it
// once per 8 pixels. Each output is the padded copy's chain: fma(w, x, acc) in k = (c, i, j) order from 0
// (w * x == x * w exactly, a zero where the copy had one), + bias, clamp, residual (store_rows): the same
// bits as those tiles.
#include "graph_kernels_avx512.hpp"

#if defined(__x86_64__) || defined(_M_X64)

namespace edgefleet::graph::kernels {

namespace {

constexpr int kGuard = 16;  // floats before and after the copy: loads of lanes past a row or p_end

// R output channels from m0 by NP vectors from pixel p0 (a multiple of 8), over the padded copy xp.
template <int NP, int R>
EF_AVX512 inline void w8_tile(const ConvArgs& a, const float* xp, int plane, int p0, int m0) {
    const __mmask16 left = 0xFEFE, right = 0x7F7F;  // j = 0: column -1 off; j = 2: column 8 off
    __mmask16 mask[NP];
    __m512 acc[R][NP];
    #pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) {
        mask[v] = lanes_below(a.p_end - p0 - kLanes * v);
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][v] = _mm512_setzero_ps();
    }
    const float* w = a.w + m0;
    const float* xc = xp + p0 - 1;
    const int channels = a.K / 9;
    for (int c = 0; c < channels; ++c, xc += plane) {
        #pragma GCC unroll 3
        for (int i = 0; i < 3; ++i) {
            #pragma GCC unroll 3
            for (int j = 0; j < 3; ++j, w += a.MP) {
                const float* xk = xc + 8 * i + j;
                __m512 xv[NP];
                #pragma GCC unroll 4
                for (int v = 0; v < NP; ++v) {
                    if (j == 0) {
                        xv[v] = _mm512_maskz_loadu_ps(left, xk + kLanes * v);
                    } else if (j == 2) {
                        xv[v] = _mm512_maskz_loadu_ps(right, xk + kLanes * v);
                    } else {
                        xv[v] = _mm512_loadu_ps(xk + kLanes * v);
                    }
                }
                #pragma GCC unroll 8
                for (int r = 0; r < R; ++r) {
                    const __m512 wr = _mm512_set1_ps(w[r]);
                    #pragma GCC unroll 4
                    for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_fmadd_ps(wr, xv[v], acc[r][v]);
                }
            }
        }
    }
    store_rows<NP, R>(a, acc, mask, p0, m0);
}

// Every channel, R at a time where W's rows hold them (6, then 4 or 2: R never reads past MP).
template <int NP>
EF_AVX512 inline void w8_chunk(const ConvArgs& a, const float* xp, int plane, int p0) {
    for (int m0 = 0; m0 < a.M;) {
        if (m0 + 6 <= a.MP) {
            w8_tile<NP, 6>(a, xp, plane, p0, m0);
            m0 += 6;
        } else if (m0 + 4 <= a.MP) {
            w8_tile<NP, 4>(a, xp, plane, p0, m0);
            m0 += 4;
        } else {
            w8_tile<NP, 2>(a, xp, plane, p0, m0);
            m0 += 2;
        }
    }
}

}  // namespace

// The copy (conv_pad8_fits bounds it to kConvPad8MaxRows rows of 8, on the stack), then pixels
// [p_begin, p_end) in chunks of 4 vectors (64 pixels), the last one shorter.
EF_AVX512 void conv_w8_avx512(const ConvArgs& a) {
    const ConvPad& g = *a.pad;
    const int plane = (g.h + 2) * 8;
    alignas(64) float buffer[kConvPad8MaxRows * 8 + 2 * kGuard];
    float* xp = buffer + kGuard;
    std::fill(buffer, xp, 0.0f);
    for (int c = 0; c < g.c; ++c) {
        float* dst = xp + c * plane;
        std::fill(dst, dst + 8, 0.0f);
        std::memcpy(dst + 8, a.x + static_cast<std::ptrdiff_t>(c) * g.h * 8, sizeof(float) * 8 * g.h);
        std::fill(dst + plane - 8, dst + plane, 0.0f);
    }
    std::fill(xp + g.c * plane, xp + g.c * plane + kGuard, 0.0f);
    for (int p = a.p_begin; p < a.p_end; p += 4 * kLanes) {
        const int count = a.p_end - p;
        if (count > 3 * kLanes) {
            w8_chunk<4>(a, xp, plane, p);
        } else if (count > 2 * kLanes) {
            w8_chunk<3>(a, xp, plane, p);
        } else if (count > kLanes) {
            w8_chunk<2>(a, xp, plane, p);
        } else {
            w8_chunk<1>(a, xp, plane, p);
        }
    }
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
