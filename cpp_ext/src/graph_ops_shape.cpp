// Shape ops on any dtype: Flatten, Reshape, Squeeze, Unsqueeze, Identity (views: no copy), Transpose,
// Concat.
#include <cstring>

#include "graph_ops_more.hpp"

namespace edgefleet::graph {
namespace {

// int64 values known at plan time (a constant or a graph input), e.g. Reshape's shape.
std::vector<std::int64_t> known_ints(const View& view, const char* what) {
    EF_REQUIRE(view.data != nullptr, std::string(what) + " must be a constant or a graph input");
    const auto* values = view.as<std::int64_t>();
    return {values, values + view.size()};
}

class ViewOp : public Op {
public:
    ViewOp(std::string op, const Attrs& attrs) : op_(std::move(op)), attrs_(attrs) {}
    bool is_view() const override { return true; }
    void run(const std::vector<View>&, const View&, void*) const override {}

    Shape infer(const std::vector<View>& in) const override {
        const Shape& x = *in[0].shape;
        const auto rank = static_cast<std::int64_t>(x.size());
        if (op_ == "Identity") return x;
        if (op_ == "Flatten") {
            const std::int64_t axis = attrs_.get_int("axis", 1);
            EF_REQUIRE(axis >= -rank && axis <= rank, "axis " + std::to_string(axis) + " out of range");
            const auto split = static_cast<std::ptrdiff_t>(axis < 0 ? axis + rank : axis);
            return {numel(Shape(x.begin(), x.begin() + split)), numel(Shape(x.begin() + split, x.end()))};
        }
        if (op_ == "Reshape") return reshape(x, known_ints(in[1], "Reshape's shape"));
        if (op_ == "Squeeze") {
            const bool given = in.size() > 1 && (in[1].data != nullptr || !in[1].shape->empty());
            return squeeze(x, given ? known_ints(in[1], "Squeeze's axes") : std::vector<std::int64_t>{}, given);
        }
        return unsqueeze(x, known_ints(in[1], "Unsqueeze's axes"));
    }

private:
    Shape reshape(const Shape& x, const std::vector<std::int64_t>& target) const {
        const bool allow_zero = attrs_.get_int("allowzero", 0) != 0;
        Shape out;
        int infer_at = -1;
        for (std::size_t i = 0; i < target.size(); ++i) {
            std::int64_t d = target[i];
            if (d == 0 && !allow_zero) {
                EF_REQUIRE(i < x.size(), "shape has 0 at a position the input lacks");
                d = x[i];
            }
            if (d == -1) {
                EF_REQUIRE(infer_at < 0, "shape has more than one -1");
                infer_at = static_cast<int>(i);
                d = 1;
            }
            EF_REQUIRE(d >= 0, "invalid shape value " + std::to_string(target[i]));
            out.push_back(d);
        }
        const std::int64_t total = numel(x), known = numel(out);
        if (infer_at >= 0) {
            EF_REQUIRE(known != 0 && total % known == 0, "cannot reshape " + shape_str(x) + " into the shape given");
            out[static_cast<std::size_t>(infer_at)] = total / known;
        }
        EF_REQUIRE(numel(out) == total, "cannot reshape " + shape_str(x) + " into " + shape_str(out));
        return out;
    }

    static Shape squeeze(const Shape& x, const std::vector<std::int64_t>& axes, bool given) {
        const auto rank = static_cast<std::int64_t>(x.size());
        std::vector<bool> drop(x.size(), false);
        if (!given) {
            for (std::size_t i = 0; i < x.size(); ++i) drop[i] = x[i] == 1;
        }
        for (const std::int64_t a : axes) {
            const auto axis = static_cast<std::size_t>(normalize_axis(a, rank));
            EF_REQUIRE(x[axis] == 1, "cannot squeeze axis " + std::to_string(a) + " of size " + std::to_string(x[axis]));
            drop[axis] = true;
        }
        Shape out;
        for (std::size_t i = 0; i < x.size(); ++i) {
            if (!drop[i]) out.push_back(x[i]);
        }
        return out;
    }

    static Shape unsqueeze(const Shape& x, const std::vector<std::int64_t>& axes) {
        const auto rank = static_cast<std::int64_t>(x.size() + axes.size());
        std::vector<bool> inserted(static_cast<std::size_t>(rank), false);
        for (const std::int64_t a : axes) {
            const auto axis = static_cast<std::size_t>(normalize_axis(a, rank));
            EF_REQUIRE(!inserted[axis], "repeated axis in Unsqueeze");
            inserted[axis] = true;
        }
        Shape out;
        std::size_t next = 0;
        for (std::size_t i = 0; i < inserted.size(); ++i) out.push_back(inserted[i] ? 1 : x[next++]);
        return out;
    }

