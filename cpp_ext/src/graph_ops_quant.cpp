// The fused integer kernels QConv and QGemm (int8/uint8 x int8/uint8 -> int32, requantized); make_quant_op
// also hands QuantizeLinear / DequantizeLinear to graph_ops_quantize.cpp.
// QConv has two paths: with group 1 and every w - w_zero_point within int8, a direct uint8 x int8 kernel
// (kernels::Table::qconv_u8s8: the input copied once into zero-point-padded HWC bytes, the zero point's
// share folded into the bias, requantization in the store); otherwise, or on a tier without that kernel,
// im2row into int16 rows + qgemm_nt + a requantization pass. QGemm on the avx512 and neondot tiers, when
// every w - w_zero fits int8, runs byte dot products on weights packed at load (graph_qgemm_vnni.hpp).
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_ops_qlayout.hpp"
#include "graph_ops_quant.hpp"
#include "graph_threads.hpp"
#include "graph_qgemm_vnni.hpp"  // (after the others: the depthwise branch adds a header above)

namespace edgefleet::graph {


namespace {

using quant::int_at;
using quant::range_of;
using quant::Range;
using quant::requantize;

// The constant parameters of QConv / QGemm, pre-packed: weights as int16 rows (w - w_zero_point) padded
// to a multiple of 16, one float multiplier and one int32 bias per output channel.
struct Packed {
    std::int64_t channels = 0, k = 0, kp = 0;
    std::shared_ptr<void> weights;  // int16 [channels][kp]
    std::vector<float> multiplier;
    std::vector<std::int32_t> bias;
    float x_zero = 0, y_zero = 0, lo = 0, hi = 0;
    std::int64_t x_zero_int = 0;
};

const Constant& need(const Constant* c, const char* what) {
    EF_REQUIRE(c != nullptr, std::string(what) + " must be a constant (the compiler fuses only constant weights)");
    return *c;
}

float scalar_f32(const Constant* c, const char* what) {
    const Constant& k = need(c, what);
    EF_REQUIRE(numel(k.shape) == 1, std::string(what) + " must be a scalar");
    return *static_cast<const float*>(k.data());
}

// w_at(channel, k) gives the weight; `channels` output channels of `k` inputs each.
template <typename W>
Packed pack(const std::vector<const Constant*>& c, std::int64_t channels, std::int64_t k, W w_at, DType out,
            bool relu, const Constant* bias) {
    Packed p;
    p.channels = channels, p.k = k, p.kp = kernels::round_up16(static_cast<int>(k));
    const float sx = scalar_f32(c[1], "x_scale"), sy = scalar_f32(c[6], "y_scale");
    const Constant& zx = need(c[2], "x_zero_point");
    const Constant& sw = need(c[4], "w_scale");
    const Constant& zw = need(c[5], "w_zero_point");
    const Constant& zy = need(c[7], "y_zero_point");
    EF_REQUIRE(numel(zx.shape) == 1 && numel(zy.shape) == 1, "x and y zero points must be scalars");
    EF_REQUIRE(numel(sw.shape) == 1 || numel(sw.shape) == channels, "w_scale must have 1 or one value per output channel");
    EF_REQUIRE(numel(zw.shape) == numel(sw.shape), "w_zero_point and w_scale must have the same size");
    p.x_zero_int = int_at(zx.data(), zx.dtype, 0);
    p.x_zero = static_cast<float>(p.x_zero_int);
    p.y_zero = static_cast<float>(int_at(zy.data(), zy.dtype, 0));
    const Range r = range_of(out);
    p.lo = relu ? std::max(r.lo, p.y_zero) : r.lo;
    p.hi = r.hi;
    p.weights = aligned_buffer(static_cast<std::size_t>(channels * p.kp) * sizeof(std::int16_t));
    auto* packed = static_cast<std::int16_t*>(p.weights.get());
    const auto* scales = static_cast<const float*>(sw.data());
    for (std::int64_t ch = 0; ch < channels; ++ch) {
        const std::int64_t q = numel(sw.shape) == 1 ? 0 : ch;
        const std::int64_t zero = int_at(zw.data(), zw.dtype, q);
        for (std::int64_t i = 0; i < k; ++i) packed[ch * p.kp + i] = static_cast<std::int16_t>(w_at(ch, i) - zero);
        p.multiplier.push_back((sx * scales[q]) / sy);  // float32 steps, as the reference
    }
    p.bias.assign(static_cast<std::size_t>(channels), 0);
    if (bias != nullptr) {
        EF_REQUIRE(bias->dtype == DType::i32 && numel(bias->shape) == channels, "bias must be int32 with one value per channel");
        std::memcpy(p.bias.data(), bias->data(), static_cast<std::size_t>(channels) * sizeof(std::int32_t));
    }
    return p;
}

template <typename T>
void requantize_rows(const std::int32_t* acc, const Packed& p, std::int64_t rows, std::int64_t cols, bool per_row,
                     T* out) {
    [[maybe_unused]] const bool simd = !per_row && std::strcmp(kernels::active().isa, "portable") != 0;
    for (std::int64_t r = 0; r < rows; ++r) {
        std::int64_t c = 0;
#if defined(__x86_64__) || defined(_M_X64)
        if (simd) {
            c = requantize_avx2(acc + r * cols, p.bias.data(), p.multiplier.data(), p.y_zero, p.lo, p.hi,
                                std::is_same_v<T, std::uint8_t>, reinterpret_cast<char*>(out + r * cols), cols);
        }
#endif
        for (; c < cols; ++c) {
            const std::int64_t ch = per_row ? r : c;
            const float value = static_cast<float>(acc[r * cols + c] + p.bias[ch]) * p.multiplier[ch];
            out[r * cols + c] = static_cast<T>(requantize(value, p.y_zero, p.lo, p.hi));
        }
    }
}

void requantize_any(const std::int32_t* acc, const Packed& p, std::int64_t rows, std::int64_t cols, bool per_row,
                    const View& out, std::int64_t offset) {
    if (out.dtype == DType::u8) {
        requantize_rows(acc, p, rows, cols, per_row, out.as<std::uint8_t>() + offset);
    } else {
        requantize_rows(acc, p, rows, cols, per_row, out.as<std::int8_t>() + offset);
    }
}

class QConvOp : public Op {
public:
    QConvOp(const NodeSpec& spec, const std::vector<const Constant*>& c, DType out)
        : attrs_(spec.attrs), group_(spec.attrs.get_int("group", 1)) {
        const Constant& w = need(c[3], "w");
        EF_REQUIRE(w.shape.size() == 4, "w must be 4-D (M, C/group, kH, kW)");
        w_shape_ = w.shape;
        const std::int64_t k = w.shape[1] * w.shape[2] * w.shape[3];
        const bool relu = spec.attrs.get_str("activation", "none") == "relu";
        EF_REQUIRE(relu || spec.attrs.get_str("activation", "none") == "none", "activation must be none or relu");
        EF_REQUIRE(group_ >= 1 && w.shape[0] % group_ == 0, "group must divide the output channels");
        packed_ = pack(c, w.shape[0], k, [&](std::int64_t ch, std::int64_t i) { return int_at(w.data(), w.dtype, ch * k + i); },
                       out, relu, c.size() > 8 ? c[8] : nullptr);
        if (group_ == 1) pack_direct(c[2]->dtype == DType::i8);
    }

