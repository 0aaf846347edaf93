// Depthwise Conv (one input channel per group, any channel multiplier, constant W), float32 NCHW 2-D,
// with its fused activation. The general path would run one im2col and one 1-row GEMM per channel;
// here each channel's plane is copied once into a zero-padded buffer, and each block of 8 output pixels
// of a row is accumulated in registers over the kH x kW taps (8 inputs at the stride times one weight),
// then bias and activation. Summed in tap order from zero, bias after the sum, as the reference's
// im2col + GEMM. x86-64 runs an AVX2 version (graph_ops_depthwise_avx2.cpp, chosen at run time) with the same
// products and sums in the same order (no FMA), so every tier gives the same bits.
// With channel multiplier 1 and dilation 1, the x86 SIMD tiers run the lanes kernel instead
// (graph_kernels_depthwise_x86.cpp: channels in the SIMD lanes, one transpose per image in and out), again
// with the same products and sums per output in the same order.
#include <cmath>
#include <cstring>
#include <limits>

#include "graph_kernels.hpp"
#include "graph_ops_depthwise.hpp"
#include "graph_ops_qdepthwise.hpp"
#include "graph_ops.hpp"
#include "graph_threads.hpp"

namespace edgefleet::graph {
namespace depthwise {
namespace {

// registers across the blocks of a plane.
template <int SW, int K>
__attribute__((always_inline)) inline void block(const PlaneArgs& a, const float* w, const float* src_row,
                                                 float* out, std::int64_t count) {
    const Window& v = *a.win;
    const std::int64_t sw = SW > 0 ? SW : v.sw, kh = K > 0 ? K : v.kh, kw = K > 0 ? K : v.kw;
    float acc[kLanes] = {};
    for (std::int64_t i = 0; i < kh; ++i) {
        const float* src = src_row + i * v.dh * a.pw;
        for (std::int64_t j = 0; j < kw; ++j) {
            const float wv = w[i * kw + j];
            const float* s = src + j * v.dw;
            for (std::int64_t l = 0; l < kLanes; ++l) acc[l] += wv * s[l * sw];
        }
    }
    const float b = a.bias, lo = a.lo, hi = a.hi;
    if (count == kLanes) {
        for (std::int64_t l = 0; l < kLanes; ++l) out[l] = std::min(std::max(acc[l] + b, lo), hi);
    } else {
        for (std::int64_t l = 0; l < count; ++l) out[l] = std::min(std::max(acc[l] + b, lo), hi);
    }
}

template <int SW, int K>
__attribute__((always_inline)) inline void rows(const PlaneArgs& a) {
    const Window& v = *a.win;
    float w[K > 0 ? K * K : 1];
    const float* taps = a.w;
    if (K > 0 && v.dh == 1 && v.dw == 1) {
        for (int t = 0; t < K * K; ++t) w[t] = a.w[t];
        taps = w;
    }
    for (std::int64_t oy = 0; oy < v.oh; ++oy) {
        const float* src_row = a.x + oy * v.sh * a.pw;
        float* out = a.y + oy * v.ow;
        for (std::int64_t ox = 0; ox < v.ow; ox += kLanes) {
            block<SW, K>(a, taps, src_row + ox * v.sw, out + ox, std::min(kLanes, v.ow - ox));
        }
    }
}

template <int SW>
__attribute__((always_inline)) inline void by_kernel(const PlaneArgs& a) {
    const Window& v = *a.win;
    if (v.kh == 3 && v.kw == 3) return rows<SW, 3>(a);
    if (v.kh == 5 && v.kw == 5) return rows<SW, 5>(a);
    rows<SW, 0>(a);
}

__attribute__((always_inline)) inline void plane_impl(const PlaneArgs& a) {
    if (a.win->sw == 1) return by_kernel<1>(a);
    if (a.win->sw == 2) return by_kernel<2>(a);
    rows<0, 0>(a);
}


}  // namespace

void plane_portable(const PlaneArgs& a) {
    const Window& v = *a.win;
    if (!flat(v)) return plane_impl(a);
    alignas(64) float buf[kFlatMax];
    for (std::int64_t q = 0, span = flat_span(a); q < span; q += kLanes) {
        float acc[kLanes] = {};
        for (std::int64_t i = 0; i < v.kh; ++i) {
            for (std::int64_t j = 0; j < v.kw; ++j) {
                const float wv = a.w[i * v.kw + j];
                const float* s = a.x + q + i * v.dh * a.pw + j * v.dw;
                for (std::int64_t l = 0; l < kLanes; ++l) acc[l] += wv * s[l];
            }
        }
        std::copy(acc, acc + kLanes, buf + q);
    }
    flat_out(a, buf);
}


}  // namespace depthwise

namespace {

using depthwise::flat;
using depthwise::kLanes;
using depthwise::PlaneArgs;

// The plane kernel for the ISA in use.
using PlaneFn = void (*)(const PlaneArgs&);
PlaneFn plane_kernel() {
#if defined(__x86_64__) || defined(_M_X64)
    if (std::strcmp(kernels::active().isa, "portable") != 0) return &depthwise::plane_avx2;
#endif
#if defined(__aarch64__)
    if (kernels::neon_active()) return &depthwise::plane_neon;
#endif
    return &depthwise::plane_portable;
}

// The padded plane's size: every window inside it, rows wide enough for whole blocks of kLanes (the
// flat walk needs no more than the windows: its blocks run on across rows).
void padded(const Window& win, std::int64_t& ph, std::int64_t& pw) {
    const std::int64_t blocks = (win.ow + kLanes - 1) / kLanes * kLanes;
    ph = std::max(win.h + win.top, (win.oh - 1) * win.sh + (win.kh - 1) * win.dh + 1);
    pw = std::max(win.w + win.left, (flat(win) ? win.ow : blocks - 1) * win.sw + (win.kw - 1) * win.dw +
                                        (flat(win) ? 0 : 1));
}

class DepthwiseConvOp : public Op {
public:
    DepthwiseConvOp(const Attrs& attrs, const Constant& w, const Constant* b)
        : attrs_(attrs), act_(Activation::from(attrs)), group_(attrs.get_int("group", 1)), w_shape_(w.shape) {
        const auto kernel = attrs.get_ints("kernel_shape", {});
        EF_REQUIRE(kernel.empty() || (kernel.size() == 2 && kernel[0] == w.shape[2] && kernel[1] == w.shape[3]),
                   "kernel_shape does not match W");
        const auto* src = static_cast<const float*>(w.data());
        weights_.assign(src, src + numel(w.shape));
        if (b != nullptr && b->dtype == DType::f32 && numel(b->shape) == w.shape[0]) {
            const auto* values = static_cast<const float*>(b->data());
            bias_.assign(values, values + w.shape[0]);
        }
        pack_lanes(attrs, b != nullptr);
    }

