// Helpers and factories of the operators added for models users bring (transformer encoders, audio
// models): graph_ops_math.cpp (element-wise math, Cast, Equal, Where, Expand), graph_ops_tensor.cpp
// (Gather, Slice, Pad, reductions, LayerNormalization), graph_ops_resize.cpp (Resize, ConvTranspose),
// graph_ops_rnn.cpp (LSTM, GRU).
#pragma once

#include <array>
#include <cstring>

#include "graph_ops.hpp"

namespace edgefleet::graph {

// numpy broadcasting of shapes (right-aligned); GraphError when they do not broadcast.
Shape broadcast_shapes(const std::vector<const Shape*>& shapes);

// Element strides of `shape` read as `out` (0 along broadcast dimensions, and along the leading ones
// `shape` lacks).
std::vector<std::int64_t> strides_in(const Shape& shape, const Shape& out);

// Calls f(o, offsets) for every element o of `out` (row-major), offsets[k] being the element of input k
// (of shape *ins[k], broadcast to out) that lands there.
template <std::size_t N, typename F>
void broadcast_loop(const Shape& out, const std::array<const Shape*, N>& ins, F&& f) {
    const std::int64_t total = numel(out);
    if (total == 0) return;
    std::array<std::int64_t, N> off{};
    if (out.empty()) {
        f(std::int64_t{0}, off);
        return;
    }
    std::array<std::vector<std::int64_t>, N> strides;
    for (std::size_t k = 0; k < N; ++k) strides[k] = strides_in(*ins[k], out);
    const std::size_t rank = out.size();
    const std::int64_t inner = out[rank - 1];
    std::vector<std::int64_t> index(rank, 0);
    for (std::int64_t row = 0; row < total / inner; ++row) {
        std::array<std::int64_t, N> base{};
        for (std::size_t d = 0; d + 1 < rank; ++d) {
            for (std::size_t k = 0; k < N; ++k) base[k] += index[d] * strides[k][d];
        }
        for (std::int64_t j = 0; j < inner; ++j) {
            for (std::size_t k = 0; k < N; ++k) off[k] = base[k] + j * strides[k][rank - 1];
            f(row * inner + j, off);
        }
        for (std::size_t d = rank - 1; d-- > 0;) {
            if (++index[d] < out[d]) break;
            index[d] = 0;
        }
    }
}

// dst (row-major, shape y) = the elements of src at base + sum_d index[d] * stride[d] (element units),
// `item` bytes each: Slice and Transpose. Row by row: a contiguous innermost axis is one memcpy, any
// other a typed loop, not a memcpy call per element.
inline void strided_copy(const void* src, void* dst, const Shape& y, const std::vector<std::int64_t>& stride,
                         std::int64_t base, std::size_t item) {
    const std::int64_t total = numel(y);
    if (total == 0) return;
    const auto* from = static_cast<const char*>(src);
    auto* to = static_cast<char*>(dst);
    if (y.empty()) {
        std::memcpy(to, from + base * static_cast<std::int64_t>(item), item);
        return;
    }
    const std::size_t rank = y.size();
    const std::int64_t inner = y[rank - 1], step = stride[rank - 1];
    const auto row = [&](const auto* s, auto* d) {
        for (std::int64_t j = 0; j < inner; ++j) d[j] = s[j * step];
    };
    std::vector<std::int64_t> index(rank, 0);
    std::int64_t offset = base;
    for (std::int64_t r = 0; r < total / inner; ++r, to += inner * static_cast<std::int64_t>(item)) {
        const char* s = from + offset * static_cast<std::int64_t>(item);
        if (step == 1) {
            std::memcpy(to, s, static_cast<std::size_t>(inner) * item);
        } else if (item == 4) {
            row(reinterpret_cast<const std::uint32_t*>(s), reinterpret_cast<std::uint32_t*>(to));
        } else if (item == 8) {
            row(reinterpret_cast<const std::uint64_t*>(s), reinterpret_cast<std::uint64_t*>(to));
        } else if (item == 1) {
            row(reinterpret_cast<const std::uint8_t*>(s), reinterpret_cast<std::uint8_t*>(to));
        } else {
            const auto size = static_cast<std::int64_t>(item);
            for (std::int64_t j = 0; j < inner; ++j) std::memcpy(to + j * size, s + j * step * size, item);
        }
        for (std::size_t d = rank - 1; d-- > 0;) {
            offset += stride[d];
            if (++index[d] < y[d]) break;
            offset -= stride[d] * y[d];
            index[d] = 0;
        }
    }
}

// int64 (or int32) values known at plan time: a constant, or a graph input.
std::vector<std::int64_t> plan_ints(const View& view, const char* what);

// Calls body(T{}) with T the C++ type of dtype (a generic lambda reads T as decltype of its argument).
template <typename Body>
void with_dtype(DType dtype, Body&& body) {
    switch (dtype) {
        case DType::f32: body(float{}); break;
        case DType::i8: body(std::int8_t{}); break;
        case DType::u8: body(std::uint8_t{}); break;
        case DType::i32: body(std::int32_t{}); break;
        case DType::i64: body(std::int64_t{}); break;
    }
}

std::unique_ptr<Op> make_math_op(const NodeSpec& spec, const std::vector<DType>& in, DType out);
std::unique_ptr<Op> make_tensor_op(const NodeSpec& spec, const std::vector<DType>& in);
std::unique_ptr<Op> make_resize_op(const NodeSpec& spec, const std::vector<const Constant*>& constants);
std::unique_ptr<Op> make_rnn_op(const NodeSpec& spec, const std::vector<const Constant*>& constants);

}  // namespace edgefleet::graph
