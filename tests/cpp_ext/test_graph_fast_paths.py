"""The native executor's fast paths for small transformers and narrow CNN planes, against the numpy spec
(graph_reference): the flat depthwise walk (stride-1 planes a few pixels wide, as a keyword spotter's
25 x 5), its bits equal on every ISA tier; Softmax and exact Gelu / Erf through the SIMD exp and erf,
on inputs spanning their whole range (masked attention scores of -1e4 included); a bias added along the
last axis; Transpose and Slice of every item size; MaxPool with windows side by side along a row (an
audio CNN's MaxPool1d 4), vectorised across the windows, its bits equal on every tier; the direct int8
QConv of one input channel (M5's first Conv1d, 80 taps at stride 4), which groups 4 taps along a row."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph

ISAS = graph_native.available_isas()


def one_op(op: str, x_shape: tuple, consts: dict | None = None, dtype: str = "float32", **attrs):
    b = GraphBuilder()
    names = [b.input("x", dtype, x_shape)]
    names += [b.constant(name, value) for name, value in (consts or {}).items()]
    b.output(b.node(op, names, **attrs), "")
    return b.build()


def run_all(graph, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The output on every ISA tier, and the reference's."""
    got = {}
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            got[name] = next(iter(graph_native.load_executor(graph).run({"x": x}).values()))
    finally:
        graph_native.select_isa("auto")
    return got, next(iter(run_graph(graph, {"x": x}).values()))