    const Window& window(const View& x) const { return windows_.get(*x.shape, w_shape_[2], w_shape_[3], attrs_, false); }

    Shape infer(const std::vector<View>& in) const override {
        const Window w = window(in[0]);
        EF_REQUIRE(w.c == w_shape_[1] * group_, "x has " + std::to_string(w.c) + " channels, w expects " +
                                                 std::to_string(w_shape_[1] * group_));
        return {w.n, w_shape_[0], w.oh, w.ow};
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        const Window w = window(in[0]);
        const std::int64_t p = w.oh * w.ow;
        const std::size_t gemm =
            static_cast<std::size_t>(p * packed_.kp) * 2 + static_cast<std::size_t>(w_shape_[0] / group_ * p) * 4 + 64;
        const Direct* d = direct(w);  // the ISA may change between runs: room for either path
        return d == nullptr ? gemm : std::max(gemm, static_cast<std::size_t>(d->ph * d->pw * cp_) + 64);
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Window w = window(in[0]);
        const kernels::QConvFn kernel = kernels::active().qconv_u8s8;
        if (const Direct* d = kernel != nullptr ? direct(w) : nullptr) {
            run_direct(in[0], out, w, *d, kernel, static_cast<std::uint8_t*>(scratch));
            return;
        }
        const std::int64_t p = w.oh * w.ow, m = w_shape_[0] / group_, cg = w.c / group_;
        auto* patches = static_cast<std::int16_t*>(scratch);
        auto* acc = reinterpret_cast<std::int32_t*>(static_cast<char*>(scratch) + (p * packed_.kp * 2 + 63) / 64 * 64);
        const auto* weights = static_cast<const std::int16_t*>(packed_.weights.get());
        for (std::int64_t n = 0; n < w.n; ++n) {
            for (std::int64_t g = 0; g < group_; ++g) {
                im2row(in[0], (n * w.c + g * cg) * w.h * w.w, cg, w, patches);
                kernels::active().qgemm_nt(static_cast<int>(m), static_cast<int>(p), static_cast<int>(packed_.kp),
                                           weights + g * m * packed_.kp, static_cast<int>(packed_.kp), patches,
                                           static_cast<int>(packed_.kp), acc, p, 1);
                requantize_group(acc, g * m, m, p, out, (n * w_shape_[0] + g * m) * p);
            }
        }
    }

private:
    // The direct u8 x s8 path (group 1, every w - w_zero_point within int8): geometry per input shape.
    struct Direct {
        Shape x;
        std::int64_t ph = 0, pw = 0;
        std::vector<std::int32_t> pix, koff;
    };

