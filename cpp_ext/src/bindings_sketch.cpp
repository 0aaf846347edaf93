// RequestSketch of module `edgefleet.cpp_ext._native` (bindings.hpp).
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

#include "sketch.hpp"

#include "bindings.hpp"

namespace py = pybind11;
using edgefleet::bindings::array_flags;
using edgefleet::bindings::attr;
using edgefleet::bindings::is_array;
using edgefleet::bindings::type_name;
using edgefleet::bindings::fail_type;
using edgefleet::bindings::fail_value;

namespace {

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

}  // namespace

namespace edgefleet::bindings {

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

}  // namespace edgefleet::bindings
