// QGemm's integer products on the "avx512" tier with byte dot products (graph_qgemm_vnni.cpp).
//
// The general QGemm widens activations and weights to int16 and runs qgemm_nt (vpdpwssd: 2 products a
// lane), repacking the weights on every call. A transformer's Linear layers at batch 1 (32 tokens x 64 x
// 256) spent as long there as the float32 MatMul. Here the weights (w - w_zero, when every one fits int8)
// are packed once, at load, as panels of 32 columns x 4 k (one int32 word of 4 bytes per column), with
// their column sums; a call runs vpdpbusd (4 uint8 x int8 products a lane) on the activations as uint8
// (int8 ones flipped by 128) and subtracts the zero point's share, x_zero * column sum, at the store.
// Integer sums are exact: acc equals qgemm_nt's bit for bit, so the requantized output does too.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace edgefleet::graph {

class QGemmVnni {
public:
    // Packs w(k, n) (the weight minus its zero point) for k < K, n < N; null when a weight is outside
    // int8, K is too long for exact int32 sums, or this build is neither x86-64 nor aarch64 with sdot.
    static std::unique_ptr<QGemmVnni> make(std::int64_t K, std::int64_t N,
                                           const std::function<std::int64_t(std::int64_t, std::int64_t)>& w);
    // Bytes of scratch run needs for `rows` rows.
    std::size_t scratch_bytes(std::int64_t rows) const { return static_cast<std::size_t>(rows * k4_ * 4) + 64; }
    // acc[r * N + n] = sum_k (x[r * K + k] - x_zero) * w(k, n); x uint8 (x_u8) or int8. Needs the AVX-512
    // VNNI CPU of the "avx512" tier, or on aarch64 the "neondot" tier's sdot (the caller checks the tier).
    void run(const void* x, bool x_u8, std::int64_t x_zero, std::int64_t rows, void* scratch, std::int32_t* acc) const;

private:
    std::int64_t k_ = 0, n_ = 0, k4_ = 0, blocks_ = 0;  // k4_: K in words of 4; blocks_: panels of 32 columns
    std::shared_ptr<void> panels_;                      // int32 [blocks_][k4_][32]
    std::shared_ptr<void> sums_;                        // int32 [blocks_ * 32]: column sums of w
};

}  // namespace edgefleet::graph
