// Module `edgefleet.cpp_ext._native` and its histogram_update; RequestSketch and GraphExecutor are bound in
// bindings_sketch.cpp and bindings_graph.cpp (bindings.hpp says what they share).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "histogram.hpp"

namespace py = pybind11;
using edgefleet::bindings::fail_type;
using edgefleet::bindings::fail_value;

namespace {

// Below this many values the loop takes a few microseconds at most: releasing the GIL would cost more
// than it frees, and re-taking it can wait up to a whole switch interval (5 ms) behind a busy thread.
constexpr std::size_t kReleaseGilMinValues = 16384;


bool has_flag(const py::array& array, int flag) { return py::detail::check_flags(array.ptr(), flag); }

py::array require_matrix(py::handle object, const char* name) {
    if (!py::isinstance<py::array>(object)) {
        fail_type(py::str("{} must be a numpy.ndarray, got {}")
                      .format(name, py::type::handle_of(object).attr("__name__")));
    }
    auto array = py::reinterpret_borrow<py::array>(object);
    if (array.ndim() != 2) {
        fail_value(py::str("{} must be 2-D, got {}-D with shape {}").format(name, array.ndim(), array.attr("shape")));
    }
    return array;
}

// x may have any layout. Aligned strides that are whole elements are read in place; anything else
// (unaligned or byte-offset views, rare) is copied once, which is still correct.
template <typename T>
edgefleet::histogram::Samples<T> samples_view(py::array& x) {
    const auto itemsize = static_cast<py::ssize_t>(sizeof(T));
    bool in_place = has_flag(x, py::detail::npy_api::NPY_ARRAY_ALIGNED_);
    for (py::ssize_t d = 0; d < 2; ++d) {
        in_place = in_place && (x.shape(d) <= 1 || x.strides(d) % itemsize == 0);
    }
    if (!in_place) {
        x = py::array(x.attr("copy")());  // C order, freshly allocated, hence aligned
    }
    return {static_cast<const T*>(x.data()), static_cast<std::size_t>(x.shape(0)),
            static_cast<std::size_t>(x.shape(1)), x.strides(0) / itemsize, x.strides(1) / itemsize};
}

template <typename T>
void update_counts(py::array& counts, py::array& x, const edgefleet::histogram::Edges& edges) {
    const edgefleet::histogram::Samples<T> samples = samples_view<T>(x);
    auto* out = static_cast<std::int64_t*>(counts.mutable_data());
    if (samples.rows * samples.features >= kReleaseGilMinValues) {
        py::gil_scoped_release release;
        edgefleet::histogram::update(out, samples, edges);
    } else {
        edgefleet::histogram::update(out, samples, edges);
    }
}

void histogram_update(py::handle counts_object, py::handle x_object, py::handle edges_object) {
    py::array counts = require_matrix(counts_object, "counts");
    py::array x = require_matrix(x_object, "x");
    py::array edges = require_matrix(edges_object, "edges");

    const bool x_is_f32 = py::isinstance<py::array_t<float>>(x);
    if (!x_is_f32 && !py::isinstance<py::array_t<double>>(x)) {
        fail_type(py::str("x must have dtype float32 or float64, got {}").format(x.dtype()));
    }
    if (!py::isinstance<py::array_t<double>>(edges)) {
        fail_type(py::str("edges must have dtype float64, got {}").format(edges.dtype()));
    }
    if (!py::isinstance<py::array_t<std::int64_t>>(counts)) {
        fail_type(py::str("counts must have dtype int64, got {}").format(counts.dtype()));
    }

    const py::ssize_t n_features = edges.shape(0);
    const py::ssize_t n_edges = edges.shape(1);
    if (n_edges < 1) {
        fail_value(py::str("edges must have at least one column (E >= 1), got shape {}").format(edges.attr("shape")));
    }
    if (x.shape(1) != n_features) {
        fail_value(py::str("x must have shape (N, {}) to match edges of shape {}, got {}")
                       .format(n_features, edges.attr("shape"), x.attr("shape")));
    }
    if (counts.shape(0) != n_features || counts.shape(1) != n_edges + 2) {
        fail_value(py::str("counts must have shape (F, E + 2) = ({}, {}) to match edges of shape {}, got {}")
                       .format(n_features, n_edges + 2, edges.attr("shape"), counts.attr("shape")));
    }
    if (!has_flag(counts, py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) {
        fail_value(py::str("counts must be C-contiguous (it is updated in place), got strides {} for shape {}")
                       .format(counts.attr("strides"), counts.attr("shape")));
    }
    if (!counts.writeable()) {
        fail_value(py::str("counts must be writable (it is updated in place), got a read-only array"));
    }
    if (!has_flag(counts, py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
        fail_value(py::str("counts must be aligned for int64 (it is updated in place), got an unaligned array"));
    }

    // edges is small (F * E doubles): an unusual layout is simply copied to a C-contiguous one.
    if (!has_flag(edges, py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
        edges = py::array(edges.attr("copy")());
    }
    const edgefleet::histogram::Edges edge_view{static_cast<const double*>(edges.data()),
                                                static_cast<std::size_t>(n_features),
                                                static_cast<std::size_t>(n_edges)};
    const edgefleet::histogram::EdgesProblem problem = edgefleet::histogram::find_unsorted_edges(edge_view);
    if (problem.found) {
        fail_value(py::str("edges[{}] must be sorted ascending (non-decreasing) and free of NaN, got {}")
                       .format(problem.row, edges[py::int_(problem.row)].attr("tolist")()));
    }

    if (x_is_f32) {
        update_counts<float>(counts, x, edge_view);
    } else {
        update_counts<double>(counts, x, edge_view);
    }
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "Native kernels of edgefleet; import them from edgefleet.cpp_ext, not from here.";
    m.def("histogram_update", &histogram_update, py::arg("counts"), py::arg("x"), py::arg("edges"),
          R"doc(histogram_update(counts, x, edges) -> None

Adds the values of x (N, F; float32 or float64, any layout) to the per-feature histograms in counts
(F, E + 2; int64, C-contiguous, writable), in place. edges (F, E; float64) holds each feature's sorted
bin edges. A value v of feature f goes to bin searchsorted(edges[f], v, side="right"), i.e. the number
of edges <= v (so -inf -> 0, +inf -> E); NaN goes to bin E + 1. Bad arguments raise TypeError or
ValueError naming the argument. See edgefleet.cpp_ext.reference for the defining numpy version.)doc");
    edgefleet::bindings::bind_request_sketch(m);
    edgefleet::bindings::bind_graph(m);
}
