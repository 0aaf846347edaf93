// The int8 depthwise kernel of graph_ops_qdepthwise.hpp in NEON (the aarch64 tiers, "neon" and
// "neondot"): the pair buffer's (x[col], x[col + 1]) int16 words times W's (w[j], w[j + 1]) with vmlal_s16
// (exact int32 products, each pair's two in neighbouring lanes), folded by vpaddq_s32 into one sum per
// channel at the end of the taps: the sums of the x86 kernels' vpmaddwd, exact, so in any order the
// same int32. A tile is 4 pixels (row-major, across rows) by 8 channels; the requantization is the
// reference's float32 steps (vrndnq: round half to even, as nearbyint).
#include "graph_ops_qdepthwise.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>

namespace edgefleet::graph::qdepthwise {
namespace {

constexpr int kPixels = 4;
constexpr int kChannels = 8;

// Offsets (in int16) of the tile's window corners in the pair buffer; past the end: the last pixel again.
inline void pixel_offsets(const Args& a, int p0, int pixels, std::ptrdiff_t (&off)[kPixels]) {
    int oy = p0 / a.ow, ox = p0 % a.ow;
    for (int l = 0; l < kPixels; ++l) {
        off[l] = (static_cast<std::ptrdiff_t>(oy) * a.sh * a.pw + static_cast<std::ptrdiff_t>(ox) * a.sw) * a.CP * 2;
        if (l + 1 < pixels && ++ox == a.ow) ox = 0, ++oy;
    }
}

// Channels [cb, cb + 8) of the tile's 4 pixels, requantized into q[pixel][channel].
template <int KH, int KWP>
inline void tile(const Args& a, int cb, const std::ptrdiff_t (&off)[kPixels], std::int32_t (&q)[kPixels][kChannels]) {
    int32x4_t acc[kPixels][4];  // per pixel: (c0 c0 c1 c1), (c2 c2 c3 c3), (c4 c4 c5 c5), (c6 c6 c7 c7)
    for (int l = 0; l < kPixels; ++l) {
        for (int v = 0; v < 4; ++v) acc[l][v] = vdupq_n_s32(0);
    }
    const std::ptrdiff_t col = static_cast<std::ptrdiff_t>(a.CP) * 2;
    const int kh = KH > 0 ? KH : a.kh, kwp = KWP > 0 ? KWP : a.kwp;
    for (int i = 0; i < kh; ++i) {
        const std::int16_t* row = a.x + static_cast<std::ptrdiff_t>(i) * a.pw * col + cb * 2;
        const std::int16_t* w = a.w + static_cast<std::ptrdiff_t>(i * kwp) * col + cb * 2;
        for (int jp = 0; jp < kwp; ++jp, row += 2 * col, w += col) {
            const int16x8_t w0 = vld1q_s16(w), w1 = vld1q_s16(w + 8);
            for (int l = 0; l < kPixels; ++l) {
                const int16x8_t x0 = vld1q_s16(row + off[l]), x1 = vld1q_s16(row + off[l] + 8);
                acc[l][0] = vmlal_s16(acc[l][0], vget_low_s16(x0), vget_low_s16(w0));
                acc[l][1] = vmlal_high_s16(acc[l][1], x0, w0);
                acc[l][2] = vmlal_s16(acc[l][2], vget_low_s16(x1), vget_low_s16(w1));
                acc[l][3] = vmlal_high_s16(acc[l][3], x1, w1);
            }
        }
    }
    const int32x4_t bias0 = vld1q_s32(a.bias + cb), bias1 = vld1q_s32(a.bias + cb + 4);
    const float32x4_t mult0 = vld1q_f32(a.mult + cb), mult1 = vld1q_f32(a.mult + cb + 4);
    const float32x4_t zero = vdupq_n_f32(a.y_zero), lo = vdupq_n_f32(a.lo), hi = vdupq_n_f32(a.hi);
    for (int l = 0; l < kPixels; ++l) {
        const int32x4_t s0 = vaddq_s32(vpaddq_s32(acc[l][0], acc[l][1]), bias0);
        const int32x4_t s1 = vaddq_s32(vpaddq_s32(acc[l][2], acc[l][3]), bias1);
        const float32x4_t v0 = vrndnq_f32(vmulq_f32(vcvtq_f32_s32(s0), mult0));
        const float32x4_t v1 = vrndnq_f32(vmulq_f32(vcvtq_f32_s32(s1), mult1));
        vst1q_s32(q[l], vcvtq_s32_f32(vminq_f32(vmaxq_f32(vaddq_f32(v0, zero), lo), hi)));
        vst1q_s32(q[l] + 4, vcvtq_s32_f32(vminq_f32(vmaxq_f32(vaddq_f32(v1, zero), lo), hi)));
    }
}

template <int KH, int KWP>
void tiles(const Args& a) {
    const std::int64_t plane = static_cast<std::int64_t>(a.oh) * a.ow;
    for (int cb = 0; cb < a.C; cb += kChannels) {  // CP is a multiple of 16: every 8-channel load is inside
        const int channels = std::min(kChannels, a.C - cb);
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += kPixels) {
            const int pixels = std::min(kPixels, a.p_end - p0);
            std::ptrdiff_t off[kPixels];
            pixel_offsets(a, p0, pixels, off);
            std::int32_t q[kPixels][kChannels];
            tile<KH, KWP>(a, cb, off, q);
            std::uint8_t* y = a.y + cb * plane + p0;  // clamped to the output type's range: the low byte
            for (int c = 0; c < channels; ++c, y += plane) {
                for (int l = 0; l < pixels; ++l) y[l] = static_cast<std::uint8_t>(q[l][c]);
            }
        }
    }
}

}  // namespace

// 3x3 and 5x5 with the tap loops' bounds known; other sizes from the arguments.
void kernel_neon(const Args& a) {
    if (a.kh == 3 && a.kwp == 2) return tiles<3, 2>(a);
    if (a.kh == 5 && a.kwp == 3) return tiles<5, 3>(a);
    tiles<0, 0>(a);
}

}  // namespace edgefleet::graph::qdepthwise

#endif  // aarch64
