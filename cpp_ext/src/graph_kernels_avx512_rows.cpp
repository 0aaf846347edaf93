// AVX-512 conv kernels with the pixels in the lanes (graph_kernels_avx512.cpp has the channels-in-lanes
// tiles and says how the tiers are compiled): shallow convs on rows of side-by-side pixels, stride-1
// ones among them reading an unpadded input (ConvArgs::pad) with their loads masked to the planes.
#include "graph_kernels_avx512.hpp"

#if defined(__x86_64__) || defined(_M_X64)

namespace edgefleet::graph::kernels {

namespace {

// Pixels in the lanes, for convs whose pixels [p_begin, p_end) sit side by side in x (1x1,
// stride 1, unpadded: MobileNet's expand and project convs). 8 output channels by NP vectors of 16
// pixels; per tap NP loads of x and 8 broadcasts of W. With K this small the channels-in-lanes tile spent
// as long on its transposing store as on its FMAs; here each channel's pixels leave in plain stores.
// Each output is the same chain: fma(w, x, acc) in k order from 0 (w * x == x * w exactly), then + bias
// and the clamp, so the bits do not change.
template <int NP, int R = 8>
EF_AVX512 inline void pointwise_tile(const ConvArgs& a, const float* x0, int p0, int end, int m0) {
    __mmask16 mask[NP];
    __m512 acc[R][NP];
    lane_masks(end - p0, mask);
    zero_all(acc);
    const float* w = a.w + m0;
    for (int k = 0; k < a.K; ++k, w += a.MP) {
        const float* xk = x0 + a.koff[k] + p0;
        __m512 xv[NP];
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) xv[v] = _mm512_maskz_loadu_ps(mask[v], xk + kLanes * v);
        fma_rows<NP, R>(acc, w, xv);
    }
    store_rows<NP, R>(a, acc, mask, p0, m0);
}

// K <= kPointwiseK (measured up to 256: 1x1 convs of 16-256 to 16-160 channels ran 1.05-1.65x faster;
// 320 takes in the 3x3 convs of 32 channels, 32x32: 3% faster than channels in the lanes)
// with side-by-side pixels: pointwise_tile over 8-channel rows of W, 48 pixels at a time (24 accumulators).
constexpr int kPointwiseK = 320;


// Pixels [r0, r1) side by side in x.
EF_AVX512 inline void pointwise_run(const ConvArgs& a, int r0, int r1, int m0) {
    const float* x0 = a.x + a.pix[r0] - r0;  // pixel p of tap k: x0[koff[k] + p]
    int p0 = r0;
    for (; p0 + 4 * kLanes <= r1; p0 += 4 * kLanes) {
        pointwise_tile<4, 4>(a, x0, p0, r1, m0);
        if (m0 + 4 < a.M) pointwise_tile<4, 4>(a, x0, p0, r1, m0 + 4);
    }
    for (; p0 + 3 * kLanes <= r1; p0 += 3 * kLanes) pointwise_tile<3>(a, x0, p0, r1, m0);
    const int left = r1 - p0;
    if (left > 2 * kLanes) {
        pointwise_tile<3>(a, x0, p0, r1, m0);
    } else if (left > kLanes) {
        pointwise_tile<2>(a, x0, p0, r1, m0);
    } else if (left > 0) {
        pointwise_tile<1>(a, x0, p0, r1, m0);
    }
}

// The pointwise tile over an unpadded input (ConvArgs::pad): output row oy, pixels [ox0, ox1) of it
// (at most NP vectors), R channels from m0. Each tap's loads are masked to the lanes whose input pixel
// is inside the plane, so the padding reads as zeros and every output gets the padded copy's chain.
template <int NP, int R, int KW, bool MID>
EF_AVX512 inline void padded_tile(const ConvArgs& a, int oy, int ox0, int ox1, int m0) {
    const ConvPad& g = *a.pad;
    const int kw = KW > 0 ? KW : g.kw;
    __mmask16 mask[NP], cols[KW > 0 ? KW : kConvPadMaxKw][NP];
    #pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) mask[v] = lanes_below(ox1 - ox0 - kLanes * v);
    #pragma GCC unroll 4
    for (int j = 0; j < kw; ++j) {
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) {
            const int first = ox0 + kLanes * v + j * g.dw - g.left;  // input column of lane 0
            cols[j][v] = static_cast<__mmask16>(mask[v] & lanes_below(g.w - first) & ~lanes_below(-first));
        }
    }
    __m512 acc[R][NP];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_setzero_ps();
    }
    const std::ptrdiff_t plane = static_cast<std::ptrdiff_t>(g.h) * g.w;
    const float* w = a.w + m0;
    for (int c = 0; c < g.c; ++c) {
        for (int i = 0; i < g.kh; ++i) {
            const int iy = oy + i * g.dh - g.top;
            if (iy < 0 || iy >= g.h) {  // a row of padding: zeros times the taps' weights, as the copy had
                for (int j = 0; j < kw; ++j, w += a.MP) {
                    #pragma GCC unroll 8
                    for (int r = 0; r < R; ++r) {
                        const __m512 wr = _mm512_set1_ps(w[r]);
                        #pragma GCC unroll 4
                        for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_fmadd_ps(wr, _mm512_setzero_ps(), acc[r][v]);
                    }
                }
                continue;
            }
            const float* xr = a.x + c * plane + static_cast<std::ptrdiff_t>(iy) * g.w + ox0 - g.left;
            #pragma GCC unroll 4
            for (int j = 0; j < kw; ++j, w += a.MP) {
                __m512 xv[NP];
                #pragma GCC unroll 4
                for (int v = 0; v < NP; ++v) {  // MID: the middle vectors need no mask (fewer than 8 masks live)
                    xv[v] = MID && v > 0 && v + 1 < NP ? _mm512_loadu_ps(xr + j * g.dw + kLanes * v)
                                                       : _mm512_maskz_loadu_ps(cols[j][v], xr + j * g.dw + kLanes * v);
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
    store_rows<NP, R>(a, acc, mask, oy * g.ow + ox0, m0);
}

// 3-wide kernels unrolled where the tile spans a whole row of 48 or 64 pixels, the rest with a loop.
template <int NP, int R>
EF_AVX512 inline void padded(const ConvArgs& a, int oy, int ox0, int ox1, int m0) {
    if constexpr (NP > 2) {
        const ConvPad& g = *a.pad;
        // The middle vectors' pixels all read inside the row at every tap: full, unmasked loads, and
        // at most 2 x 3 masks live (AVX-512 has 7 mask registers).
        const bool mid = ox1 - ox0 > kLanes * (NP - 1) && ox0 + kLanes - g.left >= 0 &&
                         ox0 + kLanes * (NP - 1) - 1 + (g.kw - 1) * g.dw - g.left < g.w;
        if (g.kw == 3 && mid) {
            padded_tile<NP, R, 3, true>(a, oy, ox0, ox1, m0);
            return;
        }
    }
    // Row tails, other kernel widths: the taps' loop as it comes, every load masked (slower, rarer).
    padded_tile<NP, R, 0, false>(a, oy, ox0, ox1, m0);
}

// Row by row over pixels [p_begin, p_end), 8 channels at a time, in pointwise_run's chunks.
EF_AVX512 inline void conv_padded(const ConvArgs& a) {
    const int ow = a.pad->ow;
    for (int m0 = 0; m0 < a.M;) {
        // 16 channels at a time where W has them (64-pixel chunks as 6 + 6 + 4 channels by 4 vectors),
        // else 8.
        const bool wide = m0 + 16 <= a.MP && m0 + 8 < a.M;
        for (int p = a.p_begin; p < a.p_end;) {
            const int oy = p / ow, first = p - oy * ow, end = std::min(ow, first + (a.p_end - p));
            for (int half = 0; half < (wide ? 2 : 1); ++half) {
                const int mh = m0 + 8 * half;
                int ox = first;
                for (; ox + 4 * kLanes <= end; ox += 4 * kLanes) {
                    if (wide) {
                        if (half == 0) {
                            padded<4, 6>(a, oy, ox, ox + 4 * kLanes, m0);
                            padded<4, 6>(a, oy, ox, ox + 4 * kLanes, m0 + 6);
                            padded<4, 4>(a, oy, ox, ox + 4 * kLanes, m0 + 12);
                        }
                        continue;
                    }
                    padded<4, 4>(a, oy, ox, ox + 4 * kLanes, mh);
                    if (mh + 4 < a.M) padded<4, 4>(a, oy, ox, ox + 4 * kLanes, mh + 4);
                }
                for (; ox + 3 * kLanes <= end; ox += 3 * kLanes) padded<3, 8>(a, oy, ox, ox + 3 * kLanes, mh);
                const int left = end - ox;
                if (left > 2 * kLanes) {
                    padded<3, 8>(a, oy, ox, end, mh);
                } else if (left > kLanes) {
                    padded<2, 8>(a, oy, ox, end, mh);
                } else if (left > 0) {
                    padded<1, 8>(a, oy, ox, end, mh);
                }
            }
            p += end - first;
        }
        m0 += wide ? 16 : 8;
    }
}

// The end of the run of side-by-side pixels that starts at r0 (an output row of a padded stride-1 conv,
// the whole range for a 1x1 one).
inline int run_end(const ConvArgs& a, int r0) {
    int r1 = r0 + 1;
    while (r1 < a.p_end && a.pix[r1] == a.pix[r1 - 1] + 1) ++r1;
    return r1;
}

// Runs shorter than this on average go to the channels-in-lanes tiles.
constexpr int kRun = 32;

}  // namespace

// Shallow convs (K <= kPointwiseK) whose pixels come in runs of kRun or more on average: pixels in the
// lanes, run by run; the others: channels in the lanes.
EF_AVX512 void conv_avx512(const ConvArgs& a) {
    if (a.pad != nullptr) {
        if (a.pad->sw == 2) {
            conv_s2_avx512(a);
            return;
        }
        if (a.pad->ow == 8) {
            conv_w8_avx512(a);
            return;
        }
        conv_padded(a);
        return;
    }
    if (a.K > kPointwiseK || a.p_end <= a.p_begin) {
        conv_tiles_avx512(a);
        return;
    }
    const int count = a.p_end - a.p_begin;
    const bool one = a.pix[a.p_end - 1] - a.pix[a.p_begin] == count - 1;  // a 1x1 conv: one run
    int runs = 1;
    if (!one) {
        runs = 0;
        for (int r0 = a.p_begin; r0 < a.p_end && static_cast<long>(runs) * kRun <= count; r0 = run_end(a, r0)) ++runs;
    }
    if (static_cast<long>(runs) * kRun > count) {
        conv_tiles_avx512(a);
        return;
    }
    for (int m0 = 0; m0 < a.M; m0 += 8) {
        for (int r0 = a.p_begin, r1; r0 < a.p_end; r0 = r1) {
            r1 = one ? a.p_end : run_end(a, r0);
            pointwise_run(a, r0, r1, m0);
        }
    }
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
