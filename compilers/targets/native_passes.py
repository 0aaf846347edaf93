"""Graph rewrites of the native target, on a small mutable node list (not ONNX protos):

- fold_constants: a node whose inputs are all constants becomes a constant (evaluated with onnx's
  reference runtime), except DequantizeLinear of weights, which fuse_qdq still needs to see.
- fuse_qdq: DequantizeLinear -> Conv | Gemm | MatMul [-> Relu] -> QuantizeLinear with constant weights
  becomes one integer op (QConv / QGemm: int8/uint8 inputs, int32 accumulation, requantized output);
  DequantizeLinear -> MaxPool | Reshape | Flatten | Squeeze | Unsqueeze | Identity | Transpose ->
  QuantizeLinear with the same scale and zero point becomes the op on the quantized tensor;
  DequantizeLinear x 2 -> Add | Mul [-> Relu] -> QuantizeLinear on two same-shaped tensors (residual
  adds, x * HardSigmoid(x)) becomes QAdd / QMul on the bytes (the float island's arithmetic, fused).
- fuse_activations: Conv | Gemm followed by Relu, HardSwish, or Clip with constant bounds, becomes one node.
- prune: drops nodes whose outputs nothing uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose")


@dataclass
class WorkNode:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    proto: Any = None  # the ONNX NodeProto it came from, for constant folding


@dataclass
class WorkGraph:
    nodes: list[WorkNode]
    constants: dict[str, np.ndarray]
    outputs: list[str]
    fused: dict[str, int] = field(default_factory=dict)

    def producer(self, value: str) -> WorkNode | None:
        return next((n for n in self.nodes if value in n.outputs), None)

    def consumers(self, value: str) -> list[WorkNode]:
        return [n for n in self.nodes if value in n.inputs]

    def only_consumer(self, value: str) -> WorkNode | None:
        """The single node that reads value, if exactly one does and value is not a graph output."""
        users = self.consumers(value)
        return users[0] if len(users) == 1 and value not in self.outputs else None

    def const(self, value: str) -> np.ndarray | None:
        return self.constants.get(value) if value else None

    def count(self, pattern: str) -> None:
        self.fused[pattern] = self.fused.get(pattern, 0) + 1


def fold_constants(graph: WorkGraph) -> None:
    from onnx.reference import ReferenceEvaluator

    for node in list(graph.nodes):
        inputs = [v for v in node.inputs if v]
        if node.op == "DequantizeLinear" or not all(v in graph.constants for v in inputs) or node.proto is None:
            continue
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.proto.attribute):
            continue
        results = ReferenceEvaluator(node.proto).run(None, {v: graph.constants[v] for v in inputs})
        for name, value in zip(node.outputs, results, strict=False):
            if name:
                graph.constants[name] = np.array(value, order="C")
        graph.nodes.remove(node)
        graph.count("constant folding")


def fold_dequantized_constants(graph: WorkGraph) -> None:
    """What fuse_qdq left: DequantizeLinear of constants becomes float constants."""
    from onnx.reference import ReferenceEvaluator

    for node in list(graph.nodes):
        if node.op == "DequantizeLinear" and all(v in graph.constants for v in node.inputs if v):
            feed = {v: graph.constants[v] for v in node.inputs if v}
            graph.constants[node.outputs[0]] = np.asarray(ReferenceEvaluator(node.proto).run(None, feed)[0])
            graph.nodes.remove(node)


def prune(graph: WorkGraph) -> None:
    changed = True
    while changed:
        used = set(graph.outputs) | {v for n in graph.nodes for v in n.inputs}
        keep = [n for n in graph.nodes if any(o in used for o in n.outputs if o)]
        changed = len(keep) != len(graph.nodes)
        graph.nodes = keep
    used = {v for n in graph.nodes for v in n.inputs} | set(graph.outputs)
    graph.constants = {k: v for k, v in graph.constants.items() if k in used}


def fuse_activations(graph: WorkGraph) -> None:
    for node in list(graph.nodes):
        if node.op not in ("Conv", "Gemm") or node.attrs.get("activation", "none") != "none":
            continue
        user = graph.only_consumer(node.outputs[0])
        if user is None or user.op not in ("Relu", "Clip", "HardSwish"):
            continue
        if user.op == "HardSwish":
            node.attrs["activation"] = "hardswish"
        elif user.op == "Clip":
            low, high = (graph.const(v) for v in (user.inputs + ["", ""])[1:3])
            if any(v and graph.const(v) is None for v in user.inputs[1:]):
                continue
            node.attrs.update(activation="clip", act_min=float(low) if low is not None else float("-inf"),
                              act_max=float(high) if high is not None else float("inf"))
        else:
            node.attrs["activation"] = "relu"
        node.outputs = list(user.outputs)
        graph.nodes.remove(user)
        graph.count(f"{node.op}+{user.op}")


def _qparams(graph: WorkGraph, node: WorkNode | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero_point) of a Quantize/DequantizeLinear with constant, per-tensor parameters."""
    if node is None or int(node.attrs.get("block_size", 0)):
        return None
    scale = graph.const(node.inputs[1])
    zero = graph.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if scale is None or scale.size != 1 or (len(node.inputs) > 2 and node.inputs[2] and zero is None):
        return None
    if zero is None:
        zero = np.zeros((), np.uint8)
    return scale.reshape(()), zero.reshape(())


