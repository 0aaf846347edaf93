"""The native target: ONNX -> an edgefleet graph (.efg) for edgefleet's own C++ executor.

    artifact "native/model.efg", backend "native", format "edgefleet-graph", device "cpu"

The device needs neither onnx nor torch: edgefleet.cpp_ext.graph_format reads the file with numpy and
json, and edgefleet.cpp_ext._native runs it. The conversion (`onnx_to_graph`):

1. initializers and Constant nodes become constants; every node whose inputs are all constants is
   evaluated here (onnx's reference runtime) and becomes a constant too (shape arithmetic, Cast, ...);
   Shape of a value whose dims the schema fixes (all but a symbolic batch) and Gather of fixed dims from it
   become constants too, and the shape arithmetic after them is folded (native_float_passes.py);
2. float rewrites (native_float_passes.py): BatchNormalization folded into the Conv or Gemm before it (else
   Mul + Add by per-channel constants), ReduceMean over H, W -> GlobalAveragePool [-> Flatten], x *
   HardSigmoid(x) -> HardSwish;
3. QDQ int8 models: DequantizeLinear -> Conv/Gemm/MatMul [-> Relu] -> QuantizeLinear becomes QConv/QGemm
   (integer arithmetic on the device), and DequantizeLinear -> MaxPool/Reshape/... -> QuantizeLinear with
   equal parameters runs on the quantized tensor (native_passes.py); leftover weight DequantizeLinear
   nodes are folded into float constants;
4. a group-1 Conv whose only reader is a same-shaped residual Add takes the residual as input Z
   (fuse_residual_add); Conv/Gemm followed by Relu, HardSwish or a constant Clip become one node;
   older opset forms (Clip and Squeeze attributes, Softmax before opset 13)
   are rewritten to the format's (graph_ops.py lists the op set); LSTM and GRU become the format's
   one-output forms, their outputs Slices of it (native_rnn_passes.py);
5. anything left that the executor does not run (an op, an attribute value, a dtype, a rank) is refused
   with one CompileError naming every such node; the graph is loaded (and, with static input shapes,
   run once on zeros) before it is written, so a device never meets an op it cannot run.

Options: none yet (the executor is single-threaded; the artifact's options are empty).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefleet.compilers.targets import CompileSource, TargetResult
from edgefleet.compilers.targets.native_float_passes import (
    fold_batch_norm,
    fold_static_shapes,
    fuse_hard_swish,
    fuse_residual_add,
    reduce_mean_to_pool,
)
from edgefleet.compilers.targets.native_passes import (
    WorkGraph,
    WorkNode,
    fold_constants,
    fold_dequantized_constants,
    fuse_activations,
    fuse_qdq,
    prune,
)
from edgefleet.compilers.targets.native_rnn_passes import RECURRENT, lower_recurrent, recurrent_problem
from edgefleet.compilers.targets.native_tensor_passes import lift_1d, normalise_tensor_op, split_to_slices
from edgefleet.core.errors import CompileError
from edgefleet.cpp_ext.graph_format import DTYPES, FORMAT_VERSION, Graph, GraphFormatError, ValueInfo, write_graph
from edgefleet.cpp_ext.graph_ops import OPS, infer_dtypes

ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "uint8"}  # bool as uint8 0/1
_WINDOW = ["auto_pad", "dilations", "kernel_shape", "pads", "strides"]
# the attributes each op may carry (anything else is refused rather than ignored)
ATTRIBUTES: dict[str, list[str]] = {
    "Conv": [*_WINDOW, "group", "activation", "act_min", "act_max"], "QConv": [*_WINDOW, "group", "activation"],
    "Gemm": ["transA", "transB", "alpha", "beta", "activation", "act_min", "act_max"], "QGemm": ["activation"],
    "QAdd": ["activation"], "QMul": ["activation"],
    "MaxPool": [*_WINDOW, "ceil_mode", "storage_order"], "AveragePool": [*_WINDOW, "ceil_mode", "count_include_pad"],
    "Softmax": ["axis", "coerce_2d"], "Flatten": ["axis"], "Reshape": ["allowzero"], "Transpose": ["perm"],
    "QuantizeLinear": ["axis", "output_dtype", "saturate", "block_size"], "DequantizeLinear": ["axis", "block_size"],
    "HardSigmoid": ["alpha", "beta"], "LeakyRelu": ["alpha"], "Concat": ["axis"],
    "Gelu": ["approximate"], "Cast": ["to"], "Gather": ["axis"], "Pad": ["mode"],
    "LayerNormalization": ["axis", "epsilon"],
    "Resize": ["mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
               "antialias", "keep_aspect_ratio_policy", "extrapolation_value"],  # the executor refuses non-defaults
    "ConvTranspose": [*_WINDOW, "group", "output_padding"],
    "LSTM": ["hidden_size", "direction"], "GRU": ["hidden_size", "direction", "linear_before_reset"],
    **{op: ["keepdims", "noop_with_empty_axes"] for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2")},
}


def compile(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    if options:
        raise CompileError(f"native: unknown option(s) {', '.join(sorted(options))}")
    graph, info = onnx_to_graph(onnx.load(str(source.onnx_file("native"))))
    rel = "native/model.efg"
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    size = write_graph(graph, out_dir / rel)
    artifact = {
        "backend": "native", "format": "edgefleet-graph", "path": rel,
        "precision": source.artifact.get("precision", "fp32"), "device": "cpu", "options": {},
        "compile": {**info, "bytes": size, "onnx": onnx.__version__, "format_version": FORMAT_VERSION},
    }
    return TargetResult(artifact, check_backend="native")


def onnx_to_graph(model: onnx.ModelProto) -> tuple[Graph, dict[str, Any]]:
    """The model as an edgefleet graph, plus what the conversion did (ops, fused patterns, opset).
    CompileError names every node the native executor cannot run."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [_value_info(v) for v in g.input if v.name not in constants]
    outputs = [_value_info(v) for v in g.output]
    nodes = [WorkNode(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}", n.name or n.output[0],
                      list(n.input), list(n.output), _attributes(n), n) for n in g.node]
    work = WorkGraph(nodes, constants, [o.name for o in outputs])
    shapes = _shapes(model)
    ranks = {name: len(dims) for name, dims in shapes.items()}
    fold_constants(work)
    while fold_static_shapes(work, shapes):
        fold_constants(work)
    split_to_slices(work, shapes)
    lower_recurrent(work, shapes)
    fold_batch_norm(work, ranks)
    reduce_mean_to_pool(work, ranks)
    fuse_hard_swish(work)
    fuse_qdq(work, shapes)
    fold_dequantized_constants(work)
    for node in work.nodes:
        _normalise(node, opset, work)
        normalise_tensor_op(node, work, ranks)
    fuse_residual_add(work, shapes)
    fuse_activations(work)
    lift_1d(work, ranks)
    prune(work)
    _refuse_unsupported(work, ranks)
    graph = Graph(tuple(inputs), tuple(outputs), {k: _constant(k, v) for k, v in work.constants.items()},
                  tuple(_format_node(n) for n in work.nodes),
                  {"producer": f"{model.producer_name} {model.producer_version}".strip(), "opset": opset})
    try:
        infer_dtypes(graph)
    except GraphFormatError as err:
        raise CompileError(f"native: {err}") from err
    _try_load(graph)
    info = {"opset": opset, "ops": dict(sorted(Counter(n.op for n in graph.nodes).items())),
            "fused": dict(sorted(work.fused.items())), "nodes": len(graph.nodes), "constants": len(graph.constants)}
    return graph, info


