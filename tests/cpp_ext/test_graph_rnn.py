"""The C++ LSTM and GRU against the numpy spec (graph_reference_rnn.py) on every ISA tier: directions,
GRU's linear_before_reset 0 and 1, biases and initial states, batches, weights given as constants (packed
at load) or as graph inputs, sequence_lens; and the refusals a user would meet (ragged batches, shapes)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder, GraphFormatError
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.conftest import run_on
from tests.cpp_ext.test_graph import f32

RNG = np.random.default_rng(13)
GATES = {"LSTM": 4, "GRU": 3}


def recurrent(op: str, steps: int, batch: int, size: int, hidden: int, direction: str = "forward",
              bias: bool = True, states: bool = True, weights_as_inputs: bool = False, lengths: bool = False,
              **attrs: int) -> tuple[object, dict[str, np.ndarray]]:
    """One LSTM / GRU node; the graph and a feed (x, and the weights when they are inputs)."""
    dirs, gh = (2 if direction == "bidirectional" else 1), GATES[op] * hidden
    b = GraphBuilder()
    feed = {"x": f32(RNG, steps, batch, size)}
    names = [b.input("x", "float32", (steps, batch, size))]
    params = {"W": f32(RNG, dirs, gh, size) * 0.4, "R": f32(RNG, dirs, gh, hidden) * 0.4}
    for name, value in params.items():
        if weights_as_inputs:
            names.append(b.input(name, "float32", value.shape))
            feed[name] = value
        else:
            names.append(b.constant(name, value))
    names.append(b.constant("B", f32(RNG, dirs, 2 * gh) * 0.3) if bias else "")
    if lengths:
        names.append(b.input("lens", "int32", (batch,)))
        feed["lens"] = np.full(batch, steps, np.int32)
    else:
        names.append("")
    for name in ("initial_h", "initial_c")[:2 if op == "LSTM" else 1]:
        names.append(b.constant(name, f32(RNG, dirs, batch, hidden) * 0.5) if states else "")
    while not names[-1]:
        names.pop()
    b.output(b.node(op, names, hidden_size=hidden, direction=direction, **attrs), "float32")
    return b.build(), feed


CASES = [("LSTM", "forward", {}), ("LSTM", "reverse", {}), ("LSTM", "bidirectional", {}),
         ("GRU", "forward", {}), ("GRU", "forward", {"linear_before_reset": 1}),
         ("GRU", "bidirectional", {"linear_before_reset": 1}), ("GRU", "reverse", {})]


@pytest.mark.parametrize("op,direction,attrs", CASES)
def test_matches_the_spec_on_every_tier(isa: str, op: str, direction: str, attrs: dict) -> None:
    graph, feed = recurrent(op, 7, 3, 10, 24, direction, **attrs)
    want = next(iter(run_graph(graph, feed).values()))
    got = run_on(graph, feed, isa)
    extra = 2 if op == "LSTM" else 1
    assert got.shape == (7 + extra, 2 if direction == "bidirectional" else 1, 3, 24)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_weights_as_inputs_without_bias_or_states(op: str) -> None:
    graph, feed = recurrent(op, 5, 2, 6, 8, "bidirectional", bias=False, states=False, weights_as_inputs=True)
    got = graph_native.load_executor(graph).run(feed)
    want = run_graph(graph, feed)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=2e-6)


def test_one_time_step_one_row_and_threads() -> None:
    graph, feed = recurrent("GRU", 1, 1, 40, 64, linear_before_reset=1)
    want = next(iter(run_graph(graph, feed).values()))
    np.testing.assert_allclose(run_on(graph, feed, "auto", threads=2), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_sequence_lens_full_runs_and_ragged_is_refused(op: str) -> None:
    graph, feed = recurrent(op, 4, 3, 5, 6, lengths=True)
    executor = graph_native.load_executor(graph)
    (name, want), = run_graph(graph, feed).items()
    np.testing.assert_allclose(executor.run(feed)[name], want, rtol=1e-5, atol=2e-6)
    feed["lens"] = np.asarray([4, 2, 4], np.int32)
    with pytest.raises(ValueError, match=r"ragged batches are not supported \(row 1 has 2\)"):
        executor.run(feed)


def test_wrong_weight_shape_is_refused_with_the_expected_shape() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", (3, 1, 4))
    node = b.node("LSTM", [x, b.constant("W", f32(RNG, 1, 12, 5)), b.constant("R", f32(RNG, 1, 12, 3))],
                  hidden_size=3)
    b.output(node, "float32")
    with pytest.raises((ValueError, GraphFormatError), match=r"W must be \(1, 12, 4\)"):
        graph_native.load_executor(b.build()).run({"x": f32(RNG, 3, 1, 4)})
