// The one file that includes pybind11: module `edgefleet.cpp_ext._native`.
//
// Each binding checks its arguments completely (type, ndim, dtype, shape, layout) before touching any
// memory, with the same messages as the numpy reference in edgefleet/cpp_ext/reference.py, then hands
// raw pointers to the plain C++ kernels. The happy path makes no Python calls and no copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

#include "graph.hpp"
#include "graph_kernels.hpp"
#include "histogram.hpp"
#include "sketch.hpp"

namespace py = pybind11;

namespace {

// Below this many values the loop takes a few microseconds at most: releasing the GIL would cost more
// than it frees, and re-taking it can wait up to a whole switch interval (5 ms) behind a busy thread.
constexpr std::size_t kReleaseGilMinValues = 16384;

[[noreturn]] void fail_type(const py::str& message) { throw py::type_error(std::string(message)); }
[[noreturn]] void fail_value(const py::str& message) { throw py::value_error(std::string(message)); }

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

// --- RequestSketch ----------------------------------------------------------------------------------
//
// update() runs once per request, so its binding reads the arrays' fields straight from the objects:
// no py::array_t conversion, no reference counting, no allocation and no Python call on the happy path,
// and it is a METH_FASTCALL method of its own rather than a pybind11 method (pybind11's dispatcher
// builds an argument tuple and a bound method per call: about 60 ns of a 250 ns budget). Everything
// that can run Python code (an __index__, a copy, an error message) happens before the first counter
// changes, and nothing releases the GIL, so each call is atomic with respect to the others: HTTP
// threads may update while a timer thread takes snapshots.

namespace sk = edgefleet::sketch;

// The numpy type of an array's elements, as far as the sketch cares.
enum class Real { f32, f64, other };

Real real_type(PyObject* array) noexcept {
    const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(array)->descr);
    const std::uint16_t one = 1;
    unsigned char low_byte = 0;
    std::memcpy(&low_byte, &one, 1);
    const char swapped = low_byte == 1 ? '>' : '<';  // the non-native byte order; folded at compile time
    if (descr->byteorder == swapped) {
        return Real::other;
    }
    if (descr->type_num == py::detail::npy_api::NPY_FLOAT_) {
        return Real::f32;
    }
    return descr->type_num == py::detail::npy_api::NPY_DOUBLE_ ? Real::f64 : Real::other;
}

bool is_array(PyObject* object) { return py::detail::npy_api::get().PyArray_Check_(object); }

int array_flags(PyObject* array) noexcept { return py::detail::array_proxy(array)->flags; }

py::object attr(PyObject* object, const char* name) { return py::handle(object).attr(name); }

py::object type_name(PyObject* object) { return py::type::handle_of(py::handle(object)).attr("__name__"); }

// An array checked to be float32 or float64: TypeError otherwise, with the reference's messages.
Real require_real_array(PyObject* object, const char* name) {
    if (!is_array(object)) {
        fail_type(py::str("{} must be a numpy.ndarray, got {}").format(name, type_name(object)));
    }
    const Real type = real_type(object);
    if (type == Real::other) {
        fail_type(py::str("{} must have dtype float32 or float64, got {}").format(name, attr(object, "dtype")));
    }
    return type;
}

void require_c_contiguous(PyObject* array, const char* name) {
    if ((array_flags(array) & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) == 0) {
        fail_value(py::str("{} must be C-contiguous, got strides {} for shape {}")
                       .format(name, attr(array, "strides"), attr(array, "shape")));
    }
}