def _dequantize_producer(graph: WorkGraph, value: str) -> WorkNode | None:
    node = graph.producer(value)
    return node if node is not None and node.op == "DequantizeLinear" else None


def fuse_qdq(graph: WorkGraph, shapes: dict[str, tuple] | None = None) -> None:
    """shapes: value -> dims (shape inference); Add / Mul fuse only where both inputs' are known and equal."""
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op in ("Conv", "Gemm", "MatMul") and _fuse_linear(graph, node):
                changed = True
            elif node.op in PASS_THROUGH and _pass_through(graph, node):
                changed = True
            elif node.op in ("Add", "Mul") and _fuse_binary(graph, node, shapes or {}):
                changed = True


def _fuse_binary(graph: WorkGraph, node: WorkNode, shapes: dict[str, tuple]) -> bool:
    dqs = [_dequantize_producer(graph, v) for v in node.inputs[:2]]
    if len(node.inputs) != 2 or any(dq is None or dq.inputs[0] in graph.constants for dq in dqs):
        return False
    dims = [shapes.get(v) for v in node.inputs]
    if dims[0] is None or dims[0] != dims[1] or "?" in dims[0]:  # a named dim ("batch") is the same on both
        return False
    relu = graph.only_consumer(node.outputs[0])
    q = graph.only_consumer(relu.outputs[0]) if relu is not None and relu.op == "Relu" else relu
    relu = relu if relu is not None and relu.op == "Relu" else None
    params = [_qparams(graph, dq) for dq in dqs] + [_qparams(graph, q) if q is not None and q.op == "QuantizeLinear"
                                                     else None]
    if any(p is None or p[1].dtype not in (np.uint8, np.int8) for p in params):
        return False
    a, b = dqs
    inputs = [a.inputs[0], a.inputs[1], _zero_input(graph, a, params[0]), b.inputs[0], b.inputs[1],
              _zero_input(graph, b, params[1]), q.inputs[1], _zero_input(graph, q, params[2])]
    fused = WorkNode("Q" + node.op, node.name, inputs, list(q.outputs),
                     {"activation": "relu" if relu is not None else "none"})
    graph.nodes[graph.nodes.index(node)] = fused
    for gone in (relu, q):
        if gone is not None:
            graph.nodes.remove(gone)
    graph.count(f"DequantizeLinear+{node.op}{'+Relu' if relu else ''}+QuantizeLinear")
    for dq in dqs:
        prune_unused(graph, dq)
    return True


def _pass_through(graph: WorkGraph, node: WorkNode) -> bool:
    dq = _dequantize_producer(graph, node.inputs[0])
    q = graph.only_consumer(node.outputs[0]) if len([o for o in node.outputs if o]) == 1 else None
    if dq is None or q is None or q.op != "QuantizeLinear" or dq.inputs[0] in graph.constants:
        return False
    a, b = _qparams(graph, dq), _qparams(graph, q)
    if a is None or b is None or a[0] != b[0] or a[1] != b[1] or a[1].dtype != b[1].dtype:
        return False
    node.inputs[0] = dq.inputs[0]
    node.outputs = list(q.outputs)
    graph.nodes.remove(q)
    graph.count(f"DequantizeLinear+{node.op}+QuantizeLinear")
    prune_unused(graph, dq)
    return True


def prune_unused(graph: WorkGraph, node: WorkNode) -> None:
    if node in graph.nodes and not graph.consumers(node.outputs[0]) and node.outputs[0] not in graph.outputs:
        graph.nodes.remove(node)


