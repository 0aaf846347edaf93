// The pools' NEON kernels (graph_ops_pool_neon.cpp), run by graph_ops_pool.cpp on the aarch64 tiers. Each
// gives the bits of the portable loop it replaces: the same float additions in the same order per output
// (lanes are outputs), the same division, and std::max's select (x < v ? v : x) for float maxima.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "graph_ops.hpp"

namespace edgefleet::graph::pool {

// Where a max fold starts: -inf for floats, the type's lowest value for integers.
template <typename T>
T max_start() {
    return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity()
                                                : std::numeric_limits<T>::lowest();
}

// One 2x2 window at stride 2 (rows r0, r1; output column ox) folded from `lowest`: row r0's two columns,
// then r1's, each std::max(best, v) (a NaN v leaves best, equal zeros keep best's sign).
template <typename T>
T max_2x2_at(const T* r0, const T* r1, std::int64_t ox, T lowest) {
    const T top = std::max(std::max(lowest, r0[2 * ox]), r0[2 * ox + 1]);
    return std::max(std::max(top, r1[2 * ox]), r1[2 * ox + 1]);
}

// MaxPool 2x2 at stride 2 with every window inside, plane by plane and row by row: `body(r0, r1, out)` takes
// `lanes` outputs at a time (a SIMD kernel; lanes 0: none), max_2x2_at the rest.
template <typename T, typename Body>
void planes_2x2(const T* x, T* y, const Window& w, std::int64_t lanes, Body body) {
    for (std::int64_t plane = 0; plane < w.n * w.c; ++plane) {
        const T* in = x + plane * w.h * w.w;
        T* out = y + plane * w.oh * w.ow;
        for (std::int64_t oy = 0; oy < w.oh; ++oy) {
            const T* r0 = in + 2 * oy * w.w;
            const T* r1 = r0 + w.w;
            T* o = out + oy * w.ow;
            std::int64_t ox = 0;
            if (lanes > 0) {
                for (; ox + lanes <= w.ow; ox += lanes) body(r0 + 2 * ox, r1 + 2 * ox, o + ox);
            }
            for (; ox < w.ow; ++ox) o[ox] = max_2x2_at(r0, r1, ox, max_start<T>());
        }
    }
}

#if defined(__aarch64__)
// MaxPool 2x2 at stride 2, every window inside: out[oy][ox] folds rows 2oy, 2oy + 1, columns 2ox, 2ox + 1
// from `lowest` in that order.
void max_2x2_neon(const float* x, float* y, const Window& w);
void max_2x2_neon(const std::uint8_t* x, std::uint8_t* y, const Window& w);
void max_2x2_neon(const std::int8_t* x, std::int8_t* y, const Window& w);
// AveragePool outputs [ox_begin, ox_end) of one output row whose windows all lie inside the input
// (stride sw of 1 or 2, dilation 1): corner is output ox_begin's window corner; y[o] = the window's sum
// (rows, then columns, from 0.0f) / (kh * kw). Returns the outputs done (whole blocks of 4).
std::int64_t average_row_neon(const float* corner, std::int64_t row_step, std::int64_t kh, std::int64_t kw,
                              std::int64_t sw, float* y, std::int64_t count);
// GlobalAveragePool's sum: 8 running lanes (lane l takes x[i] with i % 8 == l), folded as the portable
// ((0 + 4) + (1 + 5)) + ((2 + 6) + (3 + 7)).
float sum8_neon(const float* x, std::int64_t size);
#endif
#if defined(__x86_64__) || defined(_M_X64)
// GlobalAveragePool's sums on the x86 SIMD tiers (graph_ops_pool_x86.cpp): sums[p] of `planes` planes of
// `size` floats each, every plane in GlobalPoolOp::sum's order (8 running lanes, the tail into lanes 0..,
// the same pairwise fold): the same bits. 4 planes at a time, so 4 chains of adds overlap (one plane's
// 8-lane chain waits on each add: 0.8 us for a keyword spotter's 64 x 125).
void sum8_planes_avx2(const float* x, std::int64_t planes, std::int64_t size, float* sums);
#endif

}  // namespace edgefleet::graph::pool
