"""The native backend's op set: which ops a graph may hold, with which dtypes, and each value's dtype.

Ops follow ONNX (same inputs, attributes and semantics, opset 13+) unless noted; the numpy spec is
`edgefleet.cpp_ext.graph_reference`. 2-D only: Conv, QConv, MaxPool, AveragePool take NCHW inputs. A Conv
with one input channel per group and a constant W (depthwise) runs a dedicated kernel.

    Conv(X, W, B?, Z?)             float32; auto_pad, dilations, group, kernel_shape, pads, strides, plus
                                   the fused activation: activation "none" | "relu" | "clip" (act_min, act_max)
                                   | "hardswish"; Z (the output's shape): a residual added before the
                                   activation, y = act(conv(X, W) + B + Z)
    Gemm(A, B, C?)                 float32; transA, transB, alpha, beta, activation, act_min, act_max
    MatMul(A, B)                   float32, numpy broadcasting of the batch dims
    Relu(X), Clip(X, min?, max?)   float32
    Sigmoid, Tanh, HardSwish (X)   float32
    HardSigmoid(X)                 float32; alpha, beta: max(0, min(1, alpha * x + beta)) in float32
    LeakyRelu(X)                   float32; alpha
    Add, Sub, Mul, Div (A, B)      float32, numpy broadcasting
    MaxPool(X)                     float32, uint8, int8 (one output: no Indices)
    AveragePool(X)                 float32; count_include_pad, ceil_mode, dilations
    GlobalAveragePool, GlobalMaxPool (X)   float32
    Softmax(X)                     float32; axis; coerce_2d=1 gives opset < 13 semantics (flatten at axis)
    Concat(X, ...)                 any dtype (all inputs the same); axis
    Flatten, Reshape(X, shape int64), Squeeze(X, axes?), Unsqueeze(X, axes), Identity, Transpose (perm)
                                   any dtype
    QuantizeLinear(x float32, scale float32, zero_point? uint8|int8) -> uint8|int8 (output_dtype attr
                                   or the zero point's type, else uint8); per tensor or per axis
    DequantizeLinear(x uint8|int8|int32, scale float32, zero_point?) -> float32; per tensor or per axis
    QConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B?)
                                   edgefleet's fused int8 conv (ONNX QLinearConv's inputs): x uint8|int8,
                                   w int8|uint8 (scale/zero point per tensor or per output channel), B int32;
                                   acc = sum((x - zx) * (w - zw)) + B in int32; multiplier[c] =
                                   float32(float32(x_scale * w_scale[c]) / y_scale); y = saturate(
                                   round_half_even(float32(acc) * multiplier[c]) + zy), activation "relu"
                                   clamps below at zy. Attributes as Conv. All inputs but x constant.
    QAdd, QMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point)
                                   edgefleet's fused int8 Add / Mul of two same-shaped uint8|int8 tensors
                                   (per-tensor parameters, all constant): exactly DequantizeLinear of each,
                                   the float32 op, [Relu,] QuantizeLinear: y = saturate(round_half_even(
                                   float32((a - za) * sa op (b - zb) * sb) / y_scale) + zy); activation
                                   "none" | "relu" (clamps below at zy)
    Erf, Gelu (approximate "none" | "tanh"), Sqrt, Reciprocal, Exp, Neg (X)   float32
    Pow(X, Y), PRelu(X, slope)     float32, numpy broadcasting (PRelu: x < 0 ? slope * x : x)
    Equal(A, B)                    any dtype (both the same) -> uint8 (the format's bool: 0 or 1)
    Where(C uint8, X, Y)           X, Y any dtype (the same), broadcasting of all three
    Cast(X)                        any dtype -> to (a dtype name); float -> int truncates toward zero
    Expand(X, shape int64)         any dtype
    Gather(X, indices int32|int64) any dtype; axis
    Slice(X, starts, ends, axes?, steps?)   any dtype; int32|int64 index inputs known at plan time
    Pad(X, pads int64, value?, axes?)       any dtype; mode "constant" | "reflect" | "edge"
    ReduceSum, ReduceMean, ReduceMax, ReduceL2 (X, axes? int64)   float32; keepdims, noop_with_empty_axes
                                   (sums in float64, rounded once)
    LayerNormalization(X, scale, B?)   float32; axis, epsilon (statistics in float64); one output
    Resize(X, roi?, scales?, sizes?)   float32; mode "nearest" | "linear" (one axis at a time),
                                   coordinate_transformation_mode half_pixel | pytorch_half_pixel |
                                   align_corners | asymmetric, nearest_mode; scales or sizes constant
    ConvTranspose(X, W, B?)        float32, 2-D (NCHW), W constant; group, strides, dilations, pads,
                                   output_padding (no output_shape, no SAME auto_pad)
    QGemm(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, bias?)
                                   the same for a (..., K) x b (K, N) (per tensor or per column N),
                                   bias int32 (N,); attribute activation "none" | "relu"
    LSTM(X, W, R, B?, sequence_lens?, initial_h?, initial_c?), GRU(X, W, R, B?, sequence_lens?, initial_h?)
                                   float32; hidden_size, direction "forward" | "reverse" | "bidirectional",
                                   GRU linear_before_reset; layout 0 (X is (T, B, I)), the default
                                   activations, no peepholes or clip; sequence_lens int32, each equal to T.
                                   One output (not ONNX's three): Y, Y_h[, Y_c] stacked along axis 0,
                                   (T + 1, D, B, H) for GRU, (T + 2, D, B, H) for LSTM
"""

