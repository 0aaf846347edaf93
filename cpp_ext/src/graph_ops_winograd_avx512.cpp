// Winograd F(2x2, 3x3)'s input and output transforms in AVX-512 registers, 16 tiles of a tile row at a
// time, and the GEMM over V as transform_input leaves it (graph_ops_winograd.cpp runs them on the avx512
// tier; the other tiers run its plain C++ loops and Table::sgemm). The same additions and subtractions
// in the same order as those loops, on the same values, and sgemm's FMA chains: the same bits. What
// changes is the data movement: the C++ loops first split each row into even and odd columns and then
// combined them in loops of tw + 1 and tw, whose 16 output streams GCC left scalar (ResNet's 32-channel
// 32x32 conv 168 -> 114 us with these transforms, 108 with the GEMM, the fused epilogue and 512 KB
// blocks). Here a tile row's 4 input rows are loaded 16 tiles (34 columns) at a time, combined down the
// rows, split into the columns 2tx, 2tx + 1, 2tx + 2, 2tx + 3 by one permute each, combined across and
// stored; the output side interleaves its two columns per tile with two permutes.
#include "graph_kernels_avx512.hpp"
#include "graph_ops_winograd.hpp"

#if defined(__x86_64__) || defined(_M_X64)

namespace edgefleet::graph::winograd_avx512 {

using kernels::kLanes;
using kernels::lanes_below;

namespace {

// MR rows of C by the 32 columns of one panel (n of them stored): C = A[MR, k] * P[k, 32], each element
// the FMA chain in k order from zero that sgemm_avx512's micro-kernel computes over its packed copy.
template <int MR>
EF_AVX512 inline void gemm_rows(int k, const float* A, int lda, const float* P, float* C, std::int64_t ldc,
                                __mmask16 c0, __mmask16 c1) {
    __m512 acc[MR][2];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const float* a[MR];
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) a[r] = A + static_cast<std::ptrdiff_t>(r) * lda;
    for (int i = 0; i < k; ++i, P += kPanel) {
        const __m512 v0 = _mm512_loadu_ps(P), v1 = _mm512_loadu_ps(P + kLanes);
        #pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512 x = _mm512_set1_ps(a[r][i]);
            acc[r][0] = _mm512_fmadd_ps(x, v0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, v1, acc[r][1]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
        _mm512_mask_storeu_ps(C + r * ldc, c0, acc[r][0]);
        _mm512_mask_storeu_ps(C + r * ldc + kLanes, c1, acc[r][1]);
    }
}

}  // namespace

// C[M, tiles] (rows ldc apart) = A[M, K] (rows K apart) * V, V in transform_input's panels (K x 32
// each): sgemm_avx512's sums without its packing pass (a copy of all of V per GEMM, ~17% of
// its time on these K of 16-64).
EF_AVX512 void gemm(int M, int tiles, int K, const float* A, const float* V, float* C, std::int64_t ldc) {
    for (int j = 0; j < tiles; j += kPanel) {
        const __mmask16 c0 = lanes_below(tiles - j), c1 = lanes_below(tiles - j - kLanes);
        const float* P = V + static_cast<std::ptrdiff_t>(j) * K;
        int i = 0;
        for (; i + 8 <= M; i += 8) gemm_rows<8>(K, A + static_cast<std::ptrdiff_t>(i) * K, K, P, C + i * ldc + j, ldc, c0, c1);
        const float* a = A + static_cast<std::ptrdiff_t>(i) * K;
        float* c = C + i * ldc + j;
        switch (M - i) {
            case 7: gemm_rows<7>(K, a, K, P, c, ldc, c0, c1); break;
            case 6: gemm_rows<6>(K, a, K, P, c, ldc, c0, c1); break;
            case 5: gemm_rows<5>(K, a, K, P, c, ldc, c0, c1); break;
            case 4: gemm_rows<4>(K, a, K, P, c, ldc, c0, c1); break;
            case 3: gemm_rows<3>(K, a, K, P, c, ldc, c0, c1); break;
            case 2: gemm_rows<2>(K, a, K, P, c, ldc, c0, c1); break;
            case 1: gemm_rows<1>(K, a, K, P, c, ldc, c0, c1); break;
            default: break;
        }
    }
}

// (B^T d B)[xi] for the tiles t = (ty - ty0) * tw + tx of rows [ty0, ty1) of one channel's padded plane
// (rows of pw = 2 tw + 2 floats), to V in gemm's panels: v[xi * stride + (t / 32) * channels * 32 + t % 32]
// (v at this channel's row of the first panel). B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
EF_AVX512 void transform_input(const float* plane, float* v, std::int64_t stride, std::int64_t tw, std::int64_t pw,
                               std::int64_t ty0, std::int64_t ty1, std::int64_t channels) {
    const std::int64_t panel = channels * kPanel;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (std::int64_t ty = ty0; ty < ty1; ++ty) {
        const float* rows = plane + 2 * ty * pw;
        for (std::int64_t t0 = 0; t0 < tw; t0 += kLanes) {
            const int first = static_cast<int>(2 * t0), width = static_cast<int>(pw);
            // Columns [first + s, first + s + 16) for s = 0, 16, 2, 18: masked to the row.
            const int shift[4] = {0, kLanes, 2, kLanes + 2};
            __m512 d[4][4];  // [shift][row]
            #pragma GCC unroll 4
            for (int s = 0; s < 4; ++s) {
                const __mmask16 mask = lanes_below(width - first - shift[s]);
                #pragma GCC unroll 4
                for (int r = 0; r < 4; ++r) d[s][r] = _mm512_maskz_loadu_ps(mask, rows + r * pw + first + shift[s]);
            }
            // Down the rows (B^T d), per column: the C++ loops' out[0..3].
            __m512 b[4][4];  // [shift][i]
            #pragma GCC unroll 4
            for (int s = 0; s < 4; ++s) {
                b[s][0] = _mm512_sub_ps(d[s][0], d[s][2]);
                b[s][1] = _mm512_add_ps(d[s][1], d[s][2]);
                b[s][2] = _mm512_sub_ps(d[s][2], d[s][1]);
                b[s][3] = _mm512_sub_ps(d[s][1], d[s][3]);
            }
            const __mmask16 store = lanes_below(static_cast<int>(tw - t0));
            // Tile t of the block in panel t / 32, lane t % 32; the lanes from `split` on in the next panel.
            const std::int64_t t = (ty - ty0) * tw + t0, lane = t % kPanel;
            float* dst = v + (t / kPanel) * panel + lane;
            const __mmask16 before = lanes_below(static_cast<int>(kPanel - lane));
            const __mmask16 here = store & before, next = store & static_cast<__mmask16>(~before);
            float* const after = dst + panel - kPanel;  // lane l >= split at after + l: the next panel's l - split
            #pragma GCC unroll 4
            for (int i = 0; i < 4; ++i) {
                const __m512 e = _mm512_permutex2var_ps(b[0][i], even, b[1][i]);   // column 2tx
                const __m512 o = _mm512_permutex2var_ps(b[0][i], odd, b[1][i]);    // 2tx + 1
                const __m512 e1 = _mm512_permutex2var_ps(b[2][i], even, b[3][i]);  // 2tx + 2
                const __m512 o1 = _mm512_permutex2var_ps(b[2][i], odd, b[3][i]);   // 2tx + 3
                const __m512 values[4] = {_mm512_sub_ps(e, e1), _mm512_add_ps(o, e1), _mm512_sub_ps(e1, o),
                                          _mm512_sub_ps(o, o1)};
                #pragma GCC unroll 4
                for (int j = 0; j < 4; ++j) {
                    const std::int64_t xi = (i * 4 + j) * stride;
                    _mm512_mask_storeu_ps(dst + xi, here, values[j]);
                    if (next != 0) _mm512_mask_storeu_ps(after + xi, next, values[j]);
                }
            }
        }
    }
}

// Output rows 2 ty and 2 ty + 1 (those under oh) of one channel, for the tile rows [ty0, ty1), from the
// 16 GEMM results per tile (m[xi * stride + (ty - ty0) * tw + tx]): A^T m A + bias, cut at (oh, ow), then
// + z (the residual, laid out as y, or null) and clamped to [lo, hi] as vecmath::clamp_rows clamps (the
// C++ path's passes over the rows, fused: the same operations in the same order; +-inf for no clamp,
// which leaves every value, NaN and -0 included, as it was). A^T = [1 1 1 0; 0 1 -1 -1].
EF_AVX512 void transform_output(const float* m, std::int64_t stride, float bias, float* y, std::int64_t oh,
                                std::int64_t ow, std::int64_t tw, std::int64_t ty0, std::int64_t ty1, const float* z,
                                float lo, float hi) {
    const __m512 l = _mm512_set1_ps(lo), h = _mm512_set1_ps(hi);
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512 b = _mm512_set1_ps(bias);
    for (std::int64_t ty = ty0; ty < ty1; ++ty) {
        const float* in = m + (ty - ty0) * tw;
        for (std::int64_t t0 = 0; t0 < tw; t0 += kLanes) {
            const __mmask16 load = lanes_below(static_cast<int>(tw - t0));
            __m512 s[4][2];  // (m A) per tile: the C++ loops' s0, s1 of row i
            #pragma GCC unroll 4
            for (int i = 0; i < 4; ++i) {
                const float* row = in + (i * 4) * stride + t0;
                const __m512 a0 = _mm512_maskz_loadu_ps(load, row), a1 = _mm512_maskz_loadu_ps(load, row + stride);
                const __m512 a2 = _mm512_maskz_loadu_ps(load, row + 2 * stride);
                const __m512 a3 = _mm512_maskz_loadu_ps(load, row + 3 * stride);
                s[i][0] = _mm512_add_ps(_mm512_add_ps(a0, a1), a2);
                s[i][1] = _mm512_sub_ps(_mm512_sub_ps(a1, a2), a3);
            }
            __m512 out[2][2];  // [output row a][column j of the tile]
            #pragma GCC unroll 2
            for (int j = 0; j < 2; ++j) {
                out[0][j] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[0][j], s[1][j]), s[2][j]), b);
                out[1][j] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[1][j], s[2][j]), s[3][j]), b);
            }
            const int first = static_cast<int>(2 * t0), width = static_cast<int>(ow);
            #pragma GCC unroll 2
            for (int a = 0; a < 2; ++a) {
                if (2 * ty + a >= oh) break;
                const std::int64_t at = (2 * ty + a) * ow + first;
                __m512 values[2] = {_mm512_permutex2var_ps(out[a][0], low, out[a][1]),
                                    _mm512_permutex2var_ps(out[a][0], high, out[a][1])};
                #pragma GCC unroll 2
                for (int half = 0; half < 2; ++half) {
                    const __mmask16 mask = lanes_below(width - first - kLanes * half);
                    __m512 value = values[half];
                    if (z != nullptr) value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask, z + at + kLanes * half));
                    _mm512_mask_storeu_ps(y + at + kLanes * half, mask, _mm512_min_ps(h, _mm512_max_ps(l, value)));
                }
            }
        }
    }
}

}  // namespace edgefleet::graph::winograd_avx512

#endif  // x86-64
