// Pools: MaxPool (float32, uint8, int8), AveragePool, GlobalAveragePool, GlobalMaxPool; NCHW, 2-D. On
// the aarch64 tiers MaxPool 2x2 / 2, AveragePool's inner rows and GlobalAveragePool's sum run the NEON
// kernels of graph_ops_pool_neon.cpp, with the same bits.
#include <cstring>
#include <limits>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_ops_pool.hpp"

namespace edgefleet::graph {
namespace {

// The output positions [lo, hi) whose input index o * stride + offset falls inside [0, size).
inline void valid_range(std::int64_t offset, std::int64_t stride, std::int64_t size, std::int64_t count,
                        std::int64_t& lo, std::int64_t& hi) {
    lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    hi = size - offset <= 0 ? 0 : std::min(count, (size - offset + stride - 1) / stride);
    lo = std::min(lo, hi);
}

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
        const Window& w = windows_.get(*in[0].shape, kh_, kw_, attrs_, ceil_);
        return {w.n, w.c, w.oh, w.ow};
    }
    void run(const std::vector<View>& in, const View& out, void*) const override {
        const Window& w = windows_.get(*in[0].shape, kh_, kw_, attrs_, ceil_);
        if (!average_) {
            switch (in[0].dtype) {
                case DType::u8: return max_pool_2d(in[0].as<std::uint8_t>(), out.as<std::uint8_t>(), w);
                case DType::i8: return max_pool_2d(in[0].as<std::int8_t>(), out.as<std::int8_t>(), w);
                default: return max_pool_2d(in[0].as<float>(), out.as<float>(), w);
            }
        }
        // count_include_pad counts positions inside the declared pads, not the ceil_mode overhang
        const std::int64_t bottom = w.h + w.bottom, right = w.w + w.right;
        const auto average = [&](const float* x, std::int64_t oy, std::int64_t ox) {
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
            return sum / static_cast<float>(include_pad_ ? padded : inside);
        };
        // Rows and columns whose whole window is inside (NEON on aarch64: 4 outputs at a time)
        std::int64_t y_lo = 0, y_hi = 0, x_lo = 0, x_hi = 0;
        valid_range(-w.top, w.sh, w.h - (w.kh - 1) * w.dh, w.oh, y_lo, y_hi);
        valid_range(-w.left, w.sw, w.w - (w.kw - 1) * w.dw, w.ow, x_lo, x_hi);
        [[maybe_unused]] const bool simd = kernels::neon_active() && w.dw == 1 && (w.sw == 1 || w.sw == 2);
        for (std::int64_t plane = 0; plane < w.n * w.c; ++plane) {
            const float* x = in[0].as<float>() + plane * w.h * w.w;
            float* y = out.as<float>() + plane * w.oh * w.ow;
            for (std::int64_t oy = 0; oy < w.oh; ++oy) {
                std::int64_t skip_lo = 0, skip_hi = 0;  // outputs [skip_lo, skip_hi) done by the row kernel
#if defined(__aarch64__)
                if (simd && oy >= y_lo && oy < y_hi && x_hi > x_lo) {
                    const float* corner = x + (oy * w.sh - w.top) * w.w + (x_lo * w.sw - w.left);
                    skip_lo = x_lo;
                    skip_hi = x_lo + pool::average_row_neon(corner, w.dh * w.w, w.kh, w.kw, w.sw, y + oy * w.ow + x_lo,
                                                            x_hi - x_lo);
                }
#endif
                for (std::int64_t ox = 0; ox < w.ow; ++ox) {
                    if (ox == skip_lo && skip_hi > skip_lo) {
                        ox = skip_hi - 1;
                        continue;
                    }
                    y[oy * w.ow + ox] = average(x, oy, ox);
                }
            }
        }
    }

private:
    Attrs attrs_;
    bool average_;
    std::int64_t kh_ = 1, kw_ = 1;
    bool ceil_ = false, include_pad_ = false;
    mutable WindowCache windows_;
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
#if defined(__x86_64__) || defined(_M_X64)
        if (average_ && std::strcmp(kernels::active().isa, "portable") != 0) {
            float* y = out.as<float>();
            pool::sum8_planes_avx2(in[0].as<float>(), planes, size, y);
            for (std::int64_t p = 0; p < planes; ++p) y[p] = y[p] / static_cast<float>(size);
            return;
        }
#endif
        for (std::int64_t p = 0; p < planes; ++p) {
            const float* x = in[0].as<float>() + p * size;
            if (average_) {
                out.as<float>()[p] = sum(x, size) / static_cast<float>(size);
                continue;
            }
            float acc = -std::numeric_limits<float>::infinity();
            for (std::int64_t i = 0; i < size; ++i) acc = std::max(acc, x[i]);
            out.as<float>()[p] = acc;
        }
    }

private:
    // In 8 independent partial sums (one chain of adds would wait on each add's latency), then pairwise:
    // within float32 rounding of the reference's numpy sum, which is pairwise too.
    static float sum(const float* x, std::int64_t size) {
#if defined(__aarch64__)
        if (kernels::neon_active()) return pool::sum8_neon(x, size);
#endif
        float lanes[8] = {};
        std::int64_t i = 0;
        for (; i + 8 <= size; i += 8) {
            for (int l = 0; l < 8; ++l) lanes[l] += x[i + l];
        }
        for (int l = 0; i < size; ++i, ++l) lanes[l] += x[i];
        return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    }

    bool average_;
};