// The data of a C-contiguous array; an unaligned one (a view at an odd byte offset, rare) is first
// copied into `keep`, which owns the aligned copy until the call ends.
const void* aligned_data(PyObject* array, py::object& keep) {
    if ((array_flags(array) & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0) {
        return py::detail::array_proxy(array)->data;
    }
    keep = py::handle(array).attr("copy")();
    return py::detail::array_proxy(keep.ptr())->data;
}

// latency_ns as a C integer: anything with __index__, in [0, 2**63).
std::int64_t latency_from(PyObject* object) {
    int overflow = 0;
    const long long value = PyLong_AsLongLongAndOverflow(object, &overflow);
    if (value == -1 && overflow == 0 && PyErr_Occurred() != nullptr) {
        throw py::error_already_set();  // TypeError: not an integer
    }
    if (overflow != 0 || value < 0) {
        const auto index = py::reinterpret_steal<py::object>(PyNumber_Index(object));
        fail_value(py::str("latency_ns must be a non-negative int below 2**63, got {}").format(index));
    }
    return static_cast<std::int64_t>(value);
}

[[noreturn]] void fail_x_layout(const sk::RequestSketch& sketch, PyObject* x, const sk::Layout& layout) {
    const bool elements = sketch.kind() == sk::FeatureKind::elements;
    const py::object shape = attr(x, "shape");
    const auto ndim = static_cast<std::size_t>(py::detail::array_proxy(x)->nd);
    if (ndim < (elements ? 1U : 2U)) {
        fail_value(py::str("x must have shape {} for '{}' features, got shape {}")
                       .format(elements ? "(N, ...)" : "(N, C, ...)", elements ? "elements" : "channel_stats", shape));
    }
    if (elements) {
        fail_value(py::str("x of shape {} has {} features per sample, but feature_edges has {} rows")
                       .format(shape, layout.implied_features, sketch.n_features()));
    }
    fail_value(
        py::str("x of shape {} has {} channels, hence {} 'channel_stats' features, but feature_edges has {} rows")
            .format(shape, layout.channels, layout.implied_features, sketch.n_features()));
}

template <typename T>
void record_with_scores(sk::RequestSketch& sketch, const sk::Batch<T>& batch, Real scores_type, const void* scores,
                        std::int64_t latency_ns) {
    const std::size_t classes = sketch.n_classes();
    if (scores_type == Real::f32) {
        sketch.record(batch, sk::Scores<float>{static_cast<const float*>(scores), batch.rows, classes}, latency_ns);
    } else if (scores_type == Real::f64) {
        sketch.record(batch, sk::Scores<double>{static_cast<const double*>(scores), batch.rows, classes}, latency_ns);
    } else {  // not a classifier: no scores
        sketch.record(batch, sk::Scores<float>{nullptr, 0, 0}, latency_ns);
    }
}

void sketch_update(sk::RequestSketch& sketch, PyObject* x, PyObject* scores, PyObject* latency) {
    const Real x_type = require_real_array(x, "x");
    const auto* x_array = py::detail::array_proxy(x);
    const sk::Layout layout = sketch.layout(x_array->dimensions, static_cast<std::size_t>(x_array->nd));
    if (!layout.fits) {
        fail_x_layout(sketch, x, layout);
    }
    require_c_contiguous(x, "x");

    Real scores_type = Real::other;  // "no scores" unless the sketch counts classes
    if (sketch.n_classes() > 0) {
        if (scores == Py_None) {
            fail_value(py::str("scores must be given: the sketch counts the predictions of {} classes, got None")
                           .format(sketch.n_classes()));
        }
        scores_type = require_real_array(scores, "scores");
        const auto* scores_array = py::detail::array_proxy(scores);
        if (scores_array->nd != 2 || static_cast<std::size_t>(scores_array->dimensions[0]) != layout.rows ||
            static_cast<std::size_t>(scores_array->dimensions[1]) != sketch.n_classes()) {
            fail_value(py::str("scores must have shape (N, n_classes) = ({}, {}) to match x of shape {}, got {}")
                           .format(layout.rows, sketch.n_classes(), attr(x, "shape"), attr(scores, "shape")));
        }
        require_c_contiguous(scores, "scores");
    }
    const std::int64_t latency_ns = latency_from(latency);

    py::object x_copy;
    py::object scores_copy;
    const void* x_data = aligned_data(x, x_copy);
    const void* scores_data = scores_type == Real::other ? nullptr : aligned_data(scores, scores_copy);

    // From here on: no Python calls, so the counters change in one atomic step.
    if (x_type == Real::f32) {
        const sk::Batch<float> batch{static_cast<const float*>(x_data), layout.rows, layout.channels,
                                     layout.per_channel};
        record_with_scores(sketch, batch, scores_type, scores_data, latency_ns);
    } else {
        const sk::Batch<double> batch{static_cast<const double*>(x_data), layout.rows, layout.channels,
                                      layout.per_channel};
        record_with_scores(sketch, batch, scores_type, scores_data, latency_ns);
    }
}

// Binds update's three arguments from a vectorcall (positional, then keywords), like CPython would.
void bind_update_arguments(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, PyObject* (&out)[3]) {
    static constexpr const char* kNames[3] = {"x", "scores", "latency_ns"};
    if (nargs > 3) {
        fail_type(py::str("update() takes 3 arguments ({} given)").format(nargs));
    }
    for (Py_ssize_t i = 0; i < 3; ++i) {
        out[i] = i < nargs ? args[i] : nullptr;
    }
    const Py_ssize_t n_keywords = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < n_keywords; ++k) {
        PyObject* key = PyTuple_GET_ITEM(kwnames, k);
        const auto* slot = std::find_if(std::begin(kNames), std::end(kNames), [key](const char* name) {
            return PyUnicode_CompareWithASCIIString(key, name) == 0;
        });
        if (slot == std::end(kNames)) {
            fail_type(py::str("update() got an unexpected keyword argument {!r}").format(py::handle(key)));
        }
        PyObject*& target = out[slot - std::begin(kNames)];
        if (target != nullptr) {
            fail_type(py::str("update() got multiple values for argument '{}'").format(*slot));
        }
        target = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < 3; ++i) {
        if (out[i] == nullptr) {
            fail_type(py::str("update() missing required argument '{}'").format(kNames[i]));
        }
    }
}

