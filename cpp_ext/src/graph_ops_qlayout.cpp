// NCHW bytes into padded HWC bytes (contract in graph_ops_qlayout.hpp).
#include "graph_ops_qlayout.hpp"

#include <algorithm>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#endif

namespace edgefleet::graph {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
// 16 channels x 16 consecutive pixels: rows[k] holds channel k's pixels; pixel p's 16 channel bytes go
// to dst + p * cp. Bytes, then 16-, 32- and 64-bit interleaves.
inline void transpose16(const std::uint8_t* src, std::int64_t plane, __m128i flip, std::uint8_t* dst, std::int64_t cp) {
    __m128i a[16], b[4][4];
    for (int i = 0; i < 8; ++i) {
        const __m128i r0 = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i * plane)), flip);
        const __m128i r1 = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (2 * i + 1) * plane)), flip);
        a[2 * i] = _mm_unpacklo_epi8(r0, r1);      // channels 2i, 2i + 1: pixels 0-7
        a[2 * i + 1] = _mm_unpackhi_epi8(r0, r1);  // pixels 8-15
    }
    for (int g = 0; g < 4; ++g) {  // channels 4g .. 4g + 3, pixels 4q .. 4q + 3 in b[g][q]
        b[g][0] = _mm_unpacklo_epi16(a[4 * g], a[4 * g + 2]);
        b[g][1] = _mm_unpackhi_epi16(a[4 * g], a[4 * g + 2]);
        b[g][2] = _mm_unpacklo_epi16(a[4 * g + 1], a[4 * g + 3]);
        b[g][3] = _mm_unpackhi_epi16(a[4 * g + 1], a[4 * g + 3]);
    }
    for (int q = 0; q < 4; ++q) {
        const __m128i lo01 = _mm_unpacklo_epi32(b[0][q], b[1][q]), hi01 = _mm_unpackhi_epi32(b[0][q], b[1][q]);
        const __m128i lo23 = _mm_unpacklo_epi32(b[2][q], b[3][q]), hi23 = _mm_unpackhi_epi32(b[2][q], b[3][q]);
        std::uint8_t* at = dst + 4 * q * cp;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(at), _mm_unpacklo_epi64(lo01, lo23));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(at + cp), _mm_unpackhi_epi64(lo01, lo23));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(at + 2 * cp), _mm_unpacklo_epi64(hi01, hi23));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(at + 3 * cp), _mm_unpackhi_epi64(hi01, hi23));
    }
}
#endif

// Pixels [begin, count) of a run of `count` pixels that are consecutive in src (stride 1) and in dst
// (stride cp), channels [c0, channels), one byte at a time.
inline void copy_bytes(const std::uint8_t* src, std::int64_t plane, std::int64_t c0, std::int64_t channels,
                       std::int64_t begin, std::int64_t count, std::uint8_t flip, std::uint8_t* dst, std::int64_t cp) {
    for (std::int64_t c = c0; c < channels; ++c) {
        const std::uint8_t* from = src + c * plane;
        for (std::int64_t p = begin; p < count; ++p) dst[p * cp + c] = from[p] ^ flip;
    }
}

// One run of `count` pixels, consecutive in both layouts.
void run_of_pixels(const std::uint8_t* src, std::int64_t plane, std::int64_t channels, std::int64_t count,
                   std::uint8_t flip, std::uint8_t* dst, std::int64_t cp) {
    std::int64_t blocked = 0, done = 0;
#if defined(__x86_64__) || defined(_M_X64)
    const __m128i f = _mm_set1_epi8(static_cast<char>(flip));
    done = count / 16 * 16;
    for (; blocked + 16 <= channels; blocked += 16) {
        for (std::int64_t p = 0; p < done; p += 16) transpose16(src + blocked * plane + p, plane, f, dst + p * cp + blocked, cp);
    }
#endif
    copy_bytes(src, plane, blocked, channels, 0, count, flip, dst, cp);  // channels past the blocks
    copy_bytes(src, plane, 0, blocked, done, count, flip, dst, cp);      // pixels past the blocks
}

}  // namespace

void nchw_to_hwc_bytes(const std::uint8_t* src, std::int64_t channels, std::int64_t h, std::int64_t w, std::int64_t top,
                       std::int64_t left, std::int64_t pw, std::int64_t cp, std::uint8_t flip, std::uint8_t* dst,
                       std::int64_t row_begin, std::int64_t row_end) {
    const std::int64_t plane = h * w;
    row_begin = std::max<std::int64_t>(row_begin, 0);
    row_end = row_end < 0 ? h : std::min(row_end, h);
    if (row_begin >= row_end) return;
    if (pw == w && left == 0) {  // rows back to back in both layouts: the rows are one run
        run_of_pixels(src + row_begin * w, plane, channels, (row_end - row_begin) * w, flip,
                      dst + (top + row_begin) * pw * cp, cp);
        return;
    }
    for (std::int64_t iy = row_begin; iy < row_end; ++iy) {
        run_of_pixels(src + iy * w, plane, channels, w, flip, dst + ((iy + top) * pw + left) * cp, cp);
    }
}

}  // namespace edgefleet::graph
