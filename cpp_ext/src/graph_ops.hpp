// Helpers shared by the op implementations (graph_ops_*.cpp). Internal to the graph executor.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "graph.hpp"
#include "graph_vecmath.hpp"

namespace edgefleet::graph {

[[noreturn]] void fail(const std::string& message);
// Checks a condition; the message (an expression) is only built when it fails: shapes are checked on
// every run, and building strings there would cost more than the small ops themselves.
#define EF_REQUIRE(cond, ...)                                 \
    do {                                                      \
        if (!(cond)) ::edgefleet::graph::fail(__VA_ARGS__);   \
    } while (0)

// A 2-D sliding window (Conv, pools) over an NCHW input, with pads resolved (auto_pad, ceil_mode).
struct Window {
    std::int64_t n, c, h, w;     // input
    std::int64_t oh, ow;         // output
    std::int64_t kh, kw, sh, sw, dh, dw, top, left;
    std::int64_t bottom = 0, right = 0;  // pads at the end (not counting the ceil_mode overhang)
};
Window window_2d(const Shape& x, std::int64_t kh, std::int64_t kw, const Attrs& attrs, bool ceil);

// Where each im2col element comes from: an offset into one group's input planes, or -1 (padding). Rows
// are (c, i, j) x columns (oy, ox) ("col" layout, for float GEMM), or with patch_major one row of kp
// entries per output pixel (for the int8 dot-product kernel). Cached per input size by the op.
class GatherTable {
public:
    const std::vector<std::int32_t>& get(const Window& w, std::int64_t channels, bool patch_major, std::int64_t kp);

private:
    std::int64_t h_ = -1, w_ = -1;
    std::vector<std::int32_t> index_;
};

// HardSwish as graph_reference.hard_swish computes it in float32: x * clip(x / 6 + 1/2, 0, 1).
inline float hard_swish(float x) {
    constexpr float kSixth = static_cast<float>(1.0 / 6.0);
    return x * std::min(std::max(kSixth * x + 0.5f, 0.0f), 1.0f);
}

// The fused activation of Conv / Gemm: none, relu, clip to [lo, hi] (`active`: kernels apply it in
// registers), or hardswish (a pass over the output, still in cache: `finish`).
struct Activation {
    bool active = false;
    float lo = 0.0f;
    float hi = 0.0f;
    bool swish = false;
    static Activation from(const Attrs& attrs);
    void apply(float* y, std::int64_t count) const {
        if (active) vecmath::clamp_rows(y, count, lo, hi);
        finish(y, count);
    }
    void finish(float* y, std::int64_t count) const {
        if (swish) vecmath::hard_swish_rows(y, y, count);
    }
};

// kernels::active().sgemm, split over the threads of the current run (graph_threads.hpp) in blocks of
// rows (4, the AVX2 kernel's band) or, for fewer than 8 rows, of 64 columns: the same tiles as one call.
void parallel_sgemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);

// Axis normalised into [0, rank); GraphError outside [-rank, rank).
std::int64_t normalize_axis(std::int64_t axis, std::int64_t rank);

// The Window of the last input shape an op saw: window_2d reads the attributes (map lookups, strings),
// which would cost more per run than a small op itself. Runs hold the GIL: never two at once.
class WindowCache {
public:
    const Window& get(const Shape& x, std::int64_t kh, std::int64_t kw, const Attrs& attrs, bool ceil) {
        if (!valid_ || x != x_ || kh != win_.kh || kw != win_.kw) {
            win_ = window_2d(x, kh, kw, attrs, ceil);
            x_ = x;
            valid_ = true;
        }
        return win_;
    }

private:
    bool valid_ = false;
    Shape x_;
    Window win_{};
};

// Factories by op family (graph_ops_conv.cpp, graph_ops_depthwise.cpp, graph_ops_pool.cpp,
// graph_ops_float.cpp, graph_ops_unary.cpp, graph_ops_shape.cpp, graph_ops_quant.cpp).
std::unique_ptr<Op> make_conv_op(const NodeSpec& spec, const std::vector<const Constant*>& constants);
// Conv with one input channel per group (depthwise), a constant W and no residual Z; null otherwise.
std::unique_ptr<Op> make_depthwise_conv_op(const NodeSpec& spec, const std::vector<const Constant*>& constants);
std::unique_ptr<Op> make_unary_op(const NodeSpec& spec);
// QConv with one input channel per group, every parameter constant and sums that float32 holds exactly
// (graph_ops_depthwise.cpp); null for any other QConv, which the general QConv runs.
std::unique_ptr<Op> make_qdepthwise_conv_op(const NodeSpec& spec, DType out,
                                            const std::vector<const Constant*>& constants);
// QAdd / QMul of two same-shaped quantized tensors (graph_ops_qbinary.cpp); null for any other op.
std::unique_ptr<Op> make_qbinary_op(const NodeSpec& spec, DType out, const std::vector<const Constant*>& constants);
std::unique_ptr<Op> make_pool_op(const NodeSpec& spec);
std::unique_ptr<Op> make_float_op(const NodeSpec& spec, const std::vector<DType>& in,
                                  const std::vector<const Constant*>& constants);
std::unique_ptr<Op> make_shape_op(const NodeSpec& spec, const std::vector<DType>& in,
                                  const std::vector<const Constant*>& constants);
std::unique_ptr<Op> make_quant_op(const NodeSpec& spec, const std::vector<DType>& in, DType out,
                                  const std::vector<const Constant*>& constants);

// MaxPool over any of float32 / uint8 / int8 (graph_ops_pool.cpp).
template <typename T>
void max_pool_2d(const T* x, T* y, const Window& win);

}  // namespace edgefleet::graph
