// float32 ops: Conv, Gemm, MatMul, element-wise (numpy broadcasting), Relu, Clip, pools, Softmax.
#include <cmath>
#include <cstring>
#include <limits>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"

namespace edgefleet::graph {
namespace {

using kernels::active;

// The output positions [lo, hi) whose input index o * stride + offset falls inside [0, size).
inline void valid_range(std::int64_t offset, std::int64_t stride, std::int64_t size, std::int64_t count,
                        std::int64_t& lo, std::int64_t& hi) {
    lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    hi = size - offset <= 0 ? 0 : std::min(count, (size - offset + stride - 1) / stride);
    lo = std::min(lo, hi);
}

class ConvOp : public Op {
public:
    explicit ConvOp(const Attrs& attrs) : attrs_(attrs), act_(Activation::from(attrs)), group_(attrs.get_int("group", 1)) {
        EF_REQUIRE(group_ >= 1, "group must be >= 1");
    }

    Window window(const std::vector<View>& in) const {
        const Shape& w = *in[1].shape;
        EF_REQUIRE(w.size() == 4, "W must be 4-D (M, C/group, kH, kW), got " + shape_str(w));
        const auto kernel = attrs_.get_ints("kernel_shape", {w[2], w[3]});
        EF_REQUIRE(kernel.size() == 2 && kernel[0] == w[2] && kernel[1] == w[3], "kernel_shape does not match W");
        return window_2d(*in[0].shape, w[2], w[3], attrs_, false);
    }

    Shape infer(const std::vector<View>& in) const override {
        const Window win = window(in);
        const Shape& w = *in[1].shape;
        EF_REQUIRE(win.c == w[1] * group_ && w[0] % group_ == 0,
                "X has " + std::to_string(win.c) + " channels; W " + shape_str(w) + " with group " +
                    std::to_string(group_) + " needs " + std::to_string(w[1] * group_));
        if (in.size() > 2 && in[2].data != nullptr) {
            EF_REQUIRE(in[2].size() == w[0], "B must have M = " + std::to_string(w[0]) + " values");
        } else if (in.size() > 2 && !in[2].shape->empty()) {
            EF_REQUIRE(numel(*in[2].shape) == w[0], "B must have M = " + std::to_string(w[0]) + " values");
        }
        return {win.n, w[0], win.oh, win.ow};
    }

