// Indexing and reductions: Gather (any dtype, int32/int64 indices: an embedding lookup), Slice and Pad
// (constant | reflect | edge) on any dtype with their index inputs known at plan time, ReduceSum /
// ReduceMean / ReduceMax / ReduceL2 over any axes (float32, sums in double), LayerNormalization (float32,
// one output, statistics in double). Semantics of graph_reference.py (ONNX opset 13-18).
#include <cmath>
#include <limits>

#include "graph_ops_more.hpp"
#include "graph_vecmath.hpp"

namespace edgefleet::graph {
namespace {

std::int64_t index_at(const View& v, std::int64_t i) {
    return v.dtype == DType::i64 ? v.as<std::int64_t>()[i] : v.as<std::int32_t>()[i];
}

class GatherOp : public Op {
public:
    explicit GatherOp(const Attrs& attrs) : axis_(attrs.get_int("axis", 0)) {}
    Shape infer(const std::vector<View>& in) const override {
        const Shape& x = *in[0].shape;
        EF_REQUIRE(in[1].dtype == DType::i64 || in[1].dtype == DType::i32, "indices must be int64 or int32");
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(x.size())));
        Shape out(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(axis));
        out.insert(out.end(), in[1].shape->begin(), in[1].shape->end());
        out.insert(out.end(), x.begin() + static_cast<std::ptrdiff_t>(axis) + 1, x.end());
        return out;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& x = *in[0].shape;
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(x.size())));
        const std::int64_t outer = numel(Shape(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(axis)));
        const std::int64_t size = x[axis];
        const std::int64_t bytes = numel(Shape(x.begin() + static_cast<std::ptrdiff_t>(axis) + 1, x.end())) *
                                   static_cast<std::int64_t>(dtype_size(out.dtype));
        const std::int64_t count = in[1].size();
        const auto* src = static_cast<const char*>(in[0].data);
        auto* dst = static_cast<char*>(out.data);
        for (std::int64_t o = 0; o < outer; ++o) {
            for (std::int64_t i = 0; i < count; ++i) {
                std::int64_t at = index_at(in[1], i);
                EF_REQUIRE(at >= -size && at < size, "Gather: index " + std::to_string(at) +
                                                         " is out of range for size " + std::to_string(size));
                if (at < 0) at += size;
                std::memcpy(dst, src + (o * size + at) * bytes, static_cast<std::size_t>(bytes));
                dst += bytes;
            }
        }
    }

private:
    std::int64_t axis_;
};

// Copies out[index] = x[source(index)] for every output element, where each output axis maps to an
// input position start[d] + index * step[d] (Slice), or through `pick` per axis (Pad's reflect/edge).
class SliceOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override {
        const Shape& x = *in[0].shape;
        std::vector<std::int64_t> start, step;
        return geometry(in, x, start, step);
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& x = *in[0].shape;
        std::vector<std::int64_t> start, step;
        const Shape y = geometry(in, x, start, step);
        const auto item = static_cast<std::int64_t>(dtype_size(out.dtype));
        const auto strides = strides_in(x, x);
        std::int64_t base = 0;
        std::vector<std::int64_t> stride(x.size());
        for (std::size_t d = 0; d < x.size(); ++d) {
            base += start[d] * strides[d];
            stride[d] = step[d] * strides[d];
        }
        strided_copy(in[0].data, out.data, y, stride, base, static_cast<std::size_t>(item));
    }

private:
    static Shape geometry(const std::vector<View>& in, const Shape& x, std::vector<std::int64_t>& start,
                          std::vector<std::int64_t>& step) {
        const auto starts = plan_ints(in[1], "Slice's starts");
        const auto ends = plan_ints(in[2], "Slice's ends");
        const auto rank = static_cast<std::int64_t>(x.size());
        std::vector<std::int64_t> axes, steps;
        if (in.size() > 3 && in[3].data != nullptr) axes = plan_ints(in[3], "Slice's axes");
        if (in.size() > 4 && in[4].data != nullptr) steps = plan_ints(in[4], "Slice's steps");
        if (axes.empty()) {
            for (std::size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<std::int64_t>(i));
        }
        if (steps.empty()) steps.assign(starts.size(), 1);
        EF_REQUIRE(ends.size() == starts.size() && axes.size() == starts.size() && steps.size() == starts.size(),
                   "starts, ends, axes and steps must have one length");
        Shape out = x;
        start.assign(x.size(), 0);
        step.assign(x.size(), 1);
        std::vector<bool> seen(x.size(), false);
        for (std::size_t i = 0; i < axes.size(); ++i) {
            const auto d = static_cast<std::size_t>(normalize_axis(axes[i], rank));
            EF_REQUIRE(!seen[d] && steps[i] != 0, "axes must be distinct and steps nonzero");
            seen[d] = true;
            const std::int64_t n = x[d], s = steps[i];
            std::int64_t b = starts[i] < 0 ? starts[i] + n : starts[i];
            std::int64_t e = ends[i] < 0 ? ends[i] + n : ends[i];
            if (s > 0) {
                b = std::min(std::max<std::int64_t>(b, 0), n);
                e = std::min(std::max<std::int64_t>(e, 0), n);
                out[d] = e > b ? (e - b + s - 1) / s : 0;
            } else {
                b = std::min(std::max<std::int64_t>(b, -1), n - 1);
                e = std::min(std::max<std::int64_t>(e, -1), n - 1);
                out[d] = b > e ? (b - e - s - 1) / -s : 0;
            }
            start[d] = out[d] > 0 ? b : 0;
            step[d] = s;
        }
        return out;
    }
};

