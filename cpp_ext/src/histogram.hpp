// Telemetry histogram kernel: plain C++17, no Python.
//
// Semantics (defined by edgefleet/cpp_ext/reference.py): for feature f and value v = x[n, f],
//   v is NaN  -> counts[f, E + 1] += 1
//   otherwise -> counts[f, i] += 1 with i = #{k : edges[f, k] <= v}   (std::upper_bound)
// so -inf lands in bin 0 and +inf in bin E. Counts are added to, never reset.
//
// The public entry points below pick a variant; only the portable generic one exists today. A per-ISA
// variant (e.g. NEON in histogram_neon.cpp) would declare itself in this header and be chosen in
// histogram.cpp, with the generic kernel kept as the reference every variant is tested against.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgefleet::histogram {

// Samples x of shape (rows, features); strides are counted in elements (may be zero or negative).
template <typename T>
struct Samples {
    const T* data;
    std::size_t rows;
    std::size_t features;
    std::ptrdiff_t row_stride;
    std::ptrdiff_t feature_stride;
};

// Bin edges of shape (features, n_edges), C-contiguous, each row non-decreasing and free of NaN.
struct Edges {
    const double* data;
    std::size_t features;
    std::size_t n_edges;
};

// Position of the first problem in the edges, if any: a NaN, or a pair with edges[row, col] >
// edges[row, col + 1].
struct EdgesProblem {
    bool found;
    std::size_t row;
};

// Checks that every row of `edges` is non-decreasing and free of NaN.
EdgesProblem find_unsorted_edges(const Edges& edges) noexcept;

// counts is C-contiguous of shape (edges.features, edges.n_edges + 2); x.features == edges.features.
// The caller checks shapes; the kernel never writes outside counts[f, 0 .. n_edges + 1] for f < features.
void update(std::int64_t* counts, const Samples<float>& x, const Edges& edges) noexcept;
void update(std::int64_t* counts, const Samples<double>& x, const Edges& edges) noexcept;

}  // namespace edgefleet::histogram