    std::string op_;
    Attrs attrs_;
};

class TransposeOp : public Op {
public:
    explicit TransposeOp(const Attrs& attrs) : perm_(attrs.get_ints("perm", {})) {}

    std::vector<std::int64_t> perm(std::size_t rank) const {
        std::vector<std::int64_t> p = perm_;
        if (p.empty()) {
            for (std::size_t i = rank; i-- > 0;) p.push_back(static_cast<std::int64_t>(i));
        }
        EF_REQUIRE(p.size() == rank, "perm must have one entry per dimension");
        std::vector<bool> seen(rank, false);
        for (const std::int64_t v : p) {
            EF_REQUIRE(v >= 0 && v < static_cast<std::int64_t>(rank) && !seen[static_cast<std::size_t>(v)],
                    "perm must be a permutation of the axes");
            seen[static_cast<std::size_t>(v)] = true;
        }
        return p;
    }

    Shape infer(const std::vector<View>& in) const override {
        const Shape& x = *in[0].shape;
        Shape out;
        for (const std::int64_t a : perm(x.size())) out.push_back(x[static_cast<std::size_t>(a)]);
        return out;
    }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& x = *in[0].shape;
        const Shape& y = *out.shape;
        const auto p = perm(x.size());
        std::vector<std::int64_t> in_strides(x.size(), 1);
        for (std::size_t i = x.size(); i-- > 1;) in_strides[i - 1] = in_strides[i] * x[i];
        std::vector<std::int64_t> strides;  // input stride of each output axis
        for (const std::int64_t a : p) strides.push_back(in_strides[static_cast<std::size_t>(a)]);
        strided_copy(in[0].data, out.data, y, strides, 0, dtype_size(in[0].dtype));
    }

private:
    std::vector<std::int64_t> perm_;
};

class ConcatOp : public Op {
public:
    explicit ConcatOp(const Attrs& attrs) : axis_(attrs.get_int("axis", 0)) {}

    Shape infer(const std::vector<View>& in) const override {
        Shape out = *in[0].shape;
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(out.size())));
        for (std::size_t i = 1; i < in.size(); ++i) {
            const Shape& s = *in[i].shape;
            bool fits = s.size() == out.size();
            for (std::size_t d = 0; fits && d < s.size(); ++d) fits = d == axis || s[d] == out[d];
            EF_REQUIRE(fits, "input " + std::to_string(i) + " " + shape_str(s) + " does not fit " +
                                 shape_str(*in[0].shape) + " on any axis but " + std::to_string(axis_));
            out[axis] += s[axis];
        }
        return out;
    }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& y = *out.shape;
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(y.size())));
        const std::int64_t outer = numel(Shape(y.begin(), y.begin() + static_cast<std::ptrdiff_t>(axis)));
        const std::int64_t item = static_cast<std::int64_t>(dtype_size(out.dtype));
        const std::int64_t inner = numel(Shape(y.begin() + static_cast<std::ptrdiff_t>(axis) + 1, y.end())) * item;
        auto* dst = static_cast<char*>(out.data);
        for (std::int64_t o = 0; o < outer; ++o) {
            for (const View& v : in) {
                const std::int64_t bytes = (*v.shape)[axis] * inner;
                if (bytes) std::memcpy(dst, static_cast<const char*>(v.data) + o * bytes, static_cast<std::size_t>(bytes));
                dst += bytes;
            }
        }
    }

private:
    std::int64_t axis_;
};

}  // namespace

std::unique_ptr<Op> make_shape_op(const NodeSpec& spec, const std::vector<DType>&,
                                  const std::vector<const Constant*>&) {
    const std::string& op = spec.op;
    if (op == "Identity" || op == "Flatten" || op == "Reshape" || op == "Squeeze" || op == "Unsqueeze") {
        return std::make_unique<ViewOp>(op, spec.attrs);
    }
    if (op == "Transpose") return std::make_unique<TransposeOp>(spec.attrs);
    if (op == "Concat") return std::make_unique<ConcatOp>(spec.attrs);
    return nullptr;
}

}  // namespace edgefleet::graph
