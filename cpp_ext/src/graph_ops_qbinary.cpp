// QAdd and QMul: the int8 Add / Mul of two same-shaped quantized tensors (per-tensor parameters), which a
// QDQ model otherwise runs as a float island (two DequantizeLinear, the float op, QuantizeLinear: four
// passes over memory and three float tensors). Here one pass computes, per element, exactly what the
// island computes in float32: (a - za) * sa op (b - zb) * sb, divided by y_scale (a division, as
// QuantizeLinear), rounded half to even, plus zy, saturated; "relu" clamps below at zy. So the bytes equal
// the island's (graph_reference.qbinary). onnxruntime's QLinearAdd folds the scales into two ratios
// (sa / sy, sb / sy) and may differ from the island by one step; the tests record that tolerance.
#include <cstring>
#include <type_traits>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "graph_kernels.hpp"
#include "graph_ops.hpp"

namespace edgefleet::graph {
namespace {

struct QParams {
    float sa, za, sb, zb, sy, zy, lo, hi;
};

#if defined(__x86_64__) || defined(_M_X64)
#define EF_AVX2 __attribute__((target("avx2,fma")))
template <typename T>
EF_AVX2 inline __m256 load8(const T* p) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(std::is_signed<T>::value ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes));
}

// The loop below in 256-bit registers for whole blocks of 8: the same float32 steps (no FMA: a multiply
// then an add, as the portable build), rounding with _mm256_round_ps (half to even, as nearbyint), so the
// bytes equal the portable loop's. Returns how many values it wrote.
template <bool Mul, typename A, typename B, typename Y>
EF_AVX2 std::int64_t qbinary_avx2(const A* a, const B* b, Y* y, std::int64_t n, const QParams& q) {
    const __m256 sa = _mm256_set1_ps(q.sa), za = _mm256_set1_ps(q.za), sb = _mm256_set1_ps(q.sb),
                 zb = _mm256_set1_ps(q.zb), sy = _mm256_set1_ps(q.sy), zy = _mm256_set1_ps(q.zy),
                 lo = _mm256_set1_ps(q.lo), hi = _mm256_set1_ps(q.hi);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 fa = _mm256_mul_ps(_mm256_sub_ps(load8(a + i), za), sa);
        const __m256 fb = _mm256_mul_ps(_mm256_sub_ps(load8(b + i), zb), sb);
        const __m256 v = _mm256_div_ps(Mul ? _mm256_mul_ps(fa, fb) : _mm256_add_ps(fa, fb), sy);
        const __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i w = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, zy), lo), hi));
        const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        const __m128i out = std::is_signed<Y>::value ? _mm_packs_epi16(words, words) : _mm_packus_epi16(words, words);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(y + i), out);
    }
    return i;
}
#endif

float scalar_of(const Constant& c) {
    switch (c.dtype) {
        case DType::f32: return static_cast<const float*>(c.data())[0];
        case DType::u8: return static_cast<float>(static_cast<const std::uint8_t*>(c.data())[0]);
        case DType::i8: return static_cast<float>(static_cast<const std::int8_t*>(c.data())[0]);
        default: fail("scale and zero point must be float32 / uint8 / int8 scalars");
    }
}

class QBinaryOp : public Op {
public:
    QBinaryOp(bool mul, bool relu, const std::vector<const Constant*>& c, DType out) : mul_(mul) {
        for (std::size_t i : {1, 2, 4, 5, 6, 7}) {
            EF_REQUIRE(c[i] != nullptr && numel(c[i]->shape) == 1, "scales and zero points must be constant scalars");
        }
        sa_ = scalar_of(*c[1]), za_ = scalar_of(*c[2]), sb_ = scalar_of(*c[4]), zb_ = scalar_of(*c[5]);
        sy_ = scalar_of(*c[6]), zy_ = scalar_of(*c[7]);
        lo_ = out == DType::u8 ? 0.0f : -128.0f, hi_ = out == DType::u8 ? 255.0f : 127.0f;
        if (relu) lo_ = std::max(lo_, zy_);
    }

