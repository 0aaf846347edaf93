// The "neondot" tier's integer conv (aarch64 with the ARMv8.2 dot-product extension, FEAT_DotProd):
// sdot adds 4 int8 x int8 products into each int32 lane. Compiled function by function with a target
// attribute (the rest of the build stays baseline armv8-a) and called only when getauxval(AT_HWCAP) has
// HWCAP_ASIMDDP, as the x86 tiers' __attribute__((target)) files are.
//
// QConvArgs' weights are already (K4, MP, 4) int8: one 16-byte load is 4 channels x one tap group, the
// operand sdot wants. The activations are uint8 and sdot multiplies signed bytes, so x is flipped to
// x - 128 (x ^ 0x80) and 128 * (the channel's weight sum) goes into the start value:
//   bias + sum x * w = bias + 128 * sum w + sum (x - 128) * w
// all in int32 (wrapping, so exact whenever the true sum fits, as it does in every tier). The store is
// the neon tier's: the portable requantization's float operations, lane by lane, so the same bits.
#include "graph_kernels.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <asm/hwcap.h>
#include <sys/auxv.h>

#include <algorithm>
#include <cstring>

namespace edgefleet::graph::kernels {

bool cpu_has_dotprod() {
#if defined(HWCAP_ASIMDDP)
    static const bool has = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
    return has;
#else
    return false;
#endif
}

#define EF_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

namespace {

constexpr int kPx = 4;  // pixels of a tile: lane i of the broadcast word vector is pixel i's tap group

inline std::uint32_t flipped_word(const std::uint8_t* p) {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v ^ 0x80808080u;
}

// 16 output channels from m0 of pixels [p0, p0 + 4): 16 int32x4 accumulators, per tap group 4 weight
// loads and one vector of the 4 pixels' bytes, 16 sdot (by lane).
EF_DOTPROD void tile(const QConvArgs& a, int m0, int p0, const int32x4_t (&start)[4], std::int32_t (&out)[kPx][16]) {
    const int pixels = std::min(kPx, a.p_end - p0);
    const std::uint8_t* xs[kPx];
    for (int i = 0; i < kPx; ++i) xs[i] = a.x + a.pix[p0 + std::min(i, pixels - 1)];  // past the end: the last
    int32x4_t acc[kPx][4];
    for (int i = 0; i < kPx; ++i) {
        for (int v = 0; v < 4; ++v) acc[i][v] = start[v];
    }
    const std::int8_t* w = a.w + static_cast<std::ptrdiff_t>(m0) * 4;
    for (int t = 0; t < a.K4; ++t, w += static_cast<std::ptrdiff_t>(a.MP) * 4) {
        const std::int32_t off = a.koff[t];
        const std::uint32_t words[kPx] = {flipped_word(xs[0] + off), flipped_word(xs[1] + off),
                                          flipped_word(xs[2] + off), flipped_word(xs[3] + off)};
        const int8x16_t xv = vreinterpretq_s8_u32(vld1q_u32(words));
        int8x16_t wv[4];
        for (int v = 0; v < 4; ++v) wv[v] = vld1q_s8(w + 16 * v);
        for (int v = 0; v < 4; ++v) {
            acc[0][v] = vdotq_laneq_s32(acc[0][v], wv[v], xv, 0);
            acc[1][v] = vdotq_laneq_s32(acc[1][v], wv[v], xv, 1);
            acc[2][v] = vdotq_laneq_s32(acc[2][v], wv[v], xv, 2);
            acc[3][v] = vdotq_laneq_s32(acc[3][v], wv[v], xv, 3);
        }
    }
    const float32x4_t zero = vdupq_n_f32(a.y_zero), lo = vdupq_n_f32(a.lo), hi = vdupq_n_f32(a.hi);
    for (int i = 0; i < kPx; ++i) {
        for (int v = 0; v < 4; ++v) {  // nearbyint(acc * mult) + zero, clamped: vrndnq rounds half to even
            const float32x4_t s = vmulq_f32(vcvtq_f32_s32(acc[i][v]), vld1q_f32(a.mult + m0 + 4 * v));
            vst1q_s32(out[i] + 4 * v, vcvtq_s32_f32(vminq_f32(vmaxq_f32(vaddq_f32(vrndnq_f32(s), zero), lo), hi)));
        }
    }
}

}  // namespace

EF_DOTPROD void qconv_u8s8_neondot(const QConvArgs& a) {
    const int8x16_t ones = vdupq_n_s8(1);
    for (int m0 = 0; m0 < a.M; m0 += 16) {
        const int channels = std::min(16, a.M - m0);
        // the start value: bias + 128 * the channel's weight sum (sdot against ones sums a tap group)
        int32x4_t start[4];
        for (int v = 0; v < 4; ++v) start[v] = vdupq_n_s32(0);
        const std::int8_t* w = a.w + static_cast<std::ptrdiff_t>(m0) * 4;
        for (int t = 0; t < a.K4; ++t, w += static_cast<std::ptrdiff_t>(a.MP) * 4) {
            for (int v = 0; v < 4; ++v) start[v] = vdotq_s32(start[v], vld1q_s8(w + 16 * v), ones);
        }
        for (int v = 0; v < 4; ++v) start[v] = vaddq_s32(vld1q_s32(a.bias + m0 + 4 * v), vshlq_n_s32(start[v], 7));
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += kPx) {
            const int pixels = std::min(kPx, a.p_end - p0);
            std::int32_t q[kPx][16];
            tile(a, m0, p0, start, q);
            const std::ptrdiff_t at = static_cast<std::ptrdiff_t>(m0) * a.P + p0;
            for (int c = 0; c < channels; ++c) {
                const std::ptrdiff_t row = at + static_cast<std::ptrdiff_t>(c) * a.P;
                for (int i = 0; i < pixels; ++i) {
                    if (a.out_u8) {
                        static_cast<std::uint8_t*>(a.y)[row + i] = static_cast<std::uint8_t>(q[i][c]);
                    } else {
                        static_cast<std::int8_t*>(a.y)[row + i] = static_cast<std::int8_t>(q[i][c]);
                    }
                }
            }
        }
    }
}

}  // namespace edgefleet::graph::kernels

#endif  // aarch64