    Shape infer(const std::vector<View>& in) const override {
        const Window& win = windows_.get(*in[0].shape, w_shape_[2], w_shape_[3], attrs_, false);
        EF_REQUIRE(win.c == group_, "X has " + std::to_string(win.c) + " channels; W " + shape_str(w_shape_) +
                                        " with group " + std::to_string(group_) + " needs " + std::to_string(group_));
        if (in.size() > 2 && (in[2].data != nullptr || !in[2].shape->empty())) {
            EF_REQUIRE(numel(*in[2].shape) == w_shape_[0], "B must have M = " + std::to_string(w_shape_[0]) + " values");
        }
        return {win.n, w_shape_[0], win.oh, win.ow};
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        const Window& win = windows_.get(*in[0].shape, w_shape_[2], w_shape_[3], attrs_, false);
        std::int64_t ph = 0, pw = 0;
        padded(win, ph, pw);
        const std::size_t planes = slice(ph, pw) * sizeof(float) * static_cast<std::size_t>(pool_threads());
        if (lanes_w_.empty()) return planes;  // one plane per thread
        // or one padded image for the lanes kernel (the ISA may change between runs: room for either)
        const std::size_t image = static_cast<std::size_t>(depthwise::lanes_rows(win) * depthwise::lanes_cols(win) *
                                                           lanes_cp_) * sizeof(float);
        return std::max(planes, image);
    }

