// What the three binding files of module `edgefleet.cpp_ext._native` share: bindings.cpp (the module and
// histogram_update), bindings_sketch.cpp (RequestSketch) and bindings_graph.cpp (GraphExecutor).
//
// Each binding checks its arguments completely (type, ndim, dtype, shape, layout) before touching any
// memory, with the same messages as the numpy reference in edgefleet/cpp_ext/reference.py, then hands
// raw pointers to the plain C++ kernels. The happy path makes no Python calls and no copies.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

namespace edgefleet::bindings {

namespace py = pybind11;

[[noreturn]] inline void fail_type(const py::str& message) { throw py::type_error(std::string(message)); }
[[noreturn]] inline void fail_value(const py::str& message) { throw py::value_error(std::string(message)); }

// Raw-object helpers of the hot paths (no py::array conversion, no reference counting).
inline bool is_array(PyObject* object) { return py::detail::npy_api::get().PyArray_Check_(object); }
inline int array_flags(PyObject* array) noexcept { return py::detail::array_proxy(array)->flags; }
inline py::object attr(PyObject* object, const char* name) { return py::handle(object).attr(name); }
inline py::object type_name(PyObject* object) {
    return py::type::handle_of(py::handle(object)).attr("__name__");
}

void bind_request_sketch(py::module_& m);  // bindings_sketch.cpp
void bind_graph(py::module_& m);           // bindings_graph.cpp

}  // namespace edgefleet::bindings
