"""QGemm through byte dot products (graph_qgemm_vnni: int8 weights packed at load, vpdpbusd, the
activation zero point folded in at the store) against the numpy spec and the other tiers, exactly: every
row count of its 8-row micro-kernel, the column tails of its 32-wide panels, K not a multiple of its
4-byte words, uint8 and int8 activations at the ends of their ranges (the zero point's share is largest
there), weights at -128 and 127, a ReLU, a transformer Linear's (1, 32, 64) input, and 1 or 2 threads.
Weights whose w - w_zero leaves int8 take the int16 path and are exact too."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.conftest import run_on as run

ISAS = graph_native.available_isas()


def qgemm(k: int, n: int, x_dtype: str, rng: np.random.Generator, x_shape: tuple | None = None,
          w_zero: int = 0, activation: str = "none"):
    builder = GraphBuilder()
    x = builder.input("x", x_dtype, x_shape or ("m", k))
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w[0, 0], w[-1, -1] = -128, 127
    params = {"sx": np.float32(0.02), "zx": np.array(131 if x_dtype == "uint8" else -3, x_dtype), "w": w,
              "sw": ((rng.random(n) * 0.002 + 0.0005) * np.sqrt(64 / k)).astype(np.float32),
              "zw": np.full(n, w_zero, np.int8),
              "sy": np.float32(0.05), "zy": np.array(100 if x_dtype == "uint8" else 5, x_dtype),
              "bias": rng.integers(-5000, 5000, n).astype(np.int32)}
    names = [x] + [builder.constant(name, v) for name, v in params.items()]
    builder.output(builder.node("QGemm", names, activation=activation), x_dtype)
    return builder.build()




def rows(rng: np.random.Generator, shape: tuple, x_dtype: str) -> np.ndarray:
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, shape).astype(x_dtype)
    x.reshape(-1, shape[-1])[0] = info.max  # a row at each end of the range
    if x.reshape(-1, shape[-1]).shape[0] > 1:
        x.reshape(-1, shape[-1])[1] = info.min
    return x


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("k", [1, 3, 4, 5, 64, 67, 300])
@pytest.mark.parametrize("n", [1, 15, 16, 31, 32, 33, 70])
def test_rows_columns_and_k_words_exact_on_every_tier(x_dtype: str, k: int, n: int) -> None:
    rng = np.random.default_rng(k * 100 + n)
    graph = qgemm(k, n, x_dtype, rng)
    for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 33):
        feed = {"x": rows(rng, (m, k), x_dtype)}
        want = next(iter(run_graph(graph, feed).values()))
        for isa in ISAS:
            np.testing.assert_array_equal(run(graph, feed, isa), want, err_msg=f"{isa} m={m}")


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_transformer_linear_shape_one_and_two_threads(x_dtype: str, activation: str) -> None:
    rng = np.random.default_rng(11)
    graph = qgemm(64, 192, x_dtype, rng, x_shape=(1, 32, 64), activation=activation)
    feed = {"x": rows(rng, (1, 32, 64), x_dtype)}
    want = next(iter(run_graph(graph, feed).values()))
    for isa in ISAS:
        one, two = run(graph, feed, isa, 1), run(graph, feed, isa, 2)
        np.testing.assert_array_equal(one, want, err_msg=isa)
        np.testing.assert_array_equal(two, one, err_msg=isa)


def test_weights_beyond_int8_after_their_zero_point_stay_exact() -> None:
    rng = np.random.default_rng(5)
    graph = qgemm(40, 24, "uint8", rng, w_zero=-100)  # w - w_zero up to 227: the int16 path
    feed = {"x": rows(rng, (10, 40), "uint8")}
    want = next(iter(run_graph(graph, feed).values()))
    for isa in ISAS:
        np.testing.assert_array_equal(run(graph, feed, isa), want, err_msg=isa)
