// The executor: values, plans per input shapes, and the run loop (see graph.hpp).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>
#include <utility>

#include "graph.hpp"

namespace edgefleet::graph {

std::size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::f32:
        case DType::i32:
            return 4;
        case DType::i8:
        case DType::u8:
            return 1;
        case DType::i64:
            return 8;
    }
    return 1;
}

DType dtype_from_name(const std::string& name) {
    if (name == "float32") return DType::f32;
    if (name == "int8") return DType::i8;
    if (name == "uint8") return DType::u8;
    if (name == "int32") return DType::i32;
    if (name == "int64") return DType::i64;
    throw GraphError("unsupported dtype '" + name + "'");
}

const char* dtype_name(DType dtype) {
    switch (dtype) {
        case DType::f32: return "float32";
        case DType::i8: return "int8";
        case DType::u8: return "uint8";
        case DType::i32: return "int32";
        case DType::i64: return "int64";
    }
    return "?";
}

std::int64_t numel(const Shape& shape) {
    std::int64_t n = 1;
    for (const std::int64_t d : shape) {
        n *= d;
    }
    return n;
}

std::string shape_str(const Shape& shape) {
    std::ostringstream out;
    out << "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        out << (i ? ", " : "") << shape[i];
    }
    out << (shape.size() == 1 ? ",)" : ")");
    return out.str();
}

std::shared_ptr<void> aligned_buffer(std::size_t bytes) {
    constexpr std::size_t kAlign = 64;
    const std::size_t size = std::max<std::size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    void* memory = std::aligned_alloc(kAlign, size);
    if (memory == nullptr) {
        throw std::bad_alloc();
    }
    std::memset(memory, 0, size);
    return std::shared_ptr<void>(memory, &std::free);
}

std::int64_t Attrs::get_int(const std::string& name, std::int64_t fallback) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    if (it->second.kind == Attr::Kind::f) return static_cast<std::int64_t>(it->second.f);
    if (it->second.kind != Attr::Kind::i) throw GraphError("attribute " + name + " must be an int");
    return it->second.i;
}

double Attrs::get_float(const std::string& name, double fallback) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    if (it->second.kind == Attr::Kind::i) return static_cast<double>(it->second.i);
    if (it->second.kind != Attr::Kind::f) throw GraphError("attribute " + name + " must be a float");
    return it->second.f;
}

std::string Attrs::get_str(const std::string& name, const std::string& fallback) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    if (it->second.kind != Attr::Kind::s) throw GraphError("attribute " + name + " must be a string");
    return it->second.s;
}

std::vector<std::int64_t> Attrs::get_ints(const std::string& name, const std::vector<std::int64_t>& fallback) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    if (it->second.kind == Attr::Kind::floats && it->second.floats.empty()) return {};
    if (it->second.kind != Attr::Kind::ints) throw GraphError("attribute " + name + " must be a list of ints");
    return it->second.ints;
}

Executor::Executor(std::vector<std::string> value_names, std::vector<DType> value_dtypes, std::vector<int> inputs,
                   std::vector<int> outputs, std::map<int, Constant> constants, std::vector<NodeSpec> nodes)
    : names_(std::move(value_names)),
      dtypes_(std::move(value_dtypes)),
      inputs_(std::move(inputs)),
      outputs_(std::move(outputs)),
      constants_(std::move(constants)),
      specs_(std::move(nodes)) {
    const int count = static_cast<int>(dtypes_.size());
    auto check_id = [count](int id, const std::string& what) {
        if (id < -1 || id >= count) throw GraphError(what + ": value id out of range");
    };
    for (const int id : inputs_) check_id(id, "graph input");
    for (const int id : outputs_) check_id(id, "graph output");
    for (const auto& [id, constant] : constants_) {
        check_id(id, "constant");
        if (constant.dtype != dtypes_[id]) throw GraphError("constant " + names_[id] + " has the wrong dtype");
    }
    for (const NodeSpec& spec : specs_) {
        std::vector<DType> in_dtypes;
        std::vector<const Constant*> in_constants;
        for (const int id : spec.inputs) {
            check_id(id, "node " + spec.name);
            in_dtypes.push_back(id < 0 ? DType::f32 : dtypes_[id]);
            const auto it = id < 0 ? constants_.end() : constants_.find(id);
            in_constants.push_back(it == constants_.end() ? nullptr : &it->second);
        }
        check_id(spec.output, "node " + spec.name);
        try {
            ops_.push_back(make_op(spec, in_dtypes, dtypes_[spec.output], in_constants));
        } catch (const GraphError& err) {
            throw GraphError(spec.op + " (node '" + spec.name + "'): " + err.what());
        }
    }
    // An int64 input read only as data (token ids into Gather, Cast, Equal) does not shape the plan: keying
    // plans on its values would plan again for every new sentence.
    static const std::vector<std::string> kDataReaders = {"Gather", "Cast", "Equal"};
    for (const int id : inputs_) {
        bool shapes = dtypes_[id] == DType::i64;
        if (shapes && std::find(outputs_.begin(), outputs_.end(), id) == outputs_.end()) {
            shapes = false;
            for (const NodeSpec& spec : specs_) {
                for (std::size_t k = 0; k < spec.inputs.size(); ++k) {
                    const bool data = std::find(kDataReaders.begin(), kDataReaders.end(), spec.op) != kDataReaders.end() &&
                                      (spec.op != "Gather" || k == 1);
                    if (spec.inputs[k] == id && !data) shapes = true;
                }
            }
        }
        shape_input_.push_back(shapes ? 1 : 0);
    }
    ptrs_.assign(dtypes_.size(), nullptr);
    for (const auto& [id, constant] : constants_) {
        ptrs_[id] = const_cast<void*>(constant.data());
    }
}

