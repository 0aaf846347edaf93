// GlobalAveragePool's plane sums in 256-bit registers for the x86 SIMD tiers (graph_ops_pool.hpp): lane l
// of a plane's accumulator is GlobalPoolOp::sum's lanes[l] (the elements i with i % 8 == l, in order), the
// tail goes into lanes 0.. as there, and the fold is the same pairwise tree, so each plane's sum has the
// portable bits. Four planes run together: their chains of adds overlap.
#include "graph_ops_pool.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace edgefleet::graph::pool {
namespace {

#define EF_AVX2 __attribute__((target("avx2,fma")))

// The tail and the fold of one plane whose whole 8-float groups are summed in acc.
EF_AVX2 inline float finish(__m256 acc, const float* x, std::int64_t i, std::int64_t size) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    for (int l = 0; i < size; ++i, ++l) lanes[l] += x[i];
    return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

}  // namespace

EF_AVX2 void sum8_planes_avx2(const float* x, std::int64_t planes, std::int64_t size, float* sums) {
    const std::int64_t body = size / 8 * 8;
    std::int64_t p = 0;
    for (; p + 4 <= planes; p += 4) {
        const float* x0 = x + p * size;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps();
        for (std::int64_t i = 0; i < body; i += 8) {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x0 + i));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x0 + size + i));
            a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x0 + 2 * size + i));
            a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x0 + 3 * size + i));
        }
        sums[p] = finish(a0, x0, body, size);
        sums[p + 1] = finish(a1, x0 + size, body, size);
        sums[p + 2] = finish(a2, x0 + 2 * size, body, size);
        sums[p + 3] = finish(a3, x0 + 3 * size, body, size);
    }
    for (; p < planes; ++p) {
        const float* xp = x + p * size;
        __m256 acc = _mm256_setzero_ps();
        for (std::int64_t i = 0; i < body; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(xp + i));
        sums[p] = finish(acc, xp, body, size);
    }
}

}  // namespace edgefleet::graph::pool
#endif
