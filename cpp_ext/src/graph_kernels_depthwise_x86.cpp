// The float32 depthwise Conv with channels in the SIMD lanes (graph_ops_depthwise.hpp, "lanes"), for
// x86-64 in 256-bit registers on every x86 SIMD tier (16 channels per zmm register measured no faster
// on Zen 4: 5.8 vs 5.0 us on a keyword spotter's layer), compiled per function with
// __attribute__((target)) like graph_kernels_avx2.cpp and called only on the x86 SIMD tiers. The per-plane kernels spend most of a
// keyword spotter's 25 x 5 planes on copying 5-float rows in and out; here one image is transposed once
// into a padded [row][col][channel] buffer (8 x 8 blocks), and a tile of 8 output pixels (row-major,
// across rows) by 8 channels sums its taps with one weight vector per tap, then goes back to NCHW with
// one 8 x 8 transpose. Each lane does plane_portable's products and sums for its channel in the same
// order (zero, then + w * x per tap in row-major tap order, mul then add, no FMA; + bias, clamp), so
// the bits equal the portable tier's.
#include "graph_ops_depthwise.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace edgefleet::graph::depthwise {
namespace {

#define EF_AVX2 __attribute__((target("avx2,fma")))

// r[k] (8 lanes each) -> transposed in place: r[k][l] becomes r[l][k].
EF_AVX2 inline void transpose8(__m256 (&r)[8]) {
    __m256 t[8], u[8];
    for (int k = 0; k < 4; ++k) {
        t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int h = 0; h < 2; ++h) {
        u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
    }
}

// Output pixels p0 .. p0 + 7 (row-major, across rows): their window corners in the padded buffer, in
// floats; past the last pixel, the last one again.
inline void corners(const LanesArgs& a, std::int64_t p0, std::int64_t pixels, std::int64_t (&off)[kLanes]) {
    const Window& v = *a.win;
    std::int64_t oy = p0 / v.ow, ox = p0 % v.ow;
    for (int l = 0; l < kLanes; ++l) {
        off[l] = (oy * v.sh * a.pw + ox * v.sw) * a.cp;
        if (l + 1 < pixels && ++ox == v.ow) ox = 0, ++oy;
    }
}

// acc[k] (after bias and clamp): 8 channels of pixel p0 + k -> NCHW, channels cb .. cb + 7 (those below c).
EF_AVX2 inline void store8(const LanesArgs& a, __m256 (&acc)[kLanes], std::int64_t cb, std::int64_t p0,
                           std::int64_t pixels) {
    const std::int64_t plane = a.win->oh * a.win->ow;
    transpose8(acc);  // acc[k]: channel cb + k, pixels p0 .. p0 + 7
    const std::int64_t channels = std::min<std::int64_t>(kLanes, a.c - cb);
    float* y = a.y + cb * plane + p0;
    if (pixels == kLanes && channels == kLanes) {  // unrolled: no compare per channel
#pragma GCC unroll 8
        for (int k = 0; k < kLanes; ++k) _mm256_storeu_ps(y + k * plane, acc[k]);
    } else if (pixels == kLanes) {
        for (std::int64_t k = 0; k < channels; ++k) _mm256_storeu_ps(y + k * plane, acc[k]);
    } else {  // the first `pixels` lanes (a keyword spotter's 125-pixel plane ends in 5)
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(pixels)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (std::int64_t k = 0; k < channels; ++k) _mm256_maskstore_ps(y + k * plane, mask, acc[k]);
    }
}

// 8 channels from cb by the tile's 8 pixels.
template <int KH, int KW>
EF_AVX2 inline void block8(const LanesArgs& a, std::int64_t cb, const std::int64_t (&off)[kLanes], std::int64_t p0,
                           std::int64_t pixels) {
    const Window& v = *a.win;
    const std::int64_t kh = KH > 0 ? KH : v.kh, kw = KW > 0 ? KW : v.kw, cp = a.cp;
    __m256 acc[kLanes];
    for (int l = 0; l < kLanes; ++l) acc[l] = _mm256_setzero_ps();
    const float* w = a.w + cb;
    const float* x = a.x + cb;
    for (std::int64_t i = 0; i < kh; ++i) {
        for (std::int64_t j = 0; j < kw; ++j) {
            const __m256 wv = _mm256_loadu_ps(w + (i * kw + j) * cp);
            const float* s = x + (i * a.pw + j) * cp;
#pragma GCC unroll 8
            for (int l = 0; l < kLanes; ++l) {
                acc[l] = _mm256_add_ps(acc[l], _mm256_mul_ps(wv, _mm256_loadu_ps(s + off[l])));
            }
        }
    }
    const __m256 bias = _mm256_loadu_ps(a.bias + cb), lo = _mm256_set1_ps(a.lo), hi = _mm256_set1_ps(a.hi);
    // max(lo, y), min(hi, y): std::max(y, lo) and std::min(y, hi) of the portable kernel, NaN kept
    for (int l = 0; l < kLanes; ++l) acc[l] = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(acc[l], bias)));
    store8(a, acc, cb, p0, pixels);
}

