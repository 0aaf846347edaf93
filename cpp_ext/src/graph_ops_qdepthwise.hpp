// The int8 depthwise QConv in integer SIMD (graph_ops_qdepthwise.cpp): one input channel per group,
// channel multiplier 1, dilation 1, constant W. The int8 depthwise op of graph_ops_depthwise.cpp (float32
// planes, exact sums) hands such a node here on the x86 and aarch64 SIMD tiers; the portable tier keeps
// its plane kernels, which stay the reference.
//
// Layout: channels in the SIMD lanes. The input is copied once per image into a "pair" buffer of int16:
// for padded pixel (row, col) and channel c, the two values (x[row][col] - x_zero, x[row][col + 1] -
// x_zero), so one int32 lane holds two horizontal taps of one channel; W is packed the same way (taps j,
// j + 1 of a kernel row, zero for the odd one out). One vpmaddwd (AVX2) or vpdpwssd (AVX-512 VNNI) then
// adds two taps of 8 or 16 channels. Sums are exact int32, so they equal the reference's in any order;
// the requantization is the reference's float32 steps. Internal to the graph executor.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "graph_ops.hpp"

namespace edgefleet::graph::qdepthwise {

constexpr int kChannelBlock = 16;  // CP: the channels rounded up to this (one zmm of int32 lanes)

// One image's output pixels [p_begin, p_end) in row-major order (p_begin a multiple of 8).
struct Args {
    const std::int16_t* x;  // pair buffer: [ph][pw][CP][2]
    std::int64_t pw;        // padded width, pixels
    int CP, C;              // channels padded, real
    const std::int16_t* w;  // [kh][kwp][CP][2]
    int kh, kwp, sh, sw;
    int oh, ow;
    const std::int32_t* bias;  // CP values
    const float* mult;         // CP values
    float y_zero, lo, hi;
    std::uint8_t* y;  // this image's NCHW output bytes (int8: same bytes)
    int p_begin, p_end;
};
using KernelFn = void (*)(const Args& args);

#if defined(__x86_64__) || defined(_M_X64)
void kernel_avx2(const Args& args);    // graph_kernels_qdepthwise_x86.cpp: vpmaddwd
void kernel_avx512(const Args& args);  // graph_kernels_qdepthwise_x86.cpp: vpdpwssd
// Pair-buffer entries of 8 channels (src: the first one's input row, the next ones `plane` bytes on;
// int8 when is_signed, else uint8) for pixels [0, n), into out[pixel * cp + channel]; returns n: the
// whole row when `readable` (the bytes that may be read from the last channel's row start) allows
// reading 9 bytes from the last block of 8 pixels, else the blocks of 8 before it (the rest is the
// caller's). AVX2.
std::int64_t pairs8_avx2(const void* src, bool is_signed, std::int64_t plane, std::int64_t width, std::int64_t readable,
                         std::int32_t x_zero, std::uint32_t* out, std::int64_t cp);
#endif
#if defined(__aarch64__)
void kernel_neon(const Args& args);  // graph_kernels_qdepthwise_neon.cpp: vmlal_s16 + vpaddq_s32
#endif

// The kernel for the active ISA tier, or null (the caller runs the general path).
KernelFn active_kernel();

class QDepthwise {
public:
    // Null unless w (M, 1, kH, kW) is depthwise with multiplier 1 and the attributes have dilation 1.
    // weights: w - w_zero_point (integers within +-255, as float), kH * kW per channel; bias, mult per channel.
    static std::unique_ptr<QDepthwise> make(const Shape& w_shape, std::int64_t group, const Attrs& attrs,
                                            const std::vector<float>& weights,
                                            const std::vector<std::int32_t>& bias, const std::vector<float>& mult,
                                            std::int64_t x_zero, float y_zero, float lo, float hi);

    std::size_t scratch_bytes(const Window& win) const;
    // Runs with kernel (from active_kernel()); x is u8 or s8 NCHW, out the same bytes for u8 or s8.
    void run(KernelFn kernel, const View& x, const View& out, const Window& win, void* scratch) const;

private:
    struct Geometry {
        std::int64_t ph, pw;
    };
    Geometry geometry(const Window& win) const;

    int c_ = 0, cp_ = 0, kh_ = 0, kw_ = 0, kwp_ = 0;
    std::shared_ptr<void> w_;  // int16 [kh][kwp][CP][2]
    std::vector<std::int32_t> bias_;
    std::vector<float> mult_;
    std::int64_t x_zero_ = 0;
    float y_zero_ = 0, lo_ = 0, hi_ = 0;
};

}  // namespace edgefleet::graph::qdepthwise