def _fuse_linear(graph: WorkGraph, node: WorkNode) -> bool:
    x_dq = _dequantize_producer(graph, node.inputs[0])
    w_dq = _dequantize_producer(graph, node.inputs[1])
    if x_dq is None or w_dq is None or x_dq.inputs[0] in graph.constants:
        return False
    x_params = _qparams(graph, x_dq)
    weights = _weights(graph, node, w_dq)
    if x_params is None or weights is None:
        return False
    relu = graph.only_consumer(node.outputs[0])
    q = graph.only_consumer(relu.outputs[0]) if relu is not None and relu.op == "Relu" else relu
    relu = relu if relu is not None and relu.op == "Relu" else None
    y_params = _qparams(graph, q) if q is not None and q.op == "QuantizeLinear" else None
    if y_params is None or x_params[1].dtype not in (np.uint8, np.int8) or y_params[1].dtype not in (np.uint8, np.int8):
        return False
    w, w_scale, w_zero = weights
    channels = w.shape[0] if node.op == "Conv" else w.shape[1]
    bias = _int_bias(graph, node, x_params[0], w_scale)
    if bias is False or (bias is not None and bias.size not in (1, channels)):
        return False
    bias = None if bias is None else np.broadcast_to(bias, (channels,)).astype(np.int32)
    prefix = node.name or node.outputs[0]
    names = {}
    for key, value in (("w", w), ("w_scale", w_scale), ("w_zero", w_zero), ("bias", bias)):
        if value is not None:
            names[key] = f"{prefix}::{key}"
            graph.constants[names[key]] = np.array(value, order="C")
    op = "QConv" if node.op == "Conv" else "QGemm"
    attrs = {k: v for k, v in node.attrs.items() if k not in ("transA", "transB", "alpha", "beta")}
    attrs["activation"] = "relu" if relu is not None else "none"
    inputs = [x_dq.inputs[0], x_dq.inputs[1], _zero_input(graph, x_dq, x_params), names["w"], names["w_scale"],
              names["w_zero"], q.inputs[1], _zero_input(graph, q, y_params), names.get("bias", "")]
    fused = WorkNode(op, node.name, inputs, list(q.outputs), attrs)
    graph.nodes[graph.nodes.index(node)] = fused
    for gone in (relu, q):
        if gone is not None:
            graph.nodes.remove(gone)
    for dq in (x_dq, w_dq):
        prune_unused(graph, dq)
    graph.count(f"DequantizeLinear+{node.op}{'+Relu' if relu else ''}+QuantizeLinear")
    return True


def _zero_input(graph: WorkGraph, node: WorkNode, params: tuple[np.ndarray, np.ndarray]) -> str:
    if len(node.inputs) > 2 and node.inputs[2]:
        return node.inputs[2]
    name = f"{node.name}::zero_point"
    graph.constants[name] = params[1]
    return name


def _weights(graph: WorkGraph, node: WorkNode, w_dq: WorkNode) -> tuple | None:
    """(w, w_scale, w_zero) laid out as the fused op wants: QConv (M, C, kH, kW) or (M, C, k) per M; QGemm
    (K, N) per N."""
    w = graph.const(w_dq.inputs[0])
    scale = graph.const(w_dq.inputs[1])
    zero = graph.const(w_dq.inputs[2]) if len(w_dq.inputs) > 2 and w_dq.inputs[2] else None
    if w is None or scale is None or w.dtype not in (np.int8, np.uint8) or int(w_dq.attrs.get("block_size", 0)):
        return None
    zero = np.zeros(scale.shape, w.dtype) if zero is None else zero
    axis = int(w_dq.attrs.get("axis", 1)) % max(w.ndim, 1)
    if node.op == "Conv":
        if w.ndim not in (3, 4) or (scale.size != 1 and axis != 0):
            return None
        return w, scale.reshape(-1), zero.reshape(-1)
    if w.ndim != 2:
        return None
    trans_b = int(node.attrs.get("transB", 0)) if node.op == "Gemm" else 0
    if node.op == "Gemm" and (int(node.attrs.get("transA", 0)) or float(node.attrs.get("alpha", 1.0)) != 1.0
                              or float(node.attrs.get("beta", 1.0)) != 1.0):
        return None
    if scale.size != 1 and axis != (0 if trans_b else 1):
        return None
    return (w.T if trans_b else w), scale.reshape(-1), zero.reshape(-1)


def _int_bias(graph: WorkGraph, node: WorkNode, x_scale: np.ndarray, w_scale: np.ndarray):
    """The int32 bias (None if there is none, False if it cannot be fused)."""
    if node.op == "MatMul" or len(node.inputs) < 3 or not node.inputs[2]:
        return None
    dq = _dequantize_producer(graph, node.inputs[2])
    want_scale = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    if dq is not None:
        raw, scale = graph.const(dq.inputs[0]), graph.const(dq.inputs[1])
        zero = graph.const(dq.inputs[2]) if len(dq.inputs) > 2 and dq.inputs[2] else np.zeros(1, np.int32)
        if raw is None or scale is None or zero is None or raw.dtype != np.int32 or np.any(zero != 0):
            return False
        if not np.allclose(np.broadcast_to(scale.reshape(-1), want_scale.shape), want_scale, rtol=1e-5, atol=0):
            return False
        return raw.reshape(-1)
    bias = graph.const(node.inputs[2])
    if bias is None or bias.dtype != np.float32 or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
        return False
    return np.round(bias.reshape(-1) / want_scale).astype(np.int32)
