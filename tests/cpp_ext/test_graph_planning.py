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


# direct, direct, vector; then 100 channels (3 W panels) with a clip, and a HardSwish after the add (its
# own pass: the avx512 kernel adds Z in its store only before a clamp).
@pytest.mark.parametrize("activation,shape,k", [("relu", (2, 8, 13, 11), 3), ("none", (1, 24, 9, 9), 1),
                                                ("hardswish", (1, 16, 1, 1), 1), ("clip", (2, 100, 6, 7), 3),
                                                ("hardswish", (1, 20, 5, 5), 3)])
def test_conv_with_residual(activation: str, shape: tuple, k: int) -> None:
    rng = np.random.default_rng(k)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", *shape[1:]))
    z = b.input("z", "float32", ("n", *shape[1:]))
    w, bias = b.constant("w", f32(rng, shape[1], shape[1], k, k)), b.constant("b", f32(rng, shape[1]))
    clip = {"act_min": -0.5, "act_max": 0.5} if activation == "clip" else {}
    b.output(b.node("Conv", [x, w, bias, z], pads=[k // 2] * 4, activation=activation, **clip), "float32")
    graph = b.build()
    feed = {"x": f32(rng, *shape), "z": f32(rng, *shape)}
    want = run_graph(graph, feed)
    try:
        for isa in graph_native.available_isas():  # avx512 adds Z in the kernel, the others after it
            graph_native.select_isa(isa)
            got = graph_native.load_executor(graph).run(feed)
            for name, value in want.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5 * np.sqrt(k * k * shape[1]),
                                           err_msg=isa)
    finally:
        graph_native.select_isa("auto")
    with pytest.raises(ValueError, match="Z .* must have the output's shape"):
        graph_native.load_executor(graph).run({"x": feed["x"], "z": feed["z"][:, :-1]})
