// NCHW bytes into the zero-point-padded HWC bytes of the direct integer conv (graph_ops_quant.cpp's
// QConv, group 1): the copy that runs before every direct QConv. Internal to the graph executor.
#pragma once

#include <cstdint>

namespace edgefleet::graph {

// dst[((iy + top) * pw + ix + left) * cp + c] = src[(c * h + iy) * w + ix] ^ flip for c < channels, every
// (iy, ix) of the h x w input with row_begin <= iy < row_end (row_end < 0: to the last row); other bytes
// of dst are left as they are (the caller fills the padding). Disjoint row ranges write disjoint bytes.
// On x86-64 blocks of 16 channels by 16 pixels are transposed in SSE2 registers (baseline there); the
// rest, and other CPUs, one byte at a time. The same bytes either way.
void nchw_to_hwc_bytes(const std::uint8_t* src, std::int64_t channels, std::int64_t h, std::int64_t w, std::int64_t top,
                       std::int64_t left, std::int64_t pw, std::int64_t cp, std::uint8_t flip, std::uint8_t* dst,
                       std::int64_t row_begin = 0, std::int64_t row_end = -1);

}  // namespace edgefleet::graph
