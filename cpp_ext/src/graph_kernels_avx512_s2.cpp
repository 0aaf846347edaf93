// AVX-512 stride-2 convs with 3-wide undilated rows of taps (ResNet's downsampling 3x3 convs), pixels
// in the lanes, reading the unpadded input in place (ConvArgs::pad). 16 output pixels of a row read 32
// input columns: two loads from the row, split into their even and odd columns by one permute each. The
// window's three taps come from them: j = 0 the even columns from 2 * ox - left, j = 1 the odd ones, and
// j = 2 the even ones two columns on (two loads more; with a left pad of 1, tap 0 is instead tap 2 a
// lane on, one lane loaded for its first: 93.3 against 94.3-95.1 us on ResNet's 16 -> 32 conv). Loads
// are masked to the plane, so the padding reads as zeros, and each output is the padded copy's chain:
// fma(w, x, acc) in k = (c, i, j) order from 0, + bias, clamp (store_rows), the same bits as the
// channels-in-lanes tiles over that copy. Where those tiles transposed every tile of channels by pixels
// in their store and read a padded copy made first, these store rows of pixels and read the input
// itself. What is left on that conv: the gathering of the columns takes 11 of its 93 us (in-lane
// shuffles instead of the permutes, and prefetching the next output row's input, measured no faster).
#include "graph_kernels_avx512.hpp"

#if defined(__x86_64__) || defined(_M_X64)

namespace edgefleet::graph::kernels {

namespace {

// The lanes of a 16-float load from input column `first` that fall inside a row of w.
EF_AVX512 inline __mmask16 in_row(int first, int w) {
    return static_cast<__mmask16>(lanes_below(w - first) & ~lanes_below(-first));
}

// The window columns of NP vectors of 16 output pixels, vector v in row oy[v] from column ox[v]:
// col[k][16 v + lane] for every tap k = (c, i, j), zero where the padded copy had zeros. LEFT1 (a left
// pad of 1, as 3x3 convs have): the 32 columns from 2 * ox, aligned where the rows are, give taps 1
// (even) and 2 (odd), and tap 0 is tap 2 a lane on, its first lane the column before (one lane loaded).
// Otherwise two loads for taps 0-1 and two for tap 2, each from its first column.
template <int NP, bool LEFT1>
EF_AVX512 inline void s2_columns(const ConvArgs& a, const int (&oy)[2], const int (&ox)[2], float (*col)[2 * kLanes]) {
    const ConvPad& g = *a.pad;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __mmask16 near[NP][2], far[NP][2];  // LEFT1: the two loads, and the lane before them in far[v][0]
    int first[NP];                      // LEFT1: input column of lane 0, tap 1; else tap 0
    #pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) {
        first[v] = 2 * ox[v] - (LEFT1 ? 0 : g.left);
        #pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            near[v][h] = in_row(first[v] + kLanes * h, g.w);
            far[v][h] = LEFT1 ? static_cast<__mmask16>(in_row(first[v] - kLanes, g.w) & 0x8000)
                              : in_row(first[v] + 2 + kLanes * h, g.w);
        }
    }
    const std::ptrdiff_t plane = static_cast<std::ptrdiff_t>(g.h) * g.w;
    for (int c = 0; c < g.c; ++c) {
        for (int i = 0; i < g.kh; ++i, col += 3) {
            #pragma GCC unroll 4
            for (int v = 0; v < NP; ++v) {
                const int iy = oy[v] * g.sh + i * g.dh - g.top;
                if (iy < 0 || iy >= g.h) {  // a row of padding
                    for (int j = 0; j < 3; ++j) _mm512_store_ps(col[j] + kLanes * v, _mm512_setzero_ps());
                    continue;
                }
                const float* xr = a.x + c * plane + static_cast<std::ptrdiff_t>(iy) * g.w + first[v];
                const __m512 lo = _mm512_maskz_loadu_ps(near[v][0], xr);
                const __m512 hi = _mm512_maskz_loadu_ps(near[v][1], xr + kLanes);
                if constexpr (LEFT1) {
                    const __m512 before = _mm512_maskz_loadu_ps(far[v][0], xr - kLanes);  // lane 15 only
                    const __m512 odds = _mm512_permutex2var_ps(lo, odd, hi);
                    const __m512i shifted = _mm512_alignr_epi32(_mm512_castps_si512(odds), _mm512_castps_si512(before), 15);
                    _mm512_store_ps(col[0] + kLanes * v, _mm512_castsi512_ps(shifted));
                    _mm512_store_ps(col[1] + kLanes * v, _mm512_permutex2var_ps(lo, even, hi));
                    _mm512_store_ps(col[2] + kLanes * v, odds);
                } else {
                    const __m512 lo2 = _mm512_maskz_loadu_ps(far[v][0], xr + 2);
                    const __m512 hi2 = _mm512_maskz_loadu_ps(far[v][1], xr + 2 + kLanes);
                    _mm512_store_ps(col[0] + kLanes * v, _mm512_permutex2var_ps(lo, even, hi));
                    _mm512_store_ps(col[1] + kLanes * v, _mm512_permutex2var_ps(lo, odd, hi));
                    _mm512_store_ps(col[2] + kLanes * v, _mm512_permutex2var_ps(lo2, even, hi2));
                }
            }
        }
    }
}

