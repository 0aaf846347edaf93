"""The native executor's `threads` option: the same bits at 2 and 3 threads as at 1 (ops split their
output at the kernels' own tile boundaries, so no sum changes order), on every ISA tier, for each op that
runs in parallel (direct and shallow conv, depthwise conv float and int8, direct QConv, GEMM by rows and
by columns, MatMul), with shapes above the size where a node is worth splitting (each checks that its
node did split); a small model runs serially at 2 threads. Plus the per-node profile, the measured fp32
peak and the backend's load option."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder, write_graph
from edgefleet.cpp_ext.graph_reference import run_graph
from edgefleet.edge_runtime.backends.native import NativeBackend
from tests.cpp_ext.conftest import ISAS
from tests.cpp_ext.test_graph import f32, one_op, qparams


def same_at_any_thread_count(graph, x: np.ndarray, rtol: float = 1e-5, atol: float = 1e-4) -> None:
    results = []
    for threads in (1, 2, 3):
        executor = graph_native.load_executor(graph, threads)
        results.append(executor.run({"x": x}))
        assert (executor.parallel_nodes > 0) == (threads > 1)  # the op did split: the shapes test something
    for result in results[1:]:
        for name, value in results[0].items():
            np.testing.assert_array_equal(result[name], value)
    want = run_graph(graph, {"x": x})
    for name, value in want.items():
        if value.dtype == np.float32:
            np.testing.assert_allclose(results[0][name], value, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(results[0][name], value)


@pytest.mark.parametrize("m,c,k,hw,attrs", [(24, 3, 3, (33, 31), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
                                            (40, 16, 3, (20, 19), {"pads": [1, 1, 1, 1]}),
                                            (72, 24, 1, (16, 15), {}),
                                            (50, 12, 3, (17, 18), {"activation": "hardswish"}),
                                            (130, 64, 3, (8, 8), {"pads": [1, 1, 1, 1]})])  # 3 panels, 1 chunk
def test_conv(isa: str, m: int, c: int, k: int, hw: tuple, attrs: dict) -> None:
    rng = np.random.default_rng(m)
    graph = one_op("Conv", (1, c, *hw), {"w": f32(rng, m, c, k, k) * 0.3, "b": f32(rng, m)}, **attrs)
    same_at_any_thread_count(graph, f32(rng, 2, c, *hw))


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2)])
def test_depthwise_conv(isa: str, k: int, stride: int) -> None:
    rng = np.random.default_rng(k)
    graph = one_op("Conv", (1, 37, 30, 29), {"w": f32(rng, 37, 1, k, k), "b": f32(rng, 37)}, group=37,
                   kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, activation="clip",
                   act_min=0.0, act_max=6.0)
    same_at_any_thread_count(graph, f32(rng, 2, 37, 30, 29))


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("group,c,hw", [(1, 20, (23, 21)), (1, 72, (7, 7)), (40, 40, (23, 21))])
def test_qconv(isa: str, x_dtype: str, group: int, c: int, hw: tuple) -> None:
    """group 1: direct u8 x s8, split by pixels (483) or, on a 7x7 map, by output channels; 40: depthwise."""
    rng = np.random.default_rng(group)
    m = 40
    p = qparams(rng, x_dtype, m, True)
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", c, *hw))
    w = b.constant("w", rng.integers(-128, 128, (m, c // group, 3, 3)).astype(np.int8))
    names = [b.constant(key, value) for key, value in p.items()]
    inputs = [x, names[0], names[1], w, names[2], names[3], names[4], names[5],
              b.constant("bias", rng.integers(-5000, 5000, m).astype(np.int32))]
    b.output(b.node("QConv", inputs, group=group, pads=[1, 1, 1, 1]), x_dtype)
    info = np.iinfo(x_dtype)
    same_at_any_thread_count(b.build(), rng.integers(info.min, info.max + 1, (2, c, *hw)).astype(x_dtype))


@pytest.mark.parametrize("rows,cols", [(1, 333), (3, 333), (37, 333), (37, 100)])  # under 8 rows: split
def test_gemm_and_matmul(isa: str, rows: int, cols: int) -> None:  # by columns; else by rows
    rng = np.random.default_rng(rows)
    gemm = one_op("Gemm", (rows, 500), {"b": f32(rng, 500, cols), "c": f32(rng, cols)}, activation="relu")
    same_at_any_thread_count(gemm, f32(rng, rows, 500))
    matmul = one_op("MatMul", (2, rows, 400), {"b": f32(rng, 400, cols - 73)})
    same_at_any_thread_count(matmul, f32(rng, 2, rows, 400))


def test_small_model_runs_serially_at_two_threads() -> None:
    """A model none of whose nodes is worth splitting (the MLP class: a few k multiply-adds per node) runs
    on the caller alone at threads=2, run after run, with the same bits; a big node beside it splits."""
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", 30))
    h = b.node("Gemm", [x, b.constant("w1", f32(rng, 30, 128)), b.constant("b1", f32(rng, 128))], activation="relu")
    b.output(b.node("Gemm", [h, b.constant("w2", f32(rng, 128, 2)), b.constant("b2", f32(rng, 2))]), "float32")
    small = b.build()
    feed = {"x": f32(rng, 1, 30)}
    want = graph_native.load_executor(small, 1).run(feed)
    executor = graph_native.load_executor(small, 2)
    for _ in range(3):
        got = executor.run(feed)
        assert executor.parallel_nodes == 0
        np.testing.assert_array_equal(got[next(iter(got))], want[next(iter(want))])
    big = graph_native.load_executor(one_op("Gemm", (64, 300), {"b": f32(rng, 300, 333), "c": f32(rng, 333)}), 2)
    for _ in range(2):
        big.run({"x": f32(rng, 64, 300)})
        assert big.parallel_nodes == 1


def test_threads_are_checked_and_reported() -> None:
    graph = one_op("Relu", (2, 3))
    assert graph_native.load_executor(graph).threads == 1
    assert graph_native.load_executor(graph, 4).threads == 4
    with pytest.raises(ValueError, match="threads must be >= 1"):
        graph_native.load_executor(graph, 0)


def test_profile_times_every_node() -> None:
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", 8, 12, 12))
    y = b.node("Conv", [x, b.constant("w", f32(rng, 16, 8, 3, 3)), b.constant("b", f32(rng, 16))], pads=[1] * 4,
               name="conv")
    b.output(b.node("Relu", [b.node("Add", [y, y], name="add")], name="relu"), "float32")
    executor = graph_native.load_executor(b.build())
    rows = executor.profile({"x": f32(rng, 1, 8, 12, 12)}, runs=3)
    assert [(op, name) for op, name, _ in rows] == [("Conv", "conv"), ("Add", "add"), ("Relu", "relu")]
    assert all(us > 0 and math.isfinite(us) for _, _, us in rows)
    with pytest.raises(ValueError, match="runs must be >= 1"):
        executor.profile({"x": f32(rng, 1, 8, 12, 12)}, runs=0)


def test_peak_gflops_per_isa() -> None:
    for name in ISAS:
        peak = graph_native.peak_gflops(name, 0.01)
        assert peak > 0 and math.isfinite(peak), name
    with pytest.raises(ValueError, match="unknown ISA"):
        graph_native.peak_gflops("sse9", 0.01)


def test_backend_threads_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    graph = one_op("Conv", (1, 16, 24, 24), {"w": f32(rng, 32, 16, 3, 3), "b": f32(rng, 32)}, pads=[1] * 4)
    write_graph(graph, tmp_path / "model.efg")
    x = f32(rng, 1, 16, 24, 24)
    outputs = []
    for threads in (None, 2):
        backend = NativeBackend()
        backend.load(tmp_path / "model.efg", {} if threads is None else {"threads": threads})
        assert backend.executor.threads == (threads or 1)
        outputs.append(backend.run({"x": x}))
        backend.close()
    np.testing.assert_array_equal(outputs[0][next(iter(outputs[0]))], outputs[1][next(iter(outputs[1]))])
