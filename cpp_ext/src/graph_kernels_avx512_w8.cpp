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

constexpr int kW8Px = 6;  // pixels per tile: 6 by up to 4 vectors of channels, 24 accumulators

// NV vectors of channels from m0 by up to PX pixels (count; the last one again past it) whose tap
// (c, i, j) with I0 <= i < I1, J0 <= j < J1 reads xs[p][c * plane + 8 * i + j]. Results (+ bias,
// clamped) to out[q[p] * ld + m].
template <int NV, int PX, int I0, int I1, int J0, int J1>
EF_AVX512 inline void w8_tile(const ConvArgs& a, const float* const* xs, const int* q, int count, int m0, float* out,
                              int ld) {
    const int plane = a.pad->h * 8;
    const float* x[PX];
    #pragma GCC unroll 8
    for (int p = 0; p < PX; ++p) x[p] = xs[std::min(p, count - 1)];
    __mmask16 mask[NV];
    __m512 acc[NV][PX];
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        mask[v] = lanes_below(a.M - m0 - kLanes * v);
        #pragma GCC unroll 8
        for (int p = 0; p < PX; ++p) acc[v][p] = _mm512_setzero_ps();
    }
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
                    const __m512 xv = _mm512_set1_ps(x[p][xc + 8 * i + j]);
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

// Every channel of the panel over one class of pixels (its taps I0-I1 by J0-J1), by up to 4 vectors.
template <int PX, int I0, int I1, int J0, int J1>
EF_AVX512 inline void w8_class(const ConvArgs& a, const float* const* xs, const int* q, int count, float* out, int ld) {
    for (int m0 = 0; m0 < a.M;) {
        const int vectors = (a.M - m0 + kLanes - 1) / kLanes;
        if (vectors == 4) {
            w8_tile<4, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
            m0 += 4 * kLanes;
        } else if (vectors == 2) {
            w8_tile<2, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
            m0 += 2 * kLanes;
        } else if (vectors == 1) {
            w8_tile<1, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
            m0 += kLanes;
        } else {
            w8_tile<3, PX, I0, I1, J0, J1>(a, xs, q, count, m0, out, ld);
            m0 += 3 * kLanes;
        }
    }
}

// The rows of taps of output row y: 0 top, 2 bottom, 1 the others.
template <int PX, int J0, int J1>
EF_AVX512 inline void w8_row_class(const ConvArgs& a, int kind, const float* const* xs, const int* q, int count,
                                   float* out, int ld) {
    if (kind == 0) {
        w8_class<PX, 1, 3, J0, J1>(a, xs, q, count, out, ld);
    } else if (kind == 2) {
        w8_class<PX, 0, 2, J0, J1>(a, xs, q, count, out, ld);
    } else {
        w8_class<PX, 0, 3, J0, J1>(a, xs, q, count, out, ld);
    }
}

}  // namespace

// Output rows [p_begin / 8, p_end / 8) (whole rows: p_begin and p_end are multiples of 8) into a
// pixel-major buffer (at most kConvPad8MaxPixels by 64 channels, on the stack), then to Y channel by
// channel with the residual.
EF_AVX512 void conv_w8_avx512(const ConvArgs& a) {
    const int h = a.pad->h, r0 = a.p_begin / 8, r1 = (a.p_end + 7) / 8, ld = (a.M + kLanes - 1) / kLanes * kLanes;
    alignas(64) float out[kConvPad8MaxPixels * 64];
    const auto corner = [&](int y, int x) { return a.x + (y - 1) * 8 + (x - 1); };
    const float* xs[kW8Px];
    int q[kW8Px];
    for (int y = r0; y < r1; ++y) {
        const int kind = y == 0 ? 0 : y == h - 1 ? 2 : 1;
        for (int p = 0; p < kW8Px; ++p) {
            xs[p] = corner(y, p + 1);
            q[p] = (y - r0) * 8 + p + 1;
        }
        w8_row_class<kW8Px, 0, 3>(a, kind, xs, q, kW8Px, out, ld);
        if (kind == 1) continue;
        for (int x = 0; x < 8; x += 7) {
            xs[0] = corner(y, x);
            q[0] = (y - r0) * 8 + x;
            if (x == 0) {
                w8_row_class<1, 1, 3>(a, kind, xs, q, 1, out, ld);
            } else {
                w8_row_class<1, 0, 2>(a, kind, xs, q, 1, out, ld);
            }
        }
    }
    for (int x = 0; x < 8; x += 7) {  // the edge columns of the inner rows, 6 at a time
        for (int y = std::max(r0, 1); y < std::min(r1, h - 1); y += kW8Px) {
            const int count = std::min(kW8Px, std::min(r1, h - 1) - y);
            for (int p = 0; p < count; ++p) {
                xs[p] = corner(y + p, x);
                q[p] = (y + p - r0) * 8 + x;
            }
            if (x == 0) {
                w8_class<kW8Px, 0, 3, 1, 3>(a, xs, q, count, out, ld);
            } else {
                w8_class<kW8Px, 0, 3, 0, 2>(a, xs, q, count, out, ld);
            }
        }
    }
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
