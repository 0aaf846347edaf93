// Math kernels of the graph executor, with a portable version and per-ISA variants picked at run time.
//
// x86-64: an AVX2+FMA variant (compiled with __attribute__((target)) in graph_kernels_avx2.cpp, so the
// rest of the build stays baseline x86-64) is used when the CPU has it. Everywhere else (aarch64, where
// -O3 vectorises the portable loops with NEON, which is baseline there) the portable version runs.
// select_isa("portable") forces the portable kernels (tests compare both; EDGEFLEET_NATIVE_ISA=portable).
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
// rounded up to 8 with zero columns; bias has MP values.
struct ConvArgs {
    int M, P, K, MP;
    const float* x;
    const std::int32_t* pix;
    const std::int32_t* koff;
    const float* w;
    const float* bias;
    float lo, hi;
    float* y;
};
using ConvFn = void (*)(const ConvArgs& args);

struct Table {
    const char* isa;
    SgemmFn sgemm;
    QgemmFn qgemm_nt;
    ConvFn conv;
};

const Table& active();
// "auto" (the best the CPU runs), "portable", or "avx2"; returns the ISA now active. Throws
// std::invalid_argument for an unknown name or one this CPU cannot run.
std::string select_isa(const std::string& name);
std::string available_isas();  // comma-separated, best first

void sgemm_portable(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
void qgemm_nt_portable(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                       std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n);
void conv_portable(const ConvArgs& args);
#if defined(__x86_64__) || defined(_M_X64)
void conv_avx2(const ConvArgs& args);
void sgemm_avx2(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc);
void qgemm_nt_avx2(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                   std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n);
bool cpu_has_avx2();
#endif

inline int round_up16(int k) { return (k + 15) / 16 * 16; }
inline int round_up8(int k) { return (k + 7) / 8 * 8; }

}  // namespace edgefleet::graph::kernels