    // W as (K4, MP, 4) int8 over taps (i, j, channels rounded up to 4); bias minus x_zero * sum(w).
    // int8 activations run as uint8 (x + 128, zero point + 128): the same differences x - x_zero.
    void pack_direct(bool x_int8) {
        const std::int64_t m = w_shape_[0], ch = w_shape_[1], kh = w_shape_[2], kw = w_shape_[3];
        const std::int64_t k = ch * kh * kw;
        const auto* weights = static_cast<const std::int16_t*>(packed_.weights.get());
        for (std::int64_t o = 0; o < m; ++o)
            for (std::int64_t i = 0; i < k; ++i)
                if (weights[o * packed_.kp + i] < -128 || weights[o * packed_.kp + i] > 127) return;
        x_shift_ = x_int8 ? 128 : 0;
        x_zero_u8_ = static_cast<std::uint8_t>(packed_.x_zero_int + x_shift_);
        // One input channel (an audio CNN's first Conv1d): groups of 4 taps along a row, not one tap and 3
        // padding channels (3 of 4 products wasted). Reads up to 3 bytes past a window: zero weights.
        row_taps_ = ch == 1 && attrs_.get_ints("dilations", {1, 1}).back() == 1;
        cp_ = row_taps_ ? 1 : kernels::round_up4(static_cast<int>(ch));
        mp_ = (m + 15) / 16 * 16;
        const std::int64_t kw4 = (kw + 3) / 4, k4 = row_taps_ ? kh * kw4 : kh * kw * cp_ / 4;
        direct_w_ = aligned_buffer(static_cast<std::size_t>(k4 * mp_ * 4));
        auto* dst = static_cast<std::int8_t*>(direct_w_.get());
        std::fill(dst, dst + k4 * mp_ * 4, static_cast<std::int8_t>(0));
        direct_bias_.assign(static_cast<std::size_t>(mp_), 0);
        direct_mult_.assign(static_cast<std::size_t>(mp_), 0.0f);
        for (std::int64_t o = 0; o < m; ++o) {
            std::int64_t sum = 0;
            for (std::int64_t c = 0; c < ch; ++c)
                for (std::int64_t i = 0; i < kh; ++i)
                    for (std::int64_t j = 0; j < kw; ++j) {
                        const std::int16_t v = weights[o * packed_.kp + (c * kh + i) * kw + j];
                        const std::int64_t t = row_taps_ ? i * kw4 + j / 4 : (i * kw + j) * cp_ / 4 + c / 4;
                        dst[(t * mp_ + o) * 4 + (row_taps_ ? j : c) % 4] = static_cast<std::int8_t>(v);
                        sum += v;
                    }
            direct_bias_[o] = static_cast<std::int32_t>(packed_.bias[o] - x_zero_u8_ * sum);
            direct_mult_[o] = packed_.multiplier[o];
        }
    }