    Shape infer(const std::vector<View>& in) const override {
        EF_REQUIRE(*in[0].shape == *in[3].shape, "a " + shape_str(*in[0].shape) + " and b " + shape_str(*in[3].shape) +
                                                     " must have the same shape");
        return *in[0].shape;
    }

    void run(const std::vector<View>& in, const View& out, void*) const override {
        const bool a8 = in[0].dtype == DType::i8, b8 = in[3].dtype == DType::i8, y8 = out.dtype == DType::i8;
        const std::int64_t n = out.size();
        if (!a8 && !b8 && !y8) return loop<std::uint8_t, std::uint8_t, std::uint8_t>(in, out, n);
        if (a8 && b8 && y8) return loop<std::int8_t, std::int8_t, std::int8_t>(in, out, n);
        if (a8) {
            if (b8) return loop<std::int8_t, std::int8_t, std::uint8_t>(in, out, n);
            return y8 ? loop<std::int8_t, std::uint8_t, std::int8_t>(in, out, n)
                      : loop<std::int8_t, std::uint8_t, std::uint8_t>(in, out, n);
        }
        if (b8) {
            return y8 ? loop<std::uint8_t, std::int8_t, std::int8_t>(in, out, n)
                      : loop<std::uint8_t, std::int8_t, std::uint8_t>(in, out, n);
        }
        loop<std::uint8_t, std::uint8_t, std::int8_t>(in, out, n);
    }

private:
    // Rounding adds and subtracts 1.5 * 2^23 (half to even in the default mode, as nearbyint) after a
    // clamp to +-2^22, beyond which the result saturates either way; the loop vectorises in the baseline build.
    template <typename A, typename B, typename Y>
    void loop(const std::vector<View>& in, const View& out, std::int64_t n) const {
        constexpr float kMagic = 12582912.0f, kBig = 4194304.0f;
        const A* a = in[0].as<A>();
        const B* b = in[3].as<B>();
        Y* y = out.as<Y>();
        const float sa = sa_, za = za_, sb = sb_, zb = zb_, sy = sy_, zy = zy_, lo = lo_, hi = hi_;
        std::int64_t start = 0;
#if defined(__x86_64__) || defined(_M_X64)
        if (std::strcmp(kernels::active().isa, "portable") != 0) {
            const QParams q{sa, za, sb, zb, sy, zy, lo, hi};
            start = mul_ ? qbinary_avx2<true>(a, b, y, n, q) : qbinary_avx2<false>(a, b, y, n, q);
        }
#endif
        if (mul_) {
            for (std::int64_t i = start; i < n; ++i) {
                const float v = ((static_cast<float>(a[i]) - za) * sa) * ((static_cast<float>(b[i]) - zb) * sb) / sy;
                const float r = (std::min(std::max(v, -kBig), kBig) + kMagic) - kMagic;
                y[i] = static_cast<Y>(std::min(std::max(r + zy, lo), hi));
            }
        } else {
            for (std::int64_t i = start; i < n; ++i) {
                const float v = ((static_cast<float>(a[i]) - za) * sa + (static_cast<float>(b[i]) - zb) * sb) / sy;
                const float r = (std::min(std::max(v, -kBig), kBig) + kMagic) - kMagic;
                y[i] = static_cast<Y>(std::min(std::max(r + zy, lo), hi));
            }
        }
    }

    bool mul_;
    float sa_ = 1, za_ = 0, sb_ = 1, zb_ = 0, sy_ = 1, zy_ = 0, lo_ = 0, hi_ = 0;
};

}  // namespace

std::unique_ptr<Op> make_qbinary_op(const NodeSpec& spec, DType out, const std::vector<const Constant*>& constants) {
    if (spec.op != "QAdd" && spec.op != "QMul") return nullptr;
    std::vector<const Constant*> c = constants;
    c.resize(8, nullptr);
    const std::string act = spec.attrs.get_str("activation", "none");
    EF_REQUIRE(act == "none" || act == "relu", "activation must be none or relu");
    return std::make_unique<QBinaryOp>(spec.op == "QMul", act == "relu", c, out);
}

}  // namespace edgefleet::graph
