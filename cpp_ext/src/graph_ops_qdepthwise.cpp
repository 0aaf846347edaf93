// The int8 depthwise QConv: packing, the pair buffer, and the dispatch by ISA tier (layout and contract
// in graph_ops_qdepthwise.hpp; the SIMD kernels in graph_kernels_qdepthwise_x86.cpp and _neon.cpp).
#include "graph_ops_qdepthwise.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "graph_kernels.hpp"
#include "graph_threads.hpp"

namespace edgefleet::graph::qdepthwise {

KernelFn active_kernel() {
#if defined(__x86_64__) || defined(_M_X64)
    const char* isa = kernels::active().isa;
    if (std::strcmp(isa, "avx512") == 0) return &kernel_avx512;
    if (std::strcmp(isa, "avx2") == 0 || std::strcmp(isa, "avxvnni") == 0) return &kernel_avx2;
#endif
#if defined(__aarch64__)
    if (kernels::neon_active()) return &kernel_neon;
#endif
    return nullptr;
}

std::unique_ptr<QDepthwise> QDepthwise::make(const Shape& w_shape, std::int64_t group, const Attrs& attrs,
                                             const std::vector<float>& weights,
                                             const std::vector<std::int32_t>& bias, const std::vector<float>& mult,
                                             std::int64_t x_zero, float y_zero, float lo, float hi) {
    if (w_shape.size() != 4 || w_shape[1] != 1 || group != w_shape[0] || group < 2) return nullptr;
    for (std::int64_t d : attrs.get_ints("dilations", {1, 1})) {
        if (d != 1) return nullptr;
    }
    if (w_shape[2] > 64 || w_shape[3] > 64 || group > (1 << 20)) return nullptr;
    for (float v : weights) {
        if (v < -255.0f || v > 255.0f) return nullptr;
    }
    auto q = std::unique_ptr<QDepthwise>(new QDepthwise());
    q->c_ = static_cast<int>(group);
    q->cp_ = (q->c_ + kChannelBlock - 1) / kChannelBlock * kChannelBlock;
    q->kh_ = static_cast<int>(w_shape[2]);
    q->kw_ = static_cast<int>(w_shape[3]);
    q->kwp_ = (q->kw_ + 1) / 2;
    const std::size_t count = static_cast<std::size_t>(q->kh_) * q->kwp_ * q->cp_ * 2;
    q->w_ = aligned_buffer(count * sizeof(std::int16_t));
    auto* w = static_cast<std::int16_t*>(q->w_.get());
    std::fill(w, w + count, static_cast<std::int16_t>(0));
    for (int c = 0; c < q->c_; ++c)
        for (int i = 0; i < q->kh_; ++i)
            for (int j = 0; j < q->kw_; ++j) {
                w[((i * q->kwp_ + j / 2) * q->cp_ + c) * 2 + j % 2] =
                    static_cast<std::int16_t>(weights[static_cast<std::size_t>((c * q->kh_ + i) * q->kw_ + j)]);
            }
    q->bias_.assign(static_cast<std::size_t>(q->cp_), 0);
    q->mult_.assign(static_cast<std::size_t>(q->cp_), 0.0f);
    std::copy(bias.begin(), bias.begin() + q->c_, q->bias_.begin());
    std::copy(mult.begin(), mult.begin() + q->c_, q->mult_.begin());
    q->x_zero_ = x_zero;
    q->y_zero_ = y_zero, q->lo_ = lo, q->hi_ = hi;
    return q;
}

QDepthwise::Geometry QDepthwise::geometry(const Window& win) const {
    // Every window inside, and column col + 1 of the last pair read (the zero-weight partner of an odd kW).
    return {std::max(win.h + win.top, (win.oh - 1) * win.sh + win.kh),
            std::max(win.w + win.left, (win.ow - 1) * win.sw + 2 * kwp_)};
}

std::size_t QDepthwise::scratch_bytes(const Window& win) const {
    const Geometry g = geometry(win);
    return static_cast<std::size_t>(g.ph * g.pw * cp_ * 2) * sizeof(std::int16_t) + 64;
}

namespace {

// One image into the pair buffer, row by row (each zeroed just before, so it is written while in cache):
// per pixel and channel one int32 of (v, right neighbour's v), v = x - x_zero; zero in the padding. The
// channels go in blocks of 16, so a pixel's writes are one cache line and the reads 16 sequential streams.
template <typename T>
void fill_pairs(const T* src, std::int64_t channels, const Window& win, std::int64_t ph, std::int64_t pw,
                std::int64_t cp, std::int64_t x_zero, std::int16_t* pairs) {
    const std::int64_t plane = win.h * win.w;
    const auto pair = [](std::int64_t lo, std::int64_t hi) {
        return static_cast<std::uint32_t>(static_cast<std::uint16_t>(lo)) |
               (static_cast<std::uint32_t>(static_cast<std::uint16_t>(hi)) << 16);
    };
    for (std::int64_t r = 0; r < ph; ++r) {
        auto* row = reinterpret_cast<std::uint32_t*>(pairs) + r * pw * cp;
        std::memset(row, 0, static_cast<std::size_t>(pw * cp) * sizeof(std::uint32_t));
        const std::int64_t iy = r - win.top;
        if (iy < 0 || iy >= win.h) continue;
        for (std::int64_t cb = 0; cb < channels; cb += kChannelBlock) {
            const std::int64_t n = std::min<std::int64_t>(kChannelBlock, channels - cb);
            const T* from = src + cb * plane + iy * win.w;
            if (win.left > 0) {
                std::uint32_t* px = row + (win.left - 1) * cp + cb;
                for (std::int64_t k = 0; k < n; ++k) px[k] = pair(0, from[k * plane] - x_zero);
            }
            // AVX2 (the caller runs on an x86 tier) for whole groups of 8 channels and pixels [0, done);
            // the rest one value at a time
            std::int64_t done = 0, simd = 0;
#if defined(__x86_64__) || defined(_M_X64)
            for (; simd + 8 <= n; simd += 8) {
                const std::int64_t last_row = (cb + simd + 7) * plane + iy * win.w;  // in this image
                done = pairs8_avx2(from + simd * plane, std::is_signed_v<T>, plane, win.w, channels * plane - last_row,
                                   static_cast<std::int32_t>(x_zero), row + win.left * cp + cb + simd, cp);
            }
#endif
            for (std::int64_t ix = 0; ix < win.w; ++ix) {
                std::uint32_t* px = row + (win.left + ix) * cp + cb;
                const T* at = from + ix;
                const std::int64_t first = ix < done ? simd : 0;
                if (ix + 1 < win.w) {
                    for (std::int64_t k = first; k < n; ++k) px[k] = pair(at[k * plane] - x_zero, at[k * plane + 1] - x_zero);
                } else {
                    for (std::int64_t k = first; k < n; ++k) px[k] = pair(at[k * plane] - x_zero, 0);
                }
            }
        }
    }
}

}  // namespace

void QDepthwise::run(KernelFn kernel, const View& x, const View& out, const Window& win, void* scratch) const {
    const Geometry g = geometry(win);
    auto* pairs = static_cast<std::int16_t*>(scratch);
    const std::int64_t plane = win.h * win.w, p = win.oh * win.ow;
    Args args{pairs, g.pw, cp_, c_, static_cast<const std::int16_t*>(w_.get()), kh_, kwp_,
              static_cast<int>(win.sh), static_cast<int>(win.sw), static_cast<int>(win.oh), static_cast<int>(win.ow),
              bias_.data(), mult_.data(), y_zero_, lo_, hi_, nullptr, 0, 0};
    for (std::int64_t n = 0; n < win.n; ++n) {
        if (x.dtype == DType::u8) {
            fill_pairs(x.as<std::uint8_t>() + n * c_ * plane, c_, win, g.ph, g.pw, cp_, x_zero_, pairs);
        } else {
            fill_pairs(x.as<std::int8_t>() + n * c_ * plane, c_, win, g.ph, g.pw, cp_, x_zero_, pairs);
        }
        args.y = static_cast<std::uint8_t*>(out.data) + n * c_ * p;
        const double work = static_cast<double>(p) * cp_ * kh_ * kw_;
        parallel_ranges(p, 8, work, [&](int, std::int64_t begin, std::int64_t end) {
            Args part = args;
            part.p_begin = static_cast<int>(begin);
            part.p_end = static_cast<int>(end);
            kernel(part);
        });
    }
}

}  // namespace edgefleet::graph::qdepthwise