    const Direct* direct(const Window& win) const {
        if (!direct_w_) return nullptr;
        const Shape x{win.n, win.c, win.h, win.w};
        if (direct_.x == x) return &direct_;
        Direct d;
        d.x = x;
        d.ph = std::max(win.h + win.top, (win.oh - 1) * win.sh + (win.kh - 1) * win.dh + 1);
        d.pw = std::max(win.w + win.left, (win.ow - 1) * win.sw + (win.kw - 1) * win.dw + 1);
        if (d.ph * d.pw * cp_ >= std::numeric_limits<std::int32_t>::max()) return nullptr;
        for (std::int64_t oy = 0; oy < win.oh; ++oy)
            for (std::int64_t ox = 0; ox < win.ow; ++ox)
                d.pix.push_back(static_cast<std::int32_t>((oy * win.sh * d.pw + ox * win.sw) * cp_));
        for (std::int64_t i = 0; i < win.kh; ++i)
            for (std::int64_t j = 0; j < win.kw; j += row_taps_ ? 4 : 1)
                for (std::int64_t c = 0; c < cp_; c += 4)
                    d.koff.push_back(static_cast<std::int32_t>((i * win.dh * d.pw + j * win.dw) * cp_ + c));
        direct_ = std::move(d);
        return &direct_;
    }

    void run_direct(const View& x, const View& out, const Window& win, const Direct& d, kernels::QConvFn kernel,
                    std::uint8_t* padded) const {
        const std::int64_t m = w_shape_[0], p = win.oh * win.ow, plane = win.h * win.w;
        kernels::QConvArgs args{static_cast<int>(m), static_cast<int>(p), static_cast<int>(d.koff.size()),
                                static_cast<int>(mp_), padded, d.pix.data(), d.koff.data(),
                                static_cast<const std::int8_t*>(direct_w_.get()), direct_bias_.data(),
                                direct_mult_.data(), packed_.y_zero, packed_.lo, packed_.hi, out.dtype == DType::u8,
                                nullptr, 0, 0};
        const auto shift = static_cast<std::uint8_t>(x_shift_);
        for (std::int64_t n = 0; n < win.n; ++n) {
            const auto* src = static_cast<const std::uint8_t*>(x.data) + n * win.c * plane;  // int8: same bytes
            // Split by padded rows (each part fills its rows, then copies the input rows among them): run
            // serially, the copy kept the other threads waiting before every split conv. A transposed byte
            // is counted as ~4 multiply-adds of time.
            const std::int64_t row_bytes = d.pw * cp_;
            parallel_ranges(d.ph, 1, 4.0 * static_cast<double>(d.ph * row_bytes), [&](int, std::int64_t first, std::int64_t last) {
                std::memset(padded + first * row_bytes, x_zero_u8_, static_cast<std::size_t>((last - first) * row_bytes));
                nchw_to_hwc_bytes(src, win.c, win.h, win.w, win.top, win.left, d.pw, cp_, shift, padded,
                                  first - win.top, last - win.top);
            });
            args.y = static_cast<std::uint8_t*>(out.data) + n * m * p;
            const double work = static_cast<double>(m) * static_cast<double>(p) * args.K4;
            // Parts own whole 64-byte lines of the output: parts of 8 byte-sized pixels put two threads'
            // stores in one line of every channel's row (16x16 maps: 32 pixels a part; 8x8: all parts in
            // one line), and both threads walk the channels in the same order, so the lines went back and
            // forth. Maps of 128 pixels or more split by 64 pixels; smaller ones by 16 output channels
            // (W, bias and scales offset by the first channel; integer sums: the same bytes).
            if (p >= 128) {
                parallel_ranges(p, 64, work, [&](int, std::int64_t begin, std::int64_t end) {
                    kernels::QConvArgs part = args;
                    part.p_begin = static_cast<int>(begin);
                    part.p_end = static_cast<int>(end);
                    kernel(part);
                });
            } else {
                parallel_ranges(m, 16, work, [&](int, std::int64_t first, std::int64_t last) {
                    kernels::QConvArgs part = args;
                    part.M = static_cast<int>(last - first);
                    part.w = args.w + first * 4;
                    part.bias = args.bias + first;
                    part.mult = args.mult + first;
                    part.y = static_cast<std::uint8_t*>(args.y) + first * p;
                    part.p_begin = 0;
                    part.p_end = static_cast<int>(p);
                    kernel(part);
                });
            }
        }
    }