    static bool pointwise(const Window& w) {
        return w.kh == 1 && w.kw == 1 && w.sh == 1 && w.sw == 1 && w.top == 0 && w.left == 0 && w.oh == w.h &&
               w.ow == w.w;
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        const Window win = window(in);
        if (pointwise(win)) return 0;
        return static_cast<std::size_t>(win.c / group_ * win.kh * win.kw * win.oh * win.ow) * sizeof(float);
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Window win = window(in);
        const Shape& ws = *in[1].shape;
        const std::int64_t m = ws[0] / group_, cg = win.c / group_, k = cg * win.kh * win.kw, p = win.oh * win.ow;
        const bool direct = pointwise(win);
        const float* bias = in.size() > 2 && in[2].data != nullptr ? in[2].as<float>() : nullptr;
        for (std::int64_t n = 0; n < win.n; ++n) {
            for (std::int64_t g = 0; g < group_; ++g) {
                const float* x = in[0].as<float>() + (n * win.c + g * cg) * win.h * win.w;
                float* y = out.as<float>() + (n * ws[0] + g * m) * p;
                const float* col = x;
                if (!direct) {
                    auto* out = static_cast<float*>(scratch);
                    const std::vector<std::int32_t>& index = gather_.get(win, cg, false, 0);
                    const std::size_t count = index.size();
                    for (std::size_t r = 0; r < count; ++r) out[r] = index[r] >= 0 ? x[index[r]] : 0.0f;
                    col = out;
                }
                active().sgemm(static_cast<int>(m), static_cast<int>(p), static_cast<int>(k),
                               in[1].as<float>() + g * m * k, static_cast<int>(k), col, static_cast<int>(p), y,
                               static_cast<int>(p));
                for (std::int64_t o = 0; o < m; ++o) {
                    float* row = y + o * p;
                    if (bias != nullptr) {
                        const float b = bias[g * m + o];
                        for (std::int64_t i = 0; i < p; ++i) row[i] += b;
                    }
                    act_.apply(row, p);
                }
            }
        }
    }

private:
    Attrs attrs_;
    Activation act_;
    std::int64_t group_;
    mutable GatherTable gather_;  // runs hold the GIL: never two at once
};

class GemmOp : public Op {
public:
    GemmOp(const Attrs& attrs, const Constant* b)
        : trans_a_(attrs.get_int("transA", 0) != 0),
          trans_b_(attrs.get_int("transB", 0) != 0),
          alpha_(static_cast<float>(attrs.get_float("alpha", 1.0))),
          beta_(static_cast<float>(attrs.get_float("beta", 1.0))),
          act_(Activation::from(attrs)) {
        if (b != nullptr && b->shape.size() == 2) {  // pre-pack a constant B as (K, N)
            const std::int64_t rows = b->shape[0], cols = b->shape[1];
            packed_ = aligned_buffer(static_cast<std::size_t>(rows * cols) * sizeof(float));
            auto* dst = static_cast<float*>(packed_.get());
            const auto* src = static_cast<const float*>(b->data());
            if (trans_b_) {
                for (std::int64_t r = 0; r < rows; ++r)
                    for (std::int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
            } else {
                std::memcpy(dst, src, static_cast<std::size_t>(rows * cols) * sizeof(float));
            }
        }
    }

    Shape infer(const std::vector<View>& in) const override {
        const Shape& a = *in[0].shape;
        const Shape& b = *in[1].shape;
        EF_REQUIRE(a.size() == 2 && b.size() == 2, "A and B must be 2-D, got " + shape_str(a) + " and " + shape_str(b));
        const std::int64_t m = trans_a_ ? a[1] : a[0], k = trans_a_ ? a[0] : a[1];
        const std::int64_t kb = trans_b_ ? b[1] : b[0], n = trans_b_ ? b[0] : b[1];
        EF_REQUIRE(k == kb, "inner dimensions differ: A " + shape_str(a) + ", B " + shape_str(b));
        if (in.size() > 2 && in[2].data != nullptr) {
            const Shape& c = *in[2].shape;
            EF_REQUIRE(c.size() <= 2, "C must have rank <= 2");
            const std::int64_t cm = c.size() == 2 ? c[0] : 1, cn = c.empty() ? 1 : c.back();
            EF_REQUIRE((cm == 1 || cm == m) && (cn == 1 || cn == n),
                    "C " + shape_str(c) + " does not broadcast to (" + std::to_string(m) + ", " + std::to_string(n) + ")");
        }
        return {m, n};
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        std::size_t bytes = trans_a_ ? static_cast<std::size_t>(numel(*in[0].shape)) * sizeof(float) + 64 : 0;
        if (!packed_ && trans_b_) bytes += static_cast<std::size_t>(numel(*in[1].shape)) * sizeof(float);
        return bytes;
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Shape& as = *in[0].shape;
        const Shape& bs = *in[1].shape;
        const std::int64_t m = (*out.shape)[0], n = (*out.shape)[1], k = trans_a_ ? as[0] : as[1];
        auto* free = static_cast<float*>(scratch);
        const float* a = in[0].as<float>();
        if (trans_a_) {
            transpose(a, as[0], as[1], free);
            a = free;
            free += (numel(as) + 15) / 16 * 16;
        }
        const float* b = packed_ ? static_cast<const float*>(packed_.get()) : in[1].as<float>();
        if (!packed_ && trans_b_) {
            transpose(in[1].as<float>(), bs[0], bs[1], free);
            b = free;
        }
        float* y = out.as<float>();
        active().sgemm(static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), a, static_cast<int>(k), b,
                       static_cast<int>(n), y, static_cast<int>(n));
        if (alpha_ != 1.0f) {
            for (std::int64_t i = 0; i < m * n; ++i) y[i] *= alpha_;
        }
        if (in.size() > 2 && in[2].data != nullptr) {
            const Shape& cs = *in[2].shape;
            const std::int64_t cm = cs.size() == 2 ? cs[0] : 1, cn = cs.empty() ? 1 : cs.back();
            const std::int64_t stride_m = cm == 1 ? 0 : cn, stride_n = cn == 1 ? 0 : 1;
            const float* c = in[2].as<float>();
            for (std::int64_t i = 0; i < m; ++i) {
                float* row = y + i * n;
                const float* crow = c + i * stride_m;
                if (beta_ == 1.0f && stride_n == 1) {
                    for (std::int64_t j = 0; j < n; ++j) row[j] += crow[j];
                } else {
                    for (std::int64_t j = 0; j < n; ++j) row[j] += beta_ * crow[j * stride_n];
                }
            }
        }
        act_.apply(y, m * n);
    }

private:
    static void transpose(const float* src, std::int64_t rows, std::int64_t cols, float* dst) {
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
    }