from __future__ import annotations

from edgefleet.cpp_ext.graph_format import Graph, GraphFormatError

FLOAT = ("float32",)
QUANT = ("uint8", "int8")
ANY = ("float32", "int8", "uint8", "int32", "int64")
MAX_INPUTS = 4096  # Concat's inputs

# op -> (min inputs, max inputs, allowed dtypes of input 0)
OPS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "Conv": (2, 4, FLOAT), "Gemm": (2, 3, FLOAT), "MatMul": (2, 2, FLOAT),
    "Relu": (1, 1, FLOAT), "Clip": (1, 3, FLOAT), "Sigmoid": (1, 1, FLOAT), "Tanh": (1, 1, FLOAT),
    "HardSigmoid": (1, 1, FLOAT), "HardSwish": (1, 1, FLOAT), "LeakyRelu": (1, 1, FLOAT),
    "Concat": (1, MAX_INPUTS, ANY),
    "Add": (2, 2, FLOAT), "Sub": (2, 2, FLOAT), "Mul": (2, 2, FLOAT), "Div": (2, 2, FLOAT),
    "MaxPool": (1, 1, ("float32", "uint8", "int8")), "AveragePool": (1, 1, FLOAT),
    "GlobalAveragePool": (1, 1, FLOAT), "GlobalMaxPool": (1, 1, FLOAT), "Softmax": (1, 1, FLOAT),
    "Flatten": (1, 1, ANY), "Reshape": (2, 2, ANY), "Squeeze": (1, 2, ANY), "Unsqueeze": (2, 2, ANY),
    "Identity": (1, 1, ANY), "Transpose": (1, 1, ANY),
    "QuantizeLinear": (2, 3, FLOAT), "DequantizeLinear": (2, 3, ("uint8", "int8", "int32")),
    "QConv": (8, 9, QUANT), "QGemm": (8, 9, QUANT), "QAdd": (8, 8, QUANT), "QMul": (8, 8, QUANT),
    "Erf": (1, 1, FLOAT), "Gelu": (1, 1, FLOAT), "Sqrt": (1, 1, FLOAT), "Reciprocal": (1, 1, FLOAT),
    "Exp": (1, 1, FLOAT), "Neg": (1, 1, FLOAT), "Pow": (2, 2, FLOAT), "PRelu": (2, 2, FLOAT),
    "Equal": (2, 2, ANY), "Where": (3, 3, ("uint8",)), "Cast": (1, 1, ANY), "Expand": (2, 2, ANY),
    "Gather": (2, 2, ANY), "Slice": (3, 5, ANY), "Pad": (2, 4, ANY),
    "ReduceSum": (1, 2, FLOAT), "ReduceMean": (1, 2, FLOAT), "ReduceMax": (1, 2, FLOAT), "ReduceL2": (1, 2, FLOAT),
    "LayerNormalization": (2, 3, FLOAT), "Resize": (1, 4, FLOAT), "ConvTranspose": (2, 3, FLOAT),
    "LSTM": (3, 7, FLOAT), "GRU": (3, 6, FLOAT),
}
INDEX = ("int32", "int64")
# ops whose second (and later) inputs must have these dtypes, by position
_PARAM_DTYPES: dict[str, dict[int, tuple[str, ...]]] = {
    "Conv": {1: FLOAT, 2: FLOAT, 3: FLOAT}, "Gemm": {1: FLOAT, 2: FLOAT}, "MatMul": {1: FLOAT},
    "Clip": {1: FLOAT, 2: FLOAT}, "Add": {1: FLOAT}, "Sub": {1: FLOAT}, "Mul": {1: FLOAT}, "Div": {1: FLOAT},
    "Reshape": {1: ("int64",)}, "Squeeze": {1: ("int64",)}, "Unsqueeze": {1: ("int64",)},
    "QuantizeLinear": {1: FLOAT, 2: QUANT}, "DequantizeLinear": {1: FLOAT},
    "QConv": {1: FLOAT, 2: QUANT, 3: QUANT, 4: FLOAT, 5: QUANT, 6: FLOAT, 7: QUANT, 8: ("int32",)},
    "QGemm": {1: FLOAT, 2: QUANT, 3: QUANT, 4: FLOAT, 5: QUANT, 6: FLOAT, 7: QUANT, 8: ("int32",)},
    "QAdd": {1: FLOAT, 2: QUANT, 3: QUANT, 4: FLOAT, 5: QUANT, 6: FLOAT, 7: QUANT},
    "QMul": {1: FLOAT, 2: QUANT, 3: QUANT, 4: FLOAT, 5: QUANT, 6: FLOAT, 7: QUANT},
    "Pow": {1: FLOAT}, "PRelu": {1: FLOAT}, "Expand": {1: ("int64",)}, "Gather": {1: INDEX},
    "Slice": {1: INDEX, 2: INDEX, 3: INDEX, 4: INDEX}, "Pad": {1: ("int64",), 3: INDEX},
    "ReduceSum": {1: ("int64",)}, "ReduceMean": {1: ("int64",)}, "ReduceMax": {1: ("int64",)},
    "ReduceL2": {1: ("int64",)}, "LayerNormalization": {1: FLOAT, 2: FLOAT},
    "Resize": {2: FLOAT, 3: ("int64",)}, "ConvTranspose": {1: FLOAT, 2: FLOAT},
    "LSTM": {1: FLOAT, 2: FLOAT, 3: FLOAT, 4: ("int32",), 5: FLOAT, 6: FLOAT},
    "GRU": {1: FLOAT, 2: FLOAT, 3: FLOAT, 4: ("int32",), 5: FLOAT},
}
_SAME_DTYPE = {"Equal": (1,), "Where": (2,), "Pad": (2,)}  # inputs whose dtype must be input 0's (Where: 1's)
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity")  # outputs are views of input 0


