// GraphExecutor of module `edgefleet.cpp_ext._native`, the native backend (bindings.hpp).
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

#include "bindings.hpp"

namespace py = pybind11;
using edgefleet::bindings::array_flags;
using edgefleet::bindings::attr;
using edgefleet::bindings::is_array;
using edgefleet::bindings::type_name;
using edgefleet::bindings::fail_type;
using edgefleet::bindings::fail_value;

namespace {

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

}  // namespace

namespace edgefleet::bindings {

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

}  // namespace edgefleet::bindings