    bool trans_a_, trans_b_;
    float alpha_, beta_;
    Activation act_;
    std::shared_ptr<void> packed_;
};

// numpy broadcasting of two shapes (right-aligned); GraphError when they do not broadcast.
Shape broadcast(const Shape& a, const Shape& b) {
    const std::size_t rank = std::max(a.size(), b.size());
    Shape out(rank);
    for (std::size_t i = 0; i < rank; ++i) {
        const std::int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
        const std::int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
        EF_REQUIRE(da == db || da == 1 || db == 1, "shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
        out[i] = da == 1 ? db : da;
    }
    return out;
}

// Element strides of `shape` read as `out` (0 along broadcast dimensions).
std::vector<std::int64_t> broadcast_strides(const Shape& shape, const Shape& out) {
    std::vector<std::int64_t> strides(out.size(), 0);
    std::int64_t stride = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        const std::size_t o = i + out.size() - shape.size();
        strides[o] = shape[i] == 1 ? 0 : stride;
        stride *= shape[i];
    }
    return strides;
}

class MatMulOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override {
        Shape a = *in[0].shape, b = *in[1].shape;
        EF_REQUIRE(!a.empty() && !b.empty(), "MatMul needs inputs of rank >= 1");
        const bool a1 = a.size() == 1, b1 = b.size() == 1;
        if (a1) a.insert(a.begin(), 1);
        if (b1) b.push_back(1);
        EF_REQUIRE(a.back() == b[b.size() - 2], "inner dimensions differ: " + shape_str(*in[0].shape) + " and " +
                                                 shape_str(*in[1].shape));
        Shape out = broadcast(Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2));
        if (!a1) out.push_back(a[a.size() - 2]);
        if (!b1) out.push_back(b.back());
        return out;
    }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        Shape a = *in[0].shape, b = *in[1].shape;
        if (a.size() == 1) a.insert(a.begin(), 1);
        const bool b1 = b.size() == 1;
        if (b1) b.push_back(1);
        const std::int64_t m = a[a.size() - 2], k = a.back(), n = b.back();
        const float* pa = in[0].as<float>();
        const float* pb = in[1].as<float>();
        float* py = out.as<float>();
        if (b.size() == 2) {  // one GEMM: A's batch dimensions folded into its rows
            const std::int64_t rows = numel(a) / k;
            active().sgemm(static_cast<int>(rows), static_cast<int>(n), static_cast<int>(k), pa, static_cast<int>(k), pb,
                           static_cast<int>(n), py, static_cast<int>(n));
            return;
        }
        const Shape ba(a.begin(), a.end() - 2), bb(b.begin(), b.end() - 2);
        const Shape batch = broadcast(ba, bb);
        const auto sa = broadcast_strides(ba, batch), sb = broadcast_strides(bb, batch);
        std::vector<std::int64_t> index(batch.size(), 0);
        const std::int64_t count = numel(batch);
        for (std::int64_t t = 0; t < count; ++t) {
            std::int64_t oa = 0, ob = 0;
            for (std::size_t d = 0; d < batch.size(); ++d) {
                oa += index[d] * sa[d];
                ob += index[d] * sb[d];
            }
            active().sgemm(static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), pa + oa * m * k,
                           static_cast<int>(k), pb + ob * k * n, static_cast<int>(n), py + t * m * n,
                           static_cast<int>(n));
            for (std::size_t d = batch.size(); d-- > 0;) {
                if (++index[d] < batch[d]) break;
                index[d] = 0;
            }
        }
    }
};