// The C++ sketch of a Python RequestSketch. Checked, because pybind11 hands out raw uninitialised
// memory for an instance whose __init__ never ran (RequestSketch.__new__(RequestSketch)).
sk::RequestSketch& sketch_of(py::handle self) {
    static const py::detail::type_info* const info = py::detail::get_type_info(typeid(sk::RequestSketch));
    if (PyObject_TypeCheck(self.ptr(), info->type) == 0) {
        fail_type(py::str("expected a RequestSketch, got {}").format(type_name(self.ptr())));
    }
    auto* instance = reinterpret_cast<py::detail::instance*>(self.ptr());
    const py::detail::value_and_holder held = instance->get_value_and_holder(info, false);
    if (!held || !held.holder_constructed()) {
        fail_type(py::str("this RequestSketch was never initialised (its __init__ did not run)"));
    }
    return *held.value_ptr<sk::RequestSketch>();
}

// The C entry point: C++ exceptions become Python exceptions here, as in pybind11's own dispatcher.
PyObject* request_sketch_update(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) noexcept {
    try {
        PyObject* argv[3];
        if (nargs == 3 && kwnames == nullptr) {
            argv[0] = args[0], argv[1] = args[1], argv[2] = args[2];
        } else {
            bind_update_arguments(args, nargs, kwnames, argv);
        }
        sketch_update(sketch_of(self), argv[0], argv[1], argv[2]);
        Py_RETURN_NONE;
    } catch (py::error_already_set& err) {
        err.restore();
    } catch (const py::builtin_exception& err) {
        err.set_error();
    } catch (const std::exception& err) {
        PyErr_SetString(PyExc_RuntimeError, err.what());
    } catch (...) {
        PyErr_SetString(PyExc_RuntimeError, "RequestSketch.update(): unknown C++ exception");
    }
    return nullptr;
}

constexpr const char* kUpdateDoc = R"doc(update($self, x, scores, latency_ns)
--