namespace {

// Memory planning: first-fit over a free list of 64-byte-aligned blocks, so intermediate values whose
// lifetimes do not overlap share bytes. The working set of a CNN then stays a few activations (in L2)
// instead of every activation of the model.
class ArenaPlanner {
public:
    std::size_t take(std::size_t bytes) {
        bytes = round(bytes);
        std::size_t best = free_.size();
        for (std::size_t i = 0; i < free_.size(); ++i) {  // the smallest block that fits
            if (free_[i].second >= bytes && (best == free_.size() || free_[i].second < free_[best].second)) best = i;
        }
        if (best == free_.size()) {
            const std::size_t at = end_;
            end_ += bytes;
            return at;
        }
        const std::size_t at = free_[best].first;
        if (free_[best].second == bytes) {
            free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
        } else {
            free_[best].first += bytes, free_[best].second -= bytes;
        }
        return at;
    }
    void give(std::size_t at, std::size_t bytes) {
        free_.emplace_back(at, round(bytes));
        std::sort(free_.begin(), free_.end());
        std::vector<std::pair<std::size_t, std::size_t>> merged;
        for (const auto& block : free_) {
            if (!merged.empty() && merged.back().first + merged.back().second == block.first) {
                merged.back().second += block.second;
            } else {
                merged.push_back(block);
            }
        }
        free_ = std::move(merged);
    }
    std::size_t size() const { return end_; }

private:
    static std::size_t round(std::size_t bytes) { return std::max<std::size_t>(64, (bytes + 63) / 64 * 64); }
    std::vector<std::pair<std::size_t, std::size_t>> free_;  // (offset, bytes), sorted, merged
    std::size_t end_ = 0;
};

// Makes `pool` the current one on this thread for a scope (ops read it through current_pool()).
class PoolScope {
public:
    explicit PoolScope(ThreadPool* pool) : saved_(current_pool()) { set_current_pool(pool); }
    ~PoolScope() { set_current_pool(saved_); }
    PoolScope(const PoolScope&) = delete;
    PoolScope& operator=(const PoolScope&) = delete;

private:
    ThreadPool* saved_;
};

// Keeps `pool`'s workers awake between the nodes of one run (ThreadPool::begin_run).
class RunScope {
public:
    explicit RunScope(ThreadPool* pool) : pool_(pool) {
        if (pool_ != nullptr) pool_->begin_run();
    }
    ~RunScope() {
        if (pool_ != nullptr) pool_->end_run();
    }
    RunScope(const RunScope&) = delete;
    RunScope& operator=(const RunScope&) = delete;

private:
    ThreadPool* pool_;
};

}  // namespace

std::vector<std::size_t> Executor::last_reads() const {
    std::vector<int> root(dtypes_.size());
    for (std::size_t v = 0; v < root.size(); ++v) root[v] = static_cast<int>(v);
    std::vector<std::size_t> last(dtypes_.size(), 0);
    for (std::size_t n = 0; n < specs_.size(); ++n) {
        for (const int id : specs_[n].inputs) {
            if (id >= 0) last[root[id]] = std::max(last[root[id]], n);
        }
        if (ops_[n]->is_view()) root[specs_[n].output] = root[specs_[n].inputs[0]];
    }
    for (const int id : outputs_) last[root[id]] = std::numeric_limits<std::size_t>::max();
    return last;
}