def _value_info(value: onnx.ValueInfoProto) -> ValueInfo:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tensor.elem_type not in ELEM_TYPES:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if value.type.HasField("tensor_type") else "non-tensor"
        raise CompileError(f"native: graph input/output {value.name!r} has type {kind}; supported: "
                           f"{', '.join(ELEM_TYPES.values())} tensors")
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    return ValueInfo(value.name, ELEM_TYPES[tensor.elem_type], dims)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value if isinstance(value, int | float | str | list) else onnx.AttributeProto
    return out


def _normalise(node: WorkNode, opset: int, work: WorkGraph) -> None:
    """Older opset forms -> the format's (inputs instead of attributes; Softmax's 2-D semantics)."""
    attrs = node.attrs
    if node.op == "Clip" and ("min" in attrs or "max" in attrs):
        node.inputs = [node.inputs[0]] + [_const(work, node, k, np.float32(attrs.pop(k, d)))
                                          for k, d in (("min", -np.inf), ("max", np.inf))]
    if node.op in ("Squeeze", "Unsqueeze") and "axes" in attrs:
        node.inputs = [node.inputs[0], _const(work, node, "axes", np.asarray(attrs.pop("axes"), np.int64))]
    if node.op == "Softmax" and opset < 13:
        attrs.update(axis=int(attrs.get("axis", 1)), coerce_2d=1)
    if node.op == "QuantizeLinear":
        attrs.pop("saturate", None)
        if "output_dtype" in attrs:
            attrs["output_dtype"] = ELEM_TYPES.get(int(attrs["output_dtype"]), str(attrs["output_dtype"]))
            if attrs["output_dtype"] == "":
                attrs.pop("output_dtype")
    if node.op == "MaxPool" and len(node.outputs) > 1:
        if node.outputs[1] and (work.consumers(node.outputs[1]) or node.outputs[1] in work.outputs):
            attrs["_indices"] = 1  # refused below: the Indices output is not supported
        node.outputs = node.outputs[:1]


