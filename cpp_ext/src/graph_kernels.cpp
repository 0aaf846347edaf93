// Portable kernels and the run-time ISA choice (see graph_kernels.hpp).
#include "graph_kernels.hpp"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

namespace edgefleet::graph::kernels {

void sgemm_portable(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    for (int i = 0; i < M; ++i) {
        float* c = C + static_cast<std::ptrdiff_t>(i) * ldc;
        std::fill(c, c + N, 0.0f);
        const float* a = A + static_cast<std::ptrdiff_t>(i) * lda;
        for (int k = 0; k < K; ++k) {
            const float value = a[k];
            const float* b = B + static_cast<std::ptrdiff_t>(k) * ldb;
            for (int j = 0; j < N; ++j) {
                c[j] += value * b[j];
            }
        }
    }
}

void qgemm_nt_portable(int M, int N, int K, const std::int16_t* A, int lda, const std::int16_t* B, int ldb,
                       std::int32_t* C, std::ptrdiff_t ldc_m, std::ptrdiff_t ldc_n) {
    for (int m = 0; m < M; ++m) {
        const std::int16_t* a = A + static_cast<std::ptrdiff_t>(m) * lda;
        for (int n = 0; n < N; ++n) {
            const std::int16_t* b = B + static_cast<std::ptrdiff_t>(n) * ldb;
            std::int32_t sum = 0;
            for (int k = 0; k < K; ++k) {
                sum += static_cast<std::int32_t>(a[k]) * static_cast<std::int32_t>(b[k]);
            }
            C[m * ldc_m + n * ldc_n] = sum;
        }
    }
}

void conv_portable(const ConvArgs& a) {
    constexpr int kChunk = 64;  // output channels accumulated at once (the inner loop vectorises over them)
    float acc[kChunk];
    for (int m0 = 0; m0 < a.M; m0 += kChunk) {
        const int count = std::min(kChunk, a.M - m0);
        for (int p = 0; p < a.P; ++p) {
            std::fill(acc, acc + count, 0.0f);
            const float* x = a.x + a.pix[p];
            for (int k = 0; k < a.K; ++k) {
                const float value = x[a.koff[k]];
                const float* w = a.w + static_cast<std::ptrdiff_t>(k) * a.MP + m0;
                for (int j = 0; j < count; ++j) {
                    acc[j] += value * w[j];
                }
            }
            for (int j = 0; j < count; ++j) {
                a.y[static_cast<std::ptrdiff_t>(m0 + j) * a.P + p] = std::min(std::max(acc[j] + a.bias[m0 + j], a.lo), a.hi);
            }
        }
    }
}

namespace {

const Table kPortable{"portable", &sgemm_portable, &qgemm_nt_portable, &conv_portable};
#if defined(__x86_64__) || defined(_M_X64)
const Table kAvx2{"avx2", &sgemm_avx2, &qgemm_nt_avx2, &conv_avx2};
#endif

const Table* best() {
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_has_avx2()) {
        return &kAvx2;
    }
#endif
    return &kPortable;
}

const Table* initial() {
    const char* forced = std::getenv("EDGEFLEET_NATIVE_ISA");
    if (forced != nullptr && std::string(forced) == "portable") {
        return &kPortable;
    }
    return best();
}

const Table* g_active = initial();

}  // namespace

const Table& active() { return *g_active; }

std::string select_isa(const std::string& name) {
    if (name == "auto") {
        g_active = best();
    } else if (name == "portable") {
        g_active = &kPortable;
#if defined(__x86_64__) || defined(_M_X64)
    } else if (name == "avx2") {
        if (!cpu_has_avx2()) {
            throw std::invalid_argument("this CPU has no AVX2+FMA");
        }
        g_active = &kAvx2;
#endif
    } else {
        throw std::invalid_argument("unknown ISA '" + name + "'; available: " + available_isas());
    }
    return g_active->isa;
}

std::string available_isas() {
    std::string out;
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_has_avx2()) {
        out += "avx2,";
    }
#endif
    return out + "portable";
}

}  // namespace edgefleet::graph::kernels
