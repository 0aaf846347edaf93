// The depthwise Conv's plane kernels (graph_ops_depthwise.cpp): what the portable kernels there and the
// AVX2 ones of graph_ops_depthwise_avx2.cpp share. Internal to the graph executor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "graph_ops.hpp"

namespace edgefleet::graph::depthwise {

struct PlaneArgs {
    const float* x;  // one channel, padded: ph x pw
    std::int64_t pw;
    const float* w;  // kh * kw taps
    float bias, lo, hi;
    const Window* win;
    float* y;  // oh x ow
};

constexpr std::int64_t kLanes = 8;  // output pixels per block: the accumulators stay in registers
constexpr std::int64_t kFlatMax = 1024;  // the flat walk's output rows, padded, fit a stack buffer of this

// Narrow planes at stride 1 (a keyword spotter's 25 x 5, a CNN's last 4 x 4 or 12 x 12): blocks of 8
// pixels along a row waste most lanes (5 of 8 used at width 5). The flat walk reads the padded plane as
// one long row instead: output q = oy * pw + ox takes its taps at q + i * pw + j, so blocks of 8 run on
// across rows, and the columns past ow (pw - ow of them per row) are computed and dropped. It applies
// when that wastes fewer lanes than the blocks do and the rows fit kFlatMax.
inline bool flat(const Window& v) {
    const std::int64_t pw = v.ow + (v.kw - 1) * v.dw, blocks = (v.ow + kLanes - 1) / kLanes * kLanes;
    return v.sh == 1 && v.sw == 1 && pw < blocks && v.oh * pw + kLanes <= kFlatMax;
}

// One block of up to kLanes output pixels of one row. SW: the horizontal stride, K: a square kernel's
// size (0: read either from the window); with both fixed the tap loops unroll and the weights stay in
// The flat walk (see flat()) computes blocks of 8 over the padded rows into buf, then flat_out writes
// the ow valid columns of each row with bias and clamp. Same products and sums per pixel, in the same
// order, as rows().
inline std::int64_t flat_span(const PlaneArgs& a) { return (a.win->oh - 1) * a.pw + a.win->ow; }

inline void flat_out(const PlaneArgs& a, const float* buf) {
    const Window& v = *a.win;
    for (std::int64_t oy = 0; oy < v.oh; ++oy) {
        const float* src = buf + oy * a.pw;
        float* out = a.y + oy * v.ow;
        for (std::int64_t ox = 0; ox < v.ow; ++ox) out[ox] = std::min(std::max(src[ox] + a.bias, a.lo), a.hi);
    }
}

// n floats from src to dst, with fixed-size moves: a plane row of a keyword spotter is 5 floats, and a
// memcpy call per row cost more than the row's products.
inline void copy_floats(float* dst, const float* src, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) std::memcpy(dst + i, src + i, 4 * sizeof(float));
    switch (n - i) {
        case 3: dst[i + 2] = src[i + 2]; [[fallthrough]];
        case 2: dst[i + 1] = src[i + 1]; [[fallthrough]];
        case 1: dst[i] = src[i]; [[fallthrough]];
        default: break;
    }
}

// Channels in the SIMD lanes (graph_kernels_depthwise_x86.cpp), for channel multiplier 1 and dilation 1
// on the x86 SIMD tiers: one image padded into [lanes_rows][pw][cp] floats (cp: the channels rounded up
// to kLanes, the extra ones zero), W packed as [kh * kw][cp] and B as [cp] (zero past c); the output
// pixels [p_begin, p_end) (row-major, p_begin a multiple of kLanes) of every channel into the NCHW y.
// Each lane does plane_portable's products and sums in the same order: the same bits.
struct LanesArgs {
    const float* x;  // padded image
    std::int64_t pw, cp, c;
    const float* w;
    const float* bias;
    float lo, hi;
    const Window* win;
    float* y;  // this image's output, NCHW
    std::int64_t p_begin, p_end;
};
inline std::int64_t lanes_rows(const Window& v) { return std::max(v.h + v.top, (v.oh - 1) * v.sh + v.kh); }
inline std::int64_t lanes_cols(const Window& v) { return std::max(v.w + v.left, (v.ow - 1) * v.sw + v.kw); }

void plane_portable(const PlaneArgs& a);
#if defined(__x86_64__) || defined(_M_X64)
void plane_avx2(const PlaneArgs& a);  // graph_ops_depthwise_avx2.cpp: the same products and sums, same order
void lanes_fill_avx2(const float* x, const Window& v, std::int64_t pw, std::int64_t cp, float* pad);  // x: one image
void lanes_avx2(const LanesArgs& a);
#endif
#if defined(__aarch64__)
void plane_neon(const PlaneArgs& a);  // graph_ops_depthwise_neon.cpp: the same products and sums, same order
#endif

}  // namespace edgefleet::graph::depthwise
