// softmax_row of graph_vecmath.hpp in zmm registers (the "avx512" tier). The portable row's 16 running
// lanes are exactly one zmm vector, so the max and the sum stay in registers (the target_clones build
// of the portable loop spills its lane arrays and pays ~50 ns a row on attention's 32-long rows), and
// the tail is one masked vector (lane l of the tail is the portable tail's element body + l). exp is the
// header's formula, the same IEEE operations in the same order (mul then add, no fused multiply-add;
// min/max operand order chosen so a NaN goes where the scalar ternaries send it); the lanes fold by the
// same tree (8 + 8, 4 + 4, 2 + 2, 1 + 1). So the row has the portable tier's bits.
#include "graph_vecmath.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 on _mm256_undefined_pd in its own headers
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>

namespace edgefleet::graph::vecmath {
namespace {

#define EF_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl")))

EF_AVX512 inline __m512 mul_add(__m512 p, __m512 r, float c) {
    return _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
}

// vecmath::exp, 16 lanes. max_ps / min_ps return their second operand when either is NaN: x last keeps
// a NaN x, as `x < lo ? lo : x` does.
EF_AVX512 inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-87.3f), x);
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    const __m512 shift = _mm512_set1_ps(12582912.0f);
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), shift), shift);
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                                   _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = mul_add(p, r, 1.0f / 720.0f);
    p = mul_add(p, r, 1.0f / 120.0f);
    p = mul_add(p, r, 1.0f / 24.0f);
    p = mul_add(p, r, 1.0f / 6.0f);
    p = mul_add(p, r, 0.5f);
    p = mul_add(p, r, 1.0f);
    p = mul_add(p, r, 1.0f);
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// Lanes 8..15 of v as a ymm (AVX-512F only: no DQ needed).
EF_AVX512 inline __m256 high8(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

EF_AVX512 inline __mmask16 first(std::int64_t n) {  // the first n (< 16) lanes
    return static_cast<__mmask16>((1u << n) - 1u);
}

const float kExpFloor = exp(-87.3f);  // the header's scalar formula: exp16's bits (the same operations)

// f / s rounded to float32 as IEEE division rounds it (to nearest, ties to even), in integers when the
// quotient is subnormal (no assist); the division itself otherwise.
inline float subnormal_quotient(float f, float s) {
    std::uint32_t bf, bs;
    std::memcpy(&bf, &f, sizeof bf);
    std::memcpy(&bs, &s, sizeof bs);
    const std::uint32_t ef = (bf >> 23) & 0xFF, es = (bs >> 23) & 0xFF;
    if (!(f > 0.0f && s > 0.0f) || ef == 0 || ef == 0xFF || es == 0 || es == 0xFF) return f / s;
    // f = mf 2^(ef - 150), s = ms 2^(es - 150); in units of the smallest subnormal, 2^-149:
    // f / s = mf 2^(ef - es + 149) / ms.
    const int shift = static_cast<int>(ef) - static_cast<int>(es) + 149;
    if (shift < 0 || shift > 39) return f / s;
    const std::uint64_t mf = (bf & 0x7FFFFFu) | 0x800000u, ms = (bs & 0x7FFFFFu) | 0x800000u;
    const std::uint64_t num = mf << shift;
    std::uint64_t units = num / ms;
    const std::uint64_t rem = num % ms;
    if (2 * rem > ms || (2 * rem == ms && (units & 1) != 0)) ++units;
    if (units > 0x800000u) return f / s;  // a normal quotient (2^23 units is FLT_MIN's own bits)
    const auto bits = static_cast<std::uint32_t>(units);
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

// e / total, with the lanes where e is exp's floor set to q (= floor / total, divided once).
EF_AVX512 inline __m512 divide(__m512 e, __m512 floor, __m512 one, __m512 total, __m512 q) {
    const __mmask16 low = _mm512_cmp_ps_mask(e, floor, _CMP_EQ_OQ);
    return _mm512_mask_blend_ps(low, _mm512_div_ps(_mm512_mask_blend_ps(low, e, one), total), q);
}

}  // namespace

EF_AVX512 void softmax_row_avx512(const float* x, float* y, std::int64_t n) {
    const std::int64_t body = n / 16 * 16, rest = n - body;
    const __mmask16 tail = first(rest);
    const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 top = lowest;
    for (std::int64_t i = 0; i < body; i += 16) top = _mm512_max_ps(_mm512_loadu_ps(x + i), top);  // top < x ? x : top
    if (rest) top = _mm512_max_ps(_mm512_mask_loadu_ps(lowest, tail, x + body), top);
    // The tree: lane l becomes `top[l] < top[l + width] ? top[l + width] : top[l]` for width 8, 4, 2, 1
    // (max_ps(b, a) returns a on equal values, as the ternary does, so even the sign of a zero matches).
    __m256 t8 = _mm256_max_ps(high8(top), _mm512_castps512_ps256(top));
    __m128 t4 = _mm_max_ps(_mm256_extractf128_ps(t8, 1), _mm256_castps256_ps128(t8));
    t4 = _mm_max_ps(_mm_movehl_ps(t4, t4), t4);
    t4 = _mm_max_ss(_mm_shuffle_ps(t4, t4, 1), t4);
    const __m512 shift = _mm512_set1_ps(_mm_cvtss_f32(t4));
    __m512 sum = _mm512_setzero_ps();
    // A masked attention score (-1e4) gives exp's floor, e^-87.3 ~ 1.2e-38, and that over the sum is
    // subnormal: a microcode assist per instruction on x86 that doubled a masked row's time. Every such
    // lane has the same quotient, floor / sum: computed once per row without floating point (below) and
    // blended in, while those lanes divide 1 by the sum. The same bits as the IEEE division.
    const __m512 floor = _mm512_set1_ps(kExpFloor);
    __mmask16 floored = 0;
    for (std::int64_t i = 0; i < body; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), shift));
        _mm512_storeu_ps(y + i, e);
        sum = _mm512_add_ps(sum, e);
        floored |= _mm512_cmp_ps_mask(e, floor, _CMP_EQ_OQ);
    }
    if (rest) {  // lanes past the row add +0.0 (the portable tail leaves them as they are: the same bits)
        const __m512 e = _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + body), shift)));
        _mm512_mask_storeu_ps(y + body, tail, e);
        sum = _mm512_add_ps(sum, e);
        floored |= _mm512_cmp_ps_mask(e, floor, _CMP_EQ_OQ);
    }
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(sum), high8(sum));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));
    const float sum0 = _mm_cvtss_f32(s4);
    const __m512 total = _mm512_set1_ps(sum0);
    if (!floored) {
        for (std::int64_t i = 0; i < body; i += 16) _mm512_storeu_ps(y + i, _mm512_div_ps(_mm512_loadu_ps(y + i), total));
        if (rest) _mm512_mask_storeu_ps(y + body, tail, _mm512_div_ps(_mm512_maskz_loadu_ps(tail, y + body), total));
        return;
    }
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 q = _mm512_set1_ps(subnormal_quotient(kExpFloor, sum0));
    for (std::int64_t i = 0; i < body; i += 16) _mm512_storeu_ps(y + i, divide(_mm512_loadu_ps(y + i), floor, one, total, q));
    if (rest) _mm512_mask_storeu_ps(y + body, tail, divide(_mm512_maskz_loadu_ps(tail, y + body), floor, one, total, q));
}

}  // namespace edgefleet::graph::vecmath

#endif  // x86-64