class PadOp : public Op {
public:
    explicit PadOp(const Attrs& attrs) : mode_(attrs.get_str("mode", "constant")) {
        EF_REQUIRE(mode_ == "constant" || mode_ == "reflect" || mode_ == "edge",
                   "mode " + mode_ + " is not supported (constant, reflect, edge)");
    }
    Shape infer(const std::vector<View>& in) const override {
        const Shape& x = *in[0].shape;
        const auto pads = resolve(in, x);
        Shape out = x;
        for (std::size_t d = 0; d < x.size(); ++d) {
            out[d] = x[d] + pads[d] + pads[d + x.size()];
            EF_REQUIRE(out[d] >= 0, "the pads remove more than the input holds");
            EF_REQUIRE(mode_ == "constant" || x[d] > 0 || out[d] == 0, "cannot reflect or extend an empty axis");
            EF_REQUIRE(mode_ != "reflect" || (pads[d] < x[d] && pads[d + x.size()] < x[d]) || x[d] == out[d],
                       "reflect pads must be smaller than the axis");
        }
        return out;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& x = *in[0].shape;
        const Shape& y = *out.shape;
        const auto pads = resolve(in, x);
        const auto strides = strides_in(x, x);
        const std::size_t rank = x.size();
        with_dtype(out.dtype, [&](auto tag) {
            using T = decltype(tag);
            T fill = T{};
            if (mode_ == "constant" && in.size() > 2 && in[2].data != nullptr && in[2].size() > 0) fill = *in[2].as<T>();
            const T* src = in[0].as<T>();
            T* dst = out.as<T>();
            const std::int64_t total = numel(y);
            std::vector<std::int64_t> index(rank, 0);
            for (std::int64_t t = 0; t < total; ++t) {
                std::int64_t at = 0;
                bool inside = true;
                for (std::size_t d = 0; d < rank; ++d) {
                    std::int64_t i = index[d] - pads[d];
                    if (i < 0 || i >= x[d]) {
                        if (mode_ == "constant") {
                            inside = false;
                            break;
                        }
                        if (mode_ == "edge") i = i < 0 ? 0 : x[d] - 1;
                        else i = i < 0 ? -i : 2 * (x[d] - 1) - i;
                    }
                    at += i * strides[d];
                }
                dst[t] = inside ? src[at] : fill;
                for (std::size_t d = rank; d-- > 0;) {
                    if (++index[d] < y[d]) break;
                    index[d] = 0;
                }
            }
        });
    }

private:
    // (begin pads of every axis, then end pads), with the optional axes input applied.
    static std::vector<std::int64_t> resolve(const std::vector<View>& in, const Shape& x) {
        const auto given = plan_ints(in[1], "Pad's pads");
        const auto rank = static_cast<std::int64_t>(x.size());
        std::vector<std::int64_t> axes;
        if (in.size() > 3 && in[3].data != nullptr) axes = plan_ints(in[3], "Pad's axes");
        if (axes.empty()) {
            for (std::int64_t d = 0; d < rank; ++d) axes.push_back(d);
        }
        EF_REQUIRE(given.size() == 2 * axes.size(), "pads must hold 2 values per padded axis");
        std::vector<std::int64_t> pads(2 * x.size(), 0);
        for (std::size_t i = 0; i < axes.size(); ++i) {
            const auto d = static_cast<std::size_t>(normalize_axis(axes[i], rank));
            pads[d] = given[i];
            pads[d + x.size()] = given[i + axes.size()];
        }
        return pads;
    }

    std::string mode_;
};

enum class Reduce { sum, mean, max, l2 };

