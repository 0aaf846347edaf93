"""ONNX LSTM and GRU through the native target against onnxruntime (onnx's reference for layout 1), on
what ONNX's own backend cases do not reach: GRU's linear_before_reset=1 (what torch exports), every output
(Y, Y_h, Y_c) at once, layout 1 with initial states, a constant full sequence_lens; and the variants the
native backend refuses, each named in the compile error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgefleet.compilers.targets.native import onnx_to_graph
from edgefleet.core.errors import CompileError
from edgefleet.cpp_ext.graph_native import load_executor

RNG = np.random.default_rng(21)
T, B, IN, H = 6, 3, 5, 7


def model(op: str, direction: str = "forward", layout: int = 0, outputs: int = 3, lengths: list | None = None,
          peepholes: bool = False, **attrs: object) -> onnx.ModelProto:
    dirs, gates = (2 if direction == "bidirectional" else 1), (4 if op == "LSTM" else 3)
    x_shape = [B, T, IN] if layout else [T, B, IN]
    state = [B, dirs, H] if layout else [dirs, B, H]
    inits = [numpy_helper.from_array((RNG.standard_normal(s) * 0.4).astype(np.float32), n) for n, s in
             (("W", (dirs, gates * H, IN)), ("R", (dirs, gates * H, H)), ("B", (dirs, 2 * gates * H)))]
    inputs = ["x", "W", "R", "B", "", "h0"] + (["c0"] if op == "LSTM" else [])
    if lengths is not None:
        inits.append(numpy_helper.from_array(np.asarray(lengths, np.int32), "lens"))
        inputs[4] = "lens"
    if peepholes:
        inits.append(numpy_helper.from_array(np.ones((dirs, 3 * H), np.float32), "P"))
        inputs.append("P")
    names = ["Y", "Y_h", "Y_c"][:min(outputs, 3 if op == "LSTM" else 2)]
    node = helper.make_node(op, inputs, names, name="cell", hidden_size=H, direction=direction, layout=layout,
                            **attrs)
    y_shape = [B, T, dirs, H] if layout else [T, dirs, B, H]
    graph = helper.make_graph(
        [node], "rnn",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
         (("x", x_shape), ("h0", state), ("c0", state)) if n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, y_shape if n == "Y" else state) for n in names],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def compare(proto: onnx.ModelProto) -> None:
    feed = {i.name: (RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * 0.8)
            .astype(np.float32) for i in proto.graph.input}
    if any(a.name == "layout" and a.i == 1 for a in proto.graph.node[0].attribute):
        want = ReferenceEvaluator(proto).run(None, feed)  # onnxruntime's CPU cells refuse layout 1
    else:
        want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    graph, _ = onnx_to_graph(proto)
    got = load_executor(graph).run(feed)
    for output, expected in zip(proto.graph.output, want, strict=True):
        assert got[output.name].shape == expected.shape, output.name
        np.testing.assert_allclose(got[output.name], expected, rtol=1e-5, atol=3e-6, err_msg=output.name)


@pytest.mark.parametrize("op,direction,layout,attrs", [
    ("GRU", "forward", 0, {"linear_before_reset": 1}),
    ("GRU", "bidirectional", 1, {"linear_before_reset": 1}),
    ("GRU", "reverse", 1, {}),
    ("LSTM", "bidirectional", 1, {}),
    ("LSTM", "forward", 0, {"input_forget": 0, "activations": ["Sigmoid", "Tanh", "Tanh"]}),
])
def test_every_output_matches_onnxruntime(op: str, direction: str, layout: int, attrs: dict) -> None:
    compare(model(op, direction, layout, lengths=[T] * B, **attrs))


@pytest.mark.parametrize("op,kwargs,message", [
    ("LSTM", {"peepholes": True}, r"LSTM \(node 'cell'\): peepholes \(input P\) not supported"),
    ("LSTM", {"clip": 2.0}, r"LSTM \(node 'cell'\): clip not supported"),
    ("GRU", {"activations": ["Relu", "Tanh"]}, r"GRU \(node 'cell'\): activations other than the defaults"),
    ("LSTM", {"input_forget": 1}, r"input_forget=1 not supported"),
    ("GRU", {"lengths": [T, 2, T]}, r"a ragged sequence_lens \(every row must be T\) not supported"),
])
def test_unclaimed_variants_are_refused_by_name(op: str, kwargs: dict, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        onnx_to_graph(model(op, **kwargs))
