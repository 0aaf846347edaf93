"""The int8 depthwise QConv kernel (graph_ops_qdepthwise.hpp: channels in the SIMD lanes, two taps per
int32 lane) against the numpy spec, bit for bit, on every ISA tier: strides 1 and 2, symmetric and
uneven padding, 3x3 and 5x5 (and a non-square kernel), channel counts off the vector width (tails of 16
and of the AVX2 half of 8), output rows narrower and wider than a pixel tile, per-channel and per-tensor
weight scales, the extremes of x - x_zero_point and w - w_zero_point (255 each), uint8 and int8, with
and without ReLU; and the same bits at 1 and 2 threads. The portable tier runs the float32 plane kernels
of graph_ops_depthwise.cpp, so the comparison across tiers is also new kernel against old path."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.conftest import ISAS


def depthwise_graph(rng: np.random.Generator, x_dtype: str, c: int, kernel: tuple, per_channel: bool,
                    relu: bool, extreme: bool = False, **attrs) -> object:
    count = c if per_channel else 1
    x_zero = (255 if extreme else 7) if x_dtype == "uint8" else (127 if extreme else -3)
    params = {"sx": np.float32(0.02), "zx": np.array(x_zero, x_dtype),
              "sw": (rng.random(count) * 0.01 + 0.001).astype(np.float32),
              "zw": (np.full(count, 127) if extreme else rng.integers(-3, 4, count)).astype(np.int8),
              "sy": np.float32(40.0 if extreme else 0.05),
              "zy": np.array(100 if x_dtype == "uint8" else 5, x_dtype)}
    w = rng.integers(-128, 128, (c, 1, *kernel)).astype(np.int8)
    if extreme:
        w[:] = -128  # w - w_zero_point = -255 on every tap
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", c, "h", "w"))
    names = [b.constant(key, value) for key, value in params.items()]
    inputs = [x, names[0], names[1], b.constant("w", w), names[2], names[3], names[4], names[5],
              b.constant("bias", rng.integers(-5000, 5000, c).astype(np.int32))]
    b.output(b.node("QConv", inputs, group=c, activation="relu" if relu else "none", **attrs), x_dtype)
    return b.build()


def inputs(rng: np.random.Generator, x_dtype: str, shape: tuple, extreme: bool = False) -> np.ndarray:
    info = np.iinfo(x_dtype)
    if extreme:  # x - x_zero_point = -255 everywhere
        return np.full(shape, info.min, x_dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(x_dtype)


def assert_same_as_spec(graph, x: np.ndarray, threads: int = 1) -> np.ndarray:
    got = next(iter(graph_native.load_executor(graph, threads).run({"x": x}).values()))
    want = next(iter(run_graph(graph, {"x": x}).values()))
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return got


CASES = [  # channels, (kH, kW), input (H, W), attributes
    (16, (3, 3), (9, 8), {"pads": [1, 1, 1, 1]}),
    (5, (3, 3), (7, 11), {"pads": [1, 1, 1, 1]}),
    (13, (3, 3), (12, 17), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    (33, (5, 5), (14, 13), {"pads": [2, 2, 2, 2]}),
    (40, (5, 5), (19, 18), {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    (24, (3, 3), (10, 9), {"pads": [0, 1, 2, 0], "strides": [1, 2]}),
    (64, (3, 3), (25, 5), {"pads": [1, 1, 1, 1]}),  # a keyword spotter's plane: rows narrower than a tile
    (20, (3, 3), (6, 6), {}),  # no padding
    (9, (3, 4), (8, 21), {"pads": [1, 2, 1, 1]}),  # even kernel width: no zero-weight partner
    (3, (1, 1), (5, 5), {}),
]


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("c,kernel,hw,attrs", CASES)
def test_depthwise_matches_spec_on_every_tier(isa: str, x_dtype: str, c: int, kernel: tuple, hw: tuple,
                                              attrs: dict) -> None:
    rng = np.random.default_rng(c * kernel[0] + hw[1])
    for per_channel, relu in ((True, False), (False, True)):
        graph = depthwise_graph(rng, x_dtype, c, kernel, per_channel, relu, **attrs)
        assert_same_as_spec(graph, inputs(rng, x_dtype, (2, c, *hw)))


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_depthwise_extreme_differences_are_exact(isa: str, x_dtype: str) -> None:
    # (x - x_zero) * (w - w_zero) = 255 * 255 on all 25 taps: the pairs and the sums stay exact in int32
    rng = np.random.default_rng(1)
    graph = depthwise_graph(rng, x_dtype, 17, (5, 5), True, False, extreme=True, pads=[2, 2, 2, 2])
    out = assert_same_as_spec(graph, inputs(rng, x_dtype, (1, 17, 7, 9), extreme=True))
    assert len(np.unique(out)) > 1  # the padded border and the interior differ: not all saturated


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_same_bits_at_one_and_two_threads(isa: str, x_dtype: str, stride: int) -> None:
    rng = np.random.default_rng(stride)
    graph = depthwise_graph(rng, x_dtype, 72, (3, 3), True, True, pads=[1, 1, 1, 1], strides=[stride, stride])
    x = inputs(rng, x_dtype, (1, 72, 40, 37))
    one = assert_same_as_spec(graph, x, threads=1)
    np.testing.assert_array_equal(assert_same_as_spec(graph, x, threads=2), one)


def test_every_tier_gives_the_same_bytes() -> None:
    # the x86 tiers run the new kernel, the portable tier the float32 planes: one answer
    rng = np.random.default_rng(5)
    graph = depthwise_graph(rng, "uint8", 37, (3, 3), True, True, pads=[1, 1, 1, 1], strides=[2, 2])
    x = inputs(rng, "uint8", (3, 37, 21, 22))
    results = []
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            results.append(next(iter(graph_native.load_executor(graph).run({"x": x}).values())))
    finally:
        graph_native.select_isa("auto")
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