    // One row per output pixel: (x - x_zero_point) over (c, i, j), zero in the padding and up to kp.
    void im2row(const View& x, std::int64_t offset, std::int64_t channels, const Window& w, std::int16_t* rows) const {
        const std::vector<std::int32_t>& index = gather_.get(w, channels, true, packed_.kp);
        const auto zero = static_cast<std::int16_t>(packed_.x_zero_int);
        const std::size_t count = index.size();
        if (x.dtype == DType::u8) {
            const std::uint8_t* in = x.as<std::uint8_t>() + offset;
            for (std::size_t r = 0; r < count; ++r) rows[r] = index[r] >= 0 ? static_cast<std::int16_t>(in[index[r]] - zero) : 0;
        } else {
            const std::int8_t* in = x.as<std::int8_t>() + offset;
            for (std::size_t r = 0; r < count; ++r) rows[r] = index[r] >= 0 ? static_cast<std::int16_t>(in[index[r]] - zero) : 0;
        }
    }

    void requantize_group(const std::int32_t* acc, std::int64_t first, std::int64_t m, std::int64_t p, const View& out,
                          std::int64_t offset) const {
        for (std::int64_t o = 0; o < m; ++o) {
            const std::int64_t ch = first + o;
            for (std::int64_t i = 0; i < p; ++i) {
                const float value = static_cast<float>(acc[o * p + i] + packed_.bias[ch]) * packed_.multiplier[ch];
                const float q = requantize(value, packed_.y_zero, packed_.lo, packed_.hi);
                if (out.dtype == DType::u8) {
                    out.as<std::uint8_t>()[offset + o * p + i] = static_cast<std::uint8_t>(q);
                } else {
                    out.as<std::int8_t>()[offset + o * p + i] = static_cast<std::int8_t>(q);
                }
            }
        }
    }

    Attrs attrs_;
    std::int64_t group_;
    Shape w_shape_;
    Packed packed_;
    mutable GatherTable gather_;  // runs hold the GIL: never two at once
    mutable WindowCache windows_;
    std::shared_ptr<void> direct_w_;  // the direct path's W, or null when it does not apply
    std::vector<std::int32_t> direct_bias_;
    std::vector<float> direct_mult_;
    std::int64_t cp_ = 0, mp_ = 0, x_shift_ = 0;
    bool row_taps_ = false;  // cp_ == 1: tap groups of 4 along a row
    std::uint8_t x_zero_u8_ = 0;
    mutable Direct direct_;
};

class QGemmOp : public Op {
public:
    QGemmOp(const std::vector<const Constant*>& c, const Attrs& attrs, DType out) {
        const Constant& b = need(c[3], "b");
        EF_REQUIRE(b.shape.size() == 2, "b must be 2-D (K, N)");
        k_ = b.shape[0], n_ = b.shape[1];
        const bool relu = attrs.get_str("activation", "none") == "relu";
        EF_REQUIRE(relu || attrs.get_str("activation", "none") == "none", "activation must be none or relu");
        packed_ = pack(c, n_, k_, [&](std::int64_t ch, std::int64_t i) { return int_at(b.data(), b.dtype, i * n_ + ch); },
                       out, relu, c.size() > 8 ? c[8] : nullptr);
#if defined(__x86_64__) || defined(_M_X64)
        if (kernels::cpu_has_avx512()) {  // byte dot products on the avx512 tier (graph_qgemm_vnni.hpp)
            const auto* w = static_cast<const std::int16_t*>(packed_.weights.get());
            vnni_ = QGemmVnni::make(k_, n_, [&](std::int64_t k, std::int64_t n) { return w[n * packed_.kp + k]; });
        }
#endif
#if defined(__aarch64__)
        if (kernels::cpu_has_dotprod()) {  // sdot on the same panels, on the neondot tier
            const auto* w = static_cast<const std::int16_t*>(packed_.weights.get());
            vnni_ = QGemmVnni::make(k_, n_, [&](std::int64_t k, std::int64_t n) { return w[n * packed_.kp + k]; });
        }
#endif
    }

