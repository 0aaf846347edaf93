// Conv: float32, NCHW, 2-D, with its fused activation (Relu / Clip / HardSwish folded in by the
// compiler) and an optional residual Z (ResNet's shortcut add), added after the bias and before the
// activation. Paths:
// - direct (group 1, constant W, 1x1 convs included): W pre-packed in column panels of up to 48 channels
//   (M rounded up to 8 in all), each (K, width) contiguous, the input copied into zero-padded planes when
//   a window reaches outside it (not on tiers with Table::conv_pad, for the shallow stride-1 and 3-wide
//   stride-2 convs on wide rows that kernels::conv_pad_fits: avx512 masks its loads to the planes
//   instead; nor for 3x3 same-padded convs on 8-wide maps with finite W, kernels::conv_pad8_fits, whose
//   taps of the padding avx512 skips), and
//   kernels::Table::conv, once per panel, computes the output with bias
//   and clamp (and, where the tier can, the residual) applied in registers: no im2col, no extra pass over
//   the output. At batch 1 on small images this is most of a CNN's time. The panels match the avx512
//   kernel's 48-channel bands: with the whole (K, MP) matrix a band read 192 of every 512 bytes
//   (M = 128) on its first, cache-cold pass, which cost 9-14% on 128-channel layers. For the 1x1 convs of
//   MobileNet-class blocks (16-160 channels, 4x4 to 32x32) it is 1.2-2x faster than sgemm plus a bias
//   pass, which they took before.
// - matrix-vector (a 1x1 conv on a 1x1 input: squeeze-excite's fully connected layers).
// - im2col (a cached gather table) + sgemm + bias/activation pass: grouped convs (depthwise ones have
//   their own op, graph_ops_depthwise.cpp) and W known only at run time.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "graph_kernels.hpp"
#include "graph_ops.hpp"
#include "graph_ops_winograd.hpp"
#include "graph_threads.hpp"

namespace edgefleet::graph {
namespace {

using kernels::active;

class ConvOp : public Op {
public:
    ConvOp(const Attrs& attrs, const Constant* w, const Constant* b, bool residual)
        : attrs_(attrs), act_(residual ? Activation{} : Activation::from(attrs)), post_(Activation::from(attrs)),
          group_(attrs.get_int("group", 1)), residual_(residual) {
        EF_REQUIRE(group_ >= 1, "group must be >= 1");
        kernel_ = attrs.get_ints("kernel_shape", {});
        if (group_ == 1 && w != nullptr && w->shape.size() == 4) {
            pack(*w, b);
            if (w->dtype == DType::f32 && w->shape[2] == 3 && w->shape[3] == 3) winograd_ = std::make_unique<Winograd>(*w);
        }
    }

    const Window& window(const std::vector<View>& in) const {
        const Shape& w = *in[1].shape;
        EF_REQUIRE(w.size() == 4, "W must be 4-D (M, C/group, kH, kW), got " + shape_str(w));
        EF_REQUIRE(kernel_.empty() || (kernel_.size() == 2 && kernel_[0] == w[2] && kernel_[1] == w[3]),
                   "kernel_shape does not match W");
        return windows_.get(*in[0].shape, w[2], w[3], attrs_, false);
    }

    Shape infer(const std::vector<View>& in) const override {
        const Window& win = window(in);
        const Shape& w = *in[1].shape;
        EF_REQUIRE(win.c == w[1] * group_ && w[0] % group_ == 0,
                "X has " + std::to_string(win.c) + " channels; W " + shape_str(w) + " with group " +
                    std::to_string(group_) + " needs " + std::to_string(w[1] * group_));
        if (in.size() > 2 && in[2].data != nullptr) {
            EF_REQUIRE(in[2].size() == w[0], "B must have M = " + std::to_string(w[0]) + " values");
        } else if (in.size() > 2 && !in[2].shape->empty()) {
            EF_REQUIRE(numel(*in[2].shape) == w[0], "B must have M = " + std::to_string(w[0]) + " values");
        }
        const Shape out{win.n, w[0], win.oh, win.ow};
        EF_REQUIRE(!residual_ || *in[3].shape == out,
                   "Z " + shape_str(*in[3].shape) + " must have the output's shape " + shape_str(out));
        return out;
    }

    static bool pointwise(const Window& w) {
        return w.kh == 1 && w.kw == 1 && w.sh == 1 && w.sw == 1 && w.top == 0 && w.left == 0 && w.oh == w.h &&
               w.ow == w.w;
    }