Counts one request: requests += 1, samples += N = x.shape[0], each sample's features binned on
feature_edges, for a classifier each row of scores (N, n_classes) as a predicted class and a binned
confidence, and latency_ns / 1e6 ms binned on latency_edges_ms. x and scores are float32 or float64
C-contiguous numpy arrays; scores are ignored when n_classes == 0. Bad arguments raise TypeError or
ValueError before anything is counted. See edgefleet.cpp_ext.reference.RequestSketchReference.)doc";

PyMethodDef request_sketch_update_def = {
    "update", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&request_sketch_update)),
    METH_FASTCALL | METH_KEYWORDS, kUpdateDoc};

std::vector<double> float64_values(const py::object& array) {
    const auto values = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(array);
    if (!values) {
        throw py::error_already_set();
    }
    return {values.data(), values.data() + values.size()};
}

// Construction is not hot: the reference's sketch_config checks the arguments (one set of rules and
// messages for both classes) and returns float64 C-contiguous edges, which the sketch copies.
sk::RequestSketch make_request_sketch(const py::object& kind, const py::object& feature_edges,
                                      const py::object& confidence_edges, const py::object& latency_edges_ms,
                                      const py::object& n_classes, const py::object& softmax) {
    const py::object config = py::module_::import("edgefleet.cpp_ext.reference")
                                  .attr("sketch_config")(kind, feature_edges, confidence_edges, latency_edges_ms,
                                                         n_classes, softmax);
    const py::object features = config.attr("feature_edges");
    const py::object confidence = config.attr("confidence_edges");
    const py::tuple shape = features.attr("shape");
    return sk::RequestSketch(
        config.attr("kind").cast<std::string>() == "elements" ? sk::FeatureKind::elements
                                                              : sk::FeatureKind::channel_stats,
        float64_values(features), shape[0].cast<std::size_t>(), shape[1].cast<std::size_t>(),
        confidence.is_none() ? std::vector<double>{} : float64_values(confidence),
        float64_values(config.attr("latency_edges_ms")), config.attr("n_classes").cast<std::size_t>(),
        config.attr("softmax").cast<bool>());
}

py::array_t<std::int64_t> new_counts(std::vector<py::ssize_t> shape) { return py::array_t<std::int64_t>(shape); }

void copy_counts(const std::vector<std::int64_t>& from, py::array_t<std::int64_t>& to) noexcept {
    std::copy(from.begin(), from.end(), static_cast<std::int64_t*>(to.mutable_data()));
}

py::dict sketch_snapshot(py::handle self, bool reset) {
    sk::RequestSketch& sketch = sketch_of(self);
    // Allocate first: an allocation may run the garbage collector, hence finalizers, hence let another
    // thread in. The copies and the reset then run without a Python call: one atomic step.
    auto latency = new_counts({static_cast<py::ssize_t>(sketch.latency_counts().size())});
    auto features = new_counts({static_cast<py::ssize_t>(sketch.n_features()),
                                static_cast<py::ssize_t>(sketch.n_edges() + 2)});
    auto predictions = new_counts({static_cast<py::ssize_t>(sketch.prediction_counts().size())});
    auto confidence = new_counts({static_cast<py::ssize_t>(sketch.confidence_counts().size())});
    const std::int64_t requests = sketch.requests();
    const std::int64_t samples = sketch.samples();
    const std::int64_t errors = sketch.errors();
    copy_counts(sketch.latency_counts(), latency);
    copy_counts(sketch.feature_counts(), features);
    copy_counts(sketch.prediction_counts(), predictions);
    copy_counts(sketch.confidence_counts(), confidence);
    if (reset) {
        sketch.reset();
    }
    py::dict out;
    out["requests"] = requests;
    out["samples"] = samples;
    out["errors"] = errors;
    out["latency"] = latency;
    out["features"] = features;
    out["predictions"] = predictions;
    out["confidence"] = confidence;
    return out;
}