    Shape infer(const std::vector<View>& in) const override {
        Shape s = *in[0].shape;
        EF_REQUIRE(!s.empty() && s.back() == k_, "a must have shape (..., " + std::to_string(k_) + "), got " + shape_str(s));
        s.back() = n_;
        return s;
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape& out) const override {
        const std::int64_t rows = numel(*in[0].shape) / k_;
        return static_cast<std::size_t>(rows * packed_.kp) * 2 + 64 + static_cast<std::size_t>(numel(out)) * 4;
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const std::int64_t rows = numel(*in[0].shape) / k_;
        auto* a = static_cast<std::int16_t*>(scratch);
        auto* acc = reinterpret_cast<std::int32_t*>(static_cast<char*>(scratch) + (rows * packed_.kp * 2 + 63) / 64 * 64);
        if (vnni_ && (std::strcmp(kernels::active().isa, "avx512") == 0 ||
                      std::strcmp(kernels::active().isa, "neondot") == 0)) {
            vnni_->run(in[0].data, in[0].dtype == DType::u8, packed_.x_zero_int, rows, scratch, acc);
            requantize_any(acc, packed_, rows, n_, false, out, 0);
            return;
        }
        const auto zero = static_cast<std::int16_t>(packed_.x_zero_int);
        for (std::int64_t r = 0; r < rows; ++r) {
            std::int16_t* row = a + r * packed_.kp;
            if (in[0].dtype == DType::u8) {
                const std::uint8_t* x = in[0].as<std::uint8_t>() + r * k_;
                for (std::int64_t i = 0; i < k_; ++i) row[i] = static_cast<std::int16_t>(x[i] - zero);
            } else {
                const std::int8_t* x = in[0].as<std::int8_t>() + r * k_;
                for (std::int64_t i = 0; i < k_; ++i) row[i] = static_cast<std::int16_t>(x[i] - zero);
            }
            std::fill(row + k_, row + packed_.kp, static_cast<std::int16_t>(0));
        }
        kernels::active().qgemm_nt(static_cast<int>(rows), static_cast<int>(n_), static_cast<int>(packed_.kp), a,
                                   static_cast<int>(packed_.kp), static_cast<const std::int16_t*>(packed_.weights.get()),
                                   static_cast<int>(packed_.kp), acc, n_, 1);
        requantize_any(acc, packed_, rows, n_, false, out, 0);
    }

private:
    std::int64_t k_ = 0, n_ = 0;
    Packed packed_;
    std::unique_ptr<QGemmVnni> vnni_;  // null: the int16 path on every tier
};

}  // namespace

std::unique_ptr<Op> make_quant_op(const NodeSpec& spec, const std::vector<DType>&, DType out,
                                  const std::vector<const Constant*>& constants) {
    const std::string& op = spec.op;
    if (op == "QuantizeLinear" || op == "DequantizeLinear") return quant::make_quantize_op(spec);
    if (op == "QConv" || op == "QGemm") {
        for (std::size_t i = 1; i < spec.inputs.size(); ++i) {
            EF_REQUIRE(spec.inputs[i] < 0 || constants[i] != nullptr, "every input but the first must be a constant");
        }
        std::vector<const Constant*> c = constants;
        c.resize(9, nullptr);
        if (op == "QConv") return std::make_unique<QConvOp>(spec, c, out);
        return std::make_unique<QGemmOp>(c, spec.attrs, out);
    }
    return nullptr;
}

}  // namespace edgefleet::graph
