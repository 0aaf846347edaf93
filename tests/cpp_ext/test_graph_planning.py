"""The executor's memory plan (intermediate values whose lifetimes do not overlap share arena bytes, views
keep their source alive, outputs are never overwritten) and Conv's residual input Z (ResNet's shortcut
add in the conv's epilogue, before the activation), against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.test_graph import f32


def test_a_chain_reuses_two_buffers_and_keeps_what_is_read_later() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", (1, 16, 32, 32))
    first = b.node("Relu", [x])
    value = first
    for _ in range(6):
        value = b.node("Sigmoid", [value])
    flat = b.node("Flatten", [value])  # a view: its source must stay alive until Reshape's reader
    b.output(b.node("Add", [b.node("Relu", [flat]), b.node("Flatten", [first])]), "float32")
    graph = b.build()
    executor = graph_native.load_executor(graph)
    feed = {"x": f32(np.random.default_rng(0), 1, 16, 32, 32)}
    got = executor.run(feed)
    tensor = 16 * 32 * 32 * 4
    assert executor.arena_bytes <= 4 * tensor  # 11 intermediate tensors without reuse
    for name, value in run_graph(graph, feed).items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation,shape,k", [("relu", (2, 8, 13, 11), 3), ("none", (1, 24, 9, 9), 1),
                                                ("hardswish", (1, 16, 1, 1), 1)])  # direct, direct, vector
def test_conv_with_residual(activation: str, shape: tuple, k: int) -> None:
    rng = np.random.default_rng(k)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", *shape[1:]))
    z = b.input("z", "float32", ("n", *shape[1:]))
    w, bias = b.constant("w", f32(rng, shape[1], shape[1], k, k)), b.constant("b", f32(rng, shape[1]))
    b.output(b.node("Conv", [x, w, bias, z], pads=[k // 2] * 4, activation=activation), "float32")
    graph = b.build()
    feed = {"x": f32(rng, *shape), "z": f32(rng, *shape)}
    got = graph_native.load_executor(graph).run(feed)
    for name, value in run_graph(graph, feed).items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Z .* must have the output's shape"):
        graph_native.load_executor(graph).run({"x": feed["x"], "z": feed["z"][:, :-1]})
