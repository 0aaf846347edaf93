// NEON kernels of the "neon" tier (aarch64, where Advanced SIMD is baseline: no target attribute and no
// run-time CPU check). The portable loops are auto-vectorised there too, but without register blocking:
// these keep a tile of C (or of a conv's output) in registers across K, as the AVX2 tier does.
//   sgemm / conv: vfmaq (fused, as the x86 tiers' FMA), so they agree with the portable tier within the
//   GEMM tolerance of the tests, not bit for bit. qgemm_nt / qconv_u8s8: exact integer sums (vmlal on
//   int16), then the portable requantization's float operations in the same order: the same bits.
#include "graph_kernels.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>
#include <cmath>

namespace edgefleet::graph::kernels {
namespace {

// MR rows of A times NV vectors of 4 columns of B, accumulated over K in registers.
template <int MR, int NV>
inline void block(int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    float32x4_t acc[MR][NV];
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v) acc[r][v] = vdupq_n_f32(0.0f);
    }
    for (int k = 0; k < K; ++k) {
        float32x4_t b[NV];
        const float* row = B + static_cast<std::ptrdiff_t>(k) * ldb;
        for (int v = 0; v < NV; ++v) b[v] = vld1q_f32(row + 4 * v);
        for (int r = 0; r < MR; ++r) {
            const float a = A[static_cast<std::ptrdiff_t>(r) * lda + k];
            for (int v = 0; v < NV; ++v) acc[r][v] = vfmaq_n_f32(acc[r][v], b[v], a);
        }
    }
    for (int r = 0; r < MR; ++r) {
        for (int v = 0; v < NV; ++v) vst1q_f32(C + static_cast<std::ptrdiff_t>(r) * ldc + 4 * v, acc[r][v]);
    }
}

// The last n < 4 columns, one at a time (fused multiply-add, as the vector lanes).
template <int MR>
inline void block_tail(int n, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    for (int r = 0; r < MR; ++r) {
        const float* a = A + static_cast<std::ptrdiff_t>(r) * lda;
        for (int j = 0; j < n; ++j) {
            float sum = 0.0f;
            for (int k = 0; k < K; ++k) sum = std::fma(a[k], B[static_cast<std::ptrdiff_t>(k) * ldb + j], sum);
            C[static_cast<std::ptrdiff_t>(r) * ldc + j] = sum;
        }
    }
}

// One band of MR rows across all N columns: NV * 4 columns at a time, then 4, then the tail.
template <int MR, int NV>
inline void band(int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    int j = 0;
    for (; j + 4 * NV <= N; j += 4 * NV) block<MR, NV>(K, A, lda, B + j, ldb, C + j, ldc);
    for (; j + 4 <= N; j += 4) block<MR, 1>(K, A, lda, B + j, ldb, C + j, ldc);
    if (j < N) block_tail<MR>(N - j, K, A, lda, B + j, ldb, C + j, ldc);
}

// PX output pixels from p0 x NV vectors of 4 output channels from m0 (PX * NV accumulators, at most 16):
// per tap NV weight loads and PX scalar inputs. Bias and clamp in registers, stored through a buffer
// (each channel's pixels are P apart in y).
template <int NV, int PX>
inline void conv_tile(const ConvArgs& a, int p0, int m0) {
    const int pixels = std::min(PX, a.p_end - p0);
    const float* xs[PX];
    for (int i = 0; i < PX; ++i) xs[i] = a.x + a.pix[p0 + std::min(i, pixels - 1)];  // past the end: the last
    float32x4_t acc[PX][NV];
    for (int i = 0; i < PX; ++i) {
        for (int v = 0; v < NV; ++v) acc[i][v] = vdupq_n_f32(0.0f);
    }
    const float* w = a.w + m0;  // rows of MP (a multiple of 8) floats: every vector is inside
    for (int k = 0; k < a.K; ++k, w += a.MP) {
        const std::ptrdiff_t off = a.koff[k];
        float32x4_t wk[NV];
        for (int v = 0; v < NV; ++v) wk[v] = vld1q_f32(w + 4 * v);
        for (int i = 0; i < PX; ++i) {
            const float x = xs[i][off];
            for (int v = 0; v < NV; ++v) acc[i][v] = vfmaq_n_f32(acc[i][v], wk[v], x);
        }
    }
    float out[PX][4 * NV];
    const float32x4_t lo = vdupq_n_f32(a.lo), hi = vdupq_n_f32(a.hi);
    for (int v = 0; v < NV; ++v) {
        const float32x4_t bias = vld1q_f32(a.bias + m0 + 4 * v);
        for (int i = 0; i < PX; ++i) {  // vmaxq / vminq return NaN for a NaN, as std::max / std::min here
            vst1q_f32(&out[i][4 * v], vminq_f32(vmaxq_f32(vaddq_f32(acc[i][v], bias), lo), hi));
        }
    }
    const int channels = std::min(4 * NV, a.M - m0);
    float* y = a.y + static_cast<std::ptrdiff_t>(m0) * a.P + p0;
    for (int c = 0; c < channels; ++c, y += a.P) {
        for (int i = 0; i < pixels; ++i) y[i] = out[i][c];
    }
}

