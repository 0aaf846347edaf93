// Element-wise math of transformer encoders and audio models: Erf, Gelu (approximate none | tanh), Sqrt,
// Reciprocal, Exp, Neg (float32); Pow, PRelu (float32, broadcasting); Equal (any dtype -> uint8, the
// format's bool); Where (uint8 condition, any dtype); Cast (between the format's dtypes, float -> int
// truncates toward zero as numpy does); Expand (any dtype). Formulas as graph_reference.py's, in float32.
#include <cmath>

#include "graph_ops_more.hpp"
#include "graph_vecmath.hpp"

namespace edgefleet::graph {

Shape broadcast_shapes(const std::vector<const Shape*>& shapes) {
    std::size_t rank = 0;
    for (const Shape* s : shapes) rank = std::max(rank, s->size());
    Shape out(rank, 1);
    for (const Shape* s : shapes) {
        for (std::size_t i = 0; i < s->size(); ++i) {
            const std::int64_t d = (*s)[i];
            std::int64_t& o = out[i + rank - s->size()];
            EF_REQUIRE(d == o || d == 1 || o == 1, "shapes do not broadcast: " + shape_str(*shapes[0]) + " and " +
                                                       shape_str(*s));
            if (o == 1) o = d;
        }
    }
    return out;
}

std::vector<std::int64_t> strides_in(const Shape& shape, const Shape& out) {
    std::vector<std::int64_t> strides(out.size(), 0);
    std::int64_t stride = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        strides[i + out.size() - shape.size()] = shape[i] == 1 ? 0 : stride;
        stride *= shape[i];
    }
    return strides;
}

std::vector<std::int64_t> plan_ints(const View& view, const char* what) {
    EF_REQUIRE(view.data != nullptr, std::string(what) + " must be a constant or a graph input");
    std::vector<std::int64_t> out;
    const std::int64_t count = view.size();
    EF_REQUIRE(view.dtype == DType::i64 || view.dtype == DType::i32, std::string(what) + " must be int64 or int32");
    for (std::int64_t i = 0; i < count; ++i) {
        out.push_back(view.dtype == DType::i64 ? view.as<std::int64_t>()[i] : view.as<std::int32_t>()[i]);
    }
    return out;
}

namespace {

constexpr float kSqrtTwoOverPi = 0.79788456080286536f;

struct GeluTanhF {
    float operator()(float x) const {
        return 0.5f * x * (1.0f + std::tanh(kSqrtTwoOverPi * (x + 0.044715f * x * x * x)));
    }
};
struct SqrtF { float operator()(float x) const { return std::sqrt(x); } };
struct ReciprocalF { float operator()(float x) const { return 1.0f / x; } };
struct ExpF { float operator()(float x) const { return std::exp(x); } };
struct NegF { float operator()(float x) const { return -x; } };

// Erf and exact Gelu through graph_vecmath's SIMD rows (libm's erf is a scalar call).
class ErfOp : public Op {
public:
    explicit ErfOp(bool gelu) : gelu_(gelu) {}
    Shape infer(const std::vector<View>& in) const override { return *in[0].shape; }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        (gelu_ ? vecmath::gelu_rows : vecmath::erf_rows)(in[0].as<float>(), out.as<float>(), out.size());
    }

private:
    bool gelu_;
};

template <typename F>
class MapOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override { return *in[0].shape; }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const float* x = in[0].as<float>();
        float* y = out.as<float>();
        const std::int64_t count = out.size();
        const F f;
        for (std::int64_t i = 0; i < count; ++i) y[i] = f(x[i]);
    }
};

// Pow (a ** b, with x ** 2 and x ** 0.5 as a multiply and a square root, as numpy does) and PRelu.
class FloatPairOp : public Op {
public:
    explicit FloatPairOp(bool prelu) : prelu_(prelu) {}
    Shape infer(const std::vector<View>& in) const override {
        return broadcast_shapes({in[0].shape, in[1].shape});
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const float* a = in[0].as<float>();
        const float* b = in[1].as<float>();
        float* y = out.as<float>();
        const std::array<const Shape*, 2> shapes{in[0].shape, in[1].shape};
        if (prelu_) {
            broadcast_loop(*out.shape, shapes, [&](std::int64_t o, const std::array<std::int64_t, 2>& at) {
                const float x = a[at[0]];
                y[o] = x < 0.0f ? b[at[1]] * x : x;
            });
            return;
        }
        broadcast_loop(*out.shape, shapes, [&](std::int64_t o, const std::array<std::int64_t, 2>& at) {
            const float x = a[at[0]], e = b[at[1]];
            y[o] = e == 2.0f ? x * x : e == 0.5f ? std::sqrt(x) : e == 1.0f ? x : std::pow(x, e);
        });
    }

private:
    bool prelu_;
};

class EqualOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override {
        EF_REQUIRE(in[0].dtype == in[1].dtype, "both inputs must have one dtype");
        return broadcast_shapes({in[0].shape, in[1].shape});
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        auto* y = out.as<std::uint8_t>();
        with_dtype(in[0].dtype, [&](auto tag) {
            using T = decltype(tag);
            const T* a = in[0].as<T>();
            const T* b = in[1].as<T>();
            broadcast_loop(*out.shape, std::array<const Shape*, 2>{in[0].shape, in[1].shape},
                           [&](std::int64_t o, const std::array<std::int64_t, 2>& at) {
                               y[o] = a[at[0]] == b[at[1]] ? 1 : 0;
                           });
        });
    }
};

class WhereOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override {
        EF_REQUIRE(in[0].dtype == DType::u8, "the condition must be bool (uint8)");
        EF_REQUIRE(in[1].dtype == in[2].dtype, "X and Y must have one dtype");
        return broadcast_shapes({in[0].shape, in[1].shape, in[2].shape});
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const auto* c = in[0].as<std::uint8_t>();
        with_dtype(out.dtype, [&](auto tag) {
            using T = decltype(tag);
            const T* x = in[1].as<T>();
            const T* z = in[2].as<T>();
            T* y = out.as<T>();
            broadcast_loop(*out.shape, std::array<const Shape*, 3>{in[0].shape, in[1].shape, in[2].shape},
                           [&](std::int64_t o, const std::array<std::int64_t, 3>& at) {
                               y[o] = c[at[0]] ? x[at[1]] : z[at[2]];
                           });
        });
    }
};

class CastOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override { return *in[0].shape; }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const std::int64_t count = out.size();
        with_dtype(in[0].dtype, [&](auto from) {
            using S = decltype(from);
            const S* x = in[0].as<S>();
            with_dtype(out.dtype, [&](auto to) {
                using D = decltype(to);
                D* y = out.as<D>();
                for (std::int64_t i = 0; i < count; ++i) y[i] = static_cast<D>(x[i]);
            });
        });
    }
};

class ExpandOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override {
        const Shape target = plan_ints(in[1], "Expand's shape");
        return broadcast_shapes({in[0].shape, &target});
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const auto item = static_cast<std::int64_t>(dtype_size(out.dtype));
        const auto* x = static_cast<const char*>(in[0].data);
        auto* y = static_cast<char*>(out.data);
        broadcast_loop(*out.shape, std::array<const Shape*, 1>{in[0].shape},
                       [&](std::int64_t o, const std::array<std::int64_t, 1>& at) {
                           std::memcpy(y + o * item, x + at[0] * item, static_cast<std::size_t>(item));
                       });
    }
};

}  // namespace

std::unique_ptr<Op> make_math_op(const NodeSpec& spec, const std::vector<DType>&, DType) {
    const std::string& op = spec.op;
    if (op == "Erf") return std::make_unique<ErfOp>(false);
    if (op == "Gelu") {
        const std::string approximate = spec.attrs.get_str("approximate", "none");
        EF_REQUIRE(approximate == "none" || approximate == "tanh", "approximate must be none or tanh");
        if (approximate == "tanh") return std::make_unique<MapOp<GeluTanhF>>();
        return std::make_unique<ErfOp>(true);
    }
    if (op == "Sqrt") return std::make_unique<MapOp<SqrtF>>();
    if (op == "Reciprocal") return std::make_unique<MapOp<ReciprocalF>>();
    if (op == "Exp") return std::make_unique<MapOp<ExpF>>();
    if (op == "Neg") return std::make_unique<MapOp<NegF>>();
    if (op == "Pow") return std::make_unique<FloatPairOp>(false);
    if (op == "PRelu") return std::make_unique<FloatPairOp>(true);
    if (op == "Equal") return std::make_unique<EqualOp>();
    if (op == "Where") return std::make_unique<WhereOp>();
    if (op == "Cast") return std::make_unique<CastOp>();
    if (op == "Expand") return std::make_unique<ExpandOp>();
    return nullptr;
}

}  // namespace edgefleet::graph
