// Up-sampling ops of detectors and segmenters (float32): Resize (nearest | linear, one axis at a time:
// both are separable) and ConvTranspose (2-D NCHW, constant W: one GEMM per group into columns, then
// the columns scattered onto the output, col2im).
#include <cmath>

#include "graph_kernels.hpp"
#include "graph_ops_more.hpp"

namespace edgefleet::graph {
namespace {

class ResizeOp : public Op {
public:
    explicit ResizeOp(const Attrs& attrs)
        : mode_(attrs.get_str("mode", "nearest")),
          coords_(attrs.get_str("coordinate_transformation_mode", "half_pixel")),
          nearest_(attrs.get_str("nearest_mode", "round_prefer_floor")) {
        EF_REQUIRE(mode_ == "nearest" || mode_ == "linear", "mode " + mode_ + " is not supported (nearest, linear)");
        EF_REQUIRE(coords_ == "half_pixel" || coords_ == "pytorch_half_pixel" || coords_ == "align_corners" ||
                       coords_ == "asymmetric",
                   "coordinate_transformation_mode " + coords_ + " is not supported");
        EF_REQUIRE(nearest_ == "round_prefer_floor" || nearest_ == "round_prefer_ceil" || nearest_ == "floor" ||
                       nearest_ == "ceil",
                   "nearest_mode " + nearest_ + " is not supported");
        EF_REQUIRE(attrs.get_int("antialias", 0) == 0 && attrs.get_int("exclude_outside", 0) == 0 &&
                       attrs.get_str("keep_aspect_ratio_policy", "stretch") == "stretch" && !attrs.has("axes"),
                   "antialias, exclude_outside, axes and keep_aspect_ratio_policy are not supported");
    }

    Shape infer(const std::vector<View>& in) const override {
        std::vector<double> scales;
        return geometry(in, scales);
    }

    // Two buffers, each as large as any intermediate: the input and output sizes' larger one per axis.
    static std::size_t bound(const Shape& x, const Shape& y) {
        std::size_t n = 1;
        for (std::size_t d = 0; d < x.size(); ++d) n *= static_cast<std::size_t>(std::max(x[d], y[d]));
        return n;
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape& out) const override {
        return 2 * bound(*in[0].shape, out) * sizeof(float) + 64;
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        std::vector<double> scales;
        const Shape y = geometry(in, scales);
        Shape shape = *in[0].shape;
        std::vector<std::size_t> axes;
        for (std::size_t d = 0; d < y.size(); ++d) {
            if (y[d] != shape[d] || scales[d] != 1.0) axes.push_back(d);
        }
        const std::size_t half = bound(*in[0].shape, y);
        float* buffers[2] = {static_cast<float*>(scratch), static_cast<float*>(scratch) + half};
        const float* src = in[0].as<float>();
        if (axes.empty()) {
            std::memcpy(out.data, src, static_cast<std::size_t>(numel(y)) * sizeof(float));
            return;
        }
        for (std::size_t a = 0; a < axes.size(); ++a) {
            const std::size_t d = axes[a];
            float* dst = a + 1 == axes.size() ? out.as<float>() : buffers[a % 2];
            resize_axis(src, dst, shape, d, y[d], scales[d]);
            shape[d] = y[d];
            src = dst;
        }
    }

private:
    Shape geometry(const std::vector<View>& in, std::vector<double>& scales) const {
        const Shape& x = *in[0].shape;
        EF_REQUIRE(in[0].dtype == DType::f32, "X must be float32");
        const bool has_scales = in.size() > 2 && in[2].data != nullptr && in[2].size() > 0;
        const bool has_sizes = in.size() > 3 && in[3].data != nullptr && in[3].size() > 0;
        EF_REQUIRE(has_scales != has_sizes, "exactly one of scales and sizes must be given, as a constant");
        Shape out = x;
        scales.assign(x.size(), 1.0);
        if (has_scales) {
            EF_REQUIRE(in[2].dtype == DType::f32 && in[2].size() == static_cast<std::int64_t>(x.size()),
                       "scales must be float32, one per axis");
            for (std::size_t d = 0; d < x.size(); ++d) {
                scales[d] = in[2].as<float>()[d];
                EF_REQUIRE(scales[d] > 0, "scales must be positive");
                out[d] = static_cast<std::int64_t>(std::floor(static_cast<double>(x[d]) * scales[d]));
            }
        } else {
            const auto sizes = plan_ints(in[3], "Resize's sizes");
            EF_REQUIRE(sizes.size() == x.size(), "sizes must have one value per axis");
            for (std::size_t d = 0; d < x.size(); ++d) {
                out[d] = sizes[d];
                scales[d] = x[d] ? static_cast<double>(sizes[d]) / static_cast<double>(x[d]) : 1.0;
            }
        }
        return out;
    }

