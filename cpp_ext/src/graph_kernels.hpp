// Math kernels of the graph executor, with a portable version and per-ISA variants picked at run time.
//
// x86-64: an AVX2+FMA variant (compiled with __attribute__((target)) in graph_kernels_avx2.cpp, so the
// rest of the build stays baseline x86-64) is used when the CPU has it. Everywhere else (aarch64, where
// -O3 vectorises the portable loops with NEON, which is baseline there) the "neon" tier runs explicit
// NEON kernels (graph_kernels_neon.cpp; no CPU check: Advanced SIMD is part of every aarch64 CPU).
// Above it, "avxvnni" (AVX2 + AVX-VNNI, graph_kernels_qconv256.cpp) adds a VNNI integer conv, and
// "avx512" (F, BW, VL and VNNI; graph_kernels_avx512.cpp) a wider direct conv and a 512-bit VNNI conv,
// a packed, register-blocked sgemm (graph_kernels_sgemm512.cpp) and an int16-pair VNNI GEMM
// (graph_kernels_qgemm512.cpp). select_isa("portable") forces the portable kernels (tests
// compare all tiers); at load, EDGEFLEET_NATIVE_ISA=portable, =avx2 or =avxvnni picks a lower tier than the best
// (on aarch64: =portable or =neon). On aarch64, "neondot" (the neon tier + the ARMv8.2 dot-product
// instructions, chosen when getauxval(AT_HWCAP) has HWCAP_ASIMDDP; graph_kernels_neon_dotprod.cpp) runs
// the integer conv with sdot; "neon" is the plain Advanced SIMD tier (vmull / vmlal), which
// EDGEFLEET_NATIVE_ISA=neon or select_isa("neon") forces on a dotprod CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgefleet::graph::kernels {