def infer_dtypes(graph: Graph) -> dict[str, str]:
    """The dtype of every value; GraphFormatError naming every unsupported op or dtype (with node names)."""
    dtypes = {i.name: i.dtype for i in graph.inputs}
    dtypes.update({name: str(a.dtype) for name, a in graph.constants.items()})
    problems: list[str] = []
    for node in graph.nodes:
        problem = _node_problem(node.op, node.inputs, node.outputs, node.attrs, dtypes)
        if problem:
            problems.append(f"{node.op} (node {node.name!r}): {problem}")
            for output in node.outputs:  # a guess, so that later nodes are checked too
                dtypes[output] = dtypes.get(node.inputs[0], "float32") if node.inputs else "float32"
            continue
        dtypes[node.outputs[0]] = _output_dtype(node.op, node.inputs, node.attrs, dtypes)
    if problems:
        raise GraphFormatError("unsupported by the native backend: " + "; ".join(problems))
    for info in graph.outputs:
        if info.dtype and dtypes[info.name] != info.dtype:
            raise GraphFormatError(f"graph output {info.name!r} is declared {info.dtype} but is {dtypes[info.name]}")
    return dtypes


def _node_problem(op: str, inputs: tuple[str, ...], outputs: tuple[str, ...], attrs: dict,
                  dtypes: dict[str, str]) -> str:
    if op not in OPS:
        return "op not supported"
    low, high, first = OPS[op]
    present = len(inputs)
    while present and not inputs[present - 1]:
        present -= 1
    if not low <= present <= high or not inputs[0]:
        return f"takes {low}..{high} inputs, got {present}"
    if len([o for o in outputs if o]) != 1 or not outputs[0]:
        return "exactly one output is supported"
    if any(v and v not in dtypes for v in inputs):
        return "uses a value of unknown dtype"
    if dtypes[inputs[0]] not in first:
        return f"input 0 has dtype {dtypes[inputs[0]]}; supported: {', '.join(first)}"
    for index, allowed in _PARAM_DTYPES.get(op, {}).items():
        if index < present and inputs[index] and dtypes[inputs[index]] not in allowed:
            return f"input {index} has dtype {dtypes[inputs[index]]}; supported: {', '.join(allowed)}"
    if op == "Concat" and any(dtypes[v] != dtypes[inputs[0]] for v in inputs[1:present]):
        return "all inputs must have one dtype"
    if op == "Concat" and not all(inputs[:present]):
        return "inputs cannot be absent"
    first_of = inputs[1] if op == "Where" else inputs[0]
    if any(index < present and inputs[index] and dtypes[inputs[index]] != dtypes[first_of]
           for index in _SAME_DTYPE.get(op, ())):
        return "inputs must have one dtype"
    if op == "Cast" and attrs.get("to") not in ANY:
        return f"cast to {attrs.get('to')} not supported ({', '.join(ANY)})"
    if op == "QuantizeLinear" and attrs.get("output_dtype", "") not in ("", "uint8", "int8"):
        return f"output_dtype {attrs['output_dtype']} not supported (uint8, int8)"
    if op in ("QuantizeLinear", "DequantizeLinear") and int(attrs.get("block_size", 0)) != 0:
        return "blocked quantization (block_size) not supported"
    if op == "DequantizeLinear" and len(inputs) > 2 and inputs[2] and dtypes[inputs[2]] != dtypes[inputs[0]]:
        return "zero_point must have the dtype of x"
    return ""


def _output_dtype(op: str, inputs: tuple[str, ...], attrs: dict, dtypes: dict[str, str]) -> str:
    if op == "QuantizeLinear":
        if attrs.get("output_dtype"):
            return str(attrs["output_dtype"])
        return dtypes[inputs[2]] if len(inputs) > 2 and inputs[2] else "uint8"
    if op == "DequantizeLinear":
        return "float32"
    if op in ("QConv", "QGemm", "QAdd", "QMul"):
        return dtypes[inputs[7]]
    if op == "Equal":
        return "uint8"
    if op == "Where":
        return dtypes[inputs[1]]
    if op == "Cast":
        return str(attrs["to"])
    return dtypes[inputs[0]]
