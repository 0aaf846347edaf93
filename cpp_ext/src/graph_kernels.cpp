// Portable kernels and the run-time ISA choice (see graph_kernels.hpp).
#include "graph_kernels.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
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
        for (int p = a.p_begin; p < a.p_end; ++p) {
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

void qconv_u8s8_portable(const QConvArgs& a) {
    constexpr int kChunk = 64;  // output channels accumulated at once (the inner loop vectorises over them)
    std::int32_t acc[kChunk];
    for (int m0 = 0; m0 < a.M; m0 += kChunk) {
        const int count = std::min(kChunk, a.M - m0);
        for (int p = a.p_begin; p < a.p_end; ++p) {
            std::copy(a.bias + m0, a.bias + m0 + count, acc);
            const std::uint8_t* x = a.x + a.pix[p];
            for (int t = 0; t < a.K4; ++t) {
                const std::uint8_t* v = x + a.koff[t];
                const std::int32_t v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
                const std::int8_t* w = a.w + (static_cast<std::ptrdiff_t>(t) * a.MP + m0) * 4;
                for (int j = 0; j < count; ++j) {
                    acc[j] += v0 * w[4 * j] + v1 * w[4 * j + 1] + v2 * w[4 * j + 2] + v3 * w[4 * j + 3];
                }
            }
            for (int j = 0; j < count; ++j) {
                const float q = std::nearbyint(static_cast<float>(acc[j]) * a.mult[m0 + j]) + a.y_zero;
                const float value = std::min(std::max(q, a.lo), a.hi);
                const std::ptrdiff_t at = static_cast<std::ptrdiff_t>(m0 + j) * a.P + p;
                if (a.out_u8) {
                    static_cast<std::uint8_t*>(a.y)[at] = static_cast<std::uint8_t>(value);
                } else {
                    static_cast<std::int8_t*>(a.y)[at] = static_cast<std::int8_t>(value);
                }
            }
        }
    }
}

namespace {

// The portable ceiling: 16 independent multiply-add chains the compiler vectorises (no FMA contraction
// in this build, so a multiply and an add).
float mul_add_loop_portable(long iterations) {
    float acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = static_cast<float>(i);
    for (long it = 0; it < iterations; ++it) {
        for (int i = 0; i < 16; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
    }
    float sum = 0.0f;
    for (const float v : acc) sum += v;
    return sum;
}

}  // namespace

double peak_gflops(const std::string& isa, double seconds) {
    float (*loop)(long) = &mul_add_loop_portable;
    double flops_per_iteration = 16 * 2;
#if defined(__x86_64__) || defined(_M_X64)
    if (isa == "avx512") {
        if (!cpu_has_avx512()) throw std::invalid_argument("this CPU has no AVX-512 F/BW/VL/VNNI");
        loop = &fma_loop_avx512, flops_per_iteration = 12 * 16 * 2;
    } else if (isa == "avx2" || isa == "avxvnni") {
        if (!cpu_has_avx2()) throw std::invalid_argument("this CPU has no AVX2+FMA");
        loop = &fma_loop_avx2, flops_per_iteration = 12 * 8 * 2;
    } else
#endif
#if defined(__aarch64__)
    if (isa == "neon" || isa == "neondot") {
        loop = &fma_loop_neon, flops_per_iteration = 12 * 4 * 2;
    } else
#endif
    if (isa != "portable") {
        throw std::invalid_argument("unknown ISA '" + isa + "'; available: " + available_isas());
    }
    using Clock = std::chrono::steady_clock;
    long iterations = 1 << 16;
    double best = 0.0, spent = 0.0;
    volatile float sink = 0.0f;
    while (spent < seconds) {  // the best of repeated timings: other processes only ever slow it down
        const Clock::time_point start = Clock::now();
        sink = sink + loop(iterations);
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        spent += elapsed;
        best = std::max(best, static_cast<double>(iterations) * flops_per_iteration / elapsed);
        if (elapsed < 1e-3) iterations *= 2;
    }
    return best / 1e9;
}

namespace {

const Table kPortable{"portable", &sgemm_portable, &qgemm_nt_portable, &conv_portable, &qconv_u8s8_portable};
#if defined(__x86_64__) || defined(_M_X64)
const Table kAvx2{"avx2", &sgemm_avx2, &qgemm_nt_avx2, &conv_avx2, &qconv_u8s8_avx2};
const Table kAvxVnni{"avxvnni", &sgemm_avx2, &qgemm_nt_avx2, &conv_avx2, &qconv_u8s8_avxvnni};
const Table kAvx512{"avx512", &sgemm_avx512, &qgemm_nt_avx512, &conv_avx512, &qconv_u8s8_avx512, true, true};
#endif
#if defined(__aarch64__)
const Table kNeon{"neon", &sgemm_neon, &qgemm_nt_neon, &conv_neon, &qconv_u8s8_neon};
const Table kNeonDot{"neondot", &sgemm_neon, &qgemm_nt_neon, &conv_neon, &qconv_u8s8_neondot};
#endif

const Table* best() {
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_has_avx512()) {
        return &kAvx512;
    }
    if (cpu_has_avxvnni()) {
        return &kAvxVnni;
    }
    if (cpu_has_avx2()) {
        return &kAvx2;
    }
#endif
#if defined(__aarch64__)
    return cpu_has_dotprod() ? &kNeonDot : &kNeon;
#else
    return &kPortable;
#endif
}

const Table* initial() {
    const char* forced = std::getenv("EDGEFLEET_NATIVE_ISA");  // a lower tier, e.g. to compare them
    const std::string name = forced != nullptr ? forced : "";
    if (name == "portable") {
        return &kPortable;
    }
#if defined(__x86_64__) || defined(_M_X64)
    if (name == "avx2" && cpu_has_avx2()) {
        return &kAvx2;
    }
    if (name == "avxvnni" && cpu_has_avxvnni()) {
        return &kAvxVnni;
    }
#endif
#if defined(__aarch64__)
    if (name == "neon") {
        return &kNeon;
    }
#endif
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
    } else if (name == "avxvnni") {
        if (!cpu_has_avxvnni()) {
            throw std::invalid_argument("this CPU has no AVX-VNNI");
        }
        g_active = &kAvxVnni;
    } else if (name == "avx512") {
        if (!cpu_has_avx512()) {
            throw std::invalid_argument("this CPU has no AVX-512 F/BW/VL/VNNI");
        }
        g_active = &kAvx512;
#endif
#if defined(__aarch64__)
    } else if (name == "neon") {
        g_active = &kNeon;
    } else if (name == "neondot") {
        if (!cpu_has_dotprod()) {
            throw std::invalid_argument("this CPU has no dot-product instructions (HWCAP_ASIMDDP)");
        }
        g_active = &kNeonDot;
#endif
    } else {
        throw std::invalid_argument("unknown ISA '" + name + "'; available: " + available_isas());
    }
    return g_active->isa;
}

std::string available_isas() {
    std::string out;
#if defined(__x86_64__) || defined(_M_X64)
    if (cpu_has_avx512()) {
        out += "avx512,";
    }
    if (cpu_has_avxvnni()) {
        out += "avxvnni,";
    }
    if (cpu_has_avx2()) {
        out += "avx2,";
    }
#endif
#if defined(__aarch64__)
    if (cpu_has_dotprod()) {
        out += "neondot,";
    }
    out += "neon,";
#endif
    return out + "portable";
}

bool neon_active() {
#if defined(__aarch64__)
    return g_active == &kNeon || g_active == &kNeonDot;
#else
    return false;
#endif
}

}  // namespace edgefleet::graph::kernels