template <typename F>
class BinaryOp : public Op {
public:
    Shape infer(const std::vector<View>& in) const override { return broadcast(*in[0].shape, *in[1].shape); }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        const float* a = in[0].as<float>();
        const float* b = in[1].as<float>();
        float* y = out.as<float>();
        const F f;
        const Shape& shape = *out.shape;
        const std::int64_t total = numel(shape);
        const std::int64_t na = in[0].size(), nb = in[1].size();
        if (na == total && nb == total) {
            for (std::int64_t i = 0; i < total; ++i) y[i] = f(a[i], b[i]);
        } else if (nb == 1 && na == total) {
            const float s = b[0];
            for (std::int64_t i = 0; i < total; ++i) y[i] = f(a[i], s);
        } else if (na == 1 && nb == total) {
            const float s = a[0];
            for (std::int64_t i = 0; i < total; ++i) y[i] = f(s, b[i]);
        } else if (total > 0) {
            general(a, b, y, *in[0].shape, *in[1].shape, shape, f);
        }
    }

private:
    static void general(const float* a, const float* b, float* y, const Shape& as, const Shape& bs, const Shape& shape,
                        const F& f) {
        const auto sa = broadcast_strides(as, shape), sb = broadcast_strides(bs, shape);
        const std::size_t rank = shape.size();
        const std::int64_t inner = shape[rank - 1], ia = sa[rank - 1], ib = sb[rank - 1];
        std::vector<std::int64_t> index(rank, 0);
        const std::int64_t rows = numel(shape) / inner;
        for (std::int64_t r = 0; r < rows; ++r) {
            std::int64_t oa = 0, ob = 0;
            for (std::size_t d = 0; d + 1 < rank; ++d) {
                oa += index[d] * sa[d];
                ob += index[d] * sb[d];
            }
            float* out = y + r * inner;
            for (std::int64_t j = 0; j < inner; ++j) out[j] = f(a[oa + j * ia], b[ob + j * ib]);
            for (std::size_t d = rank - 1; d-- > 0;) {
                if (++index[d] < shape[d]) break;
                index[d] = 0;
            }
        }
    }
};

struct AddF { float operator()(float a, float b) const { return a + b; } };
struct SubF { float operator()(float a, float b) const { return a - b; } };
struct MulF { float operator()(float a, float b) const { return a * b; } };
struct DivF { float operator()(float a, float b) const { return a / b; } };

class ClipOp : public Op {
public:
    explicit ClipOp(bool relu) : relu_(relu) {}
    Shape infer(const std::vector<View>& in) const override {
        for (std::size_t i = 1; i < in.size(); ++i) {
            EF_REQUIRE(in[i].shape->empty() || numel(*in[i].shape) == 1, "min and max must be scalars");
        }
        return *in[0].shape;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        float lo = relu_ ? 0.0f : -std::numeric_limits<float>::infinity();
        float hi = std::numeric_limits<float>::infinity();
        if (in.size() > 1 && in[1].data != nullptr) lo = *in[1].as<float>();
        if (in.size() > 2 && in[2].data != nullptr) hi = *in[2].as<float>();
        const float* x = in[0].as<float>();
        float* y = out.as<float>();
        const std::int64_t count = out.size();
        for (std::int64_t i = 0; i < count; ++i) y[i] = std::min(std::max(x[i], lo), hi);
    }

private:
    bool relu_;
};