// 16 output channels' weights of one tap group, de-interleaved: w[j] holds channel c's weight of input
// channel j (of 4) in lane c.
inline void load_taps16(const std::int8_t* w, int16x8_t lo[4], int16x8_t hi[4]) {
    const int8x16x4_t t = vld4q_s8(w);
    for (int j = 0; j < 4; ++j) {
        lo[j] = vmovl_s8(vget_low_s8(t.val[j]));
        hi[j] = vmovl_high_s8(t.val[j]);
    }
}

}  // namespace

void sgemm_neon(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    int i = 0;
    for (; i + 4 <= M; i += 4) {  // 4 rows x 16 columns: 16 accumulators, 4 loads per 16 FMAs
        band<4, 4>(N, K, A + static_cast<std::ptrdiff_t>(i) * lda, lda, B, ldb, C + static_cast<std::ptrdiff_t>(i) * ldc,
                   ldc);
    }
    for (; i < M; ++i) {  // single rows (batch-1 Gemm): 32 columns at once keep 8 FMA chains in flight
        band<1, 8>(N, K, A + static_cast<std::ptrdiff_t>(i) * lda, lda, B, ldb, C + static_cast<std::ptrdiff_t>(i) * ldc,
                   ldc);
    }
}

void conv_neon(const ConvArgs& a) {
    for (int m0 = 0; m0 < a.M;) {
        if (a.MP - m0 >= 16) {  // 16 channels x 4 pixels
            for (int p0 = a.p_begin; p0 < a.p_end; p0 += 4) conv_tile<4, 4>(a, p0, m0);
            m0 += 16;
        } else {  // the last 8 (MP is a multiple of 8): 8 channels x 8 pixels
            for (int p0 = a.p_begin; p0 < a.p_end; p0 += 8) conv_tile<2, 8>(a, p0, m0);
            m0 += 8;
        }
    }
}

// int16 x int16 -> int32 (vmull / vmlal: exact), four columns of B sharing each load of A; K is a
// multiple of 16.
void qgemm_nt_neon(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                   std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n) {
    for (int m = 0; m < M; ++m) {
        const std::int16_t* a = A + static_cast<std::ptrdiff_t>(m) * lda;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const std::int16_t* b = B + static_cast<std::ptrdiff_t>(n) * ldb;
            int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
            for (int k = 0; k < K; k += 8) {
                const int16x8_t va = vld1q_s16(a + k);
                for (int c = 0; c < 4; ++c) {
                    const int16x8_t vb = vld1q_s16(b + static_cast<std::ptrdiff_t>(c) * ldb + k);
                    acc[c] = vmlal_s16(acc[c], vget_low_s16(va), vget_low_s16(vb));
                    acc[c] = vmlal_high_s16(acc[c], va, vb);
                }
            }
            std::int32_t* out = C + m * ldc_m + n * ldc_n;
            for (int c = 0; c < 4; ++c) out[c * ldc_n] = vaddvq_s32(acc[c]);
        }
        for (; n < N; ++n) {
            const std::int16_t* b = B + static_cast<std::ptrdiff_t>(n) * ldb;
            int32x4_t acc = vdupq_n_s32(0);
            for (int k = 0; k < K; k += 8) {
                const int16x8_t va = vld1q_s16(a + k), vb = vld1q_s16(b + k);
                acc = vmlal_high_s16(vmlal_s16(acc, vget_low_s16(va), vget_low_s16(vb)), va, vb);
            }
            C[m * ldc_m + n * ldc_n] = vaddvq_s32(acc);
        }
    }
}