class ReduceOp : public Op {
public:
    ReduceOp(Reduce kind, const Attrs& attrs)
        : kind_(kind), keep_(attrs.get_int("keepdims", 1) != 0), noop_(attrs.get_int("noop_with_empty_axes", 0) != 0) {}
    Shape infer(const std::vector<View>& in) const override {
        const auto kept = reduced(in);
        Shape out;
        for (std::size_t d = 0; d < kept.size(); ++d) {
            if (kept[d] < 0) {
                if (keep_) out.push_back(1);
            } else {
                out.push_back(kept[d]);
            }
        }
        return out;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& x = *in[0].shape;
        const auto kept = reduced(in);
        Shape folded;  // the output with reduced axes kept as 1
        std::int64_t count = 1;
        for (std::size_t d = 0; d < x.size(); ++d) {
            folded.push_back(kept[d] < 0 ? 1 : x[d]);
            if (kept[d] < 0) count *= x[d];
        }
        const std::int64_t n = numel(folded);
        std::vector<double> acc(static_cast<std::size_t>(n),
                                kind_ == Reduce::max ? -std::numeric_limits<double>::infinity() : 0.0);
        const float* src = in[0].as<float>();
        broadcast_loop(x, std::array<const Shape*, 1>{&folded}, [&](std::int64_t i, const std::array<std::int64_t, 1>& at) {
            const double v = src[i];
            double& a = acc[static_cast<std::size_t>(at[0])];
            if (kind_ == Reduce::max) a = std::max(a, v);
            else a += kind_ == Reduce::l2 ? v * v : v;
        });
        float* y = out.as<float>();
        for (std::int64_t i = 0; i < n; ++i) {
            const double a = acc[static_cast<std::size_t>(i)];
            y[i] = static_cast<float>(kind_ == Reduce::mean ? a / static_cast<double>(count)
                                      : kind_ == Reduce::l2 ? std::sqrt(a) : a);
        }
    }

private:
    // Per input axis: its size when kept, -1 when reduced.
    std::vector<std::int64_t> reduced(const std::vector<View>& in) const {
        const Shape& x = *in[0].shape;
        std::vector<std::int64_t> axes;
        if (in.size() > 1 && (in[1].data != nullptr || !in[1].shape->empty())) axes = plan_ints(in[1], "the axes");
        std::vector<std::int64_t> kept(x.begin(), x.end());
        if (axes.empty()) {
            if (!noop_) kept.assign(x.size(), -1);
            return kept;
        }
        for (const std::int64_t a : axes) kept[static_cast<std::size_t>(normalize_axis(a, static_cast<std::int64_t>(x.size())))] = -1;
        if (kind_ == Reduce::max) {
            for (std::size_t d = 0; d < x.size(); ++d) EF_REQUIRE(kept[d] >= 0 || x[d] > 0, "ReduceMax of an empty axis");
        }
        return kept;
    }

    Reduce kind_;
    bool keep_, noop_;
};

class LayerNormOp : public Op {
public:
    explicit LayerNormOp(const Attrs& attrs)
        : axis_(attrs.get_int("axis", -1)), epsilon_(attrs.get_float("epsilon", 1e-5)) {}
    Shape infer(const std::vector<View>& in) const override {
        const Shape& x = *in[0].shape;
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(x.size())));
        const std::int64_t inner = numel(Shape(x.begin() + static_cast<std::ptrdiff_t>(axis), x.end()));
        for (std::size_t i = 1; i < in.size(); ++i) {
            EF_REQUIRE(in[i].data == nullptr || numel(*in[i].shape) == inner || numel(*in[i].shape) == 1,
                       "scale and bias must cover the normalized axes");
        }
        return x;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& x = *in[0].shape;
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(x.size())));
        const std::int64_t inner = numel(Shape(x.begin() + static_cast<std::ptrdiff_t>(axis), x.end()));
        const std::int64_t rows = inner ? numel(x) / inner : 0;
        const float* scale = in[1].as<float>();
        const float* bias = in.size() > 2 && in[2].data != nullptr ? in[2].as<float>() : nullptr;
        const std::int64_t ss = in[1].size() == 1 ? 0 : 1;
        const std::int64_t bs = bias != nullptr && in[2].size() == 1 ? 0 : 1;
        for (std::int64_t r = 0; r < rows; ++r) {
            vecmath::layer_norm_row(in[0].as<float>() + r * inner, out.as<float>() + r * inner, inner, epsilon_, scale,
                                    ss, bias, bs);
        }
    }

private:
    std::int64_t axis_;
    double epsilon_;
};

}  // namespace

std::unique_ptr<Op> make_tensor_op(const NodeSpec& spec, const std::vector<DType>&) {
    const std::string& op = spec.op;
    if (op == "Gather") return std::make_unique<GatherOp>(spec.attrs);
    if (op == "Slice") return std::make_unique<SliceOp>();
    if (op == "Pad") return std::make_unique<PadOp>(spec.attrs);
    if (op == "ReduceSum") return std::make_unique<ReduceOp>(Reduce::sum, spec.attrs);
    if (op == "ReduceMean") return std::make_unique<ReduceOp>(Reduce::mean, spec.attrs);
    if (op == "ReduceMax") return std::make_unique<ReduceOp>(Reduce::max, spec.attrs);
    if (op == "ReduceL2") return std::make_unique<ReduceOp>(Reduce::l2, spec.attrs);
    if (op == "LayerNormalization") return std::make_unique<LayerNormOp>(spec.attrs);
    return nullptr;
}

}  // namespace edgefleet::graph
