// The int8 depthwise kernels of graph_ops_qdepthwise.hpp for x86-64, compiled per function with
// __attribute__((target)) like graph_kernels_avx2.cpp (the rest of the build stays baseline x86-64) and
// called only on the tier that has the ISA:
// - AVX2: vpmaddwd + vpaddd, 8 channels per register, a tile of 8 pixels run twice for 16 channels;
// - AVX-512 (F, BW, VL, VNNI: the "avx512" tier): vpdpwssd, a tile of 8 pixels by 16 channels.
// A tile's pixels are 8 consecutive outputs in row-major order, across rows when a row is shorter.
// Both sum exact int32 (|x - x_zero| and |w - w_zero| are at most 255, so a pair is at most 130050) and
// requantize with the reference's float32 steps. A tile's 8 x 16 result bytes are transposed with SSE2
// so that each channel writes its 8 pixels in one store into the NCHW output.
#include "graph_ops_qdepthwise.hpp"

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 flags its own AVX-512 intrinsics (their "undefined" start values) as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace edgefleet::graph::qdepthwise {
namespace {

#define EF_AVX2 __attribute__((target("avx2,fma")))
#define EF_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

constexpr int kPixels = 8;

// rows[l] holds the 16 channel bytes of pixel l; channel c of [0, channels) gets its `pixels` bytes at
// y + c * plane. SSE2 (baseline): bytes, then words, then dwords interleaved.
inline void store_tile(const __m128i (&rows)[kPixels], int channels, int pixels, std::uint8_t* y, std::int64_t plane) {
    __m128i t[8], u[8], v[8];
    for (int k = 0; k < 4; ++k) {
        t[2 * k] = _mm_unpacklo_epi8(rows[2 * k], rows[2 * k + 1]);      // channels 0-7, pixels 2k, 2k+1
        t[2 * k + 1] = _mm_unpackhi_epi8(rows[2 * k], rows[2 * k + 1]);  // channels 8-15
    }
    for (int h = 0; h < 2; ++h) {      // pixels 0-3, 4-7
        for (int s = 0; s < 2; ++s) {  // channels 0-7, 8-15
            const __m128i a = t[4 * h + s], b = t[4 * h + 2 + s];
            u[4 * s + h] = _mm_unpacklo_epi16(a, b);      // 4 channels x 4 pixels
            u[4 * s + 2 + h] = _mm_unpackhi_epi16(a, b);  // the next 4 channels
        }
    }
    // u[4s + 2q + h]: channels 8s + 4q .. +3, pixels 4h .. 4h + 3.
    for (int s = 0; s < 2; ++s) {
        for (int q = 0; q < 2; ++q) {
            const __m128i lo = u[4 * s + 2 * q], hi = u[4 * s + 2 * q + 1];
            v[4 * s + 2 * q] = _mm_unpacklo_epi32(lo, hi);      // channels 8s + 4q, +1: 8 pixels each
            v[4 * s + 2 * q + 1] = _mm_unpackhi_epi32(lo, hi);  // channels 8s + 4q + 2, +3
        }
    }
    if (pixels == kPixels) {
        for (int c = 0; c < channels; ++c) {
            const __m128i pair = v[c / 2];
            if (c % 2 == 0) {
                _mm_storel_epi64(reinterpret_cast<__m128i*>(y + c * plane), pair);
            } else {
                _mm_storel_epi64(reinterpret_cast<__m128i*>(y + c * plane), _mm_unpackhi_epi64(pair, pair));
            }
        }
        return;
    }
    alignas(16) std::uint64_t lanes[8][2];
    for (int k = 0; k < 8; ++k) _mm_store_si128(reinterpret_cast<__m128i*>(lanes[k]), v[k]);
    for (int c = 0; c < channels; ++c) {  // pixels < 8 bytes in pieces of 4, 2, 1 (fixed-size moves)
        std::uint64_t bytes = lanes[c / 2][c % 2];
        std::uint8_t* to = y + c * plane;
        if (pixels & 4) std::memcpy(to, &bytes, 4), to += 4, bytes >>= 32;
        if (pixels & 2) std::memcpy(to, &bytes, 2), to += 2, bytes >>= 16;
        if (pixels & 1) *to = static_cast<std::uint8_t>(bytes);
    }
}

// Offsets (in int16) of the tile's window corners in the pair buffer: output pixels p0 .. p0 + 7 in
// row-major order, across rows (a keyword spotter's rows are 5 wide); past the end: the last pixel again.
inline void pixel_offsets(const Args& a, int p0, int pixels, std::ptrdiff_t (&off)[kPixels]) {
    int oy = p0 / a.ow, ox = p0 % a.ow;
    for (int l = 0; l < kPixels; ++l) {
        off[l] = (static_cast<std::ptrdiff_t>(oy) * a.sh * a.pw + static_cast<std::ptrdiff_t>(ox) * a.sw) * a.CP * 2;
        if (l + 1 < pixels && ++ox == a.ow) ox = 0, ++oy;
    }
}

// 8 int32 -> their low bytes (clamped before, so u8 and s8 alike).
EF_AVX2 inline __m128i low_bytes8(__m256i v) {
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i b = _mm256_shuffle_epi8(v, pick);
    return _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
}

// 8 channels (one ymm of pairs) by 8 pixels, starting at channel cb; bytes into rows[l] at half `half`.
template <int KH, int KWP>
EF_AVX2 inline void tile8_avx2(const Args& a, int cb, const std::ptrdiff_t (&off)[kPixels], __m128i (&rows)[kPixels],
                               int half) {
    __m256i acc[kPixels];
    for (int l = 0; l < kPixels; ++l) acc[l] = _mm256_setzero_si256();
    const std::ptrdiff_t col = static_cast<std::ptrdiff_t>(a.CP) * 2;
    const int kh = KH > 0 ? KH : a.kh, kwp = KWP > 0 ? KWP : a.kwp;
#pragma GCC unroll 5
    for (int i = 0; i < kh; ++i) {
        const std::int16_t* row = a.x + static_cast<std::ptrdiff_t>(i) * a.pw * col + cb * 2;
        const std::int16_t* w = a.w + static_cast<std::ptrdiff_t>(i * kwp) * col + cb * 2;
#pragma GCC unroll 3
        for (int jp = 0; jp < kwp; ++jp, row += 2 * col, w += col) {
            const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
#pragma GCC unroll 8
            for (int l = 0; l < kPixels; ++l) {
                const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + off[l]));
                acc[l] = _mm256_add_epi32(acc[l], _mm256_madd_epi16(xv, wv));
            }
        }
    }
    const __m256i bias = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bias + cb));
    const __m256 mult = _mm256_loadu_ps(a.mult + cb);
    const __m256 zero = _mm256_set1_ps(a.y_zero), lo = _mm256_set1_ps(a.lo), hi = _mm256_set1_ps(a.hi);