void bind_request_sketch(py::module_& m) {
    py::class_<sk::RequestSketch> cls(m, "RequestSketch", R"doc(
RequestSketch(kind, feature_edges, confidence_edges, latency_edges_ms, n_classes, softmax)

The telemetry counters of one model input over one window, updated once per request by update(x,
scores, latency_ns) (native, no allocation) and error(latency_ns), read by snapshot(reset=True).
kind is "elements" or "channel_stats" (core.profile.feature_kind); feature_edges (F, E) the reference
profile's edges; confidence_edges (Ec,) or None when n_classes == 0; latency_edges_ms (L,); softmax:
scores are logits. Calls hold the GIL, so each is atomic with respect to the others. Semantics and
argument checks: edgefleet.cpp_ext.reference.RequestSketchReference.)doc");
    cls.def(py::init(&make_request_sketch), py::arg("kind"), py::arg("feature_edges"), py::arg("confidence_edges"),
            py::arg("latency_edges_ms"), py::arg("n_classes"), py::arg("softmax"));
    cls.def(
        "error",
        [](py::handle self, py::handle latency_ns) {
            sk::RequestSketch& sketch = sketch_of(self);
            sketch.record_error(latency_from(latency_ns.ptr()));
        },
        py::arg("latency_ns"), "A failed request: requests += 1, errors += 1, latency binned.");
    cls.def("snapshot", &sketch_snapshot, py::arg("reset") = true,
            "The counts so far as a dict of copies (requests, samples, errors, latency, features, predictions, "
            "confidence); reset=True zeroes them in the same atomic step.");
    const auto update = py::reinterpret_steal<py::object>(
        PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), &request_sketch_update_def));
    if (!update) {
        throw py::error_already_set();
    }
    cls.attr("update") = update;
}

// --- GraphExecutor (the native backend) ------------------------------------------------------------
//
// Construction converts the Python description (edgefleet.cpp_ext.graph_native builds it from a graph
// file) into the plain C++ executor of graph.hpp. run(feed) is the hot path: one call that reads the
// input arrays in place (a copy only for a non-contiguous or unaligned array), finds the cached plan for
// their shapes, allocates the output arrays and runs every node into them, holding the GIL (the models
// are small; the executor's buffers are reused from call to call, so calls must not overlap).

namespace gr = edgefleet::graph;

int numpy_type(gr::DType dtype) {
    switch (dtype) {
        case gr::DType::f32: return py::detail::npy_api::NPY_FLOAT_;
        case gr::DType::i8: return py::detail::npy_api::NPY_BYTE_;
        case gr::DType::u8: return py::detail::npy_api::NPY_UBYTE_;
        case gr::DType::i32: return py::detail::npy_api::NPY_INT32_;
        case gr::DType::i64: return py::detail::npy_api::NPY_INT64_;
    }
    return 0;
}

gr::Attr to_attr(const py::handle& value, const std::string& name) {
    gr::Attr attr;
    if (py::isinstance<py::bool_>(value) || py::isinstance<py::int_>(value)) {
        attr.kind = gr::Attr::Kind::i;
        attr.i = value.cast<std::int64_t>();
    } else if (py::isinstance<py::float_>(value)) {
        attr.kind = gr::Attr::Kind::f;
        attr.f = value.cast<double>();
    } else if (py::isinstance<py::str>(value)) {
        attr.kind = gr::Attr::Kind::s;
        attr.s = value.cast<std::string>();
    } else if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
        bool ints = true;
        for (const py::handle item : value) ints = ints && (py::isinstance<py::int_>(item) || py::isinstance<py::bool_>(item));
        attr.kind = ints ? gr::Attr::Kind::ints : gr::Attr::Kind::floats;
        for (const py::handle item : value) {
            if (ints) attr.ints.push_back(item.cast<std::int64_t>());
            else attr.floats.push_back(item.cast<double>());
        }
    } else {
        fail_type(py::str("attribute {} has an unsupported type {}").format(name, type_name(value.ptr())));
    }
    return attr;
}

