// AVX-512 (F, BW, VL, VNNI) kernels, compiled for that ISA function by function (__attribute__((target)))
// so the module as a whole still runs on any x86-64; graph_kernels.cpp calls them only when the CPU has
// all four. Both convs keep output channels across the lanes: a tile of up to 3 vectors (48 channels) by
// 8 output pixels holds 24 accumulators, fed by 3 weight loads and 8 broadcasts per kernel tap. Shallow
// convs on rows of side-by-side pixels put the pixels in the lanes instead; stride-1 ones among them read
// an unpadded input (ConvArgs::pad) with their loads masked to the planes.
#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 flags its own AVX-512 intrinsics (their "undefined" start values) as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "graph_simd_x86.hpp"

#include <algorithm>
#include <cstring>

namespace edgefleet::graph::kernels {

bool cpu_has_avx512() {
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

namespace {

using x86::transpose8;

#define EF_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

constexpr int kPixels = 8;   // output pixels per tile: 8 window pointers stay in registers
constexpr int kVectors = 3;  // output-channel vectors per tile at most: 24 accumulators
constexpr int kLanes = 16;

EF_AVX512 inline __mmask16 lanes_below(int n) {  // the first n of 16 lanes (n may be <= 0 or > 16)
    return n >= kLanes ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

// Window corners of the tile's pixels; past the end, the last pixel again (computed, never stored).
template <int PX = kPixels, typename T>
inline void corners(const T* x, const std::int32_t* pix, int pixels, const T* out[PX]) {
    #pragma GCC unroll 8
    for (int i = 0; i < PX; ++i) {
        out[i] = x + pix[std::min(i, pixels - 1)];
    }
}

// In place: 8 rows (pixels) of 16 bytes (channels) become r[j] = channel 2j's 8 pixels, then 2j + 1's.
EF_AVX512 inline void transpose8x16(__m128i r[8]) {
    __m128i a[8], b[8];
    for (int i = 0; i < 4; ++i) {  // a[2i], a[2i + 1]: pixels 2i, 2i + 1 interleaved, channels 0-7 / 8-15
        a[2 * i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // b: 4 pixels per channel; h = pixels 0-3 / 4-7
        b[4 * h] = _mm_unpacklo_epi16(a[4 * h], a[4 * h + 2]);      // channels 0-3
        b[4 * h + 1] = _mm_unpackhi_epi16(a[4 * h], a[4 * h + 2]);  // 4-7
        b[4 * h + 2] = _mm_unpacklo_epi16(a[4 * h + 1], a[4 * h + 3]);  // 8-11
        b[4 * h + 3] = _mm_unpackhi_epi16(a[4 * h + 1], a[4 * h + 3]);  // 12-15
    }
    for (int q = 0; q < 4; ++q) {  // channels 4q .. 4q + 3: pixels 0-3 then 4-7
        r[2 * q] = _mm_unpacklo_epi32(b[q], b[4 + q]);
        r[2 * q + 1] = _mm_unpackhi_epi32(b[q], b[4 + q]);
    }
}

// NV vectors of 16 channels from m0 by PX pixels from p0 (8, or 6 beside 4 vectors: 24 accumulators).
// W rows hold MP (a multiple of 8) floats: the lanes past M are masked off in the loads, so the last row
// is never read beyond its end.
template <int NV, int PX = kPixels>
EF_AVX512 inline void conv_tile(const ConvArgs& a, int p0, int m0) {
    const int pixels = std::min(PX, a.p_end - p0);
    const float* xs[PX];
    corners<PX>(a.x, a.pix + p0, pixels, xs);
    __mmask16 mask[NV];
    __m512 acc[NV][PX];
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        mask[v] = lanes_below(a.M - m0 - kLanes * v);
        #pragma GCC unroll 8
        for (int i = 0; i < PX; ++i) {
            acc[v][i] = _mm512_setzero_ps();
        }
    }
    const float* w = a.w + m0;
    for (int k = 0; k < a.K; ++k, w += a.MP) {
        const std::ptrdiff_t off = a.koff[k];
        __m512 wk[NV];
        #pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            wk[v] = _mm512_maskz_loadu_ps(mask[v], w + kLanes * v);
        }
        #pragma GCC unroll 8
        for (int i = 0; i < PX; ++i) {
            const __m512 x = _mm512_set1_ps(xs[i][off]);
            #pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                acc[v][i] = _mm512_fmadd_ps(x, wk[v], acc[v][i]);
            }
        }
    }
    const __m512 lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
    const __mmask8 store = static_cast<__mmask8>((1u << pixels) - 1);
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        const __m512 bias = _mm512_maskz_loadu_ps(mask[v], a.bias + m0 + kLanes * v);
        __m256 low[8], high[8];  // channels 0-7 and 8-15 of the vector, per pixel (zero past PX)
        #pragma GCC unroll 8
        for (int i = PX; i < 8; ++i) low[i] = high[i] = _mm256_setzero_ps();
        #pragma GCC unroll 8
        for (int i = 0; i < PX; ++i) {  // max(lo, v), min(hi, v): a NaN stays NaN, as std::max / min
            const __m512 r = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(acc[v][i], bias)));
            low[i] = _mm512_castps512_ps256(r);
            high[i] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r), 1));
        }
        transpose8(low);
        transpose8(high);
        const int first = m0 + kLanes * v, channels = std::min(kLanes, a.M - first);
        float* y = a.y + static_cast<std::ptrdiff_t>(first) * a.P + p0;
        if (a.z != nullptr) {  // the residual, channel by channel now that the pixels sit in the lanes
            const float* z = a.z + static_cast<std::ptrdiff_t>(first) * a.P + p0;
            const __m256 z_lo = _mm256_set1_ps(a.z_lo), z_hi = _mm256_set1_ps(a.z_hi);
#pragma GCC unroll 8
            for (int c = 0; c < 8; ++c) {
                const __m256 zl = _mm256_maskz_loadu_ps(c < channels ? store : 0, z + static_cast<std::ptrdiff_t>(c) * a.P);
                const __m256 zh = _mm256_maskz_loadu_ps(c + 8 < channels ? store : 0, z + static_cast<std::ptrdiff_t>(c + 8) * a.P);
                low[c] = _mm256_min_ps(z_hi, _mm256_max_ps(z_lo, _mm256_add_ps(low[c], zl)));
                high[c] = _mm256_min_ps(z_hi, _mm256_max_ps(z_lo, _mm256_add_ps(high[c], zh)));
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
            if (c < channels) _mm256_mask_storeu_ps(y + static_cast<std::ptrdiff_t>(c) * a.P, store, low[c]);
            if (c + 8 < channels) _mm256_mask_storeu_ps(y + static_cast<std::ptrdiff_t>(c + 8) * a.P, store, high[c]);
        }
    }
}

