// The depthwise Conv's plane kernels in NEON registers (the "neon" tier on aarch64): the products and
// sums of plane_portable in the same order, vmulq then vaddq (no fused multiply-add), so the neon and
// portable tiers give the same bits, as the AVX2 ones do on x86-64. A block of kLanes = 8 pixels is two
// float32x4 vectors.
#include "graph_ops_depthwise.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>

namespace edgefleet::graph::depthwise {
namespace {

struct V8 {
    float32x4_t lo, hi;
};

// 8 floats at stride SW (1 or 2) from s; at stride 2 it reads s[0..15].
template <int SW>
inline V8 load8(const float* s) {
    if (SW == 1) return {vld1q_f32(s), vld1q_f32(s + 4)};
    return {vld2q_f32(s).val[0], vld2q_f32(s + 8).val[0]};
}

inline V8 mul_add(V8 acc, float32x4_t w, V8 x) {
    return {vaddq_f32(acc.lo, vmulq_f32(w, x.lo)), vaddq_f32(acc.hi, vmulq_f32(w, x.hi))};
}

// min(max(acc + bias, lo), hi); vmaxq / vminq keep a NaN, as std::max / std::min do here.
inline V8 finish(V8 acc, float32x4_t bias, float32x4_t lo, float32x4_t hi) {
    return {vminq_f32(vmaxq_f32(vaddq_f32(acc.lo, bias), lo), hi),
            vminq_f32(vmaxq_f32(vaddq_f32(acc.hi, bias), lo), hi)};
}

// R output rows at once, each its own accumulator: R independent add chains per tap.
template <int SW, int K, int R>
inline void row_blocks(const PlaneArgs& a, const float32x4_t* w, std::int64_t oy) {
    const Window& v = *a.win;
    const std::int64_t kh = K > 0 ? K : v.kh, kw = K > 0 ? K : v.kw;
    const float32x4_t bias = vdupq_n_f32(a.bias), lo = vdupq_n_f32(a.lo), hi = vdupq_n_f32(a.hi);
    for (std::int64_t ox = 0; ox < v.ow; ox += kLanes) {
        V8 acc[R];
        for (int r = 0; r < R; ++r) acc[r] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        for (std::int64_t i = 0; i < kh; ++i) {
            const float* src = a.x + (oy * v.sh + i * v.dh) * a.pw + ox * SW;
            for (std::int64_t j = 0; j < kw; ++j) {
                const float32x4_t wv = K > 0 ? w[i * kw + j] : vdupq_n_f32(a.w[i * kw + j]);
                for (int r = 0; r < R; ++r) acc[r] = mul_add(acc[r], wv, load8<SW>(src + r * v.sh * a.pw + j * v.dw));
            }
        }
        for (int r = 0; r < R; ++r) {
            float* out = a.y + (oy + r) * v.ow;
            const V8 y = finish(acc[r], bias, lo, hi);
            if (v.ow - ox >= kLanes) {
                vst1q_f32(out + ox, y.lo);
                vst1q_f32(out + ox + 4, y.hi);
            } else {
                float tail[kLanes];
                vst1q_f32(tail, y.lo);
                vst1q_f32(tail + 4, y.hi);
                for (std::int64_t l = 0; l < v.ow - ox; ++l) out[ox + l] = tail[l];
            }
        }
    }
}

template <int SW, int K>
void rows(const PlaneArgs& a) {
    constexpr int kRows = 4;
    float32x4_t w[K > 0 ? K * K : 1];
    for (int t = 0; t < (K > 0 ? K * K : 0); ++t) w[t] = vdupq_n_f32(a.w[t]);
    std::int64_t oy = 0;
    for (; oy + kRows <= a.win->oh; oy += kRows) row_blocks<SW, K, kRows>(a, w, oy);
    for (; oy < a.win->oh; ++oy) row_blocks<SW, K, 1>(a, w, oy);
}

template <int SW>
void by_kernel(const PlaneArgs& a) {
    const Window& v = *a.win;
    if (v.kh == 3 && v.kw == 3) return rows<SW, 3>(a);
    if (v.kh == 5 && v.kw == 5) return rows<SW, 5>(a);
    rows<SW, 0>(a);
}

// B consecutive blocks of the flat walk from q, stored with bias and clamp (flat_out's arithmetic).
template <int K, int B>
inline void flat_blocks(const PlaneArgs& a, const float32x4_t* w, std::int64_t q, float* buf) {
    const Window& v = *a.win;
    const std::int64_t kh = K > 0 ? K : v.kh, kw = K > 0 ? K : v.kw;
    V8 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (std::int64_t i = 0; i < kh; ++i) {
        for (std::int64_t j = 0; j < kw; ++j) {
            const float32x4_t wv = K > 0 ? w[i * kw + j] : vdupq_n_f32(a.w[i * kw + j]);
            const float* s = a.x + q + i * v.dh * a.pw + j * v.dw;
            for (int b = 0; b < B; ++b) acc[b] = mul_add(acc[b], wv, load8<1>(s + b * kLanes));
        }
    }
    const float32x4_t bias = vdupq_n_f32(a.bias), lo = vdupq_n_f32(a.lo), hi = vdupq_n_f32(a.hi);
    for (int b = 0; b < B; ++b) {
        const V8 y = finish(acc[b], bias, lo, hi);
        vst1q_f32(buf + q + b * kLanes, y.lo);
        vst1q_f32(buf + q + b * kLanes + 4, y.hi);
    }
}

template <int K>
void flat_walk(const PlaneArgs& a) {
    constexpr int kBlocks = 4;
    float32x4_t w[K > 0 ? K * K : 1];
    for (int t = 0; t < (K > 0 ? K * K : 0); ++t) w[t] = vdupq_n_f32(a.w[t]);
    alignas(64) float buf[kFlatMax];
    const std::int64_t span = flat_span(a);
    std::int64_t q = 0;
    for (; q + kBlocks * kLanes <= span; q += kBlocks * kLanes) flat_blocks<K, kBlocks>(a, w, q, buf);
    for (; q < span; q += kLanes) flat_blocks<K, 1>(a, w, q, buf);
    const Window& v = *a.win;
    for (std::int64_t oy = 0; oy < v.oh; ++oy) copy_floats(a.y + oy * v.ow, buf + oy * a.pw, v.ow);
}

}  // namespace

void plane_neon(const PlaneArgs& a) {
    if (flat(*a.win)) return a.win->kh == 3 && a.win->kw == 3 ? flat_walk<3>(a) : flat_walk<0>(a);
    if (a.win->sw == 1) return by_kernel<1>(a);
    if (a.win->sw == 2) return by_kernel<2>(a);
    plane_portable(a);
}

}  // namespace edgefleet::graph::depthwise
#endif