    // A 1x1 conv on a 1x1 input (the squeeze-excite block's fully connected layers): a matrix-vector
    // product, which a GEMM kernel tiled for many columns runs at a fraction of its speed.
    bool vector(const Window& win) const { return packed_ && pointwise(win) && win.h * win.w == 1; }

    bool winograd(const Window& win) const { return winograd_ && winograd_->applies(win); }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        const Window& win = window(in);
        if (vector(win)) return bias_.size() * sizeof(float);
        if (winograd(win)) return winograd_->scratch_bytes(win);
        if (pointwise(win) && !direct(win)) return 0;
        if (const Direct* d = direct(win)) {
            return d->copy ? static_cast<std::size_t>(win.c * d->ph * d->pw) * sizeof(float) : 0;
        }
        return static_cast<std::size_t>(win.c / group_ * win.kh * win.kw * win.oh * win.ow) * sizeof(float);
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Window& win = window(in);
        if (vector(win)) {
            run_vector(in, out, win, static_cast<float*>(scratch));
        } else if (winograd(win)) {
            if (!bias_constant_ && in.size() > 2 && in[2].data != nullptr) {  // a bias computed at run time
                std::copy(in[2].as<float>(), in[2].as<float>() + packed_m_, bias_.begin());
            }
            winograd_->run(in[0].as<float>(), out.as<float>(), bias_.data(), residual_ ? in[3].as<float>() : nullptr,
                           win, act_, post_, scratch);
            return;
        } else if (const Direct* d = direct(win)) {
            run_direct(in, out, win, *d, static_cast<float*>(scratch));
            return;  // the residual is added per thread's part, while it is in cache
        } else {
            run_im2col(in, out, win, scratch);
        }
        if (residual_) add_residual(out.as<float>(), in[3].as<float>(), out.size());
    }

private:
    // The direct path's geometry for one input shape: padded plane size, and the offsets of each output
    // pixel's window corner and of each kernel tap in the (padded) input.
    struct Direct {
        Shape x;
        std::int64_t ph = 0, pw = 0;
        bool copy = false;
        bool subsample = false;  // a strided 1x1 conv: the pixels it reads, copied side by side (ph x pw = oh x ow)
        std::vector<std::int32_t> pix, koff;
    };

    // Column panels: widths in 16-channel vectors split as evenly as the avx512 kernel splits its bands
    // (up to 3 vectors: 128 channels as 32 + 48 + 48), the last one cut at MP.
    // 64 channels: one panel (4 vectors), which the avx512 kernel runs as 4 x 6 tiles (2-3% faster than
    // 32 + 32 by 8 pixels; on 128 channels 2 such panels measured 2% slower than 32 + 48 + 48).
    static std::vector<std::int64_t> panel_edges(std::int64_t m) {
        const std::int64_t mp = kernels::round_up8(static_cast<int>(m)), vectors = (m + 15) / 16;
        const std::int64_t panels = m == 64 ? 1 : (vectors + 2) / 3;
        std::vector<std::int64_t> edges;
        for (std::int64_t i = 0; i <= panels; ++i) edges.push_back(std::min(mp, 16 * ((vectors * i) / panels)));
        return edges;
    }

    // Panel p of the packed W: (K, edges[p + 1] - edges[p]) floats at K * edges[p].
    const float* panel(std::size_t p) const {
        return static_cast<const float*>(packed_.get()) + packed_k_ * edges_[p];
    }

    void pack(const Constant& w, const Constant* b) {
        const std::int64_t m = w.shape[0], k = w.shape[1] * w.shape[2] * w.shape[3];
        const auto mp = static_cast<std::int64_t>(kernels::round_up8(static_cast<int>(m)));
        packed_ = aligned_buffer(static_cast<std::size_t>(k * mp) * sizeof(float));
        auto* dst = static_cast<float*>(packed_.get());
        std::fill(dst, dst + k * mp, 0.0f);
        const auto* src = static_cast<const float*>(w.data());
        edges_ = panel_edges(m);
        for (std::size_t p = 0; p + 1 < edges_.size(); ++p) {
            const std::int64_t first = edges_[p], width = edges_[p + 1] - first;
            float* block = dst + k * first;
            for (std::int64_t o = first; o < std::min(m, edges_[p + 1]); ++o)
                for (std::int64_t i = 0; i < k; ++i) block[i * width + (o - first)] = src[o * k + i];
        }
        bias_.assign(static_cast<std::size_t>(mp), 0.0f);
        if (b != nullptr && b->dtype == DType::f32 && numel(b->shape) == m) {
            const auto* values = static_cast<const float*>(b->data());
            std::copy(values, values + m, bias_.begin());
            bias_constant_ = true;
        }
        packed_m_ = m;
        packed_k_ = k;
        finite_ = std::all_of(src, src + m * k, [](float v) { return std::isfinite(v); });
    }