bool has_dtype(const py::array& array, gr::DType dtype) {
    const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(array.ptr())->descr);
    return descr->type_num == numpy_type(dtype) && descr->byteorder != '>';
}

gr::Constant to_constant(const py::handle& object, gr::DType dtype) {
    const auto array = py::array::ensure(object, py::array::c_style);
    if (!array || !has_dtype(array, dtype)) {
        fail_type(py::str("constant must be a numpy array of {}").format(gr::dtype_name(dtype)));
    }
    gr::Constant constant;
    constant.dtype = dtype;
    constant.shape.assign(array.shape(), array.shape() + array.ndim());
    const auto bytes = static_cast<std::size_t>(array.nbytes());
    constant.storage = gr::aligned_buffer(bytes);
    if (bytes) std::memcpy(constant.storage.get(), array.data(), bytes);
    return constant;
}

class PyGraphExecutor {
public:
    PyGraphExecutor(const py::list& values, const py::list& inputs, const py::list& outputs,
                    const py::dict& constants, const py::list& nodes, int threads) {
        std::vector<std::string> names;
        std::vector<gr::DType> dtypes;
        for (const py::handle value : values) {
            const auto pair = value.cast<py::tuple>();
            names.push_back(pair[0].cast<std::string>());
            dtypes.push_back(gr::dtype_from_name(pair[1].cast<std::string>()));
        }
        std::map<int, gr::Constant> consts;
        for (const auto& [key, array] : constants) {
            const int id = key.cast<int>();
            if (id < 0 || id >= static_cast<int>(dtypes.size())) fail_value(py::str("constant id out of range"));
            consts.emplace(id, to_constant(array, dtypes[static_cast<std::size_t>(id)]));
        }
        std::vector<gr::NodeSpec> specs;
        for (const py::handle node : nodes) {
            const auto t = node.cast<py::tuple>();
            gr::NodeSpec spec;
            spec.op = t[0].cast<std::string>();
            spec.name = t[1].cast<std::string>();
            spec.inputs = t[2].cast<std::vector<int>>();
            spec.output = t[3].cast<int>();
            for (const auto& [key, value] : t[4].cast<py::dict>()) {
                const auto attr_name = key.cast<std::string>();
                spec.attrs.set(attr_name, to_attr(value, attr_name));
            }
            specs.push_back(std::move(spec));
        }
        exec_ = std::make_unique<gr::Executor>(std::move(names), std::move(dtypes), inputs.cast<std::vector<int>>(),
                                               outputs.cast<std::vector<int>>(), std::move(consts), std::move(specs));
        exec_->set_threads(threads);
        for (std::size_t i = 0; i < exec_->input_count(); ++i) input_keys_.emplace_back(exec_->input_name(i));
        for (std::size_t i = 0; i < exec_->output_count(); ++i) output_keys_.emplace_back(exec_->output_name(i));
        shapes_.resize(exec_->input_count());
        shape_ptrs_.resize(exec_->input_count());
        data_.resize(exec_->input_count());
        keep_.resize(exec_->input_count());
        out_data_.resize(exec_->output_count());
    }