    // One thread's padded plane, in floats: stride-2 loads read 8 past a row; 64-byte multiples.
    static std::size_t slice(std::int64_t ph, std::int64_t pw) {
        return static_cast<std::size_t>((ph * pw + 2 * kLanes + 15) / 16 * 16);
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Window& win = windows_.get(*in[0].shape, w_shape_[2], w_shape_[3], attrs_, false);
        std::int64_t ph = 0, pw = 0;
        padded(win, ph, pw);
        const float* bias = !bias_.empty() ? bias_.data()
                            : (in.size() > 2 && in[2].data != nullptr ? in[2].as<float>() : nullptr);
        constexpr float kInf = std::numeric_limits<float>::infinity();
        const std::int64_t mult = w_shape_[0] / group_, taps = w_shape_[2] * w_shape_[3], plane = win.h * win.w;
        const std::int64_t out_plane = win.oh * win.ow;
        const double work = static_cast<double>(win.n * w_shape_[0] * out_plane * taps);
#if defined(__x86_64__) || defined(_M_X64)
        // Only on planes up to 2 blocks wide: on wider ones (EfficientNet-Lite's 16 channels at 32 x 32) the
        // plane kernels fill their lanes and the two transposes cost more than they save (15 vs 11 us).
        if (!lanes_w_.empty() && win.ow <= 2 * kLanes && std::strcmp(kernels::active().isa, "portable") != 0) {
            auto* pad = static_cast<float*>(scratch);
            const std::int64_t pw_lanes = depthwise::lanes_cols(win);
            for (std::int64_t n = 0; n < win.n; ++n) {
                depthwise::lanes_fill_avx2(in[0].as<float>() + n * win.c * plane, win, pw_lanes, lanes_cp_, pad);
                const depthwise::LanesArgs args{pad, pw_lanes, lanes_cp_, win.c, lanes_w_.data(), lanes_b_.data(),
                                                act_.active ? act_.lo : -kInf, act_.active ? act_.hi : kInf, &win,
                                                out.as<float>() + n * win.c * out_plane, 0, 0};
                parallel_ranges(out_plane, kLanes, work / static_cast<double>(win.n),
                                [&](int, std::int64_t first, std::int64_t last) {
                                    depthwise::LanesArgs part = args;
                                    part.p_begin = first, part.p_end = last;
                                    depthwise::lanes_avx2(part);
                                });
            }
            act_.finish(out.as<float>(), win.n * win.c * out_plane);
            return;
        }
#endif
        const PlaneFn kernel = plane_kernel();
        parallel_ranges(win.n * win.c, 1, work, [&](int part, std::int64_t first, std::int64_t last) {
            float* pad = static_cast<float*>(scratch) + slice(ph, pw) * static_cast<std::size_t>(part);
            std::fill(pad, pad + slice(ph, pw), 0.0f);  // past the plane too: the flat walk reads up to 7 more
            PlaneArgs args{nullptr, pw, nullptr, 0.0f, act_.active ? act_.lo : -kInf, act_.active ? act_.hi : kInf,
                           &win, nullptr};
            for (std::int64_t nc = first; nc < last; ++nc) {
                const std::int64_t n = nc / win.c, c = nc % win.c;
                const float* x = in[0].as<float>() + (n * win.c + c) * plane;
                for (std::int64_t iy = 0; iy < win.h; ++iy)
                    depthwise::copy_floats(pad + (iy + win.top) * pw + win.left, x + iy * win.w, win.w);
                args.x = pad;
                for (std::int64_t q = 0; q < mult; ++q) {
                    const std::int64_t m = c * mult + q;
                    args.w = weights_.data() + m * taps;
                    args.bias = bias != nullptr ? bias[m] : 0.0f;
                    args.y = out.as<float>() + (n * w_shape_[0] + m) * out_plane;
                    kernel(args);
                    act_.finish(args.y, out_plane);
                }
            }
        });
    }

private:
    // The lanes kernel's W [kh * kw][cp] and B [cp] (graph_ops_depthwise.hpp), for multiplier 1, dilation 1,
    // B constant or absent, and at least kLanes channels; else empty.
    void pack_lanes(const Attrs& attrs, bool has_b) {
        const std::int64_t c = group_, taps = w_shape_[2] * w_shape_[3];
        if (w_shape_[0] != c || c < kLanes || (has_b && bias_.empty())) return;
        for (std::int64_t d : attrs.get_ints("dilations", {1, 1})) {
            if (d != 1) return;
        }
        lanes_cp_ = (c + kLanes - 1) / kLanes * kLanes;
        lanes_w_.assign(static_cast<std::size_t>(taps * lanes_cp_), 0.0f);
        lanes_b_.assign(static_cast<std::size_t>(lanes_cp_), 0.0f);
        for (std::int64_t ch = 0; ch < c; ++ch) {
            for (std::int64_t t = 0; t < taps; ++t) lanes_w_[t * lanes_cp_ + ch] = weights_[ch * taps + t];
            if (!bias_.empty()) lanes_b_[ch] = bias_[ch];
        }
    }