std::size_t Executor::bytes_of(const Plan& plan, int value) const {
    return static_cast<std::size_t>(numel(plan.shapes[value])) * dtype_size(dtypes_[value]);
}

void Executor::set_threads(int threads) {
    if (threads < 1) throw GraphError("threads must be >= 1, got " + std::to_string(threads));
    if (threads == this->threads()) return;
    pool_.reset();
    if (threads > 1) pool_ = std::make_unique<ThreadPool>(threads);
    plans_.clear();
}

void Executor::set_profiling(bool on) {
    profiling_ = on;
    if (on) node_ns_.assign(specs_.size(), 0.0);
}

const Plan& Executor::plan(const std::vector<const Shape*>& shapes, const std::vector<const void*>& data) {
    const PoolScope scope(pool_.get());  // scratch sizes depend on the thread count
    std::vector<std::int64_t> key;
    for (std::size_t i = 0; i < shapes.size(); ++i) {
        key.push_back(static_cast<std::int64_t>(shapes[i]->size()));
        key.insert(key.end(), shapes[i]->begin(), shapes[i]->end());
        if (shape_input_[i]) {  // e.g. a Reshape's shape: its values shape the plan
            const auto* values = static_cast<const std::int64_t*>(data[i]);
            key.insert(key.end(), values, values + numel(*shapes[i]));
        }
    }
    for (std::size_t p = 0; p < plans_.size(); ++p) {
        if (plans_[p]->key == key) {
            if (p != 0) std::rotate(plans_.begin(), plans_.begin() + static_cast<std::ptrdiff_t>(p),
                                    plans_.begin() + static_cast<std::ptrdiff_t>(p) + 1);
            return *plans_[0];
        }
    }
    std::unique_ptr<Plan> made = make_plan(std::move(key), shapes, data);
    if (plans_.size() >= kMaxPlans) plans_.pop_back();
    plans_.insert(plans_.begin(), std::move(made));
    return *plans_[0];
}

std::unique_ptr<Plan> Executor::make_plan(std::vector<std::int64_t> key, const std::vector<const Shape*>& shapes,
                                          const std::vector<const void*>& data) {
    auto plan = std::make_unique<Plan>();
    plan->key = std::move(key);
    plan->shapes.assign(dtypes_.size(), Shape{});
    std::vector<void*> known(dtypes_.size(), nullptr);  // data known at plan time
    for (const auto& [id, constant] : constants_) {
        plan->shapes[id] = constant.shape;
        known[id] = const_cast<void*>(constant.data());
    }
    for (std::size_t i = 0; i < inputs_.size(); ++i) {
        plan->shapes[inputs_[i]] = *shapes[i];
        known[inputs_[i]] = const_cast<void*>(data[i]);
    }
    constexpr std::size_t kNone = std::numeric_limits<std::size_t>::max();
    plan->offsets.assign(dtypes_.size(), kNone);
    const std::vector<std::size_t> last = last_reads();
    std::vector<int> root(dtypes_.size());  // the value whose bytes a value is (itself, or a view's source)
    for (std::size_t v = 0; v < root.size(); ++v) root[v] = static_cast<int>(v);
    ArenaPlanner arena;
    std::vector<char> freed(dtypes_.size(), 0);  // a value read twice by one node is given back once
    std::size_t scratch = 0;
    for (std::size_t n = 0; n < specs_.size(); ++n) {
        const NodeSpec& spec = specs_[n];
        std::vector<View> args;
        for (const int id : spec.inputs) {
            static const Shape kEmpty;
            args.push_back(id < 0 ? View{DType::f32, &kEmpty, nullptr}
                                  : View{dtypes_[id], &plan->shapes[id], known[id]});
        }
        try {
            plan->shapes[spec.output] = ops_[n]->infer(args);
            scratch = std::max(scratch, ops_[n]->scratch_bytes(args, plan->shapes[spec.output]));
        } catch (const GraphError& err) {
            throw GraphError(spec.op + " (node '" + spec.name + "'): " + err.what());
        }
        for (const std::int64_t d : plan->shapes[spec.output]) {
            if (d < 0) throw GraphError(spec.op + " (node '" + spec.name + "'): negative output dimension");
        }
        if (ops_[n]->is_view()) {
            known[spec.output] = known[spec.inputs[0]];
            root[spec.output] = root[spec.inputs[0]];
        } else {
            const auto bytes = static_cast<std::size_t>(numel(plan->shapes[spec.output])) * dtype_size(dtypes_[spec.output]);
            plan->offsets[spec.output] = arena.take(bytes);
        }
        // Inputs read for the last time here go back to the free list (after the output took its place:
        // an op never writes over its own inputs), and so does an output nothing reads.
        for (const int id : spec.inputs) {
            const int r = id < 0 ? -1 : root[id];
            if (r >= 0 && last[r] == n && plan->offsets[r] != kNone && !freed[r]) {
                arena.give(plan->offsets[r], bytes_of(*plan, r));
                freed[r] = 1;
            }
        }
        const int out = root[spec.output];
        if (!ops_[n]->is_view() && last[out] <= n) arena.give(plan->offsets[out], bytes_of(*plan, out));
        plan->args.push_back(std::move(args));
    }
    plan->scratch_offset = arena.size();
    plan->arena = aligned_buffer(arena.size() + scratch + 64);
    for (auto& args : plan->args) {  // views point at the plan's own shapes; data is set per run
        for (View& view : args) view.data = nullptr;
    }
    return plan;
}