class PoolOp : public Op {
public:
    PoolOp(const Attrs& attrs, bool average) : attrs_(attrs), average_(average) {
        const auto kernel = attrs.get_ints("kernel_shape", {});
        EF_REQUIRE(kernel.size() == 2, "kernel_shape must have 2 values (2-D pools only)");
        kh_ = kernel[0], kw_ = kernel[1];
        ceil_ = attrs.get_int("ceil_mode", 0) != 0;
        include_pad_ = attrs.get_int("count_include_pad", 0) != 0;
        EF_REQUIRE(attrs.get_int("storage_order", 0) == 0, "storage_order 1 is not supported");
    }
    Shape infer(const std::vector<View>& in) const override {
        const Window w = window_2d(*in[0].shape, kh_, kw_, attrs_, ceil_);
        return {w.n, w.c, w.oh, w.ow};
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Window w = window_2d(*in[0].shape, kh_, kw_, attrs_, ceil_);
        if (!average_) {
            switch (in[0].dtype) {
                case DType::u8: return max_pool_2d(in[0].as<std::uint8_t>(), out.as<std::uint8_t>(), w);
                case DType::i8: return max_pool_2d(in[0].as<std::int8_t>(), out.as<std::int8_t>(), w);
                default: return max_pool_2d(in[0].as<float>(), out.as<float>(), w);
            }
        }
        // count_include_pad counts positions inside the declared pads, not the ceil_mode overhang
        const std::int64_t bottom = w.h + w.bottom, right = w.w + w.right;
        for (std::int64_t plane = 0; plane < w.n * w.c; ++plane) {
            const float* x = in[0].as<float>() + plane * w.h * w.w;
            float* y = out.as<float>() + plane * w.oh * w.ow;
            for (std::int64_t oy = 0; oy < w.oh; ++oy) {
                for (std::int64_t ox = 0; ox < w.ow; ++ox) {
                    float sum = 0.0f;
                    std::int64_t inside = 0, padded = 0;
                    for (std::int64_t i = 0; i < w.kh; ++i) {
                        const std::int64_t iy = oy * w.sh - w.top + i * w.dh;
                        for (std::int64_t j = 0; j < w.kw; ++j) {
                            const std::int64_t ix = ox * w.sw - w.left + j * w.dw;
                            if (iy >= 0 && iy < w.h && ix >= 0 && ix < w.w) {
                                sum += x[iy * w.w + ix];
                                ++inside;
                            }
                            if (iy >= -w.top && iy < bottom && ix >= -w.left && ix < right) ++padded;
                        }
                    }
                    y[oy * w.ow + ox] = sum / static_cast<float>(include_pad_ ? padded : inside);
                }
            }
        }
    }

private:
    Attrs attrs_;
    bool average_;
    std::int64_t kh_ = 1, kw_ = 1;
    bool ceil_ = false, include_pad_ = false;
};

class GlobalPoolOp : public Op {
public:
    explicit GlobalPoolOp(bool average) : average_(average) {}
    Shape infer(const std::vector<View>& in) const override {
        Shape s = *in[0].shape;
        EF_REQUIRE(s.size() >= 3, "needs an (N, C, spatial...) input, got " + shape_str(s));
        std::fill(s.begin() + 2, s.end(), 1);
        return s;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& s = *in[0].shape;
        const std::int64_t planes = s[0] * s[1], size = numel(s) / std::max<std::int64_t>(planes, 1);
        for (std::int64_t p = 0; p < planes; ++p) {
            const float* x = in[0].as<float>() + p * size;
            float acc = average_ ? 0.0f : -std::numeric_limits<float>::infinity();
            for (std::int64_t i = 0; i < size; ++i) acc = average_ ? acc + x[i] : std::max(acc, x[i]);
            out.as<float>()[p] = average_ ? acc / static_cast<float>(size) : acc;
        }
    }

private:
    bool average_;
};

class SoftmaxOp : public Op {
public:
    explicit SoftmaxOp(const Attrs& attrs)
        : axis_(attrs.get_int("axis", -1)), coerce_(attrs.get_int("coerce_2d", 0) != 0) {}
    Shape infer(const std::vector<View>& in) const override {
        normalize_axis(axis_, static_cast<std::int64_t>(in[0].shape->size()));
        return *in[0].shape;
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Shape& s = *in[0].shape;
        const auto axis = static_cast<std::size_t>(normalize_axis(axis_, static_cast<std::int64_t>(s.size())));
        const std::int64_t outer = numel(Shape(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(axis)));
        std::int64_t n = s[axis];
        std::int64_t inner = numel(Shape(s.begin() + static_cast<std::ptrdiff_t>(axis) + 1, s.end()));
        if (coerce_) n *= inner, inner = 1;
        for (std::int64_t o = 0; o < outer; ++o) {
            for (std::int64_t i = 0; i < inner; ++i) {
                const float* x = in[0].as<float>() + o * n * inner + i;
                float* y = out.as<float>() + o * n * inner + i;
                float top = -std::numeric_limits<float>::infinity();
                for (std::int64_t k = 0; k < n; ++k) top = std::max(top, x[k * inner]);
                float sum = 0.0f;
                for (std::int64_t k = 0; k < n; ++k) sum += (y[k * inner] = std::exp(x[k * inner] - top));
                for (std::int64_t k = 0; k < n; ++k) y[k * inner] /= sum;
            }
        }
    }

private:
    std::int64_t axis_;
    bool coerce_;
};

}  // namespace