// The direct integer conv, 16 output channels of 2 pixels at a time: a uint8 x int8 product fits int16
// (|v| <= 255 * 128), so the weights widen once to int16 and each input byte multiplies 16 channels with
// vmlal_n (exact int32 sums; integer addition is associative, so the order does not matter). The store
// is the portable one's float arithmetic, lane by lane the same operations.
void qconv_u8s8_neon(const QConvArgs& a) {
    constexpr int kPx = 2;
    for (int m0 = 0; m0 < a.M; m0 += 16) {
        const int channels = std::min(16, a.M - m0);
        for (int p0 = a.p_begin; p0 < a.p_end; p0 += kPx) {
            const int pixels = std::min(kPx, a.p_end - p0);
            const std::uint8_t* xs[kPx];
            for (int i = 0; i < kPx; ++i) xs[i] = a.x + a.pix[p0 + std::min(i, pixels - 1)];
            int32x4_t acc[kPx][4];
            for (int i = 0; i < kPx; ++i) {
                for (int v = 0; v < 4; ++v) acc[i][v] = vld1q_s32(a.bias + m0 + 4 * v);  // MP >= m0 + 16
            }
            for (int t = 0; t < a.K4; ++t) {
                int16x8_t lo[4], hi[4];
                load_taps16(a.w + (static_cast<std::ptrdiff_t>(t) * a.MP + m0) * 4, lo, hi);
                for (int i = 0; i < kPx; ++i) {
                    const std::uint8_t* v = xs[i] + a.koff[t];
                    for (int j = 0; j < 4; ++j) {
                        const auto x = static_cast<std::int16_t>(v[j]);
                        acc[i][0] = vmlal_n_s16(acc[i][0], vget_low_s16(lo[j]), x);
                        acc[i][1] = vmlal_high_n_s16(acc[i][1], lo[j], x);
                        acc[i][2] = vmlal_n_s16(acc[i][2], vget_low_s16(hi[j]), x);
                        acc[i][3] = vmlal_high_n_s16(acc[i][3], hi[j], x);
                    }
                }
            }
            const float32x4_t zero = vdupq_n_f32(a.y_zero), lo = vdupq_n_f32(a.lo), hi = vdupq_n_f32(a.hi);
            for (int i = 0; i < pixels; ++i) {
                std::int32_t q[16];
                for (int v = 0; v < 4; ++v) {  // nearbyint(acc * mult) + zero, clamped: vrndnq rounds half to even
                    const float32x4_t s = vmulq_f32(vcvtq_f32_s32(acc[i][v]), vld1q_f32(a.mult + m0 + 4 * v));
                    vst1q_s32(q + 4 * v, vcvtq_s32_f32(vminq_f32(vmaxq_f32(vaddq_f32(vrndnq_f32(s), zero), lo), hi)));
                }
                const std::ptrdiff_t at = static_cast<std::ptrdiff_t>(m0) * a.P + p0 + i;
                for (int c = 0; c < channels; ++c) {
                    if (a.out_u8) {
                        static_cast<std::uint8_t*>(a.y)[at + static_cast<std::ptrdiff_t>(c) * a.P] =
                            static_cast<std::uint8_t>(q[c]);
                    } else {
                        static_cast<std::int8_t*>(a.y)[at + static_cast<std::ptrdiff_t>(c) * a.P] =
                            static_cast<std::int8_t>(q[c]);
                    }
                }
            }
        }
    }
}

// The roofline's ceiling: 12 independent FMA chains of 4 lanes, no loads.
float fma_loop_neon(long iterations) {
    float32x4_t acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = vdupq_n_f32(static_cast<float>(i));
    const float32x4_t a = vdupq_n_f32(0.999999f), b = vdupq_n_f32(1e-7f);
    for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) acc[i] = vfmaq_f32(b, acc[i], a);
    }
    float32x4_t sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = vaddq_f32(sum, acc[i]);
    return vgetq_lane_f32(sum, 0);
}

}  // namespace edgefleet::graph::kernels

#endif  // aarch64