#pragma GCC unroll 8
    for (int l = 0; l < kPixels; ++l) {
        const __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc[l], bias)), mult);
        const __m256 q = _mm256_add_ps(_mm256_round_ps(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zero);
        const __m128i b = low_bytes8(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi)));
        rows[l] = half == 0 ? b : _mm_unpacklo_epi64(rows[l], b);
    }
}

template <int KH, int KWP>
EF_AVX512 inline void tile16_avx512(const Args& a, int cb, const std::ptrdiff_t (&off)[kPixels],
                                    __m128i (&rows)[kPixels]) {
    __m512i acc[kPixels];
    for (int l = 0; l < kPixels; ++l) acc[l] = _mm512_setzero_si512();
    const std::ptrdiff_t col = static_cast<std::ptrdiff_t>(a.CP) * 2;
    const int kh = KH > 0 ? KH : a.kh, kwp = KWP > 0 ? KWP : a.kwp;
#pragma GCC unroll 5
    for (int i = 0; i < kh; ++i) {
        const std::int16_t* row = a.x + static_cast<std::ptrdiff_t>(i) * a.pw * col + cb * 2;
        const std::int16_t* w = a.w + static_cast<std::ptrdiff_t>(i * kwp) * col + cb * 2;
#pragma GCC unroll 3
        for (int jp = 0; jp < kwp; ++jp, row += 2 * col, w += col) {
            const __m512i wv = _mm512_loadu_si512(w);
#pragma GCC unroll 8
            for (int l = 0; l < kPixels; ++l) {
                acc[l] = _mm512_dpwssd_epi32(acc[l], _mm512_loadu_si512(row + off[l]), wv);
            }
        }
    }
    const __m512i bias = _mm512_loadu_si512(a.bias + cb);
    const __m512 mult = _mm512_loadu_ps(a.mult + cb);
    const __m512 zero = _mm512_set1_ps(a.y_zero), lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
#pragma GCC unroll 8
    for (int l = 0; l < kPixels; ++l) {
        const __m512 value = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc[l], bias)), mult);
        const __m512 q =
            _mm512_add_ps(_mm512_roundscale_ps(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zero);
        rows[l] = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi)));
    }
}

template <bool kSigned>
EF_AVX2 inline __m128i widen8(const std::uint8_t* p) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return kSigned ? _mm_cvtepi8_epi16(bytes) : _mm_cvtepu8_epi16(bytes);
}

