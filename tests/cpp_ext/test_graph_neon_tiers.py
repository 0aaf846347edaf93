"""The kernels the aarch64 tiers add, against the numpy spec and against the portable tier, on every tier
this machine lists (x86-64: its own tiers and the portable one; aarch64, checked under qemu by
scripts/check-aarch64: "neondot" (sdot, when the CPU has the dot-product extension), "neon" and
"portable"): the direct int8 QConv at stride 2 with padding, odd sizes and channel counts off the
vector widths, and the extremes of x - x_zero_point and w (sdot's x - 128 flip must wrap back exactly);
Sigmoid and Tanh within the float tolerance of the libm formula, HardSigmoid and HardSwish bit for bit,
tails of 1-3 elements and NaN / inf / -0; MaxPool 2x2 / 2, AveragePool's inner rows and
GlobalAveragePool with the portable tier's bits. The int8 depthwise kernel's cases are in
test_graph_qdepthwise.py (parametrized over the same tiers)."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from tests.cpp_ext.conftest import ISAS
from tests.cpp_ext.test_graph_fast_paths import one_op, run_all


def test_tiers_listed_and_the_default() -> None:
    """The tier list (which path each test below ran); on aarch64, neondot exactly when the CPU has it."""
    assert ISAS[-1] == "portable" and graph_native.isa() == ISAS[0]
    if platform.machine() == "aarch64":
        assert ISAS in (["neondot", "neon", "portable"], ["neon", "portable"])


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("m,c,k,hw,attrs", [
    (5, 3, 3, (11, 9), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    (33, 7, 3, (9, 13), {"pads": [0, 1, 2, 1], "strides": [2, 2]}),
    (20, 17, 1, (5, 7), {"strides": [2, 2]}),
    (16, 4, 5, (12, 10), {"pads": [2, 2, 2, 2]}),
    (17, 9, 3, (1, 7), {"pads": [1, 1, 1, 1]}),
])
def test_direct_qconv_strides_pads_and_tails(x_dtype: str, m: int, c: int, k: int, hw: tuple, attrs: dict) -> None:
    rng = np.random.default_rng(m * 31 + c)
    info = np.iinfo(x_dtype)
    params = {"sx": np.float32(0.02), "zx": np.array(9 if x_dtype == "uint8" else -4, x_dtype),
              "sw": (rng.random(m) * 0.01 + 0.001).astype(np.float32), "zw": np.zeros(m, np.int8),
              "sy": np.float32(0.6), "zy": np.array(100 if x_dtype == "uint8" else 5, x_dtype)}
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", c, "h", "w"))
    names = [b.constant(key, value) for key, value in params.items()]
    inputs = [x, names[0], names[1], b.constant("w", rng.integers(-128, 128, (m, c, k, k)).astype(np.int8)),
              names[2], names[3], names[4], names[5], b.constant("bias", rng.integers(-5000, 5000, m).astype(np.int32))]
    b.output(b.node("QConv", inputs, **attrs), x_dtype)
    graph = b.build()
    feed = rng.integers(info.min, info.max + 1, (2, c, *hw)).astype(x_dtype)
    feed[0, :, 0] = info.max  # the flip's extremes: x = 255 / 127 and the lowest value
    feed[1, :, -1] = info.min
    got, want = run_all(graph, feed)
    for name, value in got.items():
        np.testing.assert_array_equal(value, want, err_msg=name)
    assert len(np.unique(want)) > 10  # not a saturated answer


def test_direct_qconv_extreme_weights_every_tier() -> None:
    """w = -128 everywhere and x = 255 with zero point 0: the largest sums sdot's x - 128 form wraps through."""
    m, c = 24, 12
    params = {"sx": np.float32(1.0), "zx": np.array(0, np.uint8), "w": np.full((m, c, 3, 3), -128, np.int8),
              "sw": np.full(m, 1e-6, np.float32), "zw": np.zeros(m, np.int8), "sy": np.float32(1.0),
              "zy": np.array(128, np.uint8), "bias": np.arange(m, dtype=np.int32) * 1000}
    b = GraphBuilder()
    x = b.input("x", "uint8", (1, c, 6, 5))
    b.output(b.node("QConv", [x] + [b.constant(key, v) for key, v in params.items()], pads=[1, 1, 1, 1]), "uint8")
    feed = np.full((1, c, 6, 5), 255, np.uint8)
    feed[0, :, 2] = np.arange(5)
    got, want = run_all(b.build(), feed)
    for name, value in got.items():
        np.testing.assert_array_equal(value, want, err_msg=name)


