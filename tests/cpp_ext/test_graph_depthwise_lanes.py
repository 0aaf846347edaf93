"""The float32 depthwise Conv with channels in the SIMD lanes (graph_kernels_depthwise_x86.cpp: one image
transposed into a padded pixel-by-channel buffer, tiles of 8 pixels by 8 channels) against the portable
tier's plane kernels, bit for bit, and the numpy spec within float32 rounding, on every ISA tier: channel
counts off the vector width (8, 13, 33, 64), strides 1 and 2, symmetric, uneven and no padding, 3x3, 5x5
and a non-square kernel, planes narrower and wider than a tile (a keyword spotter's 25 x 5), B constant
or absent, ReLU, clip, HardSwish and none; and the same bits at 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.conftest import ISAS, run_on


def depthwise_graph(rng: np.random.Generator, c: int, kernel: tuple, bias: bool, activation: str, **attrs):
    b = GraphBuilder()
    names = [b.input("x", "float32", ("n", c, "h", "w")),
             b.constant("w", rng.standard_normal((c, 1, *kernel)).astype(np.float32))]
    if bias:
        names.append(b.constant("b", rng.standard_normal(c).astype(np.float32)))
    extra = {"act_min": -0.5, "act_max": 0.75} if activation == "clip" else {}
    b.output(b.node("Conv", names, group=c, kernel_shape=list(kernel), activation=activation, **attrs, **extra),
             "")
    return b.build()


CASES = [  # channels, (kH, kW), input (H, W), attributes
    (64, (3, 3), (25, 5), {"pads": [1, 1, 1, 1]}),  # a keyword spotter's plane
    (8, (3, 3), (9, 8), {"pads": [1, 1, 1, 1]}),
    (13, (3, 3), (12, 17), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    (33, (5, 5), (14, 13), {"pads": [2, 2, 2, 2]}),
    (40, (5, 5), (19, 18), {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    (16, (3, 3), (31, 16), {"pads": [1, 1, 1, 1]}),  # 16 wide: the widest plane the lanes kernel takes
    (16, (3, 3), (12, 40), {"pads": [1, 1, 1, 1]}),  # wider: the plane kernels on every tier
    (24, (3, 3), (10, 9), {"pads": [0, 1, 2, 0], "strides": [1, 2]}),
    (20, (3, 3), (6, 6), {}),
    (9, (3, 4), (8, 21), {"pads": [1, 2, 1, 1]}),
    (16, (3, 3), (1, 1), {"pads": [1, 1, 1, 1]}),
]


@pytest.mark.parametrize("c,kernel,hw,attrs", CASES)
def test_lanes_kernel_same_bits_as_portable_on_every_tier(c: int, kernel: tuple, hw: tuple, attrs: dict) -> None:
    rng = np.random.default_rng(c * kernel[0] + hw[1])
    for bias, activation in ((True, "relu"), (False, "none"), (True, "clip"), (True, "hardswish")):
        graph = depthwise_graph(rng, c, kernel, bias, activation, **attrs)
        x = rng.standard_normal((2, c, *hw)).astype(np.float32)
        want = next(iter(run_graph(graph, {"x": x}).values()))
        portable = run_on(graph, {"x": x}, "portable")
        np.testing.assert_allclose(portable, want, rtol=1e-5, atol=1e-5)
        for isa in ISAS:
            got = run_on(graph, {"x": x}, isa)
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, portable, err_msg=f"{isa}, bias {bias}, {activation}")


@pytest.mark.parametrize("isa", ISAS)
def test_lanes_kernel_same_bits_at_one_and_two_threads(isa: str) -> None:
    rng = np.random.default_rng(3)
    graph = depthwise_graph(rng, 64, (3, 3), True, "relu", pads=[1, 1, 1, 1])
    x = rng.standard_normal((1, 64, 25, 5)).astype(np.float32)
    np.testing.assert_array_equal(run_on(graph, {"x": x}, isa, threads=2), run_on(graph, {"x": x}, isa))
    big = depthwise_graph(rng, 40, (5, 5), False, "none", pads=[2, 2, 2, 2], strides=[2, 2])
    x = rng.standard_normal((2, 40, 33, 31)).astype(np.float32)  # 16 output pixels wide
    np.testing.assert_array_equal(run_on(big, {"x": x}, isa, threads=2), run_on(big, {"x": x}, isa))


def test_tiers_listed() -> None:
    assert "portable" in ISAS and graph_native.isa() in ISAS
