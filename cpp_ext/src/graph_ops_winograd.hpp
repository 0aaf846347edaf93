// Winograd F(2x2, 3x3) for the float Conv (graph_ops_conv.cpp): 3x3, stride 1, dilation 1, group 1,
// constant W. Y = A^T [ (G g G^T) . (B^T d B) ] A per 2x2 output tile, with the 16 elementwise products
// summed over the input channels as 16 GEMMs (kernels::active().sgemm, the threads taking whole ones):
//   M_xi (K x T) = U_xi (K x C) * V_xi (C x T),   xi = 0..15, T = output tiles.
// W is transformed once, at pack time (U, in double, rounded to float). The input and output transforms
// are plain C++ (additions and subtractions only, in a fixed order, compiled with -ffp-contract=off); the
// avx512 tier runs the same additions in registers and its own GEMM with sgemm's FMA chains
// (graph_ops_winograd_avx512.cpp): tiers give the bits their sgemm gives (avx512 = avx2).
// The epilogue is the direct path's: bias after the sum, then the activation, or the residual Z added and
// the post-residual activation.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "graph.hpp"
#include "graph_ops.hpp"

namespace edgefleet::graph {

class Winograd {
public:
    // W (M, C, 3, 3) float32.
    explicit Winograd(const Constant& w);

    // Whether this conv (its window) should run here: 3x3, stride 1, dilation 1, C and M as packed, and
    // the shape where it measured faster than the direct path.
    bool applies(const Window& win) const;
    std::size_t scratch_bytes(const Window& win) const;

    // y (N, M, oh, ow) = epilogue(conv(x) + bias); z the residual (laid out as y) or null. act is applied
    // without a residual; with one, y + z, then post.
    void run(const float* x, float* y, const float* bias, const float* z, const Window& win, const Activation& act,
             const Activation& post, void* scratch) const;

private:
    std::int64_t m_, c_;
    std::vector<float> u_;  // (16, M, C)
};

#if defined(__x86_64__) || defined(_M_X64)
// The transforms in AVX-512 registers, for the avx512 tier (graph_ops_winograd_avx512.cpp): the same
// additions as graph_ops_winograd.cpp's loops, in the same order, on the same values; V in panels of 32
// tiles (channels x 32 floats each), which gemm reads as sgemm_avx512 reads its packed copy of B.
namespace winograd_avx512 {
constexpr std::int64_t kPanel = 32;  // tiles per panel of V (gemm's B, written so by transform_input)
void transform_input(const float* plane, float* v, std::int64_t stride, std::int64_t tw, std::int64_t pw,
                     std::int64_t ty0, std::int64_t ty1, std::int64_t channels);
void gemm(int M, int tiles, int K, const float* A, const float* V, float* C, std::int64_t ldc);
void transform_output(const float* m, std::int64_t stride, float bias, float* y, std::int64_t oh, std::int64_t ow,
                      std::int64_t tw, std::int64_t ty0, std::int64_t ty1, const float* z, float lo, float hi);
}  // namespace winograd_avx512
#endif

}  // namespace edgefleet::graph
