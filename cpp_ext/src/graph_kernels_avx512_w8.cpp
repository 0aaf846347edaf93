// AVX-512 3x3 same-padded stride-1 convs on maps 8 pixels wide (ResNet's 128 -> 128 conv at 8x8),
// reading the unpadded input in place and never computing a tap of the padding: on an 8x8 map 16% of
// the padded copy's multiply-adds were by its zeros. Output channels in the lanes; the pixels go in
// classes whose taps are the same rectangle: each row's inner 6 pixels (rows i 1-2 on the top row, 0-1
// on the bottom one, else 0-2, by columns j 0-2), the first and the last column of the inner rows in 6s
// (columns j 1-2 / 0-1), the 4 corners one by one. Each output is the padded copy's chain without the
// steps that added w * 0: fma(x, w, acc) in k = (c, i, j) order from +0, + bias, clamp, residual. With
// W finite (conv_pad8_fits's callers check), w * 0 is a zero and acc never -0, so a skipped step left
// acc as it was: the same bits as the channels-in-lanes tiles over the copy.
#include "graph_kernels_avx512.hpp"

#if defined(__x86_64__) || defined(_M_X64)

namespace edgefleet::graph::kernels {

namespace {

// Pixels per tile: 6 by up to 4 vectors of channels (24 accumulators), or 1; a class goes in chunks of
// kW8Chunk pixels, each through every channel in tiles of those.
constexpr int kW8Chunk = 24, kW8Px = 6;
constexpr int kW8Row = 8;  // floats per input row: the map's width

// NV vectors of channels from m0 by up to PX pixels (count; the last one again past it) whose tap
// (c, i, j) with I0 <= i < I1, J0 <= j < J1 reads xs[p][c * plane + w * i + j]. Results (+ bias,
// clamped) to out[q[p] * ld + m].
template <int NV, int PX, int I0, int I1, int J0, int J1>
EF_AVX512 inline void w8_tile(const ConvArgs& a, const float* const* xs, const int* q, int count, int m0, float* out,
                              int ld) {
    const int plane = a.pad->h * kW8Row;
    const float* x[PX];
    #pragma GCC unroll 8
    for (int p = 0; p < PX; ++p) x[p] = xs[std::min(p, count - 1)];
    __mmask16 mask[NV];
    __m512 acc[NV][PX];
    lane_masks(a.M - m0, mask);
    zero_all(acc);
    const int channels = a.K / 9;
    const float* wc = a.w + m0;
    for (int c = 0; c < channels; ++c, wc += 9 * a.MP) {
        const int xc = c * plane;
        #pragma GCC unroll 3
        for (int i = I0; i < I1; ++i) {
            #pragma GCC unroll 3
            for (int j = J0; j < J1; ++j) {
                const float* w = wc + (3 * i + j) * a.MP;
                __m512 wk[NV];
                #pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) wk[v] = _mm512_maskz_loadu_ps(mask[v], w + kLanes * v);
                #pragma GCC unroll 8
                for (int p = 0; p < PX; ++p) {
                    const __m512 xv = _mm512_set1_ps(x[p][xc + kW8Row * i + j]);
                    #pragma GCC unroll 4
                    for (int v = 0; v < NV; ++v) acc[v][p] = _mm512_fmadd_ps(xv, wk[v], acc[v][p]);
                }
            }
        }
    }
    const __m512 lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        const __m512 bias = _mm512_maskz_loadu_ps(mask[v], a.bias + m0 + kLanes * v);
        #pragma GCC unroll 8
        for (int p = 0; p < PX && p < count; ++p) {
            const __m512 r = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(acc[v][p], bias)));
            _mm512_storeu_ps(out + q[p] * ld + m0 + kLanes * v, r);
        }
    }
}

// The tile of `vectors` vectors of channels (3 for more than 4) from m0 by PX pixels.
template <int PX, int I0, int I1, int J0, int J1>
EF_AVX512 inline void w8_tiles(const ConvArgs& a, int vectors, const float* const* xs, const int* q, int count, int m0,
                               float* out, int ld) {
    if (vectors == 4) {
        w8_tile<4, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
    } else if (vectors == 2) {
        w8_tile<2, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
    } else if (vectors == 1) {
        w8_tile<1, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
    } else {
        w8_tile<3, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
    }
}