    Attrs attrs_;
    Activation act_;
    std::int64_t group_;
    Shape w_shape_;
    std::vector<float> weights_;
    std::vector<float> bias_;  // empty: B absent or computed at run time
    std::vector<float> lanes_w_, lanes_b_;
    std::int64_t lanes_cp_ = 0;
    mutable WindowCache windows_;  // runs hold the GIL: never two at once
};

// The int8 depthwise QConv: (x - x_zero_point) and (w - w_zero_point) as float32, summed by the float
// kernel above: every product and partial sum is an integer below 2^24 (checked at load), so float32
// holds it exactly and the int32 accumulator of the reference comes out bit for bit; then + bias,
// times the channel's multiplier, requantized as graph_reference.qconv. On the x86 tiers, channel
// multiplier 1 and dilation 1 run the integer kernel of graph_ops_qdepthwise.hpp instead (same bits).
class QDepthwiseConvOp : public Op {
public:
    QDepthwiseConvOp(const Attrs& attrs, DType out, const std::vector<const Constant*>& c, std::vector<float> w)
        : attrs_(attrs), group_(attrs.get_int("group", 1)), w_shape_(c[3]->shape), weights_(std::move(w)) {
        const std::int64_t m = w_shape_[0];
        const auto scalar = [](const Constant* k) {
            return k->dtype == DType::f32 ? static_cast<const float*>(k->data())[0]
                   : k->dtype == DType::u8 ? static_cast<float>(static_cast<const std::uint8_t*>(k->data())[0])
                                           : static_cast<float>(static_cast<const std::int8_t*>(k->data())[0]);
        };
        x_zero_ = scalar(c[2]);
        const float sx = scalar(c[1]), sy = scalar(c[6]), zy = scalar(c[7]);
        const auto* sw = static_cast<const float*>(c[4]->data());
        const bool per_channel = numel(c[4]->shape) == m;
        for (std::int64_t o = 0; o < m; ++o) {
            const float a = sx * sw[per_channel ? o : 0];
            mult_.push_back(a / sy);
        }
        bias_.assign(static_cast<std::size_t>(m), 0);
        if (c.size() > 8 && c[8] != nullptr) {
            const auto* b = static_cast<const std::int32_t*>(c[8]->data());
            bias_.assign(b, b + m);
        }
        u8_ = out == DType::u8;
        lo_ = u8_ ? 0.0f : -128.0f, hi_ = u8_ ? 255.0f : 127.0f, y_zero_ = zy;
        if (attrs.get_str("activation", "none") == "relu") lo_ = std::max(lo_, zy);
        simd_ = qdepthwise::QDepthwise::make(w_shape_, group_, attrs_, weights_, bias_, mult_,
                                             static_cast<std::int64_t>(x_zero_), y_zero_, lo_, hi_);
    }

    Shape infer(const std::vector<View>& in) const override {
        const Window& win = windows_.get(*in[0].shape, w_shape_[2], w_shape_[3], attrs_, false);
        EF_REQUIRE(win.c == group_, "x has " + std::to_string(win.c) + " channels, w expects " + std::to_string(group_));
        return {win.n, w_shape_[0], win.oh, win.ow};
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        const Window& win = windows_.get(*in[0].shape, w_shape_[2], w_shape_[3], attrs_, false);
        std::int64_t ph = 0, pw = 0;
        padded(win, ph, pw);
        const std::size_t planes = slice(win, ph, pw) * sizeof(float) * static_cast<std::size_t>(pool_threads());
        return simd_ ? std::max(planes, simd_->scratch_bytes(win)) : planes;  // the ISA may change between runs
    }