    // null when the direct path does not apply (no packed W, another W shape, or offsets beyond int32).
    const Direct* direct(const Window& win) const {
        if (!packed_ || win.c * win.kh * win.kw != packed_k_) return nullptr;
        const Shape x{win.n, win.c, win.h, win.w};
        if (direct_.x == x) return &direct_;
        Direct d;
        d.x = x;
        d.ph = std::max(win.h + win.top, (win.oh - 1) * win.sh + (win.kh - 1) * win.dh + 1);
        d.pw = std::max(win.w + win.left, (win.ow - 1) * win.sw + (win.kw - 1) * win.dw + 1);
        d.copy = win.top != 0 || win.left != 0 || d.ph > win.h || d.pw > win.w;
        // ResNet's 1x1 stride-2 shortcuts: copied to (C, oh, ow), they run as a stride-1 1x1 conv, whose
        // pixels sit side by side (the avx512 tier's pixels-in-lanes tile): 35 -> 13 us on 16 -> 32
        // channels, 64x64, where the strided windows took the channels-in-lanes tile and its transposes.
        d.subsample = win.kh == 1 && win.kw == 1 && (win.sh > 1 || win.sw > 1) && !d.copy;
        if (d.subsample) {
            d.copy = true;
            d.ph = win.oh;
            d.pw = win.ow;
        }
        const std::int64_t sh = d.subsample ? 1 : win.sh, sw = d.subsample ? 1 : win.sw;
        if (win.c * d.ph * d.pw >= std::numeric_limits<std::int32_t>::max()) return nullptr;
        for (std::int64_t oy = 0; oy < win.oh; ++oy)
            for (std::int64_t ox = 0; ox < win.ow; ++ox)
                d.pix.push_back(static_cast<std::int32_t>(oy * sh * d.pw + ox * sw));
        for (std::int64_t c = 0; c < win.c; ++c)
            for (std::int64_t i = 0; i < win.kh; ++i)
                for (std::int64_t j = 0; j < win.kw; ++j)
                    d.koff.push_back(static_cast<std::int32_t>((c * d.ph + i * win.dh) * d.pw + j * win.dw));
        direct_ = std::move(d);
        return &direct_;
    }

