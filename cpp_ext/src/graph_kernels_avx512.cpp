// AVX-512 (F, BW, VL, VNNI) kernels, compiled for that ISA function by function (__attribute__((target)))
// so the module as a whole still runs on any x86-64; graph_kernels.cpp calls them only when the CPU has
// all four. Both convs keep output channels across the lanes: a tile of up to 3 vectors (48 channels) by
// 8 output pixels holds 24 accumulators, fed by 3 weight loads and 8 broadcasts per kernel tap. Shallow
// convs on rows of side-by-side pixels put the pixels in the lanes instead (graph_kernels_avx512_rows.cpp).
#include "graph_kernels_avx512.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include "graph_simd_x86.hpp"

namespace edgefleet::graph::kernels {

bool cpu_has_avx512() {
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

namespace {

using x86::transpose8;

constexpr int kPixels = 8;   // output pixels per tile: 8 window pointers stay in registers
constexpr int kVectors = 3;  // output-channel vectors per tile at most: 24 accumulators

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
    lane_masks(a.M - m0, mask);
    zero_all(acc);
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

}  // namespace

// The channels-in-lanes tiles, for conv_avx512 (graph_kernels_avx512_rows.cpp).
EF_AVX512 void conv_tiles_avx512(const ConvArgs& a) { conv_tiles(a); }

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