    // One thread's padded plane and sums, in floats, in 64-byte multiples.
    static std::size_t slice(const Window& win, std::int64_t ph, std::int64_t pw) {
        return static_cast<std::size_t>((ph * pw + 2 * kLanes + 15) / 16 * 16 + (win.oh * win.ow + 15) / 16 * 16);
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Window& win = windows_.get(*in[0].shape, w_shape_[2], w_shape_[3], attrs_, false);
        if (const qdepthwise::KernelFn simd = simd_ ? qdepthwise::active_kernel() : nullptr) {
            simd_->run(simd, in[0], out, win, scratch);
            return;
        }
        std::int64_t ph = 0, pw = 0;
        padded(win, ph, pw);
        const std::int64_t mult = w_shape_[0] / group_, taps = w_shape_[2] * w_shape_[3], plane = win.h * win.w;
        const std::int64_t out_plane = win.oh * win.ow;
        const PlaneFn kernel = plane_kernel();
        constexpr float kInf = std::numeric_limits<float>::infinity();
        const double work = static_cast<double>(win.n * w_shape_[0] * out_plane * taps);
        parallel_ranges(win.n * win.c, 1, work, [&](int part, std::int64_t first, std::int64_t last) {
            float* pad = static_cast<float*>(scratch) + slice(win, ph, pw) * static_cast<std::size_t>(part);
            float* sums = pad + (ph * pw + 2 * kLanes + 15) / 16 * 16;
            std::fill(pad, sums, 0.0f);  // past the plane too: the flat walk reads up to 7 more
            PlaneArgs args{pad, pw, nullptr, 0.0f, -kInf, kInf, &win, sums};
            for (std::int64_t nc = first; nc < last; ++nc) {
                const std::int64_t n = nc / win.c, c = nc % win.c;
                const std::int64_t at = (n * win.c + c) * plane;
                for (std::int64_t iy = 0; iy < win.h; ++iy) {
                    float* row = pad + (iy + win.top) * pw + win.left;
                    if (in[0].dtype == DType::u8) {
                        const std::uint8_t* x = in[0].as<std::uint8_t>() + at + iy * win.w;
                        for (std::int64_t ix = 0; ix < win.w; ++ix) row[ix] = static_cast<float>(x[ix]) - x_zero_;
                    } else {
                        const std::int8_t* x = in[0].as<std::int8_t>() + at + iy * win.w;
                        for (std::int64_t ix = 0; ix < win.w; ++ix) row[ix] = static_cast<float>(x[ix]) - x_zero_;
                    }
                }
                for (std::int64_t q = 0; q < mult; ++q) {
                    const std::int64_t m = c * mult + q;
                    args.w = weights_.data() + m * taps;
                    kernel(args);
                    const std::int64_t offset = (n * w_shape_[0] + m) * out_plane;
                    if (u8_) {
                        requantize(sums, out_plane, bias_[m], mult_[m], out.as<std::uint8_t>() + offset);
                    } else {
                        requantize(sums, out_plane, bias_[m], mult_[m], out.as<std::int8_t>() + offset);
                    }
                }
            }
        });
    }

private:
    // y = clamp(round_half_even(float(sum + bias) * mult) + y_zero, lo, hi). Rounding adds and subtracts
    // 1.5 * 2^23, which rounds to an integer in the default (half-to-even) mode exactly as nearbyint for
    // |value| < 2^22, and keeps a larger value's sign and size, which the clamp to 8 bits then saturates
    // the same way; unlike a nearbyint call per value, the loop vectorises in the baseline build.
    template <typename T>
    void requantize(const float* sums, std::int64_t count, std::int32_t bias, float mult, T* y) const {
        constexpr float kMagic = 12582912.0f;
        const float zero = y_zero_, lo = lo_, hi = hi_;
        for (std::int64_t i = 0; i < count; ++i) {
            const float value = static_cast<float>(static_cast<std::int32_t>(sums[i]) + bias) * mult;
            y[i] = static_cast<T>(std::min(std::max(((value + kMagic) - kMagic) + zero, lo), hi));
        }
    }