    void run_direct(const std::vector<View>& in, const View& out, const Window& win, const Direct& d,
                    float* padded) const {
        const std::int64_t m = packed_m_, p = win.oh * win.ow, plane = win.h * win.w;
        if (!bias_constant_ && in.size() > 2 && in[2].data != nullptr) {  // a bias computed at run time
            std::copy(in[2].as<float>(), in[2].as<float>() + m, bias_.begin());
        }
        constexpr float kInf = std::numeric_limits<float>::infinity();
        kernels::ConvArgs args{static_cast<int>(m), static_cast<int>(p), static_cast<int>(d.koff.size()),
                               static_cast<int>(bias_.size()), nullptr, d.pix.data(), d.koff.data(),
                               nullptr, nullptr, act_.active ? act_.lo : -kInf, act_.active ? act_.hi : kInf,
                               nullptr, 0, 0};
        // Tiers that pad in the kernel read the input itself (ResNet's 16-channel 64x64 3x3 convs spent
        // 8 of their 180 us copying it).
        const kernels::ConvPad pad{static_cast<int>(win.c), static_cast<int>(win.h), static_cast<int>(win.w),
                                   static_cast<int>(win.ow), static_cast<int>(win.kh), static_cast<int>(win.kw),
                                   static_cast<int>(win.dh), static_cast<int>(win.dw), static_cast<int>(win.top),
                                   static_cast<int>(win.left), static_cast<int>(win.sh), static_cast<int>(win.sw)};
        const bool in_kernel = d.copy && !d.subsample && active().conv_pad &&
                               (kernels::conv_pad_fits(args.K, pad.ow, pad.kw, pad.sh, pad.sw, pad.dw) ||
                                (finite_ && kernels::conv_pad8_fits(pad, static_cast<int>(win.oh))));
        if (in_kernel) args.pad = &pad;
        for (std::int64_t n = 0; n < win.n; ++n) {
            const float* x = in[0].as<float>() + n * win.c * plane;
            // Split by channels (on ResNet's 16-channel 64x64 layers a serial copy was ~10%); a copied float
            // counts as 4 multiply-adds of time, so copies from 32 k floats split, as before nodes needed
            // 128 k multiply-adds.
            if (d.copy && !in_kernel) {
                const std::int64_t padded_plane = d.ph * d.pw;
                parallel_ranges(win.c, 1, static_cast<double>(win.c * padded_plane) * 4.0,
                                [&](int, std::int64_t first, std::int64_t last) {
                                    for (std::int64_t c = first; c < last; ++c) {
                                        if (d.subsample) {
                                            subsample_plane(x + c * plane, padded + c * padded_plane, win);
                                        } else {
                                            pad_plane(x + c * plane, padded + c * padded_plane, win, d);
                                        }
                                    }
                                });
                x = padded;
            }
            args.x = x;
            args.y = out.as<float>() + n * m * p;
            const kernels::ConvFn conv = active().conv;
            // The residual in the kernel's store where the tier can (not before a HardSwish, which is a
            // pass of its own): one pass over Y fewer.
            const bool fused = residual_ && !post_.swish && active().conv_residual;
            const float* z = residual_ ? in[3].as<float>() + n * m * p : nullptr;
            const double work = static_cast<double>(m) * static_cast<double>(p) * static_cast<double>(args.K);
            // One panel of output channels over pixels [begin, end), with its activation and residual.
            const auto run_part = [&](std::size_t panel_index, std::int64_t begin, std::int64_t end) {
                const std::int64_t first = edges_[panel_index], width = edges_[panel_index + 1] - first;
                kernels::ConvArgs part = args;
                part.M = static_cast<int>(std::min(m, first + width) - first);
                part.MP = static_cast<int>(width);
                part.w = panel(panel_index);
                part.bias = bias_.data() + first;
                part.y = args.y + first * p;
                part.p_begin = static_cast<int>(begin);
                part.p_end = static_cast<int>(end);
                if (fused) {
                    part.z = z + first * p;
                    part.z_lo = post_.active ? post_.lo : -kInf;
                    part.z_hi = post_.active ? post_.hi : kInf;
                }
                conv(part);
                if (fused) return;
                const std::int64_t rows = std::min(m, first + width) - first;
                if (!residual_ && begin == 0 && end == p) {  // the panel's rows side by side: one pass
                    act_.finish(part.y, rows * p);
                    return;
                }
                for (std::int64_t o = first; o < first + rows; ++o) {
                    act_.finish(args.y + o * p + begin, end - begin);
                    if (residual_) {
                        add_residual(args.y + o * p + begin, in[3].as<float>() + (n * m + o) * p + begin, end - begin);
                    }
                }
            };
            // Maps under 128 pixels split by panels, each over all pixels: pixel parts there cut 1x1 convs
            // below the pointwise tile's 48 pixels and each streamed all of W (DS-CNN's 125-pixel
            // pointwise convs in 3 parts ran slower on 2 threads than whole on 1). Larger maps split by
            // pixels, every panel in each part (panel x chunk parts measured 11% slower on the wide CNN
            // at 2 threads). Any cut gives the same bits (the kernels' chains do not depend on the range).
            const std::int64_t panels = static_cast<std::int64_t>(edges_.size()) - 1;
            if (p < 128 && panels > 1) {
                parallel_ranges(panels, 1, work, [&](int, std::int64_t first, std::int64_t last) {
                    for (std::int64_t i = first; i < last; ++i) run_part(static_cast<std::size_t>(i), 0, p);
                });
            } else {
                parallel_ranges(p, 8, work, [&](int, std::int64_t begin, std::int64_t end) {
                    for (std::int64_t i = 0; i < panels; ++i) run_part(static_cast<std::size_t>(i), begin, end);
                });
            }
        }
    }

    // One channel's plane into its zero-padded copy in one pass: each padded row written once (zeros, the
    // row, zeros), where filling the whole plane first wrote every float twice (~5% of a 16-channel 64x64
    // 3x3 conv).
    static void pad_plane(const float* src, float* dst, const Window& win, const Direct& d) {
        const std::int64_t right = d.pw - win.left - win.w;
        std::fill(dst, dst + win.top * d.pw, 0.0f);
        float* row = dst + win.top * d.pw;
        for (std::int64_t iy = 0; iy < win.h; ++iy, row += d.pw) {
            std::fill(row, row + win.left, 0.0f);
            std::memcpy(row + win.left, src + iy * win.w, static_cast<std::size_t>(win.w) * sizeof(float));
            std::fill(row + win.left + win.w, row + win.left + win.w + right, 0.0f);
        }
        std::fill(row, dst + d.ph * d.pw, 0.0f);
    }