SPECIAL = [0.0, -0.0, 1e-6, -1e-6, 3e-4, -3e-4, 1e-30, 3.0, -3.0, 7.9, -7.9, 9.5, -9.5, 50.0, -50.0, 100.0, -100.0,
           np.inf, -np.inf]


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("op,attrs", [("Sigmoid", {}), ("Tanh", {}), ("HardSigmoid", {}),
                                      ("HardSigmoid", {"alpha": 0.3, "beta": 0.0}), ("HardSwish", {})])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 4003])
def test_activations_whole_range_every_tier(op: str, attrs: dict, n: int) -> None:
    x = np.linspace(-20, 20, n).astype(np.float32)
    x[: min(n, len(SPECIAL))] = SPECIAL[:n]
    got, want = run_all(one_op(op, x.shape, **attrs), x)
    for name, value in got.items():
        if op in ("Sigmoid", "Tanh"):  # vectorised exp / rational tanh on aarch64: within 4e-7 relative
            np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7, err_msg=name)
        else:  # piecewise-linear: the same float32 formula, bit for bit
            np.testing.assert_array_equal(value.view(np.uint32), got["portable"].view(np.uint32), err_msg=name)
            np.testing.assert_array_equal(value, want, err_msg=name)
    nan = np.array([np.nan] * (n % 4 + 1), np.float32)
    got, _ = run_all(one_op(op, nan.shape, **attrs), nan)
    for name, value in got.items():
        assert np.isnan(value).all(), name


def assert_portable_bits(got: dict[str, np.ndarray]) -> None:
    for name, value in got.items():
        assert value.tobytes() == got["portable"].tobytes(), name


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int8"])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (6, 66), (5, 35), (3, 4)])
def test_max_pool_2x2_every_tier_same_bits(dtype: str, hw: tuple) -> None:
    rng = np.random.default_rng(hw[1])
    shape = (2, 3, *hw)
    if dtype == "float32":
        x = rng.standard_normal(shape).astype(np.float32)
        x[0, 0, 0, :4] = [np.nan, -0.0, 0.0, np.nan]  # NaN skipped, equal zeros keep the first, as std::max
        x[0, 1, :2, :2] = -0.0
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    got, want = run_all(one_op("MaxPool", shape, dtype=dtype, kernel_shape=[2, 2], strides=[2, 2]), x)
    assert_portable_bits(got)
    if dtype != "float32":
        np.testing.assert_array_equal(got[ISAS[0]], want)
    else:
        np.testing.assert_array_equal(got[ISAS[0]][1], want[1])


@pytest.mark.parametrize("k,attrs", [
    ([3, 3], {"strides": [1, 1]}),
    ([3, 3], {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ([3, 3], {"strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ([2, 2], {"strides": [2, 2], "ceil_mode": 1}),
    ([5, 5], {"strides": [1, 1], "pads": [2, 2, 2, 2]}),
    ([3, 1], {"strides": [2, 1], "pads": [1, 0, 1, 0]}),
    ([7, 7], {"strides": [1, 1]}),
])
@pytest.mark.parametrize("hw", [(7, 7), (9, 14), (13, 23)])
def test_average_pool_every_tier_same_bits(k: list, attrs: dict, hw: tuple) -> None:
    if k[0] > hw[0] + 2 * attrs.get("pads", [0] * 4)[0]:
        pytest.skip("window larger than the padded input")
    rng = np.random.default_rng(sum(hw) + k[0])
    x = rng.standard_normal((2, 3, *hw)).astype(np.float32)
    got, want = run_all(one_op("AveragePool", x.shape, kernel_shape=k, **attrs), x)
    assert_portable_bits(got)
    np.testing.assert_allclose(got[ISAS[0]], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (2, 4), (3, 3), (7, 7), (5, 13)])
def test_global_average_pool_every_tier_same_bits(hw: tuple) -> None:
    x = np.random.default_rng(hw[1]).standard_normal((2, 5, *hw)).astype(np.float32)
    got, want = run_all(one_op("GlobalAveragePool", x.shape), x)
    assert_portable_bits(got)
    np.testing.assert_allclose(got[ISAS[0]], want, rtol=1e-5, atol=1e-6)