    double source(std::int64_t i, std::int64_t n_in, std::int64_t n_out, double scale) const {
        if (coords_ == "align_corners") {
            return n_out == 1 ? 0.0 : static_cast<double>(i) * static_cast<double>(n_in - 1) / static_cast<double>(n_out - 1);
        }
        if (coords_ == "asymmetric") return static_cast<double>(i) / scale;
        if (coords_ == "pytorch_half_pixel" && n_out == 1) return 0.0;
        return (static_cast<double>(i) + 0.5) / scale - 0.5;
    }

    std::int64_t nearest(double x, std::int64_t n) const {
        double r;
        if (nearest_ == "floor") r = std::floor(x);
        else if (nearest_ == "ceil") r = std::ceil(x);
        else if (x - std::floor(x) == 0.5) r = nearest_ == "round_prefer_ceil" ? std::ceil(x) : std::floor(x);
        else r = std::round(x);
        return std::min<std::int64_t>(std::max<std::int64_t>(static_cast<std::int64_t>(r), 0), n - 1);
    }

    void resize_axis(const float* src, float* dst, const Shape& shape, std::size_t axis, std::int64_t n_out,
                     double scale) const {
        const std::int64_t n_in = shape[axis];
        const std::int64_t outer = numel(Shape(shape.begin(), shape.begin() + static_cast<std::ptrdiff_t>(axis)));
        const std::int64_t inner = numel(Shape(shape.begin() + static_cast<std::ptrdiff_t>(axis) + 1, shape.end()));
        std::vector<std::int64_t> lo(static_cast<std::size_t>(n_out)), hi(lo.size());
        std::vector<float> w(lo.size(), 0.0f);
        for (std::int64_t i = 0; i < n_out; ++i) {
            const double x = source(i, n_in, n_out, scale);
            const auto k = static_cast<std::size_t>(i);
            if (mode_ == "nearest") {
                lo[k] = hi[k] = nearest(x, n_in);
                continue;
            }
            const double c = std::min(std::max(x, 0.0), static_cast<double>(n_in - 1));
            lo[k] = static_cast<std::int64_t>(std::floor(c));
            hi[k] = std::min(lo[k] + 1, n_in - 1);
            w[k] = static_cast<float>(c - static_cast<double>(lo[k]));
        }
        for (std::int64_t o = 0; o < outer; ++o) {
            const float* plane = src + o * n_in * inner;
            float* target = dst + o * n_out * inner;
            for (std::int64_t i = 0; i < n_out; ++i) {
                const auto k = static_cast<std::size_t>(i);
                const float* a = plane + lo[k] * inner;
                const float* b = plane + hi[k] * inner;
                const float t = w[k];
                float* row = target + i * inner;
                for (std::int64_t j = 0; j < inner; ++j) row[j] = a[j] + t * (b[j] - a[j]);
            }
        }
    }

    std::string mode_, coords_, nearest_;
};

class ConvTransposeOp : public Op {
public:
    ConvTransposeOp(const Attrs& attrs, const Constant* w)
        : group_(attrs.get_int("group", 1)),
          strides_(attrs.get_ints("strides", {1, 1})),
          dilations_(attrs.get_ints("dilations", {1, 1})),
          pads_(attrs.get_ints("pads", {0, 0, 0, 0})),
          extra_(attrs.get_ints("output_padding", {0, 0})) {

        EF_REQUIRE(strides_.size() == 2 && dilations_.size() == 2 && pads_.size() == 4 && extra_.size() == 2,
                   "strides, dilations, output_padding need 2 values and pads 4 (2-D only)");
        const std::string auto_pad = attrs.get_str("auto_pad", "NOTSET");
        EF_REQUIRE((auto_pad == "NOTSET" || auto_pad == "VALID") && !attrs.has("output_shape"),
                   "auto_pad SAME_* and output_shape are not supported (give pads)");
        if (auto_pad == "VALID") pads_ = {0, 0, 0, 0};
        EF_REQUIRE(group_ >= 1, "group must be >= 1");
        if (w != nullptr) {
            check_w(w->shape);
            packed_.resize(static_cast<std::size_t>(numel(w->shape)));
            pack(static_cast<const float*>(w->data()), w->shape, packed_.data());
        }
    }

    Shape infer(const std::vector<View>& in) const override {
        const Shape& x = *in[0].shape;
        const Shape& w = *in[1].shape;
        check_w(w);
        const std::int64_t mg = w[1], kh = w[2], kw = w[3];
        EF_REQUIRE(x.size() == 4 && x[1] == w[0], "X must be (N, " + std::to_string(w[0]) + ", H, W), got " +
                                                     shape_str(x));
        EF_REQUIRE(in.size() < 3 || in[2].data == nullptr || in[2].size() == mg * group_, "B must have M values");
        Shape out{x[0], mg * group_, 0, 0};
        const std::int64_t k[2] = {kh, kw};
        for (int i = 0; i < 2; ++i) {
            out[2 + i] = strides_[i] * (x[2 + i] - 1) + extra_[i] + (k[i] - 1) * dilations_[i] + 1 - pads_[i] - pads_[i + 2];
            EF_REQUIRE(out[2 + i] >= 1, "the output would be empty");
        }
        return out;
    }