    // The pixels a strided 1x1 conv reads, (oh, ow) of them side by side.
    // Stride 2 across (ResNet's shortcuts) as a constant, so the loop vectorises.
    static void subsample_plane(const float* src, float* dst, const Window& win) {
        for (std::int64_t oy = 0; oy < win.oh; ++oy, dst += win.ow) {
            const float* row = src + oy * win.sh * win.w;
            if (win.sw == 2) {
                for (std::int64_t ox = 0; ox < win.ow; ++ox) dst[ox] = row[2 * ox];
            } else {
                for (std::int64_t ox = 0; ox < win.ow; ++ox) dst[ox] = row[ox * win.sw];
            }
        }
    }

    // y = act(y + z): the residual of Conv(X, W, B, Z), added after bias (the conv ran without activation).
    void add_residual(float* y, const float* z, std::int64_t count) const {
        for (std::int64_t i = 0; i < count; ++i) y[i] += z[i];
        post_.apply(y, count);
    }

    // acc[m] = sum_k x[k] * w[k][m] in k order (the rows of each packed W panel, so the loop over m is
    // contiguous and vectorises), then bias and activation, as the GEMM path computes them.
    void run_vector(const std::vector<View>& in, const View& out, const Window& win, float* acc) const {
        const std::int64_t m = packed_m_, mp = static_cast<std::int64_t>(bias_.size());
        if (!bias_constant_ && in.size() > 2 && in[2].data != nullptr) {
            std::copy(in[2].as<float>(), in[2].as<float>() + m, bias_.begin());
        }
        for (std::int64_t n = 0; n < win.n; ++n) {
            const float* x = in[0].as<float>() + n * win.c;
            std::fill(acc, acc + mp, 0.0f);
            for (std::size_t panel_index = 0; panel_index + 1 < edges_.size(); ++panel_index) {
                const std::int64_t first = edges_[panel_index], width = edges_[panel_index + 1] - first;
                const float* w = panel(panel_index);
                float* part = acc + first;
                for (std::int64_t k = 0; k < packed_k_; ++k) {
                    const float xv = x[k];
                    const float* row = w + k * width;
                    for (std::int64_t o = 0; o < width; ++o) part[o] += row[o] * xv;
                }
            }
            float* y = out.as<float>() + n * m;
            for (std::int64_t o = 0; o < m; ++o) y[o] = acc[o] + bias_[static_cast<std::size_t>(o)];
            act_.apply(y, m);
        }
    }

    void run_im2col(const std::vector<View>& in, const View& out, const Window& win, void* scratch) const {
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
                parallel_sgemm(static_cast<int>(m), static_cast<int>(p), static_cast<int>(k),
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

    Attrs attrs_;
    Activation act_;   // in the kernels' epilogue: none when there is a residual (it comes after the add)
    Activation post_;  // after the residual add
    std::int64_t group_;
    bool residual_;
    std::vector<std::int64_t> kernel_;
    std::shared_ptr<void> packed_;       // W as column panels (K, width) for the direct path, or null
    std::vector<std::int64_t> edges_;    // the panels' first columns, then MP
    std::int64_t packed_m_ = 0, packed_k_ = 0;
    bool finite_ = false;  // every weight finite (conv_pad8_fits's kernel skips the taps of the padding)
    mutable std::vector<float> bias_;    // MP values, zero-padded (refilled per run if B is not constant)
    bool bias_constant_ = false;
    std::unique_ptr<Winograd> winograd_;  // W transformed for Winograd F(2x2, 3x3), 3x3 W only
    // Caches per input shape; runs hold the GIL: never two at once.
    mutable WindowCache windows_;
    mutable Direct direct_;
    mutable GatherTable gather_;
};

}  // namespace

std::unique_ptr<Op> make_conv_op(const NodeSpec& spec, const std::vector<const Constant*>& constants) {
    if (spec.op != "Conv") return nullptr;
    return std::make_unique<ConvOp>(spec.attrs, constants.size() > 1 ? constants[1] : nullptr,
                                    constants.size() > 2 ? constants[2] : nullptr,
                                    spec.inputs.size() > 3 && spec.inputs[3] >= 0);
}

}  // namespace edgefleet::graph