@pytest.mark.parametrize("hw,k,attrs", [((49, 10), 3, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
                                        ((25, 5), 3, {"pads": [1, 1, 1, 1]}),
                                        ((25, 5), 3, {"pads": [0, 2, 1, 0], "dilations": [2, 2]}),
                                        ((4, 4), 3, {"pads": [1, 1, 1, 1]}),
                                        ((6, 6), 5, {"pads": [2, 2, 2, 2]}),
                                        ((12, 12), 3, {}), ((1, 3), 1, {})])
def test_depthwise_narrow_planes_every_tier_same_bits(hw: tuple, k: int, attrs: dict) -> None:
    rng = np.random.default_rng(hw[0] * k)
    c, mult = 7, 2 if k == 5 else 1
    consts = {"w": rng.standard_normal((c * mult, 1, k, k)).astype(np.float32),
              "b": rng.standard_normal(c * mult).astype(np.float32)}
    graph = one_op("Conv", (2, c, *hw), consts, group=c, kernel_shape=[k, k], activation="relu", **attrs)
    got, want = run_all(graph, rng.standard_normal((2, c, *hw)).astype(np.float32))
    for value in got.values():
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(value, got[ISAS[0]])


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int8"])
@pytest.mark.parametrize("shape,k,attrs", [((2, 5, 1, 1981), [1, 4], {"strides": [1, 4]}),
                                           ((1, 3, 1, 37), [1, 2], {"strides": [1, 2], "pads": [0, 1, 0, 0]}),
                                           ((1, 3, 7, 40), [2, 3], {"strides": [2, 3], "pads": [1, 2, 1, 2]}),
                                           ((1, 2, 9, 9), [3, 3], {"strides": [3, 3], "ceil_mode": 1})])
def test_max_pool_side_by_side_windows_every_tier_same_bits(dtype: str, shape: tuple, k: list, attrs: dict) -> None:
    rng = np.random.default_rng(shape[-1])
    x = rng.standard_normal(shape).astype(np.float32) * 60
    if dtype != "float32":
        x = np.clip(x, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    got, want = run_all(one_op("MaxPool", shape, dtype=dtype, kernel_shape=k, **attrs), x)
    for value in got.values():
        np.testing.assert_array_equal(value, want)


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("k,attrs", [((1, 80), {"strides": [1, 4]}), ((1, 5), {"pads": [0, 3, 0, 2]}),
                                     ((3, 6), {"pads": [1, 1, 1, 1], "strides": [2, 3], "dilations": [2, 1]}),
                                     ((2, 3), {"dilations": [1, 2]})])
def test_qconv_one_channel_taps_along_a_row_exact(x_dtype: str, k: tuple, attrs: dict) -> None:
    rng = np.random.default_rng(k[1])
    m, hw = 19, (3, 200) if k[0] == 1 else (9, 31)
    b = GraphBuilder()
    x = b.input("x", x_dtype, (1, 1, *hw))
    params = {"sx": np.float32(0.02), "zx": np.array(9 if x_dtype == "uint8" else -4, x_dtype),
              "w": rng.integers(-128, 128, (m, 1, *k)).astype(np.int8),
              "sw": (rng.random(m) * 0.01 + 0.001).astype(np.float32), "zw": np.zeros(m, np.int8),
              "sy": np.float32(0.5), "zy": np.array(100 if x_dtype == "uint8" else 5, x_dtype),
              "bias": rng.integers(-5000, 5000, m).astype(np.int32)}
    b.output(b.node("QConv", [x] + [b.constant(name, v) for name, v in params.items()], activation="relu",
                    **attrs), x_dtype)
    info = np.iinfo(x_dtype)
    got, want = run_all(b.build(), rng.integers(info.min, info.max + 1, (1, 1, *hw)).astype(x_dtype))
    for value in got.values():
        np.testing.assert_array_equal(value, want)


def test_softmax_last_axis_wide_range() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 4, 33)) * 30).astype(np.float32)
    x[0, :, 5:] = -1e4  # masked positions
    x[1, 0] = 0.0
    got, want = run_all(one_op("Softmax", x.shape, axis=-1), x)
    for value in got.values():
        np.testing.assert_allclose(value, want, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(value.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the reference: Gelu(-inf) is nan
@pytest.mark.parametrize("op", ["Gelu", "Erf"])
def test_gelu_erf_whole_range(op: str) -> None:
    x = np.concatenate([np.linspace(-12, 12, 4001), [0.0, -0.0, 1e-6, -1e-6, 1e-30, 50.0, -50.0]]).astype(np.float32)
    got, want = run_all(one_op(op, x.shape), x)
    for value in got.values():  # the rational erf is within 4.2e-7 of erf (checked against float64)
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=5e-7 if op == "Erf" else 2e-6)
    nan = np.array([np.nan, np.inf, -np.inf], np.float32)
    got, want = run_all(one_op(op, nan.shape), nan)
    for value in got.values():
        np.testing.assert_array_equal(value, want)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_bias_along_last_axis_either_side(op: str) -> None:
    rng = np.random.default_rng(1)
    for order in ((0, 1), (1, 0)):
        b = GraphBuilder()
        names = [b.input("x", "float32", (1, 32, 67)), b.constant("bias", rng.standard_normal(67).astype(np.float32))]
        b.output(b.node(op, [names[order[0]], names[order[1]]]), "")
        got, want = run_all(b.build(), rng.standard_normal((1, 32, 67)).astype(np.float32))
        for value in got.values():
            np.testing.assert_array_equal(value, want)


@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8"])
@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (0, 2, 3, 1), (3, 1, 2, 0), (0, 1, 2, 3)])
def test_transpose_and_slice_item_sizes(dtype: str, perm: tuple) -> None:
    x = np.arange(2 * 5 * 3 * 7).reshape(2, 5, 3, 7).astype(dtype)
    got, want = run_all(one_op("Transpose", x.shape, dtype=dtype, perm=list(perm)), x)
    np.testing.assert_array_equal(got[ISAS[0]], want)
    slices = {"starts": np.array([1, 0, -5], np.int64), "ends": np.array([5, 3, 100], np.int64),
              "axes": np.array([1, 2, 3], np.int64), "steps": np.array([2, 1, 1 + perm[1]], np.int64)}
    got, want = run_all(one_op("Slice", x.shape, slices, dtype=dtype), x)
    np.testing.assert_array_equal(got[ISAS[0]], want)