// acc + vpdpbusd(x u8, w s8) in inline asm: through the intrinsic, GCC 12 copies the tied accumulator
// operands around and spills a full tile's 24 of them to the stack in the inner loop.
EF_AVX512 inline __m512i dpbusd(__m512i acc, __m512i x, __m512i w) {
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
    return acc;
}

inline std::int32_t load4(const std::uint8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The integer tile: u8 x s8 with vpdpbusd (exact int32 sums of 4 products, no saturation), requantized
// in registers with the reference's float32 steps, narrowed to bytes and stored channel by channel.
template <int NV>
EF_AVX512 inline void qconv_tile(const QConvArgs& a, int p0, int m0) {
    const int pixels = std::min(kPixels, a.p_end - p0);
    const std::uint8_t* xs[kPixels];
    corners(a.x, a.pix + p0, pixels, xs);
    __m512i acc[NV][kPixels];
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        #pragma GCC unroll 8
        for (int i = 0; i < kPixels; ++i) {
            acc[v][i] = _mm512_setzero_si512();
        }
    }
    const std::int8_t* w = a.w + static_cast<std::ptrdiff_t>(m0) * 4;
    const std::ptrdiff_t row = static_cast<std::ptrdiff_t>(a.MP) * 4;
    for (int t = 0; t < a.K4; ++t, w += row) {
        const std::ptrdiff_t off = a.koff[t];
        __m512i wk[NV];
        #pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            wk[v] = _mm512_loadu_si512(w + 4 * kLanes * v);
        }
        #pragma GCC unroll 8
        for (int i = 0; i < kPixels; ++i) {
            const __m512i x = _mm512_set1_epi32(load4(xs[i] + off));
            #pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                acc[v][i] = dpbusd(acc[v][i], x, wk[v]);
            }
        }
    }
    const __m512 zero = _mm512_set1_ps(a.y_zero), lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
    const __mmask16 store = static_cast<__mmask16>((1u << pixels) - 1);
    #pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        const __m512 mult = _mm512_loadu_ps(a.mult + m0 + kLanes * v);
        const __m512i bias = _mm512_loadu_si512(a.bias + m0 + kLanes * v);
        __m128i bytes[kPixels];  // the vector's 16 channels, per pixel
        #pragma GCC unroll 8
        for (int i = 0; i < kPixels; ++i) {
            const __m512 value = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc[v][i], bias)), mult);
            const __m512 q = _mm512_add_ps(_mm512_roundscale_ps(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zero);
            bytes[i] = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi)));
        }
        transpose8x16(bytes);  // bytes[j] = channels 2j and 2j + 1, 8 pixels each
        const int first = m0 + kLanes * v, channels = std::min(kLanes, a.M - first);
        auto* y = static_cast<std::uint8_t*>(a.y) + static_cast<std::ptrdiff_t>(first) * a.P + p0;  // int8: same bytes
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
            if (2 * j < channels) _mm_mask_storeu_epi8(y + static_cast<std::ptrdiff_t>(2 * j) * a.P, store, bytes[j]);
            if (2 * j + 1 < channels) {
                _mm_mask_storeu_epi8(y + static_cast<std::ptrdiff_t>(2 * j + 1) * a.P, store, _mm_srli_si128(bytes[j], 8));
            }
        }
    }
}