void Executor::run(Plan& plan, const std::vector<const void*>& input_data, const std::vector<void*>& output_data) {
    auto* arena = static_cast<char*>(plan.arena.get());
    constexpr std::size_t kNone = std::numeric_limits<std::size_t>::max();
    for (std::size_t i = 0; i < inputs_.size(); ++i) {
        ptrs_[inputs_[i]] = const_cast<void*>(input_data[i]);
    }
    for (std::size_t v = 0; v < plan.offsets.size(); ++v) {
        if (plan.offsets[v] != kNone) ptrs_[v] = arena + plan.offsets[v];
    }
    // An output computed by a (non-view) node is written straight into the caller's buffer, once.
    direct_.assign(outputs_.size(), 0);
    for (std::size_t o = 0; o < outputs_.size(); ++o) {
        const int id = outputs_[o];
        const bool first = std::find(outputs_.begin(), outputs_.begin() + static_cast<std::ptrdiff_t>(o), id) ==
                           outputs_.begin() + static_cast<std::ptrdiff_t>(o);
        if (plan.offsets[id] != kNone && first) {
            ptrs_[id] = output_data[o];
            direct_[o] = 1;
        }
    }
    void* scratch = arena + plan.scratch_offset;
    // A plan none of whose nodes split runs without the pool: waking its workers (a futex call when they
    // sleep, then a core polling through the run) bought nothing and cost small models up to ~5%.
    ThreadPool* pool = plan.parallel_nodes == 0 ? nullptr : pool_.get();
    const PoolScope scope(pool);
    const RunScope awake(pool);
    int parallel_nodes = 0;
    using Clock = std::chrono::steady_clock;
    for (std::size_t n = 0; n < specs_.size(); ++n) {
        const NodeSpec& spec = specs_[n];
        std::vector<View>& args = plan.args[n];
        for (std::size_t i = 0; i < args.size(); ++i) {
            args[i].data = spec.inputs[i] < 0 ? nullptr : ptrs_[spec.inputs[i]];
        }
        if (ops_[n]->is_view()) {
            ptrs_[spec.output] = args[0].data;
            continue;
        }
        const Clock::time_point start = profiling_ ? Clock::now() : Clock::time_point{};
        const std::uint64_t jobs = pool != nullptr ? pool->jobs() : 0;
        ops_[n]->run(args, View{dtypes_[spec.output], &plan.shapes[spec.output], ptrs_[spec.output]}, scratch);
        if (profiling_) node_ns_[n] += std::chrono::duration<double, std::nano>(Clock::now() - start).count();
        if (pool != nullptr && pool->jobs() != jobs) ++parallel_nodes;
    }
    if (pool != nullptr && plan.parallel_nodes < 0) plan.parallel_nodes = parallel_nodes;
    last_parallel_nodes_ = parallel_nodes;
    for (std::size_t o = 0; o < outputs_.size(); ++o) {
        if (!direct_[o]) {
            const int id = outputs_[o];
            const auto bytes = static_cast<std::size_t>(numel(plan.shapes[id])) * dtype_size(dtypes_[id]);
            if (bytes) std::memcpy(output_data[o], ptrs_[id], bytes);
        }
    }
}

}  // namespace edgefleet::graph
