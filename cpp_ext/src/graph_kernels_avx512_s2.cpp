// AVX-512 stride-2 convs with 3-wide undilated rows of taps (ResNet's downsampling 3x3 convs), pixels
// in the lanes, reading the unpadded input in place (ConvArgs::pad). 16 output pixels of a row read 32
// input columns: two loads from the row, split into their even and odd columns by one permute each. The
// window's three taps come from them: j = 0 the even columns from 2 * ox - left, j = 1 the odd ones, and
// j = 2 the even ones two columns on (two loads more). Loads are masked to the plane, so the padding
// reads as zeros, and each output is the padded copy's chain: fma(w, x, acc) in k = (c, i, j) order from
// 0, + bias, clamp (store_rows), the same bits as the channels-in-lanes tiles over that copy. Where
// those tiles transposed every tile of channels by pixels in their store and read a padded copy made
// first, these store rows of pixels and read the input itself.
#include "graph_kernels_avx512.hpp"

#if defined(__x86_64__) || defined(_M_X64)

namespace edgefleet::graph::kernels {

namespace {

// The lanes of a 16-float load from input column `first` that fall inside a row of w.
EF_AVX512 inline __mmask16 in_row(int first, int w) {
    return static_cast<__mmask16>(lanes_below(w - first) & ~lanes_below(-first));
}

// The window columns of NP vectors of 16 output pixels, vector v in row oy[v] from column ox[v]:
// col[k][16 v + lane] for every tap k = (c, i, j), zero where the padded copy had zeros.
template <int NP>
EF_AVX512 inline void s2_columns(const ConvArgs& a, const int (&oy)[2], const int (&ox)[2], float (*col)[2 * kLanes]) {
    const ConvPad& g = *a.pad;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __mmask16 near[NP][2], far[NP][2];  // loads for taps 0-1, tap 2
    int first[NP];                      // input column of lane 0, tap 0
    #pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) {
        first[v] = 2 * ox[v] - g.left;
        #pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            near[v][h] = in_row(first[v] + kLanes * h, g.w);
            far[v][h] = in_row(first[v] + 2 + kLanes * h, g.w);
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
                const float* xr = a.x + c * plane + static_cast<std::ptrdiff_t>(iy) * g.w;
                const __m512 lo = _mm512_maskz_loadu_ps(near[v][0], xr + first[v]);
                const __m512 hi = _mm512_maskz_loadu_ps(near[v][1], xr + first[v] + kLanes);
                const __m512 lo2 = _mm512_maskz_loadu_ps(far[v][0], xr + first[v] + 2);
                const __m512 hi2 = _mm512_maskz_loadu_ps(far[v][1], xr + first[v] + 2 + kLanes);
                _mm512_store_ps(col[0] + kLanes * v, _mm512_permutex2var_ps(lo, even, hi));
                _mm512_store_ps(col[1] + kLanes * v, _mm512_permutex2var_ps(lo, odd, hi));
                _mm512_store_ps(col[2] + kLanes * v, _mm512_permutex2var_ps(lo2, even, hi2));
            }
        }
    }
}

// R output channels from m0 by NP vectors of the columns' pixels: output pixels [p0, p0 + count).
template <int NP, int R>
EF_AVX512 inline void s2_tile(const ConvArgs& a, const float (*col)[2 * kLanes], int p0, int count, int m0) {
    __mmask16 mask[NP];
    __m512 acc[R][NP];
    #pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) {
        mask[v] = lanes_below(count - kLanes * v);
        #pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r][v] = _mm512_setzero_ps();
    }
    const float* w = a.w + m0;
    for (int k = 0; k < a.K; ++k, w += a.MP) {
        __m512 x[NP];
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) x[v] = _mm512_load_ps(col[k] + kLanes * v);
        #pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const __m512 wr = _mm512_set1_ps(w[r]);
            #pragma GCC unroll 4
            for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_fmadd_ps(wr, x[v], acc[r][v]);
        }
    }
    store_rows<NP, R>(a, acc, mask, p0, m0);
}

// Every channel over the columns, R at a time where W's rows hold them (R never reads past MP).
template <int NP>
EF_AVX512 inline void s2_chunk(const ConvArgs& a, float (*col)[2 * kLanes], const int (&oy)[2], const int (&ox)[2],
                               int p0, int count) {
    s2_columns<NP>(a, oy, ox, col);
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