def _const(work: WorkGraph, node: WorkNode, key: str, value: np.ndarray) -> str:
    name = f"{node.name}::{key}"
    work.constants[name] = np.asarray(value)
    return name


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """Every value's dims as onnx's shape inference sees them (int, or str for a symbolic / unknown dim)."""
    inferred = model
    for data_prop in (True, False):  # data propagation sees through Shape arithmetic, but may fail
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
            break
        except Exception:  # noqa: BLE001, S112 - shape inference is a help here, not a requirement
            continue
    g = inferred.graph
    return {v.name: tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                          for d in v.type.tensor_type.shape.dim)
            for v in [*g.value_info, *g.input, *g.output] if v.type.tensor_type.HasField("shape")}


def _problem(node: WorkNode, ranks: dict[str, int]) -> str:
    if node.op not in OPS:
        return "op not supported"
    if node.op in RECURRENT and (problem := recurrent_problem(node)):
        return problem
    unknown = sorted(set(node.attrs) - set(ATTRIBUTES.get(node.op, [])))
    if unknown:
        return f"attribute(s) {', '.join(unknown)} not supported"
    if node.op in ("Conv", "QConv", "MaxPool", "AveragePool"):
        rank = ranks.get(node.inputs[0])
        kernel = node.attrs.get("kernel_shape")
        if (rank is not None and rank != 4) or (kernel is not None and len(kernel) != 2):
            return "only 1-D (NCW) and 2-D (NCHW) inputs are supported"
    if node.op in ("GlobalAveragePool", "GlobalMaxPool") and ranks.get(node.inputs[0], 4) < 3:
        return "needs an (N, C, spatial...) input"
    if node.op in ("Clip", "Reshape", "Squeeze", "Unsqueeze", "QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"):
        if any(v is onnx.AttributeProto for v in node.attrs.values()):
            return "graph or tensor attributes not supported"
    return ""


def _refuse_unsupported(work: WorkGraph, ranks: dict[str, int]) -> None:
    problems = [f"{n.op} (node {n.name!r}): {p}" for n in work.nodes if (p := _problem(n, ranks))]
    bad = [f"constant {k!r} of dtype {v.dtype}" for k, v in work.constants.items() if str(v.dtype) not in DTYPES]
    if problems or bad:
        raise CompileError("native: the model uses what the native backend does not run: " + "; ".join(problems + bad))


def _constant(name: str, value: np.ndarray) -> np.ndarray:
    return np.array(value, order="C", dtype=np.uint8 if value.dtype == np.bool_ else value.dtype)


def _format_node(node: WorkNode) -> Any:
    from edgefleet.cpp_ext.graph_format import Node

    attrs = {k: (float(v) if isinstance(v, float) else v) for k, v in node.attrs.items()}
    return Node(node.op, node.name, tuple(node.inputs), tuple(node.outputs[:1]), attrs)


def _try_load(graph: Graph) -> None:
    """Loads the graph into the executor (and runs it once on zeros when the input shapes are static)."""
    from edgefleet.cpp_ext.graph_native import load_executor

    try:
        executor = load_executor(graph)
        if all(isinstance(d, int) for i in graph.inputs for d in i.shape):
            feed = {i.name: np.zeros(i.shape, i.dtype) for i in graph.inputs if i.dtype != "int64"}
            if len(feed) == len(graph.inputs):
                executor.run(feed)
    except (ValueError, GraphFormatError) as err:
        raise CompileError(f"native: the native executor refuses the model: {err}") from err