template <int KH, int KW>
EF_AVX2 void tiles(const LanesArgs& a) {
    std::int64_t off[kLanes];
    for (std::int64_t p = a.p_begin; p < a.p_end; p += kLanes) {
        const std::int64_t pixels = std::min(kLanes, a.p_end - p);
        corners(a, p, pixels, off);
        for (std::int64_t cb = 0; cb < a.c; cb += kLanes) block8<KH, KW>(a, cb, off, p, pixels);
    }
}

// n floats of zeros from d (n a multiple of kLanes: cp is). The empty asm hides that z is zero, so the
// compiler keeps these few stores instead of a memset call per span (a keyword spotter's rows have 64-float
// borders: 50 calls a layer, ~0.2 us).
EF_AVX2 inline void zero_floats(float* d, std::int64_t n) {
    __m256 z = _mm256_setzero_ps();
    __asm__("" : "+x"(z));
    for (std::int64_t i = 0; i < n; i += kLanes) _mm256_storeu_ps(d + i, z);
}

// 8 channels (src: the first's plane) of 8 flat pixels into the padded image, from input pixel ix of the
// row at `row` on (rows w wide); row and ix move past them.
EF_AVX2 inline void fill_block(const float* src, std::int64_t plane, float*& row, std::int64_t& ix, std::int64_t w,
                               std::int64_t cp, std::int64_t row_floats) {
    __m256 r[kLanes];
    for (int k = 0; k < kLanes; ++k) r[k] = _mm256_loadu_ps(src + k * plane);
    transpose8(r);
    for (int l = 0; l < kLanes; ++l) {
        _mm256_storeu_ps(row + ix * cp, r[l]);
        if (++ix == w) ix = 0, row += row_floats;
    }
}

}  // namespace

// The window's fields and the walk's state live in locals: through `v` every vector store (a may-alias
// type) made the compiler reload them, and a per-pixel helper reloaded top, left and w for each of a
// keyword spotter's 125 pixels (1.6 of the layer's 4.8 us went to this fill).
EF_AVX2 void lanes_fill_avx2(const float* x, const Window& v, std::int64_t pw, std::int64_t cp, float* pad) {
    const std::int64_t top = v.top, left = v.left, h = v.h, w = v.w, c = v.c;
    const std::int64_t ph = lanes_rows(v), plane = h * w, row_floats = pw * cp;
    // the padding: rows above and below, columns left and right; the channels past c in every pixel
    for (std::int64_t r = 0; r < ph; ++r) {
        float* row = pad + r * row_floats;
        if (r < top || r >= top + h) {
            zero_floats(row, row_floats);
            continue;
        }
        zero_floats(row, left * cp);
        zero_floats(row + (left + w) * cp, (pw - left - w) * cp);
        if (cp != c) {
            for (std::int64_t ix = 0; ix < w; ++ix) zero_floats(row + (left + ix) * cp + c / kLanes * kLanes, kLanes);
        }
    }
    float* const first = pad + (top * pw + left) * cp;  // input pixel (0, 0)
    std::int64_t cb = 0;
    for (; cb + kLanes <= c; cb += kLanes) {  // 8 channels by 8 pixels (flat index over the plane)
        const float* src = x + cb * plane;
        std::int64_t p = 0, ix = 0;
        float* row = first + cb;  // input row iy's pixel 0, channel cb
        for (; p + kLanes <= plane; p += kLanes) fill_block(src + p, plane, row, ix, w, cp, row_floats);
        if (p < plane && plane >= kLanes) {  // the last 8 pixels again (the overlap rewrites equal values)
            const std::int64_t at = plane - kLanes;
            ix = at % w;
            row = first + cb + at / w * row_floats;
            fill_block(src + at, plane, row, ix, w, cp, row_floats);
        } else {
            for (; p < plane; ++p) {
                float* px = first + cb + (p / w) * row_floats + (p % w) * cp;
                for (int k = 0; k < kLanes; ++k) px[k] = src[k * plane + p];
            }
        }
    }
    for (; cb < c; ++cb) {  // the channels past the last 8
        const float* src = x + cb * plane;
        for (std::int64_t iy = 0; iy < h; ++iy) {
            float* row = first + cb + iy * row_floats;
            for (std::int64_t ix = 0; ix < w; ++ix) row[ix * cp] = src[iy * w + ix];
        }
    }
}

EF_AVX2 void lanes_avx2(const LanesArgs& a) {
    const Window& v = *a.win;
    if (v.kh == 3 && v.kw == 3) return tiles<3, 3>(a);
    if (v.kh == 5 && v.kw == 5) return tiles<5, 5>(a);
    tiles<0, 0>(a);
}

}  // namespace edgefleet::graph::depthwise
#endif