// C[M,N] = A[M,K] * B[K,N], all row-major with leading dimensions (C overwritten).
using SgemmFn = void (*)(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
// C[m * ldc_m + n * ldc_n] = sum_k A[m * lda + k] * B[n * ldb + k] in int32. K is a multiple of 16 (callers
// pad with zeros); A and B rows are 32-byte aligned when lda, ldb are multiples of 16.
using QgemmFn = void (*)(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                         std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n);

// Direct convolution (no im2col), output channels across the SIMD lanes: for m < M, p < P
//   y[m * P + p] = min(max(bias[m] + sum_k x[pix[p] + koff[k]] * w[k * MP + m], lo), hi)
// summed in k order from 0, bias added after the sum (as im2col + sgemm + bias would). x is the input
// planes, zero-padded so that every offset is inside; pix[p] is output pixel p's window corner in x,
// koff[k] the offset of kernel tap k = (c, i, j) from it. w is the weight pre-packed as (K, MP), MP = M
// rounded up to 8 with zero columns; bias has MP values. Only pixels [p_begin, p_end) are computed
// (p_begin a multiple of 8, so a thread's share of the pixels is tiled exactly as the whole would be).
// z (tiers with Table::conv_residual only; null elsewhere): a residual laid out as y, added after the
// clamp above (callers pass lo = -inf, hi = inf then), and clamped again to [z_lo, z_hi]:
//   y[m * P + p] = min(max(that + z[m * P + p], z_lo), z_hi)
// The zero padding of a conv done in the kernel (tiers with Table::conv_pad, for convs that
// conv_pad_fits; null elsewhere): x is then the unpadded input, C planes of h x w, pix and koff are not
// read, and output pixel p = oy * ow + ox of tap k = (c, i, j) reads input (c, oy * sh + i * dh - top,
// ox * sw + j * dw - left), zero outside the planes: the same sums as over a zero-padded copy, without
// it. Stride 1, or stride 2 with 3-wide undilated rows of taps (ResNet's downsampling 3x3 convs).
struct ConvPad {
    int c, h, w, ow, kh, kw, dh, dw, top, left;
    int sh = 1, sw = 1;
};
constexpr int kConvPadMaxK = 320, kConvPadMinWidth = 32, kConvPadMinWidth2 = 16, kConvPadMaxKw = 7;
inline bool conv_pad_fits(int k, int ow, int kw, int sh, int sw, int dw = 1) {
    if (sh == 2 && sw == 2) return k <= kConvPadMaxK && ow >= kConvPadMinWidth2 && kw == 3 && dw == 1;
    return k <= kConvPadMaxK && ow >= kConvPadMinWidth && kw <= kConvPadMaxKw && sh == 1 && sw == 1;
}
// 3x3 same-padded stride-1 convs on maps 8 wide and 2-16 high (ResNet's last stage), panels of at most
// 64 output channels, W all finite (the kernel skips the taps of the padding, whose w * 0 a NaN or an
// infinity in W would have made NaN).
constexpr int kConvPad8MaxPixels = 128;
inline bool conv_pad8_fits(const ConvPad& g, int oh) {
    return g.w == 8 && g.ow == 8 && oh == g.h && g.h >= 2 && 8 * g.h <= kConvPad8MaxPixels && g.kh == 3 &&
           g.kw == 3 && g.dh == 1 && g.dw == 1 && g.top == 1 && g.left == 1 && g.sh == 1 && g.sw == 1;
}

struct ConvArgs {
    int M, P, K, MP;
    const float* x;
    const std::int32_t* pix;
    const std::int32_t* koff;
    const float* w;
    const float* bias;
    float lo, hi;
    float* y;
    int p_begin, p_end;
    const float* z = nullptr;
    float z_lo = 0.0f, z_hi = 0.0f;
    const ConvPad* pad = nullptr;
};
using ConvFn = void (*)(const ConvArgs& args);

// Direct integer convolution, uint8 activations x int8 weights, output channels across the SIMD lanes,
// requantized in the store. x is the input as zero-point-padded HWC bytes with the channels rounded up
// to 4 (CP); kernel tap group t covers 4 consecutive channels of one (i, j): koff[t] is its byte offset
// from a window corner pix[p]. w is (K4, MP, 4) int8 (MP = M rounded up to 16, zero rows and zero
// channels beyond C). For m < M, p < P, in int32 (exact) then float32 as the reference:
//   acc = bias[m] + sum_t sum_j x[pix[p] + koff[t] + j] * w[(t * MP + m) * 4 + j]
//   y[m * P + p] = clamp(nearbyint(float(acc) * mult[m]) + y_zero, lo, hi)
// bias already holds the layer's bias minus x_zero_point * sum of the channel's weights. Pixels
// [p_begin, p_end) only, as ConvArgs.
struct QConvArgs {
    int M, P, K4, MP;
    const std::uint8_t* x;
    const std::int32_t* pix;
    const std::int32_t* koff;
    const std::int8_t* w;
    const std::int32_t* bias;
    const float* mult;
    float y_zero, lo, hi;
    bool out_u8;
    void* y;
    int p_begin, p_end;
};
using QConvFn = void (*)(const QConvArgs& args);

struct Table {
    const char* isa;
    SgemmFn sgemm;
    QgemmFn qgemm_nt;
    ConvFn conv;
    QConvFn qconv_u8s8;  // null: this tier uses im2row + qgemm_nt instead
    bool conv_residual = false;  // conv adds ConvArgs::z in its store
    bool conv_pad = false;       // conv reads unpadded input through ConvArgs::pad
};

const Table& active();
// "auto" (the best the CPU runs), "portable", or "avx2"; returns the ISA now active. Throws
// std::invalid_argument for an unknown name or one this CPU cannot run.
std::string select_isa(const std::string& name);
std::string available_isas();  // comma-separated, best first

// The fp32 peak of one core for an ISA ("avx512", "avx2", or "portable": multiply and add without FMA,
// as the portable build compiles them): a register-only multiply-add loop timed for about `seconds`.
// Returns GFLOP/s (a multiply-add counts 2). std::invalid_argument for an ISA this CPU cannot run.
double peak_gflops(const std::string& isa, double seconds);

void sgemm_portable(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
void qgemm_nt_portable(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                       std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n);
void conv_portable(const ConvArgs& args);
void qconv_u8s8_portable(const QConvArgs& args);
#if defined(__x86_64__) || defined(_M_X64)
// AVX-512 F/BW/VL/VNNI tier (graph_kernels_avx512.cpp): wider direct conv, VNNI integer conv.
void conv_avx512(const ConvArgs& args);
// Register-blocked 8 x 32, B packed in panels (graph_kernels_sgemm512.cpp); the same sums as sgemm_avx2.
void sgemm_avx512(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
// Outputs across the lanes, vpdpwssd on int16 pairs (graph_kernels_qgemm512.cpp); exact, as every tier.
void qgemm_nt_avx512(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                     std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n);
void qconv_u8s8_avx512(const QConvArgs& args);
bool cpu_has_avx512();
// The integer conv in 256-bit registers (graph_kernels_qconv256.cpp): AVX2, and with AVX-VNNI for the
// "avxvnni" tier (the avx2 kernels otherwise).
void qconv_u8s8_avx2(const QConvArgs& args);
void qconv_u8s8_avxvnni(const QConvArgs& args);
bool cpu_has_avxvnni();
void conv_avx2(const ConvArgs& args);
void sgemm_avx2(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
void qgemm_nt_avx2(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                   std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n);
bool cpu_has_avx2();
float fma_loop_avx2(long iterations);    // 12 x 8 multiply-adds per iteration
float fma_loop_avx512(long iterations);  // 12 x 16
#endif
#if defined(__aarch64__)
// The "neon" tier (graph_kernels_neon.cpp): register-blocked sgemm and direct conv with vfmaq, exact
// integer GEMM and direct uint8 x int8 conv with vmlal.
void sgemm_neon(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
void qgemm_nt_neon(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                   std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n);
void conv_neon(const ConvArgs& args);
void qconv_u8s8_neon(const QConvArgs& args);
float fma_loop_neon(long iterations);  // 12 x 4
// The "neondot" tier's integer conv (graph_kernels_neon_dotprod.cpp): sdot on 4 bytes a lane, compiled
// with a target attribute and called only when cpu_has_dotprod().
void qconv_u8s8_neondot(const QConvArgs& args);
bool cpu_has_dotprod();
#endif
// True on the aarch64 tiers ("neon", "neondot"): the NEON kernels of the other files are in use.
bool neon_active();

inline int round_up16(int k) { return (k + 15) / 16 * 16; }
inline int round_up8(int k) { return (k + 7) / 8 * 8; }
inline int round_up4(int k) { return (k + 3) / 4 * 4; }

}  // namespace edgefleet::graph::kernels