    py::dict run(const py::handle& feed) {
        if (!PyDict_Check(feed.ptr())) {
            fail_type(py::str("inputs must be a dict of name -> numpy array, got {}").format(type_name(feed.ptr())));
        }
        for (std::size_t i = 0; i < input_keys_.size(); ++i) {
            PyObject* object = PyDict_GetItemWithError(feed.ptr(), input_keys_[i].ptr());
            if (object == nullptr) {
                if (PyErr_Occurred() != nullptr) throw py::error_already_set();
                throw py::key_error(std::string(py::str("missing input {!r}").format(input_keys_[i])));
            }
            object = input_array(object, i);
            const auto* array = py::detail::array_proxy(object);
            shapes_[i].assign(array->dimensions, array->dimensions + array->nd);
            shape_ptrs_[i] = &shapes_[i];
            data_[i] = array->data;
        }
        gr::Plan* plan = nullptr;
        try {
            plan = const_cast<gr::Plan*>(&exec_->plan(shape_ptrs_, data_));
        } catch (const gr::GraphError& err) {
            fail_value(py::str(err.what()));
        }
        py::dict result;
        for (std::size_t o = 0; o < output_keys_.size(); ++o) {
            const gr::Shape& shape = exec_->output_shape(*plan, o);
            auto& api = py::detail::npy_api::get();
            PyObject* descr = api.PyArray_DescrFromType_(numpy_type(exec_->output_dtype(o)));
            std::vector<Py_intptr_t> dims(shape.begin(), shape.end());
            PyObject* made = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, static_cast<int>(dims.size()),
                                                       dims.data(), nullptr, nullptr, 0, nullptr);
            if (made == nullptr) throw py::error_already_set();
            auto array = py::reinterpret_steal<py::object>(made);
            out_data_[o] = py::detail::array_proxy(made)->data;
            result[output_keys_[o]] = std::move(array);
        }
        try {  // a run-time refusal (a token id past the embedding table) is the caller's bad input
            exec_->run(*plan, data_, out_data_);
        } catch (const gr::GraphError& err) {
            for (py::object& kept : keep_) kept = py::object();
            fail_value(py::str(err.what()));
        }
        for (py::object& kept : keep_) kept = py::object();
        return result;
    }

    // Runs `runs` times and returns [(op, node name, mean microseconds)] in execution order.
    py::list profile(const py::handle& feed, int runs) {
        if (runs < 1) fail_value(py::str("runs must be >= 1"));
        exec_->set_profiling(true);
        try {
            for (int r = 0; r < runs; ++r) run(feed);
        } catch (...) {
            exec_->set_profiling(false);
            throw;
        }
        exec_->set_profiling(false);
        py::list out;
        for (std::size_t n = 0; n < exec_->node_count(); ++n) {
            out.append(py::make_tuple(exec_->node(n).op, exec_->node(n).name, exec_->node_ns()[n] / 1e3 / runs));
        }
        return out;
    }

    int threads() const { return exec_->threads(); }
    int parallel_nodes() const { return exec_->parallel_nodes(); }
    std::size_t arena_bytes() const { return exec_->arena_bytes(); }
    std::vector<std::string> input_names() const { return names(true); }
    std::vector<std::string> output_names() const { return names(false); }
    std::size_t cached_plans() const { return exec_->cached_plans(); }

private:
    std::vector<std::string> names(bool inputs) const {
        std::vector<std::string> out;
        const std::size_t count = inputs ? exec_->input_count() : exec_->output_count();
        for (std::size_t i = 0; i < count; ++i) out.push_back(inputs ? exec_->input_name(i) : exec_->output_name(i));
        return out;
    }

    // The input as an aligned C-contiguous array of the declared dtype (a copy only if the layout needs it).
    PyObject* input_array(PyObject* object, std::size_t i) {
        const gr::DType want = exec_->input_dtype(i);
        if (!is_array(object)) {
            fail_type(py::str("input {!r} must be a numpy.ndarray, got {}").format(input_keys_[i], type_name(object)));
        }
        const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(object)->descr);
        if (descr->type_num != numpy_type(want) || descr->byteorder == '>') {
            fail_type(py::str("input {!r} must have dtype {}, got {}")
                          .format(input_keys_[i], gr::dtype_name(want), attr(object, "dtype")));
        }
        const int needed = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
        if ((array_flags(object) & needed) != needed) {
            keep_[i] = py::module_::import("numpy").attr("ascontiguousarray")(py::handle(object));
            return keep_[i].ptr();
        }
        return object;
    }

    std::unique_ptr<gr::Executor> exec_;
    std::vector<py::str> input_keys_;
    std::vector<py::str> output_keys_;
    std::vector<gr::Shape> shapes_;
    std::vector<const gr::Shape*> shape_ptrs_;
    std::vector<const void*> data_;
    std::vector<py::object> keep_;
    std::vector<void*> out_data_;
};

