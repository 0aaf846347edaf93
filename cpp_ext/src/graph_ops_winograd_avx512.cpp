// Winograd F(2x2, 3x3)'s input and output transforms in AVX-512 registers, 16 tiles of a tile row at a
// time (graph_ops_winograd.cpp runs them on the avx512 tier; the other tiers run its plain C++ loops).
// The same additions and subtractions in the same order as those loops, on the same values: the same
// bits. What changes is the data movement: the C++ loops first split each row into even and odd columns
// and then combined them in loops of tw + 1 and tw, whose 16 output streams GCC left scalar (ResNet's
// 32-channel 32x32 conv spent ~40 of its 168 us in transform_input, ~20 in transform_output). Here a
// tile row's 4 input rows are loaded 16 tiles (34 columns) at a time, combined down the rows, split into
// the columns 2tx, 2tx + 1, 2tx + 2, 2tx + 3 by one permute each, combined across and stored; the
// output side interleaves its two columns per tile with two permutes.
#include "graph_kernels_avx512.hpp"
#include "graph_ops_winograd.hpp"

#if defined(__x86_64__) || defined(_M_X64)

namespace edgefleet::graph::winograd_avx512 {

using kernels::kLanes;
using kernels::lanes_below;

// V[xi * stride + (ty - ty0) * tw + tx] = (B^T d B)[xi] for the tiles of rows [ty0, ty1) of one channel's
// padded plane (rows of pw = 2 tw + 2 floats). B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
EF_AVX512 void transform_input(const float* plane, float* v, std::int64_t stride, std::int64_t tw, std::int64_t pw,
                               std::int64_t ty0, std::int64_t ty1) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (std::int64_t ty = ty0; ty < ty1; ++ty) {
        const float* rows = plane + 2 * ty * pw;
        float* dst = v + (ty - ty0) * tw;
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
            #pragma GCC unroll 4
            for (int i = 0; i < 4; ++i) {
                const __m512 e = _mm512_permutex2var_ps(b[0][i], even, b[1][i]);   // column 2tx
                const __m512 o = _mm512_permutex2var_ps(b[0][i], odd, b[1][i]);    // 2tx + 1
                const __m512 e1 = _mm512_permutex2var_ps(b[2][i], even, b[3][i]);  // 2tx + 2
                const __m512 o1 = _mm512_permutex2var_ps(b[2][i], odd, b[3][i]);   // 2tx + 3
                float* out = dst + (i * 4) * stride + t0;
                _mm512_mask_storeu_ps(out, store, _mm512_sub_ps(e, e1));
                _mm512_mask_storeu_ps(out + stride, store, _mm512_add_ps(o, e1));
                _mm512_mask_storeu_ps(out + 2 * stride, store, _mm512_sub_ps(e1, o));
                _mm512_mask_storeu_ps(out + 3 * stride, store, _mm512_sub_ps(o, o1));
            }
        }
    }
}

// Output rows 2 ty and 2 ty + 1 (those under oh) of one channel, for the tile rows [ty0, ty1), from the
// 16 GEMM results per tile (m[xi * stride + (ty - ty0) * tw + tx]): A^T m A + bias, cut at (oh, ow).
// A^T = [1 1 1 0; 0 1 -1 -1].
EF_AVX512 void transform_output(const float* m, std::int64_t stride, float bias, float* y, std::int64_t oh,
                                std::int64_t ow, std::int64_t tw, std::int64_t ty0, std::int64_t ty1) {
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
                float* row = y + (2 * ty + a) * ow + first;
                _mm512_mask_storeu_ps(row, lanes_below(width - first), _mm512_permutex2var_ps(out[a][0], low, out[a][1]));
                _mm512_mask_storeu_ps(row + kLanes, lanes_below(width - first - kLanes),
                                      _mm512_permutex2var_ps(out[a][0], high, out[a][1]));
            }
        }
    }
}

}  // namespace edgefleet::graph::winograd_avx512

#endif  // x86-64
