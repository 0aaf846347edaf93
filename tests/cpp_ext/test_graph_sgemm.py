"""The GEMM kernels behind Gemm, MatMul, QGemm and the im2col conv paths, against the numpy spec on every
ISA tier: every row count of the AVX-512 micro-kernels (1-8 and blocks of 8 with each remainder), the
column tails of their 32-wide panels, and K across their chunks (128 deep for fp32, 512 for int16 pairs;
a chunk boundary stores and reloads C). The fp32 AVX-512 and AVX2 kernels run the same FMA chain per
element in k order, so where both run they must agree bit for bit, at any thread count; the integer
ones are exact on every tier."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.conftest import run_on as run

ISAS = graph_native.available_isas()


def matmul(k: int, n: int, b: np.ndarray | None = None):
    """A graph: y = MatMul(x, b) with b a constant when given, else the second input."""
    builder = GraphBuilder()
    x = builder.input("x", "float32", ("m", k))
    other = builder.constant("b", b) if b is not None else builder.input("w", "float32", (k, n))
    builder.output(builder.node("MatMul", [x, other]), "")
    return builder.build()




@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1, 7, 128, 129, 300])
@pytest.mark.parametrize("n", [1, 15, 16, 31, 32, 33, 70])
def test_sgemm_rows_columns_and_k_chunks(isa: str, k: int, n: int) -> None:
    rng = np.random.default_rng(k * 100 + n)
    b = rng.standard_normal((k, n)).astype(np.float32)
    graph = matmul(k, n, b)
    for m in (1, 3, 4, 5, 8, 9, 15, 16, 23, 33):
        x = rng.standard_normal((m, k)).astype(np.float32)
        want = run_graph(graph, {"x": x})
        got = run(graph, {"x": x}, isa)
        name = next(iter(want))
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.skipif(not {"avx512", "avx2"} <= set(ISAS), reason="needs a CPU with both AVX-512 and AVX2")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sgemm_avx512_equals_avx2_bit_for_bit(threads: int) -> None:
    rng = np.random.default_rng(threads)
    graph = matmul(300, 70)  # B an input: no packing at load; K spans three chunks
    for m in (2, 6, 13, 64):
        feed = {"x": rng.standard_normal((m, 300)).astype(np.float32),
                "w": rng.standard_normal((300, 70)).astype(np.float32)}
        np.testing.assert_array_equal(run(graph, feed, "avx512", threads), run(graph, feed, "avx2", 1))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("k,n", [(37, 5), (64, 32), (600, 70)])
def test_qgemm_rows_columns_and_k_chunks_exact(isa: str, x_dtype: str, k: int, n: int) -> None:
    rng = np.random.default_rng(k + n)
    builder = GraphBuilder()
    x = builder.input("x", x_dtype, ("m", k))
    params = {"sx": np.float32(0.02), "zx": np.array(7 if x_dtype == "uint8" else -3, x_dtype),
              "w": rng.integers(-128, 128, (k, n)).astype(np.int8),
              "sw": ((rng.random(n) * 0.002 + 0.0005) * np.sqrt(64 / k)).astype(np.float32),
              "zw": rng.integers(-128, 0, n).astype(np.int8),  # |w - zw| up to 255: beyond int8
              "sy": np.float32(0.05), "zy": np.array(100 if x_dtype == "uint8" else 5, x_dtype),
              "bias": rng.integers(-5000, 5000, n).astype(np.int32)}
    builder.output(builder.node("QGemm", [x] + [builder.constant(name, v) for name, v in params.items()]), x_dtype)
    graph = builder.build()
    info = np.iinfo(x_dtype)
    for m in (4, 8, 13, 33):
        feed = {"x": rng.integers(info.min, info.max + 1, (m, k)).astype(x_dtype)}
        want = next(iter(run_graph(graph, feed).values()))
        np.testing.assert_array_equal(run(graph, feed, isa), want)