// Pixels [ix, ix + count) of 8 channels (count <= 8): bytes ix .. ix + 8 of each row are read; the
// partner of the pixel before `last` (the row's end) is zero.
template <bool kSigned>
EF_AVX2 inline void pairs_block(const std::uint8_t* src, std::int64_t plane, std::int64_t ix, int count, bool last,
                                __m128i zero, std::uint32_t* out, std::int64_t cp) {
    const __m128i keep = last ? _mm_cmpgt_epi16(_mm_set1_epi16(static_cast<short>(count - 1)), _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7))
                              : _mm_set1_epi16(-1);
    __m256i v[8];  // channel k: pixels ix .. ix + 7 as (x, right neighbour) int16 pairs
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
        const std::uint8_t* row = src + k * plane + ix;
        const __m128i lo = _mm_sub_epi16(widen8<kSigned>(row), zero);
        const __m128i hi = _mm_and_si128(_mm_sub_epi16(widen8<kSigned>(row + 1), zero), keep);
        v[k] = _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi));
    }
    // 8 x 8 int32 transpose: channels x pixels -> pixels x channels
    __m256i t[8], u[8];
    for (int k = 0; k < 4; ++k) {
        t[2 * k] = _mm256_unpacklo_epi32(v[2 * k], v[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_epi32(v[2 * k], v[2 * k + 1]);
    }
    for (int k = 0; k < 2; ++k) {
        u[4 * k] = _mm256_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm256_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm256_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm256_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    // u[k] (k < 4): channels 0-3, pixels {k, k + 4}; u[4 + k]: channels 4-7, the same pixels
    __m256i pixel[8];
    for (int k = 0; k < 4; ++k) {
        pixel[k] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x20);
        pixel[k + 4] = _mm256_permute2x128_si256(u[k], u[4 + k], 0x31);
    }
    for (int k = 0; k < count; ++k) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (ix + k) * cp), pixel[k]);
}

template <bool kSigned>
EF_AVX2 std::int64_t pairs_impl(const std::uint8_t* src, std::int64_t plane, std::int64_t width, std::int64_t readable,
                                std::int32_t x_zero, std::uint32_t* out, std::int64_t cp) {
    const __m128i zero = _mm_set1_epi16(static_cast<short>(x_zero));
    std::int64_t ix = 0;
    for (; ix + 9 <= width; ix += 8) pairs_block<kSigned>(src, plane, ix, 8, false, zero, out, cp);
    if (ix < width && ix + 9 <= readable) {
        pairs_block<kSigned>(src, plane, ix, static_cast<int>(width - ix), true, zero, out, cp);
        ix = width;
    }
    return ix;
}

}  // namespace

EF_AVX2 std::int64_t pairs8_avx2(const void* src, bool is_signed, std::int64_t plane, std::int64_t width,
                                 std::int64_t readable, std::int32_t x_zero, std::uint32_t* out, std::int64_t cp) {
    const auto* bytes = static_cast<const std::uint8_t*>(src);
    return is_signed ? pairs_impl<true>(bytes, plane, width, readable, x_zero, out, cp)
                     : pairs_impl<false>(bytes, plane, width, readable, x_zero, out, cp);
}

namespace {

template <int KH, int KWP>
EF_AVX2 void tiles_avx2(const Args& a) {
    const std::int64_t plane = static_cast<std::int64_t>(a.oh) * a.ow;
    for (int cb = 0; cb < a.C; cb += kChannelBlock) {
        const int channels = std::min(kChannelBlock, a.C - cb);
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += kPixels) {
            const int pixels = std::min(kPixels, a.p_end - p0);
            std::ptrdiff_t off[kPixels];
            pixel_offsets(a, p0, pixels, off);
            __m128i rows[kPixels];
            tile8_avx2<KH, KWP>(a, cb, off, rows, 0);
            if (channels > 8) {
                tile8_avx2<KH, KWP>(a, cb + 8, off, rows, 1);
            }
            store_tile(rows, channels, pixels, a.y + cb * plane + p0, plane);
        }
    }
}

template <int KH, int KWP>
EF_AVX512 void tiles_avx512(const Args& a) {
    const std::int64_t plane = static_cast<std::int64_t>(a.oh) * a.ow;
    for (int cb = 0; cb < a.C; cb += kChannelBlock) {
        const int channels = std::min(kChannelBlock, a.C - cb);
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += kPixels) {
            const int pixels = std::min(kPixels, a.p_end - p0);
            std::ptrdiff_t off[kPixels];
            pixel_offsets(a, p0, pixels, off);
            __m128i rows[kPixels];
            tile16_avx512<KH, KWP>(a, cb, off, rows);
            store_tile(rows, channels, pixels, a.y + cb * plane + p0, plane);
        }
    }
}

}  // namespace

// 3x3 and 5x5 with the tap loops unrolled; other sizes from the arguments.
EF_AVX2 void kernel_avx2(const Args& a) {
    if (a.kh == 3 && a.kwp == 2) return tiles_avx2<3, 2>(a);
    if (a.kh == 5 && a.kwp == 3) return tiles_avx2<5, 3>(a);
    tiles_avx2<0, 0>(a);
}

EF_AVX512 void kernel_avx512(const Args& a) {
    if (a.kh == 3 && a.kwp == 2) return tiles_avx512<3, 2>(a);
    if (a.kh == 5 && a.kwp == 3) return tiles_avx512<5, 3>(a);
    tiles_avx512<0, 0>(a);
}

}  // namespace edgefleet::graph::qdepthwise

#endif  // x86-64
