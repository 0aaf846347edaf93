// The native backend's graph executor: plain C++17, no pybind11 (bindings.cpp is the Python face).
//
// A graph is a list of values (graph inputs, constants, node outputs) and nodes in execution order; the
// ops are those of edgefleet/cpp_ext/graph_ops.py with the semantics of graph_reference.py. Running
// a graph needs a Plan for the input shapes: every value's shape, one arena for the intermediate
// values (values whose lifetimes do not overlap share bytes) and the largest scratch any node needs. Plans are cached per input shapes, so a steady stream of
// same-shaped requests allocates nothing after the first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "graph_threads.hpp"

namespace edgefleet::graph {

enum class DType : std::uint8_t { f32, i8, u8, i32, i64 };

std::size_t dtype_size(DType dtype);
DType dtype_from_name(const std::string& name);  // "float32", "int8", ...; GraphError otherwise
const char* dtype_name(DType dtype);

using Shape = std::vector<std::int64_t>;
std::int64_t numel(const Shape& shape);
std::string shape_str(const Shape& shape);

struct GraphError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Node attributes: int, float, string, or lists of ints or floats (as in the graph file's JSON).
struct Attr {
    enum class Kind { i, f, s, ints, floats } kind = Kind::i;
    std::int64_t i = 0;
    double f = 0.0;
    std::string s;
    std::vector<std::int64_t> ints;
    std::vector<double> floats;
};

class Attrs {
public:
    void set(const std::string& name, Attr value) { values_[name] = std::move(value); }
    bool has(const std::string& name) const { return values_.count(name) != 0; }
    std::int64_t get_int(const std::string& name, std::int64_t fallback) const;
    double get_float(const std::string& name, double fallback) const;
    std::string get_str(const std::string& name, const std::string& fallback) const;
    std::vector<std::int64_t> get_ints(const std::string& name, const std::vector<std::int64_t>& fallback) const;

private:
    std::map<std::string, Attr> values_;
};

// A tensor as an op sees it: dtype, shape, data (null at plan time for values not known before run).
struct View {
    DType dtype = DType::f32;
    const Shape* shape = nullptr;
    void* data = nullptr;

    template <typename T>
    T* as() const { return static_cast<T*>(data); }
    std::int64_t size() const { return numel(*shape); }
};

// A constant: owned, 64-byte aligned.
struct Constant {
    DType dtype = DType::f32;
    Shape shape;
    std::shared_ptr<void> storage;
    const void* data() const { return storage.get(); }
};
std::shared_ptr<void> aligned_buffer(std::size_t bytes);

// One op instance. Constructed once (it may pre-pack its constant inputs), then for each plan asked for
// its output shape and scratch size, then run with views whose data is set.
class Op {
public:
    virtual ~Op() = default;
    // The output shape for these inputs (views carry data when it is known at plan time: constants and
    // graph inputs); GraphError with a clear message when the shapes do not fit the op.
    virtual Shape infer(const std::vector<View>& in) const = 0;
    virtual std::size_t scratch_bytes(const std::vector<View>& /*in*/, const Shape& /*out*/) const { return 0; }
    // true: the output is input 0's bytes under another shape (Reshape, Flatten, ...); run is not called.
    virtual bool is_view() const { return false; }
    virtual void run(const std::vector<View>& in, const View& out, void* scratch) const = 0;
};

struct NodeSpec {
    std::string op;
    std::string name;
    std::vector<int> inputs;  // value ids, -1 for an absent optional input
    int output = -1;
    Attrs attrs;
};

// Builds an op; `constants[i]` is the constant behind input i or null. GraphError if unsupported.
std::unique_ptr<Op> make_op(const NodeSpec& spec, const std::vector<DType>& input_dtypes, DType output_dtype,
                            const std::vector<const Constant*>& constants);

struct Plan {
    std::vector<std::int64_t> key;
    std::vector<Shape> shapes;             // per value
    std::vector<std::vector<View>> args;   // per node: its input views (data set at run)
    std::vector<std::size_t> offsets;      // per value: arena offset, or SIZE_MAX
    std::shared_ptr<void> arena;
    std::size_t scratch_offset = 0;  // = the bytes the intermediate values take (after reuse)
    // Nodes that split across the pool in this plan's first run, or -1 before it. Whether a node splits
    // depends only on its shapes (its work, graph_threads.hpp), so the first run tells every later one:
    // at 0, later runs leave the pool asleep and run on the caller alone, as at threads = 1.
    int parallel_nodes = -1;
};

class Executor {
public:
    // value_dtypes: every value's dtype (by id); inputs, outputs: value ids; constants: id -> constant.
    Executor(std::vector<std::string> value_names, std::vector<DType> value_dtypes, std::vector<int> inputs,
             std::vector<int> outputs, std::map<int, Constant> constants, std::vector<NodeSpec> nodes);

    std::size_t input_count() const { return inputs_.size(); }
    std::size_t output_count() const { return outputs_.size(); }
    DType input_dtype(std::size_t i) const { return dtypes_[inputs_[i]]; }
    DType output_dtype(std::size_t i) const { return dtypes_[outputs_[i]]; }
    const std::string& input_name(std::size_t i) const { return names_[inputs_[i]]; }
    const std::string& output_name(std::size_t i) const { return names_[outputs_[i]]; }
    std::size_t cached_plans() const { return plans_.size(); }
    // Bytes of intermediate values in the most recently used plan (0 before the first run).
    std::size_t arena_bytes() const { return plans_.empty() ? 0 : plans_[0]->scratch_offset; }

    // The plan for these input shapes (int64 inputs' values are part of the key: they may be shapes).
    const Plan& plan(const std::vector<const Shape*>& shapes, const std::vector<const void*>& data);
    const Shape& output_shape(const Plan& plan, std::size_t i) const { return plan.shapes[outputs_[i]]; }
    // Runs the plan: input data in input order, output buffers (of the plan's output shapes) in output order.
    void run(Plan& plan, const std::vector<const void*>& input_data, const std::vector<void*>& output_data);

    static constexpr std::size_t kMaxPlans = 8;

    // Threads for the kernels (graph_threads.hpp): 1 (the default) runs on the caller alone. Drops the
    // cached plans (scratch space grows with the thread count).
    void set_threads(int threads);
    int threads() const { return pool_ ? pool_->size() : 1; }
    // Per-node timing: when on, run adds each node's wall time (ns) to node_ns() (zeroed on enabling).
    void set_profiling(bool on);
    const std::vector<double>& node_ns() const { return node_ns_; }
    // Nodes of the last run that split across the pool (0 at threads = 1, and for a model whose every
    // node is below the work worth splitting: its runs do not wake the pool at all).
    int parallel_nodes() const { return last_parallel_nodes_; }
    const NodeSpec& node(std::size_t n) const { return specs_[n]; }
    std::size_t node_count() const { return specs_.size(); }

private:
    std::unique_ptr<Plan> make_plan(std::vector<std::int64_t> key, const std::vector<const Shape*>& shapes,
                                    const std::vector<const void*>& data);
    // Per value: the index of the last node that reads its bytes (directly or through views of it);
    // SIZE_MAX for graph outputs. The plan frees a value's arena block after that node.
    std::vector<std::size_t> last_reads() const;
    std::size_t bytes_of(const Plan& plan, int value) const;

    std::vector<std::string> names_;
    std::vector<DType> dtypes_;
    std::vector<int> inputs_;
    std::vector<int> outputs_;
    std::map<int, Constant> constants_;
    std::vector<NodeSpec> specs_;
    std::vector<std::unique_ptr<Op>> ops_;
    std::vector<std::unique_ptr<Plan>> plans_;  // most recently used first
    std::vector<void*> ptrs_;                   // per value, during run
    std::vector<char> direct_;                  // per output: written in place by its node
    std::vector<char> shape_input_;             // per graph input: its values are part of the plan key
    std::unique_ptr<ThreadPool> pool_;
    bool profiling_ = false;
    std::vector<double> node_ns_;
    int last_parallel_nodes_ = 0;
};

}  // namespace edgefleet::graph
