// Element-wise float32 activations: Sigmoid, Tanh, HardSigmoid (alpha, beta), HardSwish, LeakyRelu
// (alpha). The piecewise-linear ones are graph_reference.py's formula in float32, evaluated in the same
// order, so bit-identical to it; Sigmoid and Tanh are the vectorised rows the recurrent cells use
// (graph_vecmath.hpp: within a few ulp of libm). On the aarch64 tiers all four run NEON rows
// (graph_vecmath_neon.cpp: the same bits for the piecewise-linear ones).
#include <cmath>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_vecmath.hpp"

namespace edgefleet::graph {
namespace {

// Each functor's rows(x, y, n): true when it ran them with a SIMD kernel of the active tier.
struct SigmoidF {  // the recurrent cells' rows (graph_vecmath.hpp), NEON on the aarch64 tiers
    bool rows(const float* x, float* y, std::int64_t n) const { return vecmath::sigmoid_rows(x, y, n), true; }
    float operator()(float x) const { return vecmath::sigmoid(x); }
};
struct TanhF {
    bool rows(const float* x, float* y, std::int64_t n) const { return vecmath::tanh_rows(x, y, n), true; }
    float operator()(float x) const { return vecmath::tanh(x); }
};
struct HardSigmoidF {
    float alpha, beta;
    bool rows(const float* x, float* y, std::int64_t n) const {
#if defined(__aarch64__)
        if (kernels::neon_active()) return vecmath::hard_sigmoid_rows_neon(x, y, n, alpha, beta), true;
#endif
        return (void)x, (void)y, (void)n, false;
    }
    float operator()(float x) const { return std::min(std::max(alpha * x + beta, 0.0f), 1.0f); }
};
struct HardSwishF {  // vectors of the active tier, the portable bits (graph_vecmath_act.cpp)
    bool rows(const float* x, float* y, std::int64_t n) const { return vecmath::hard_swish_rows(x, y, n), true; }
    float operator()(float x) const { return hard_swish(x); }
};
struct LeakyReluF {
    float alpha;
    bool rows(const float*, float*, std::int64_t) const { return false; }
    float operator()(float x) const { return x >= 0.0f ? x : alpha * x; }
};

template <typename F>
class UnaryOp : public Op {
public:
    explicit UnaryOp(F f) : f_(f) {}
    Shape infer(const std::vector<View>& in) const override { return *in[0].shape; }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const float* x = in[0].as<float>();
        float* y = out.as<float>();
        const std::int64_t count = out.size();
        const F f = f_;
        if (f.rows(x, y, count)) return;
        for (std::int64_t i = 0; i < count; ++i) y[i] = f(x[i]);
    }

private:
    F f_;
};

template <typename F>
std::unique_ptr<Op> unary(F f) {
    return std::make_unique<UnaryOp<F>>(f);
}

}  // namespace

std::unique_ptr<Op> make_unary_op(const NodeSpec& spec) {
    const std::string& op = spec.op;
    const auto attr = [&spec](const char* name, double fallback) {
        return static_cast<float>(spec.attrs.get_float(name, fallback));
    };
    if (op == "Sigmoid") return unary(SigmoidF{});
    if (op == "Tanh") return unary(TanhF{});
    if (op == "HardSigmoid") return unary(HardSigmoidF{attr("alpha", 0.2), attr("beta", 0.5)});
    if (op == "HardSwish") return unary(HardSwishF{});
    if (op == "LeakyRelu") return unary(LeakyReluF{attr("alpha", 0.01)});
    return nullptr;
}

}  // namespace edgefleet::graph