// Every channel of the panel over up to kW8Chunk pixels of one class (its taps I0-I1 by J0-J1).
template <int I0, int I1, int J0, int J1>
EF_AVX512 inline void w8_class(const ConvArgs& a, const float* const* xs, const int* q, int count, float* out, int ld) {
    for (int m0 = 0; m0 < a.M;) {
        const int vectors = (a.M - m0 + kLanes - 1) / kLanes;
        for (int p = 0; p < count; p += kW8Px) {
            const int n = std::min(kW8Px, count - p);
            if (n == 1) {  // a corner: a tile of one, not 6 of it (4 corners as 6-pixel tiles: 159 -> 174 us)
                w8_tiles<1, I0, I1, J0, J1>(a, vectors, xs + p, q + p, n, m0, out, ld);
            } else {
                w8_tiles<kW8Px, I0, I1, J0, J1>(a, vectors, xs + p, q + p, n, m0, out, ld);
            }
        }
        m0 += (vectors > 4 ? 3 : vectors) * kLanes;
    }
}

// Every class of pixels, chunk by chunk.
EF_AVX512 inline void w8_classes(const ConvArgs& a, const int (*members)[kConvPad8MaxPixels], const int* counts, int r0,
                                 float* out, int ld) {
    for (int k = 0; k < 9; ++k) {
        for (int first = 0; first < counts[k]; first += kW8Chunk) {
            const int count = std::min(kW8Chunk, counts[k] - first);
            const float* xs[kW8Chunk];
            const int* q = members[k] + first;
            for (int p = 0; p < count; ++p) {
                const int y = q[p] / 8 + r0, x = q[p] % 8;
                xs[p] = a.x + (y - 1) * kW8Row + (x - 1);
            }
            switch (k) {
            case 0: w8_class<1, 3, 1, 3>(a, xs, q, count, out, ld); break;
            case 1: w8_class<1, 3, 0, 3>(a, xs, q, count, out, ld); break;
            case 2: w8_class<1, 3, 0, 2>(a, xs, q, count, out, ld); break;
            case 3: w8_class<0, 3, 1, 3>(a, xs, q, count, out, ld); break;
            case 4: w8_class<0, 3, 0, 3>(a, xs, q, count, out, ld); break;
            case 5: w8_class<0, 3, 0, 2>(a, xs, q, count, out, ld); break;
            case 6: w8_class<0, 2, 1, 3>(a, xs, q, count, out, ld); break;
            case 7: w8_class<0, 2, 0, 3>(a, xs, q, count, out, ld); break;
            default: w8_class<0, 2, 0, 2>(a, xs, q, count, out, ld); break;
            }
        }
    }
}

}  // namespace

// Output rows [p_begin / 8, p_end / 8) (whole rows: p_begin and p_end are multiples of 8) by classes of
// equal taps into a pixel-major buffer (at most kConvPad8MaxPixels by 64 channels, on the stack), then
// to Y channel by channel with the residual. (Stride 2 onto 8-wide maps, ResNet's 64 -> 128, whose top
// row and left column lose taps, measured slower this way than the channels-in-lanes tiles over the
// padded copy: 91.4-91.8 against 88.5-89.0 us.)
EF_AVX512 void conv_w8_avx512(const ConvArgs& a) {
    const ConvPad& g = *a.pad;
    const int r0 = a.p_begin / 8, r1 = (a.p_end + 7) / 8, ld = (a.M + kLanes - 1) / kLanes * kLanes;
    alignas(64) float out[kConvPad8MaxPixels * 64];
    // Class 3 * row + column: row / column 0 the first (taps 1-2), 2 the last (0-1), 1 inner.
    int members[9][kConvPad8MaxPixels], counts[9] = {};
    for (int y = r0; y < r1; ++y) {
        const int row = y == 0 ? 0 : y == g.h - 1 ? 2 : 1;
        for (int x = 0; x < 8; ++x) {
            const int column = x == 0 ? 0 : x == 7 ? 2 : 1;
            members[3 * row + column][counts[3 * row + column]++] = (y - r0) * 8 + x;
        }
    }
    w8_classes(a, members, counts, r0, out, ld);
    const int pixels = a.p_end - a.p_begin;
    const __m512 z_lo = _mm512_set1_ps(a.z_lo), z_hi = _mm512_set1_ps(a.z_hi);
    for (int m = 0; m < a.M; ++m) {
        float* y = a.y + static_cast<std::ptrdiff_t>(m) * a.P + a.p_begin;
        for (int p = 0; p < pixels; ++p) y[p] = out[p * ld + m];
        if (a.z == nullptr) continue;
        const float* z = a.z + static_cast<std::ptrdiff_t>(m) * a.P + a.p_begin;
        for (int p = 0; p < pixels; p += kLanes) {
            const __mmask16 mask = lanes_below(pixels - p);
            const __m512 value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y + p), _mm512_maskz_loadu_ps(mask, z + p));
            _mm512_mask_storeu_ps(y + p, mask, _mm512_min_ps(z_hi, _mm512_max_ps(z_lo, value)));
        }
    }
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
