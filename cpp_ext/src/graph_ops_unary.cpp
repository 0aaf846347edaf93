// Element-wise float32 activations: Sigmoid, Tanh, HardSigmoid (alpha, beta), HardSwish, LeakyRelu
// (alpha). Each is the formula of graph_reference.py in float32, evaluated in the same order, so the
// piecewise-linear ones are bit-identical to it and Sigmoid / Tanh differ only by the libm's exp / tanh.
// On the aarch64 tiers the first four run NEON rows (graph_vecmath_neon.cpp: the same bits for the
// piecewise-linear ones, vectorised exp / tanh within the float tolerance for Sigmoid and Tanh).
#include <cmath>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_vecmath.hpp"

namespace edgefleet::graph {
namespace {

// Each functor's rows(x, y, n): true when it ran them with a SIMD kernel of the active tier.
struct SigmoidF {
    bool rows(const float* x, float* y, std::int64_t n) const {
#if defined(__aarch64__)
        if (kernels::neon_active()) return vecmath::sigmoid_rows_neon(x, y, n), true;
#endif
        return (void)x, (void)y, (void)n, false;
    }
    float operator()(float x) const {
        if (x >= 0.0f) return 1.0f / (1.0f + std::exp(-x));
        const float e = std::exp(x);
        return e / (1.0f + e);
    }
};
struct TanhF {
    bool rows(const float* x, float* y, std::int64_t n) const {
#if defined(__aarch64__)
        if (kernels::neon_active()) return vecmath::tanh_rows_neon(x, y, n), true;
#endif
        return (void)x, (void)y, (void)n, false;
    }
    float operator()(float x) const { return std::tanh(x); }
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
struct HardSwishF {
    bool rows(const float* x, float* y, std::int64_t n) const {
#if defined(__aarch64__)
        if (kernels::neon_active()) return vecmath::hard_swish_rows_neon(x, y, n), true;
#endif
        return (void)x, (void)y, (void)n, false;
    }
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