// Runs Tile<NV> over every tile, bands of up to 48 channels outside, pixels inside (the band's W stays in cache).
template <typename Args, template <int> class Tile>
EF_AVX512 inline void tiles(const Args& a) {
    const int total = (a.M + kLanes - 1) / kLanes, bands = (total + kVectors - 1) / kVectors;
    for (int band = 0, m0 = 0; band < bands; ++band) {  // equal bands: 64 channels as 32 + 32, not 48 + 16
        const int vectors = (total * (band + 1)) / bands - (total * band) / bands;
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += kPixels) {
            switch (vectors) {
                case 3: Tile<3>::run(a, p0, m0); break;
                case 2: Tile<2>::run(a, p0, m0); break;
                default: Tile<1>::run(a, p0, m0); break;
            }
        }
        m0 += vectors * kLanes;
    }
}

template <int NV>
struct ConvTile {
    EF_AVX512 static void run(const ConvArgs& a, int p0, int m0) { conv_tile<NV>(a, p0, m0); }
};

// 64 channels (the conv op's 64-channel panel): 4 vectors by 6 pixels (24 accumulators, 4 + 6 loads
// per 24 FMAs) where equal bands of at most 3 vectors made 32 + 32 by 8 pixels (16 accumulators, 10
// loads per 16 FMAs).
EF_AVX512 inline void conv_tiles(const ConvArgs& a) {
    if (a.M != 64) {
        tiles<ConvArgs, ConvTile>(a);
        return;
    }
    for (int p0 = a.p_begin; p0 < a.p_end; p0 += 6) conv_tile<4, 6>(a, p0, 0);
}
template <int NV>
struct QConvTile {
    EF_AVX512 static void run(const QConvArgs& a, int p0, int m0) { qconv_tile<NV>(a, p0, m0); }
};

// The pixels-in-lanes tiles' store: R output channels from m0 by NP vectors of pixels from p0 (lanes
// in mask), + bias, clamp, and the residual with its clamp.
template <int NP, int R>
EF_AVX512 inline void store_rows(const ConvArgs& a, __m512 (&acc)[R][NP], const __mmask16 (&mask)[NP], int p0, int m0) {
    const __m512 lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
    const __m512 z_lo = _mm512_set1_ps(a.z_lo), z_hi = _mm512_set1_ps(a.z_hi);
    #pragma GCC unroll 8
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
    #pragma GCC unroll 4
    for (int v = 0; v < NP; ++v) {
        mask[v] = lanes_below(end - p0 - kLanes * v);
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][v] = _mm512_setzero_ps();
    }
    const float* w = a.w + m0;
    for (int k = 0; k < a.K; ++k, w += a.MP) {
        const float* xk = x0 + a.koff[k] + p0;
        __m512 xv[NP];
        #pragma GCC unroll 4
        for (int v = 0; v < NP; ++v) xv[v] = _mm512_maskz_loadu_ps(mask[v], xk + kLanes * v);
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const __m512 wr = _mm512_set1_ps(w[r]);
            #pragma GCC unroll 4
            for (int v = 0; v < NP; ++v) acc[r][v] = _mm512_fmadd_ps(wr, xv[v], acc[r][v]);
        }
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
        conv_padded(a);
        return;
    }
    if (a.K > kPointwiseK || a.p_end <= a.p_begin) {
        conv_tiles(a);
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
        conv_tiles(a);
        return;
    }
    for (int m0 = 0; m0 < a.M; m0 += 8) {
        for (int r0 = a.p_begin, r1; r0 < a.p_end; r0 = r1) {
            r1 = one ? a.p_end : run_end(a, r0);
            pointwise_run(a, r0, r1, m0);
        }
    }
}

EF_AVX512 void qconv_u8s8_avx512(const QConvArgs& a) { tiles<QConvArgs, QConvTile>(a); }

// As fma_loop_avx2, in 512-bit registers.
EF_AVX512 float fma_loop_avx512(long iterations) {
    __m512 acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    __m512 sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, acc[i]);
    return _mm512_reduce_add_ps(sum);
}

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