template <typename T>
void max_pool_2d(const T* x, T* y, const Window& w) {
    T lowest = std::numeric_limits<T>::lowest();
    if (std::numeric_limits<T>::has_infinity) lowest = -std::numeric_limits<T>::infinity();
    // Output rows and columns whose whole window lies inside the input take the unchecked loop.
    std::int64_t y_lo = 0, y_hi = 0, x_lo = 0, x_hi = 0;
    valid_range(-w.top, w.sh, w.h - (w.kh - 1) * w.dh, w.oh, y_lo, y_hi);
    valid_range(-w.left, w.sw, w.w - (w.kw - 1) * w.dw, w.ow, x_lo, x_hi);
    for (std::int64_t plane = 0; plane < w.n * w.c; ++plane) {
        const T* in = x + plane * w.h * w.w;
        T* out = y + plane * w.oh * w.ow;
        for (std::int64_t oy = 0; oy < w.oh; ++oy) {
            const bool inner_row = oy >= y_lo && oy < y_hi;
            for (std::int64_t ox = 0; ox < w.ow; ++ox) {
                T best = lowest;
                if (inner_row && ox >= x_lo && ox < x_hi) {
                    const T* corner = in + (oy * w.sh - w.top) * w.w + (ox * w.sw - w.left);
                    for (std::int64_t i = 0; i < w.kh; ++i) {
                        const T* row = corner + i * w.dh * w.w;
                        for (std::int64_t j = 0; j < w.kw; ++j) best = std::max(best, row[j * w.dw]);
                    }
                    out[oy * w.ow + ox] = best;
                    continue;
                }
                for (std::int64_t i = 0; i < w.kh; ++i) {
                    const std::int64_t iy = oy * w.sh - w.top + i * w.dh;
                    if (iy < 0 || iy >= w.h) continue;
                    for (std::int64_t j = 0; j < w.kw; ++j) {
                        const std::int64_t ix = ox * w.sw - w.left + j * w.dw;
                        if (ix >= 0 && ix < w.w) best = std::max(best, in[iy * w.w + ix]);
                    }
                }
                out[oy * w.ow + ox] = best;
            }
        }
    }
}
template void max_pool_2d<float>(const float*, float*, const Window&);
template void max_pool_2d<std::uint8_t>(const std::uint8_t*, std::uint8_t*, const Window&);
template void max_pool_2d<std::int8_t>(const std::int8_t*, std::int8_t*, const Window&);

std::unique_ptr<Op> make_float_op(const NodeSpec& spec, const std::vector<DType>&,
                                  const std::vector<const Constant*>& constants) {
    const std::string& op = spec.op;
    if (op == "Conv") return std::make_unique<ConvOp>(spec.attrs);
    if (op == "Gemm") return std::make_unique<GemmOp>(spec.attrs, constants[1]);
    if (op == "MatMul") return std::make_unique<MatMulOp>();
    if (op == "Add") return std::make_unique<BinaryOp<AddF>>();
    if (op == "Sub") return std::make_unique<BinaryOp<SubF>>();
    if (op == "Mul") return std::make_unique<BinaryOp<MulF>>();
    if (op == "Div") return std::make_unique<BinaryOp<DivF>>();
    if (op == "Relu") return std::make_unique<ClipOp>(true);
    if (op == "Clip") return std::make_unique<ClipOp>(false);
    if (op == "MaxPool") return std::make_unique<PoolOp>(spec.attrs, false);
    if (op == "AveragePool") return std::make_unique<PoolOp>(spec.attrs, true);
    if (op == "GlobalAveragePool") return std::make_unique<GlobalPoolOp>(true);
    if (op == "GlobalMaxPool") return std::make_unique<GlobalPoolOp>(false);
    if (op == "Softmax") return std::make_unique<SoftmaxOp>(spec.attrs);
    return nullptr;
}

}  // namespace edgefleet::graph