    Attrs attrs_;
    std::int64_t group_;
    Shape w_shape_;
    std::vector<float> weights_;  // w - w_zero_point, (M, kH * kW)
    std::vector<float> mult_;
    std::vector<std::int32_t> bias_;
    float x_zero_ = 0, y_zero_ = 0, lo_ = 0, hi_ = 0;
    bool u8_ = true;
    mutable WindowCache windows_;
    std::unique_ptr<qdepthwise::QDepthwise> simd_;  // null unless multiplier 1 and dilation 1
};

}  // namespace

std::unique_ptr<Op> make_qdepthwise_conv_op(const NodeSpec& spec, DType out,
                                            const std::vector<const Constant*>& c) {
    if (spec.op != "QConv" || c.size() < 8) return nullptr;
    for (std::size_t i = 1; i < 8; ++i) {
        if (c[i] == nullptr) return nullptr;
    }
    const Constant& w = *c[3];
    const std::int64_t group = spec.attrs.get_int("group", 1);
    if (group <= 1 || w.shape.size() != 4 || w.shape[1] != 1 || w.shape[0] % group != 0) return nullptr;
    if (w.dtype != DType::i8 && w.dtype != DType::u8) return nullptr;
    if (c[1]->dtype != DType::f32 || c[4]->dtype != DType::f32 || c[6]->dtype != DType::f32) return nullptr;
    if (numel(c[1]->shape) != 1 || numel(c[2]->shape) != 1 || numel(c[6]->shape) != 1 || numel(c[7]->shape) != 1) {
        return nullptr;
    }
    const std::int64_t m = w.shape[0], taps = w.shape[2] * w.shape[3];
    if ((numel(c[4]->shape) != 1 && numel(c[4]->shape) != m) || numel(c[5]->shape) != numel(c[4]->shape)) return nullptr;
    if (c.size() > 8 && c[8] != nullptr && (c[8]->dtype != DType::i32 || numel(c[8]->shape) != m)) return nullptr;
    const bool per_channel = numel(c[5]->shape) == m;
    std::vector<float> weights(static_cast<std::size_t>(m * taps));
    float largest = 0.0f;
    for (std::int64_t o = 0; o < m; ++o) {
        const std::int64_t zero = c[5]->dtype == DType::u8
                                      ? static_cast<const std::uint8_t*>(c[5]->data())[per_channel ? o : 0]
                                      : static_cast<const std::int8_t*>(c[5]->data())[per_channel ? o : 0];
        for (std::int64_t t = 0; t < taps; ++t) {
            const std::int64_t v = w.dtype == DType::u8 ? static_cast<const std::uint8_t*>(w.data())[o * taps + t]
                                                        : static_cast<const std::int8_t*>(w.data())[o * taps + t];
            weights[static_cast<std::size_t>(o * taps + t)] = static_cast<float>(v - zero);
            largest = std::max(largest, std::abs(static_cast<float>(v - zero)));
        }
    }
    if (static_cast<double>(taps) * 255.0 * largest >= 16777216.0) return nullptr;  // sums exact in float32
    return std::make_unique<QDepthwiseConvOp>(spec.attrs, out, c, std::move(weights));
}

std::unique_ptr<Op> make_depthwise_conv_op(const NodeSpec& spec, const std::vector<const Constant*>& constants) {
    if (spec.op != "Conv" || constants.size() < 2 || constants[1] == nullptr || constants.size() > 3) return nullptr;
    const Constant& w = *constants[1];
    const std::int64_t group = spec.attrs.get_int("group", 1);
    if (group <= 1 || w.dtype != DType::f32 || w.shape.size() != 4 || w.shape[1] != 1 || w.shape[0] % group != 0) {
        return nullptr;
    }
    return std::make_unique<DepthwiseConvOp>(spec.attrs, w, constants.size() > 2 ? constants[2] : nullptr);
}

}  // namespace edgefleet::graph
