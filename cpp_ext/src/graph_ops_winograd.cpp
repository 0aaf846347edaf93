// Winograd F(2x2, 3x3): see graph_ops_winograd.hpp.
#include "graph_ops_winograd.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "graph_kernels.hpp"
#include "graph_threads.hpp"

namespace edgefleet::graph {
namespace {

// The transforms are additions only, so any vector width gives the same bits: on x86 they are compiled for
// AVX-512 and AVX2 too (the CPU picks at load), the baseline SSE2 build ran them at a third of the speed.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EF_WINOGRAD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EF_WINOGRAD_CLONES
#endif

constexpr int kTile = 16;  // 4 x 4 transformed values per tile
// Floats between the 16 blocks of V (and of M) beyond their size: without it, on power-of-two sizes the
// 16 streams a transform reads or writes fall in one L1 set.
constexpr std::int64_t kSkew = 16;

struct Geometry {
    std::int64_t th, tw, ph, pw;  // tiles down, across; padded input plane
    std::int64_t rows, t;         // tile rows per block, tiles per block
};

// Tiles run in blocks of whole tile rows (each block through all three stages), V and M together at most
// 2 MB: that bounds the scratch on large maps. Smaller blocks, to keep V and M in L2, measured slower on
// this project's CNNs (64 and 128 channels, 16x16 to 32x32: 1.1-2x), the GEMMs' N = tiles being smaller.
// avx512 (its own GEMM over V's panels, whose cost per tile does not depend on N): 512 KB, in L2
// (ResNet's 32-channel 32x32 block in the model, 2 blocks of 8 tile rows: 113-114 -> 108 us; alone,
// without the model's other data in L2, and on 64 channels at 32x32 and 16x16, 64 -> 128 at 32x32: the
// same as with 2 MB within 1%).
constexpr std::int64_t kBlockBytes = 2 << 20, kBlockBytesAvx512 = 512 << 10;
Geometry geometry(const Window& win, std::int64_t c, std::int64_t m, std::int64_t budget = kBlockBytes) {
    Geometry g{};
    g.th = (win.oh + 1) / 2;
    g.tw = (win.ow + 1) / 2;
    g.ph = 2 * g.th + 2;
    g.pw = 2 * g.tw + 2;
    const std::int64_t row_bytes = g.tw * kTile * (c + m) * static_cast<std::int64_t>(sizeof(float));
    g.rows = std::max<std::int64_t>(1, std::min(g.th, budget / row_bytes));
    g.t = g.rows * g.tw;
    return g;
}

// V[xi * stride + t] = (B^T d B)[xi] for each tile t of one channel's padded plane.
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
// Rows split into even and odd columns first (e[k] = row[2k], o[k] = row[2k + 1]), so that both stages
// run over contiguous arrays (the compiler vectorises them; the values are the same in any order).
EF_WINOGRAD_CLONES void transform_input(const float* __restrict plane, float* __restrict v, std::int64_t stride, const Geometry& g, std::int64_t ty0,
                     std::int64_t ty1, float* __restrict tmp) {
    const std::int64_t half = g.tw + 1;
    float* e = tmp;            // 4 rows x half: even columns
    float* o = e + 4 * half;   // odd columns
    float* re = o + 4 * half;  // row stage: 4 x half
    float* ro = re + 4 * half;
    for (std::int64_t ty = ty0; ty < ty1; ++ty) {
        for (int r = 0; r < 4; ++r) {
            const float* row = plane + (2 * ty + r) * g.pw;
            for (std::int64_t k = 0; k < half; ++k) {
                e[r * half + k] = row[2 * k];
                o[r * half + k] = row[2 * k + 1];
            }
        }
        for (int parity = 0; parity < 2; ++parity) {
            const float* d = parity == 0 ? e : o;
            float* out = parity == 0 ? re : ro;
            const float *d0 = d, *d1 = d + half, *d2 = d + 2 * half, *d3 = d + 3 * half;
            for (std::int64_t k = 0; k < half; ++k) {
                out[k] = d0[k] - d2[k];
                out[half + k] = d1[k] + d2[k];
                out[2 * half + k] = d2[k] - d1[k];
                out[3 * half + k] = d1[k] - d3[k];
            }
        }
        float* dst = v + (ty - ty0) * g.tw;
        for (int i = 0; i < 4; ++i) {
            const float* ei = re + i * half;
            const float* oi = ro + i * half;
            float* v0 = dst + (i * 4 + 0) * stride;
            float* v1 = dst + (i * 4 + 1) * stride;
            float* v2 = dst + (i * 4 + 2) * stride;
            float* v3 = dst + (i * 4 + 3) * stride;
            for (std::int64_t tx = 0; tx < g.tw; ++tx) {
                v0[tx] = ei[tx] - ei[tx + 1];
                v1[tx] = oi[tx] + ei[tx + 1];
                v2[tx] = ei[tx + 1] - oi[tx];
                v3[tx] = oi[tx] - oi[tx + 1];
            }
        }
    }
}

// Output channel k's plane from its 16 GEMM results per tile: A^T m A + bias, cut at (oh, ow).
//   A^T = [1 1 1 0; 0 1 -1 -1]
EF_WINOGRAD_CLONES void transform_output(const float* __restrict m, std::int64_t stride, float bias,
                                         float* __restrict y, const Window& win,
                      const Geometry& g, std::int64_t ty0, std::int64_t ty1, float* __restrict tmp) {
    float* s = tmp;              // 4 x 2 rows of tw: (m A) per tile
    float* out = s + 8 * g.tw;   // 2 x 2 rows of tw: the outputs (row a, column b) of each tile
    for (std::int64_t ty = ty0; ty < ty1; ++ty) {
        const float* in = m + (ty - ty0) * g.tw;
        for (int i = 0; i < 4; ++i) {
            const float* a = in + (i * 4 + 0) * stride;
            const float* b = in + (i * 4 + 1) * stride;
            const float* c = in + (i * 4 + 2) * stride;
            const float* d = in + (i * 4 + 3) * stride;
            float* s0 = s + (2 * i) * g.tw;
            float* s1 = s0 + g.tw;
            for (std::int64_t tx = 0; tx < g.tw; ++tx) {
                s0[tx] = a[tx] + b[tx] + c[tx];
                s1[tx] = b[tx] - c[tx] - d[tx];
            }
        }
        for (int j = 0; j < 2; ++j) {
            const float* s0 = s + j * g.tw;  // s[i][j] at s + (2 * i + j) * tw
            const float* s1 = s0 + 2 * g.tw;
            const float* s2 = s0 + 4 * g.tw;
            const float* s3 = s0 + 6 * g.tw;
            float* y0 = out + j * g.tw;
            float* y1 = out + (2 + j) * g.tw;
            for (std::int64_t tx = 0; tx < g.tw; ++tx) {
                y0[tx] = (s0[tx] + s1[tx] + s2[tx]) + bias;
                y1[tx] = (s1[tx] - s2[tx] - s3[tx]) + bias;
            }
        }
        for (int a = 0; a < 2 && 2 * ty + a < win.oh; ++a) {
            float* row = y + (2 * ty + a) * win.ow;
            const float* even = out + (2 * a) * g.tw;
            const float* odd = even + g.tw;
            const std::int64_t pairs = win.ow / 2;
            for (std::int64_t tx = 0; tx < pairs; ++tx) {
                row[2 * tx] = even[tx];
                row[2 * tx + 1] = odd[tx];
            }
            if (win.ow % 2 != 0) row[win.ow - 1] = even[pairs];
        }
    }
}

}  // namespace

Winograd::Winograd(const Constant& w) : m_(w.shape[0]), c_(w.shape[1]) {
    // U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], in double.
    static const double kG[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    const auto* src = static_cast<const float*>(w.data());
    u_.assign(static_cast<std::size_t>(kTile * m_ * c_), 0.0f);
    for (std::int64_t o = 0; o < m_; ++o) {
        for (std::int64_t c = 0; c < c_; ++c) {
            const float* g = src + (o * c_ + c) * 9;
            double gt[4][3];  // G g
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 3; ++j) gt[i][j] = kG[i][0] * g[j] + kG[i][1] * g[3 + j] + kG[i][2] * g[6 + j];
            for (int i = 0; i < 4; ++i) {
                for (int j = 0; j < 4; ++j) {
                    const double value = gt[i][0] * kG[j][0] + gt[i][1] * kG[j][1] + gt[i][2] * kG[j][2];
                    u_[static_cast<std::size_t>(((i * 4 + j) * m_ + o) * c_ + c)] = static_cast<float>(value);
                }
            }
        }
    }
}

bool Winograd::applies(const Window& win) const {
    if (win.kh != 3 || win.kw != 3 || win.sh != 1 || win.sw != 1 || win.dh != 1 || win.dw != 1) return false;
    if (win.c != c_ || win.oh < 2 || win.ow < 2) return false;
    // Where it measured faster than the direct path (Zen 4, AVX-512, 1 thread; direct at 100-113 GFLOP/s):
    // 64 channels at 16x16 0.86x, at 32x32 0.77x; 64 -> 128 and 128 at 16x16 0.77x; 32 <-> 64 and 48 at
    // 32x32 0.82-0.88x; 32 at 32x32 0.93-0.96x (0.98x at 48x48, 0.91x at 64x64); 24 -> 40 at 40x40 0.86x.
    // Slower: 16 channels at 64x64 1.4x, 24 at 32x32 1.1x, 48 at 24x24 1.04x, and under 64 tiles (64 at
    // 14x14 1.08x, 128 at 8x8 1.2-1.3x, 256 at 8x8 1.09x): there the transforms and the GEMMs' small K or
    // N cost more than the 2.25x fewer multiply-adds save.
    const std::int64_t tiles = ((win.oh + 1) / 2) * ((win.ow + 1) / 2);
    // With avx512's transforms and GEMM (graph_ops_winograd_avx512.cpp), 16 channels at 64x64 (ResNet's
    // first stage) measured 129-132 against 168-173 us direct, but on the avx2 tier, which must take the
    // same path for the same bits, 331 against 224-229 us with the C++ transforms and sgemm: not taken.
    return c_ >= 24 && m_ >= 24 && c_ + m_ >= 64 && tiles >= 64 && (c_ + m_ >= 128 || tiles >= 256);
}

// The transforms' row buffers, per thread (transform_input: 16 x (tw + 1); transform_output: 12 x tw), in
// whole cache lines.
static std::int64_t transform_floats(const Geometry& g) { return (16 * (g.tw + 1) + 15) / 16 * 16; }

// A block's tiles rounded up to whole panels of 32 (the avx512 tier's V; the others use g.t of them).
static std::int64_t panel_tiles(const Geometry& g) { return (g.t + 31) / 32 * 32; }

std::size_t Winograd::scratch_bytes(const Window& win) const {
    const Geometry g = geometry(win, c_, m_);  // the larger blocks: enough for either tier's
    return static_cast<std::size_t>(c_ * g.ph * g.pw + kTile * ((c_ + m_) * panel_tiles(g) + 2 * kSkew) +
                                    pool_threads() * transform_floats(g)) * sizeof(float);
}

void Winograd::run(const float* x, float* y, const float* bias, const float* z, const Window& win,
                   const Activation& act, const Activation& post, void* scratch) const {
    // The avx512 tier's transforms and GEMM are its own (the same bits), the other tiers' these files'
    // loops and Table::sgemm.
    const bool avx512 = std::strcmp(kernels::active().isa, "avx512") == 0;
    const Geometry g = geometry(win, c_, m_, avx512 ? kBlockBytesAvx512 : kBlockBytes);
    auto* padded = static_cast<float*>(scratch);
    float* v = padded + c_ * g.ph * g.pw;
    // One transform position's block of V (whole panels), of M.
    const std::int64_t sv = c_ * panel_tiles(g) + kSkew, sm = m_ * panel_tiles(g) + kSkew;
    float* m = v + kTile * sv;
    float* const row_buffers = m + kTile * sm;  // transform_floats(g) per thread slot
    const std::int64_t row_floats = transform_floats(g);
    const std::int64_t plane = win.h * win.w, out_plane = win.oh * win.ow;
    const double copy_work = static_cast<double>(c_ * g.ph * g.pw) * 4.0;
    for (std::int64_t n = 0; n < win.n; ++n) {
        const float* xn = x + n * c_ * plane;
        parallel_ranges(c_, 1, copy_work, [&](int, std::int64_t first, std::int64_t last) {
            for (std::int64_t c = first; c < last; ++c) {
                float* dst = padded + c * g.ph * g.pw;
                const float* src = xn + c * plane;
                std::fill(dst, dst + win.top * g.pw, 0.0f);
                float* row = dst + win.top * g.pw;
                for (std::int64_t iy = 0; iy < win.h; ++iy, row += g.pw) {
                    std::fill(row, row + win.left, 0.0f);
                    std::memcpy(row + win.left, src + iy * win.w, static_cast<std::size_t>(win.w) * sizeof(float));
                    std::fill(row + win.left + win.w, row + g.pw, 0.0f);
                }
                std::fill(row, dst + g.ph * g.pw, 0.0f);
            }
        });
        float* yn = y + n * m_ * out_plane;
        const float* zn = z != nullptr ? z + n * m_ * out_plane : nullptr;
        for (std::int64_t ty0 = 0; ty0 < g.th; ty0 += g.rows) {
            const std::int64_t ty1 = std::min(g.th, ty0 + g.rows), tiles = (ty1 - ty0) * g.tw;
            parallel_ranges(c_, 1, static_cast<double>(tiles * c_) * 32.0, [&](int slot, std::int64_t first, std::int64_t last) {
                float* tmp = row_buffers + slot * row_floats;
                for (std::int64_t c = first; c < last; ++c) {
#if defined(__x86_64__) || defined(_M_X64)
                    if (avx512) {
                        winograd_avx512::transform_input(padded + c * g.ph * g.pw, v + c * winograd_avx512::kPanel,
                                                         sv, g.tw, g.pw, ty0, ty1, c_);
                        continue;
                    }
#endif
                    transform_input(padded + c * g.ph * g.pw, v + c * tiles, sv, g, ty0, ty1, tmp);
                }
            });
            // The 16 GEMMs split between the threads whole (parallel_sgemm on each, 16 fork-joins a block,
            // made the wide CNN 6% slower at 2 threads than the direct path); the same calls, the same bits.
            const kernels::SgemmFn sgemm = kernels::active().sgemm;
            parallel_ranges(kTile, 1, static_cast<double>(kTile * m_ * c_ * tiles),
                            [&](int, std::int64_t first, std::int64_t last) {
                                for (std::int64_t xi = first; xi < last; ++xi) {
#if defined(__x86_64__) || defined(_M_X64)
                                    if (avx512) {
                                        winograd_avx512::gemm(static_cast<int>(m_), static_cast<int>(tiles),
                                                              static_cast<int>(c_), u_.data() + xi * m_ * c_,
                                                              v + xi * sv, m + xi * sm, tiles);
                                        continue;
                                    }
#endif
                                    sgemm(static_cast<int>(m_), static_cast<int>(tiles), static_cast<int>(c_),
                                          u_.data() + xi * m_ * c_, static_cast<int>(c_), v + xi * sv,
                                          static_cast<int>(tiles), m + xi * sm, static_cast<int>(tiles));
                                }
                            });
            // Output rows [y0, y1) of each channel: transformed, then the epilogue while they are in cache.
            const std::int64_t y0 = 2 * ty0, y1 = std::min(win.oh, 2 * ty1), count = (y1 - y0) * win.ow;
            parallel_ranges(m_, 1, static_cast<double>(m_ * tiles) * 32.0, [&](int slot, std::int64_t first, std::int64_t last) {
                float* tmp = row_buffers + slot * row_floats;
                for (std::int64_t k = first; k < last; ++k) {
                    float* plane_k = yn + k * out_plane;
#if defined(__x86_64__) || defined(_M_X64)
                    if (avx512) {  // the residual and the clamp in its store; a HardSwish after
                        constexpr float kInf = std::numeric_limits<float>::infinity();
                        const Activation& last = zn != nullptr ? post : act;
                        winograd_avx512::transform_output(m + k * tiles, sm, bias[k], plane_k, win.oh, win.ow, g.tw, ty0,
                                                          ty1, zn != nullptr ? zn + k * out_plane : nullptr,
                                                          last.active ? last.lo : -kInf, last.active ? last.hi : kInf);
                        last.finish(plane_k + y0 * win.ow, count);
                        continue;
                    }
#endif
                    transform_output(m + k * tiles, sm, bias[k], plane_k, win, g, ty0, ty1, tmp);
                    float* out = plane_k + y0 * win.ow;
                    if (zn != nullptr) {
                        const float* r = zn + k * out_plane + y0 * win.ow;
                        for (std::int64_t i = 0; i < count; ++i) out[i] += r[i];
                        post.apply(out, count);
                    } else {
                        act.apply(out, count);
                    }
                }
            });
        }
    }
}

}  // namespace edgefleet::graph