// R output channels from m0 by NP vectors of the columns' pixels: output pixels [p0, p0 + count).
template <int NP, int R>
EF_AVX512 inline void s2_tile(const ConvArgs& a, const float (*col)[2 * kLanes], int p0, int count, int m0) {
    __mmask16 mask[NP];
    __m512 acc[R][NP];
    lane_masks(count, mask);
    zero_all(acc);
    const float* w = a.w + m0;
    for (int k = 0; k < a.K; ++k, w += a.MP) {
        __m512 x[NP];
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) x[v] = _mm512_load_ps(col[k] + kLanes * v);
        fma_rows<NP, R>(acc, w, x);
    }
    store_rows<NP, R>(a, acc, mask, p0, m0);
}

// Every channel over the columns, R at a time where W's rows hold them (R never reads past MP).
template <int NP>
EF_AVX512 inline void s2_chunk(const ConvArgs& a, float (*col)[2 * kLanes], const int (&oy)[2], const int (&ox)[2],
                               int p0, int count) {
    if (a.pad->left == 1) {
        s2_columns<NP, true>(a, oy, ox, col);
    } else {
        s2_columns<NP, false>(a, oy, ox, col);
    }
    for (int m0 = 0; m0 < a.M;) {
        if (m0 + 12 <= a.MP && m0 + 8 < a.M) {
            s2_tile<NP, 12>(a, col, p0, count, m0);
            m0 += 12;
        } else if (m0 + 8 <= a.MP) {
            s2_tile<NP, 8>(a, col, p0, count, m0);
            m0 += 8;
        } else {
            s2_tile<NP, 4>(a, col, p0, count, m0);
            m0 += 4;
        }
    }
}

}  // namespace

// Pixels [p_begin, p_end) in chunks of up to 2 vectors of 16 side by side, each vector within a row (a
// row of 32 is one chunk, rows of 16 go two at a time): their window columns gathered once (K <=
// kConvPadMaxK taps by 32 pixels, 40 KB on the stack), then every channel over them.
EF_AVX512 void conv_s2_avx512(const ConvArgs& a) {
    alignas(64) float col[kConvPadMaxK][2 * kLanes];
    const int ow = a.pad->ow;
    for (int p = a.p_begin; p < a.p_end;) {
        int oy[2] = {0, 0}, ox[2] = {0, 0}, vectors = 0, q = p;
        while (vectors < 2 && q < a.p_end) {
            oy[vectors] = q / ow;
            ox[vectors] = q - oy[vectors] * ow;
            const int n = std::min({kLanes, ow - ox[vectors], a.p_end - q});
            q += n;
            ++vectors;
            if (n < kLanes) break;  // the next pixels would not follow in the lanes
        }
        if (vectors == 2) {
            s2_chunk<2>(a, col, oy, ox, p, q - p);
        } else {
            s2_chunk<1>(a, col, oy, ox, p, q - p);
        }
        p = q;
    }
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