// Windows side by side along a row (kernel width == stride, no dilation: M5's MaxPool1d 4, a 2x2 at
// stride 2 with odd sizes), all inside the input: out[o] folds rows i < kh, columns j < K in the general
// loop's order from lowest. With K fixed the loop is a plain strided reduction the compiler vectorises
// (std::max(best, v) is maxps(v, best), NaN and signed zeros included, so the bits match the scalar loop).
template <typename T, int K>
__attribute__((always_inline)) inline void pool_row(const T* corner, std::int64_t row_step, std::int64_t kh,
                                                    T* out, std::int64_t count, T lowest) {
    for (std::int64_t i = 0; i < kh; ++i) {  // row by row, out holding the fold so far: o is the inner loop
        const T* s = corner + i * row_step;
        for (std::int64_t o = 0; o < count; ++o) {
            T best = i == 0 ? lowest : out[o];
            for (int j = 0; j < K; ++j) best = std::max(best, s[o * K + j]);
            out[o] = best;
        }
    }
}

template <typename T>
using PoolRowFn = void (*)(const T*, std::int64_t, std::int64_t, T*, std::int64_t, T);

template <typename T, int K>
void pool_row_portable(const T* c, std::int64_t step, std::int64_t kh, T* out, std::int64_t count, T lowest) {
    pool_row<T, K>(c, step, kh, out, count, lowest);
}

#if defined(__x86_64__) || defined(_M_X64)
template <typename T, int K>
__attribute__((target("avx2"))) void pool_row_avx2(const T* c, std::int64_t step, std::int64_t kh, T* out,
                                                    std::int64_t count, T lowest) {
    pool_row<T, K>(c, step, kh, out, count, lowest);
}
#endif

// The row kernel for a window width (null: none), AVX2 when the kernels in use are not the portable ones.
template <typename T, int K>
PoolRowFn<T> pool_row_for_isa() {
#if defined(__x86_64__) || defined(_M_X64)
    if (std::strcmp(kernels::active().isa, "portable") != 0) return &pool_row_avx2<T, K>;
#endif
    return &pool_row_portable<T, K>;
}

template <typename T>
PoolRowFn<T> pool_row_kernel(const Window& w) {
    if (w.sw != w.kw || w.dw != 1) return nullptr;
    switch (w.kw) {
        case 2: return pool_row_for_isa<T, 2>();
        case 3: return pool_row_for_isa<T, 3>();
        case 4: return pool_row_for_isa<T, 4>();
        default: return nullptr;
    }
}

}  // namespace

template <typename T>
void max_pool_2d(const T* x, T* y, const Window& w) {
    const T lowest = pool::max_start<T>();
    if (w.kh == 2 && w.kw == 2 && w.sh == 2 && w.sw == 2 && w.dh == 1 && w.dw == 1 && w.top == 0 && w.left == 0 &&
        2 * w.oh <= w.h && 2 * w.ow <= w.w) {
#if defined(__aarch64__)
        if (kernels::neon_active()) return pool::max_2x2_neon(x, y, w);
#endif
        // the usual CNN downsampling, no bounds checks; the same fold as the general loop below
        return pool::planes_2x2(x, y, w, 0, [](const T*, const T*, T*) {});
    }
    // Output rows and columns whose whole window lies inside the input take the unchecked loop.
    std::int64_t y_lo = 0, y_hi = 0, x_lo = 0, x_hi = 0;
    valid_range(-w.top, w.sh, w.h - (w.kh - 1) * w.dh, w.oh, y_lo, y_hi);
    valid_range(-w.left, w.sw, w.w - (w.kw - 1) * w.dw, w.ow, x_lo, x_hi);
    const PoolRowFn<T> row_kernel = pool_row_kernel<T>(w);
    for (std::int64_t plane = 0; plane < w.n * w.c; ++plane) {
        const T* in = x + plane * w.h * w.w;
        T* out = y + plane * w.oh * w.ow;
        for (std::int64_t oy = 0; oy < w.oh; ++oy) {
            const bool inner_row = oy >= y_lo && oy < y_hi;
            for (std::int64_t ox = 0; ox < w.ow; ++ox) {
                if (inner_row && ox == x_lo && x_hi > x_lo && row_kernel != nullptr) {
                    row_kernel(in + (oy * w.sh - w.top) * w.w + (x_lo * w.sw - w.left), w.dh * w.w, w.kh,
                               out + oy * w.ow + x_lo, x_hi - x_lo, lowest);
                    ox = x_hi - 1;
                    continue;
                }
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
std::unique_ptr<Op> make_pool_op(const NodeSpec& spec) {
    const std::string& op = spec.op;
    if (op == "MaxPool") return std::make_unique<PoolOp>(spec.attrs, false);
    if (op == "AveragePool") return std::make_unique<PoolOp>(spec.attrs, true);
    if (op == "GlobalAveragePool") return std::make_unique<GlobalPoolOp>(true);
    if (op == "GlobalMaxPool") return std::make_unique<GlobalPoolOp>(false);
    return nullptr;
}

}  // namespace edgefleet::graph