void bind_graph(py::module_& m) {
    py::class_<PyGraphExecutor>(m, "GraphExecutor", R"doc(
GraphExecutor(values, inputs, outputs, constants, nodes, threads=1)

The native backend's graph executor. Build it with edgefleet.cpp_ext.graph_native.load_executor(graph),
which turns a graph_format.Graph into these arguments: values [(name, dtype)], inputs and outputs (value
ids), constants {id: array}, nodes [(op, name, [input ids, -1 if absent], output id, attrs)]. Unsupported
ops or attributes raise ValueError here, at load, naming the node. threads: kernel threads including the
caller's (1: no worker threads).)doc")
        .def(py::init([](const py::list& values, const py::list& inputs, const py::list& outputs,
                         const py::dict& constants, const py::list& nodes, int threads) {
                 try {
                     return std::make_unique<PyGraphExecutor>(values, inputs, outputs, constants, nodes, threads);
                 } catch (const gr::GraphError& err) {
                     throw py::value_error(err.what());
                 }
             }),
             py::arg("values"), py::arg("inputs"), py::arg("outputs"), py::arg("constants"), py::arg("nodes"),
             py::arg("threads") = 1)
        .def("profile", &PyGraphExecutor::profile, py::arg("inputs"), py::arg("runs") = 100,
             "Runs the graph `runs` times; returns [(op, node name, mean microseconds per run)] per node.")
        .def_property_readonly("threads", &PyGraphExecutor::threads)
        .def_property_readonly("parallel_nodes", &PyGraphExecutor::parallel_nodes,
                               "Nodes of the last run that split their work across the thread pool (0 at "
                               "threads=1, and when no node of the model is worth splitting: then its runs "
                               "leave the pool's workers asleep).")
        .def_property_readonly("arena_bytes", &PyGraphExecutor::arena_bytes,
                               "Bytes the intermediate values of the last plan take (values whose lifetimes "
                               "do not overlap share them).")
        .def("run", &PyGraphExecutor::run, py::arg("inputs"),
             "Runs the graph: inputs {name: array of the declared dtype}; returns {output name: new array}.")
        .def_property_readonly("input_names", &PyGraphExecutor::input_names)
        .def_property_readonly("output_names", &PyGraphExecutor::output_names)
        .def_property_readonly("cached_plans", &PyGraphExecutor::cached_plans,
                               "How many input-shape plans are cached (at most 8).");
    m.def("graph_isa", []() { return std::string(gr::kernels::active().isa); },
          "The ISA of the graph kernels in use: 'avx512', 'avxvnni', 'avx2', 'neon' or 'portable'.");
    m.def(
        "graph_select_isa",
        [](const std::string& name) {
            try {
                return gr::kernels::select_isa(name);
            } catch (const std::invalid_argument& err) {
                throw py::value_error(err.what());
            }
        },
        py::arg("name"), "Picks the graph kernels: 'auto', 'portable' or 'avx2'; returns the ISA now in use.");
    m.def(
        "graph_peak_gflops",
        [](const std::string& isa, double seconds) {
            try {
                py::gil_scoped_release release;
                return gr::kernels::peak_gflops(isa, seconds);
            } catch (const std::invalid_argument& err) {
                throw py::value_error(err.what());
            }
        },
        py::arg("isa"), py::arg("seconds") = 0.2,
        "One core's measured fp32 peak in GFLOP/s for an ISA (a register-only multiply-add loop).");
    m.def("graph_available_isas", []() { return gr::kernels::available_isas(); },
          "The graph kernel ISAs this CPU runs, best first, comma-separated.");
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
    bind_request_sketch(m);
    bind_graph(m);
}
