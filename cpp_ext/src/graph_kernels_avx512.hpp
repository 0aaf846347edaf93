// What the two AVX-512 kernel files share (graph_kernels_avx512.cpp: channels in the lanes, int8, the
// FMA probe; graph_kernels_avx512_rows.cpp: pixels in the lanes): the target attribute, the lane masks,
// and the channels-in-lanes tiles the rows file falls back to. Include first; x86-64 only.
#pragma once

#include "graph_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
// GCC 12 flags its own AVX-512 intrinsics (their "undefined" start values) as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#define EF_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

namespace edgefleet::graph::kernels {

constexpr int kLanes = 16;

EF_AVX512 inline __mmask16 lanes_below(int n) {  // the first n of 16 lanes (n may be <= 0 or > 16)
    return n >= kLanes ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

// Output channels across the lanes, every pixel of [p_begin, p_end) (graph_kernels_avx512.cpp).
void conv_tiles_avx512(const ConvArgs& a);

}  // namespace edgefleet::graph::kernels

#endif  // x86-64
