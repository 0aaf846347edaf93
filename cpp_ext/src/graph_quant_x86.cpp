// The AVX2 loops of the quantization ops (declared and described in graph_ops_quant.cpp), compiled for
// that ISA function by function, called only when the CPU has it.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>

namespace edgefleet::graph {

#define EF_AVX2 __attribute__((target("avx2,fma")))

namespace {

// clamp(q + zp) as bytes: max(lo, v) and min(hi, v) keep a NaN as std::max / std::min do.
EF_AVX2 inline void store8(__m256 q, __m256 zp, __m256 lo, __m256 hi, bool u8, char* y) {
    const __m256i v = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_add_ps(q, zp))));
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i bytes = u8 ? _mm_packus_epi16(words, words) : _mm_packs_epi16(words, words);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y), bytes);
}

constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

}  // namespace

EF_AVX2 std::int64_t quantize_avx2(const float* x, float scale, float zp, float lo, float hi, bool u8, char* y,
                                   std::int64_t n) {
    const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zp), l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
    // A subnormal x (a masked softmax's output) costs a microcode assist in the division. With scale above
    // 2^-125 its quotient is below 1/2 and rounds to zero, as 0 / scale does: such lanes are zeroed first,
    // found by their bits (integer compares: no assist). The output bytes do not change.
    const __m256i flush = _mm256_set1_epi32(scale > 0x1p-125f ? 0x00800000 : 0);
    const __m256i magnitude = _mm256_set1_epi32(0x7FFFFFFF);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256i tiny = _mm256_cmpgt_epi32(flush, _mm256_and_si256(_mm256_castps_si256(v), magnitude));
        const __m256 q = _mm256_div_ps(_mm256_andnot_ps(_mm256_castsi256_ps(tiny), v), s);
        store8(_mm256_round_ps(q, kNearest), z, l, h, u8, y + i);
    }
    return i;
}

EF_AVX2 std::int64_t requantize_avx2(const std::int32_t* acc, const std::int32_t* bias, const float* mult, float zp,
                                     float lo, float hi, bool u8, char* y, std::int64_t n) {
    const __m256 z = _mm256_set1_ps(zp), l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i sum = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + i)),
                                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias + i)));
        const __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_loadu_ps(mult + i));
        store8(_mm256_round_ps(value, kNearest), z, l, h, u8, y + i);
    }
    return i;
}

}  // namespace edgefleet::graph

#endif  // x86-64
