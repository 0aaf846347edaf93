"""Softmax and LayerNormalization rows as a small transformer encoder runs them, against the numpy spec
(graph_reference): Softmax in zmm registers on the "avx512" tier must give the portable tier's bits on every
row length (below, at and past one 16-lane vector, with a masked tail), with masked scores of -1e4 (their
subnormal quotients computed in integers there), a NaN and infinities in the row; LayerNormalization's
float64 lane sums on every row length (tails of the 8 lanes) and with per-element or broadcast scale and
bias; and 1 and 2 kernel threads give the same bytes on an attention block's shapes (4 heads x 32 x 32
scores)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph

ISAS = graph_native.available_isas()
LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 64, 100, 1000]


def one_op(op: str, x_shape: tuple, consts: dict | None = None, **attrs):
    b = GraphBuilder()
    names = [b.input("x", "float32", x_shape)]
    names += [b.constant(name, value) for name, value in (consts or {}).items()]
    b.output(b.node(op, names, **attrs), "")
    return b.build()


def run_tiers(graph, x: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    got = {}
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            got[name] = next(iter(graph_native.load_executor(graph, threads).run({"x": x}).values()))
    finally:
        graph_native.select_isa("auto")
    return got


@pytest.mark.parametrize("n", LENGTHS)
def test_softmax_rows_same_bits_on_every_tier(n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((6, n)) * 8).astype(np.float32)
    x[1, n // 2:] = -1e4  # a padded tail, masked as attention masks it
    x[2, -1] = 88.5  # past exp's clamp
    x[3, 0] = -np.inf if n > 1 else 0.0  # (a row of -inf alone has no softmax)
    x[4] = 3.25  # every value equal: the max ties in every lane
    graph = one_op("Softmax", x.shape, axis=-1)
    got = run_tiers(graph, x)
    want = next(iter(run_graph(graph, {"x": x}).values()))
    for name, value in got.items():
        np.testing.assert_allclose(value, want, rtol=2e-6, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(value.view(np.uint32), got["portable"].view(np.uint32), err_msg=name)
        np.testing.assert_allclose(value.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 17, 32, 37, 1000])
def test_masked_softmax_rows_subnormal_quotients_same_bits(n: int) -> None:
    # exp's floor (e^-87.3) over the row's sum is subnormal: the avx512 row computes it in integers,
    # rounded as the IEEE division the portable row does; sums from 1 (one score left) to about n
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((300, n)) * rng.uniform(0.01, 6, (300, 1))).astype(np.float32)
    keep = rng.integers(1, n + 1, 300)
    keep[:3] = [1, n, max(1, n - 1)]
    x[np.arange(n)[None, :] >= keep[:, None]] = -1e4
    x[3, :] = -1e4
    x[3, 0] = 0.0
    x[4, 1:] = -86.9  # just above the floor: subnormal quotients the vector division computes
    got = run_tiers(one_op("Softmax", x.shape, axis=-1), x)
    floored = got["portable"][x == -1e4]
    assert (floored > 0).all() and (n == 2 or (floored < np.finfo(np.float32).tiny).mean() > 0.5)  # n 2: sum 1
    for name, value in got.items():
        np.testing.assert_array_equal(value.view(np.uint32), got["portable"].view(np.uint32), err_msg=name)


def test_softmax_row_with_a_nan_matches_the_portable_tier() -> None:
    x = np.linspace(-3, 3, 40, dtype=np.float32).reshape(2, 20)
    x[0, 5] = np.nan  # the max skips it (top < nan is false); exp and the sum carry it
    x[1, 17] = np.nan  # in the masked tail
    got = run_tiers(one_op("Softmax", x.shape, axis=-1), x)
    for name, value in got.items():
        np.testing.assert_array_equal(np.isnan(value), np.isnan(got["portable"]), err_msg=name)
        np.testing.assert_array_equal(value.view(np.uint32), got["portable"].view(np.uint32), err_msg=name)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("form", ["full", "no-bias", "scalar"])
def test_layer_norm_rows(n: int, form: str) -> None:
    rng = np.random.default_rng(n + 7)
    x = (rng.standard_normal((5, n)) * 3 + 100).astype(np.float32)  # a large mean: the centring must hold
    x[0] = 1.5  # a constant row: zero variance, epsilon alone
    shape = (n,) if form != "scalar" else (1,)
    consts = {"scale": rng.standard_normal(shape).astype(np.float32)}
    if form != "no-bias":
        consts["bias"] = rng.standard_normal(shape).astype(np.float32)
    graph = one_op("LayerNormalization", x.shape, consts, axis=-1, epsilon=1e-5)
    want = next(iter(run_graph(graph, {"x": x}).values()))
    for name, value in run_tiers(graph, x).items():
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("op", ["Softmax", "LayerNormalization"])
def test_one_and_two_threads_give_the_same_bytes(op: str) -> None:
    rng = np.random.default_rng(3)
    if op == "Softmax":
        x = (rng.standard_normal((1, 4, 32, 32)) * 5).astype(np.float32)
        x[..., 20:] = -1e4
        graph = one_op(op, x.shape, axis=-1)
    else:
        x = rng.standard_normal((1, 32, 64)).astype(np.float32)
        graph = one_op(op, x.shape, {"scale": rng.standard_normal(64).astype(np.float32),
                                     "bias": rng.standard_normal(64).astype(np.float32)}, axis=-1)
    one, two = run_tiers(graph, x, 1), run_tiers(graph, x, 2)
    for name in ISAS:
        np.testing.assert_array_equal(one[name].view(np.uint32), two[name].view(np.uint32), err_msg=name)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("scale", [1 / 255, 2e-38])  # the second below 2^-125: no lane is flushed
def test_quantize_of_subnormal_softmax_outputs_exact_on_every_tier(dtype: str, scale: float) -> None:
    # the AVX2 QuantizeLinear zeroes subnormal inputs before dividing (their quotient rounds to zero anyway)
    tiny = np.finfo(np.float32).tiny
    x = np.array([tiny / 2, -tiny / 2, tiny / 3e6, -1e-45, 0.0, -0.0, tiny, -tiny, 0.5, 1.0, 3e-38, -3e-38,
                  7e-39, -7e-39, 1e-3, 0.2, 0.003, 1e-39, 1e-38, 5e-39, -1e-39, 2e-38, 0.9, 1.1e-38, -1.1e-38],
                 np.float32)
    b = GraphBuilder()
    q = b.node("QuantizeLinear", [b.input("x", "float32", x.shape), b.constant("s", np.float32(scale)),
                                  b.constant("z", np.array(0 if dtype == "int8" else 3, dtype))])
    b.output(q, dtype)
    graph = b.build()
    want = next(iter(run_graph(graph, {"x": x}).values()))
    for name, value in run_tiers(graph, x).items():
        np.testing.assert_array_equal(value, want, err_msg=name)
