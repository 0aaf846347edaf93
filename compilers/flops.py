"""Floating-point operation counts of an ONNX graph, for one forward pass at a given batch size.

    count = count_flops(onnx.load("model.onnx"), batch=1)
    count["total"], count["by_op"]["Conv"], count["uncounted"]

Conventions (the usual ones of papers and profilers, so numbers compare):

- a multiply-add is 2 FLOPs; a bias add is 1 per output element;
- Conv: 2·N·Cout·H'·W'·(Cin/group)·kH·kW (any number of spatial dims); ConvTranspose: 2 per input
  element per weight element of its group;
- Gemm and MatMul: 2·M·N·K (batched and broadcast MatMul: per output element 2·K);
- elementwise arithmetic and activations: 1 per output element of a floating-point result (integer
  shape arithmetic in dynamic graphs counts 0);
- pooling: kernel size per output element; global pooling: 1 per input element;
- Softmax/LogSoftmax: 3 per element; BatchNormalization: 2 per element (folded scale and shift);
  LayerNormalization: 5 per element; reductions: 1 per input element;
- pure data movement (Reshape, Transpose, Concat, Gather, Cast, ...) is known and counts 0.

Ops with no formula here, or whose shapes could not be inferred, count 0 and are listed (op types,
sorted) under "uncounted", so a caller can see what the total leaves out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import onnx
from onnx import TensorProto

log = logging.getLogger(__name__)

Shape = tuple[int, ...]

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}

ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Reciprocal", "Sqrt", "Exp", "Log", "Erf",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Max", "Min", "Sum", "Mean",
}  # fmt: skip
PER_ELEMENT = {"Softmax": 3, "LogSoftmax": 3, "BatchNormalization": 2, "LayerNormalization": 5}
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare"}
DATA_MOVEMENT = {
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "Shape", "Size", "Constant", "ConstantOfShape", "Identity", "Cast", "CastLike",
    "Expand", "Pad", "Dropout", "Range", "Tile", "Equal", "Less", "Greater", "Not", "And", "Or",
    "Where", "ArgMax", "ArgMin",
}  # fmt: skip


def count_flops(model: onnx.ModelProto, batch: int = 1) -> dict:
    """FLOPs of one forward pass: {"total": int, "by_op": {op_type: int}, "uncounted": [op_type]}.

    Every symbolic or unknown dimension of the graph inputs is set to `batch`, then ONNX shape
    inference (with data propagation, so dynamic Reshape targets resolve) gives every tensor's shape.
    The input model is not modified.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    graph = _with_fixed_inputs(model, batch).graph
    shapes, types = _shapes_and_types(graph)
    by_op: dict[str, int] = {}
    uncounted: set[str] = set()
    for node in graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if op in DATA_MOVEMENT:
            continue
        rule = RULES.get(op)
        if rule is None:
            uncounted.add(op)
            continue
        try:
            flops = rule(node, shapes, types)
        except _UnknownShape as err:
            log.warning("count_flops: %s node %r: shape of %s unknown, not counted", op, node.name, err)
            uncounted.add(op)
            continue
        by_op[op] = by_op.get(op, 0) + flops
    return {"total": sum(by_op.values()), "by_op": by_op, "uncounted": sorted(uncounted)}


# preparation ------------------------------------------------------------------------------------------
def _with_fixed_inputs(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    if fixed.functions:
        fixed = onnx.inliner.inline_local_functions(fixed)
    graph = fixed.graph
    initializers = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch  # replaces dim_param ("batch") or an unknown dim
    # Stale symbolic shapes of intermediate and output tensors would only conflict with the new ones.
    del graph.value_info[:]
    for value in graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    return onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)


def _shapes_and_types(graph: onnx.GraphProto) -> tuple[dict[str, Shape], dict[str, int]]:
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        types[tensor.name] = tensor.data_type
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type:
            types[value.name] = tensor_type.elem_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for node in graph.node:  # Constant nodes: shapes from their value attribute
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes, types


class _UnknownShape(Exception):
    pass


def _shape(shapes: dict[str, Shape], name: str) -> Shape:
    if not name or name not in shapes:
        raise _UnknownShape(name or "(missing input)")
    return shapes[name]


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _has_input(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


# rules: node, shapes, types -> FLOPs -------------------------------------------------------------------
Rule = Callable[[onnx.NodeProto, dict[str, Shape], dict[str, int]], int]


def _conv(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
    out = math.prod(_shape(shapes, node.output[0]))
    weight = _shape(shapes, node.input[1])  # (Cout, Cin/group, *kernel)
    bias = out if _has_input(node, 2) else 0
    return 2 * out * math.prod(weight[1:]) + bias


def _conv_like(weight_input: int, bias_input: int | None) -> Rule:
    """Integer convolutions (ConvInteger, QLinearConv) do the same multiply-adds as Conv, with the
    weight (and bias) at other input positions; they count as operations of the same size."""
    def rule(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
        out = math.prod(_shape(shapes, node.output[0]))
        weight = _shape(shapes, node.input[weight_input])
        bias = out if bias_input is not None and _has_input(node, bias_input) else 0
        return 2 * out * math.prod(weight[1:]) + bias

    return rule


def _conv_transpose(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
    x = math.prod(_shape(shapes, node.input[0]))
    weight = _shape(shapes, node.input[1])  # (Cin, Cout/group, *kernel)
    bias = math.prod(_shape(shapes, node.output[0])) if _has_input(node, 2) else 0
    return 2 * x * math.prod(weight[1:]) + bias


def _gemm(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
    a = _shape(shapes, node.input[0])  # (M, K), or (K, M) with transA
    k = a[0] if _attr(node, "transA", 0) else a[1]
    out = math.prod(_shape(shapes, node.output[0]))  # M·N
    bias = out if _has_input(node, 2) else 0
    return 2 * out * k + bias


def _matmul(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
    k = _shape(shapes, node.input[0])[-1]
    out = math.prod(_shape(shapes, node.output[0]))
    return 2 * out * k


def _elementwise(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
    if types.get(node.output[0], TensorProto.FLOAT) not in FLOAT_TYPES:
        return 0  # integer shape arithmetic, not floating-point work
    out = math.prod(_shape(shapes, node.output[0]))
    operands = sum(1 for name in node.input if name)
    if node.op_type in ("Max", "Min", "Sum", "Mean") and operands > 2:
        return out * (operands - 1)
    return out


def _pool(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
    kernel = _attr(node, "kernel_shape")
    if not kernel:
        raise _UnknownShape("kernel_shape")
    return math.prod(_shape(shapes, node.output[0])) * math.prod(kernel)


def _per_input_element(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
    return math.prod(_shape(shapes, node.input[0]))


def _per_element(factor: int) -> Rule:
    def rule(node: onnx.NodeProto, shapes: dict[str, Shape], types: dict[str, int]) -> int:
        return factor * math.prod(_shape(shapes, node.output[0]))

    return rule


RULES: dict[str, Rule] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    # quantized models: the same arithmetic in integers (counted as operations of the same size)
    "MatMulInteger": _matmul,
    "QLinearMatMul": _matmul,
    "ConvInteger": _conv_like(1, None),
    "QLinearConv": _conv_like(3, 8),
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _per_input_element,
    "GlobalMaxPool": _per_input_element,
    **{op: _elementwise for op in ELEMENTWISE},
    **{op: _per_element(factor) for op, factor in PER_ELEMENT.items()},
    **{op: _per_input_element for op in REDUCTIONS},
}