    std::size_t scratch_bytes(const std::vector<View>& in, const Shape&) const override {
        const Shape& x = *in[0].shape;
        const Shape& w = *in[1].shape;
        const std::size_t packing = packed_.empty() ? static_cast<std::size_t>(numel(w)) : 0;
        return (static_cast<std::size_t>(w[1] * w[2] * w[3] * x[2] * x[3]) + packing) * sizeof(float);
    }

    void run(const std::vector<View>& in, const View& out, void* scratch) const override {
        const Shape& x = *in[0].shape;
        const Shape& y = *out.shape;
        const Shape& ws = *in[1].shape;
        const std::int64_t channels = ws[0], mg = ws[1], kh = ws[2], kw = ws[3];
        const std::int64_t cg = channels / group_, rows = mg * kh * kw, p = x[2] * x[3];
        const std::int64_t oh = y[2], ow = y[3];
        const float* bias = in.size() > 2 && in[2].data != nullptr ? in[2].as<float>() : nullptr;
        auto* cols = static_cast<float*>(scratch);
        const float* packed = packed_.data();
        if (packed_.empty()) {  // W is a graph input: packed per run, after the columns
            float* at = cols + rows * p;
            pack(in[1].as<float>(), ws, at);
            packed = at;
        }
        for (std::int64_t n = 0; n < x[0]; ++n) {
            for (std::int64_t g = 0; g < group_; ++g) {
                const float* xg = in[0].as<float>() + (n * channels + g * cg) * p;
                kernels::active().sgemm(static_cast<int>(rows), static_cast<int>(p), static_cast<int>(cg),
                                        packed + g * rows * cg, static_cast<int>(cg), xg, static_cast<int>(p),
                                        cols, static_cast<int>(p));
                for (std::int64_t m = 0; m < mg; ++m) {
                    float* plane = out.as<float>() + ((n * group_ + g) * mg + m) * oh * ow;
                    const float b = bias != nullptr ? bias[g * mg + m] : 0.0f;
                    for (std::int64_t i = 0; i < oh * ow; ++i) plane[i] = b;
                    for (std::int64_t ky = 0; ky < kh; ++ky) {
                        for (std::int64_t kx = 0; kx < kw; ++kx) {
                            const float* col = cols + ((m * kh + ky) * kw + kx) * p;
                            for (std::int64_t iy = 0; iy < x[2]; ++iy) {
                                const std::int64_t oy = iy * strides_[0] - pads_[0] + ky * dilations_[0];
                                if (oy < 0 || oy >= oh) continue;
                                for (std::int64_t ix = 0; ix < x[3]; ++ix) {
                                    const std::int64_t ox = ix * strides_[1] - pads_[1] + kx * dilations_[1];
                                    if (ox >= 0 && ox < ow) plane[oy * ow + ox] += col[iy * x[3] + ix];
                                }
                            }
                        }
                    }
                }
            }
        }
    }

private:
    void check_w(const Shape& w) const {
        EF_REQUIRE(w.size() == 4 && w[0] % group_ == 0, "W must be (C, M/group, kH, kW) with C a multiple of group");
    }

    // Per group: W^T as (M/g * kH * kW, C/g), the GEMM's A.
    void pack(const float* src, const Shape& w, float* dst) const {
        const std::int64_t cg = w[0] / group_, rows = w[1] * w[2] * w[3];
        for (std::int64_t g = 0; g < group_; ++g)
            for (std::int64_t c = 0; c < cg; ++c)
                for (std::int64_t r = 0; r < rows; ++r) dst[(g * rows + r) * cg + c] = src[((g * cg + c) * rows) + r];
    }

    std::int64_t group_;
    std::vector<std::int64_t> strides_, dilations_, pads_, extra_;
    std::vector<float> packed_;
};

}  // namespace

std::unique_ptr<Op> make_resize_op(const NodeSpec& spec, const std::vector<const Constant*>& constants) {
    if (spec.op == "Resize") {  // float scales do not key the plan (int64 sizes do): they must be constant
        EF_REQUIRE(spec.inputs.size() < 3 || spec.inputs[2] < 0 || constants[2] != nullptr,
                   "scales must be a constant (sizes may be a graph input)");
        return std::make_unique<ResizeOp>(spec.attrs);
    }
    if (spec.op == "ConvTranspose") return std::make_unique<ConvTransposeOp>(spec.attrs, constants[1]);
    return nullptr;
}

}  // namespace edgefleet::graph
