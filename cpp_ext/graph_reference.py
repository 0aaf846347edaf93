"""The numpy spec of the native backend: runs an edgefleet graph (graph_format.Graph) op by op.

The C++ executor (edgefleet.cpp_ext._native.GraphExecutor) must agree with this module: exactly for the
integer ops (QConv, QGemm accumulate in int32 and requantize in float32 with one multiply, so the result
is bit-identical), within float32 rounding for the float ops (the C++ kernels sum in another order and
may use fused multiply-add). Op semantics are listed in graph_ops.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from edgefleet.cpp_ext.graph_format import Graph
from edgefleet.cpp_ext.graph_ops import infer_dtypes
from edgefleet.cpp_ext.graph_reference_rnn import KERNELS as RNN_KERNELS
from edgefleet.cpp_ext.graph_reference_tensor import KERNELS as TENSOR_KERNELS

Kernel = Callable[[list, dict], np.ndarray]
F32 = np.float32


def run_graph(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the graph on inputs (name -> array of the declared dtype); returns name -> output array."""
    infer_dtypes(graph)
    env: dict[str, np.ndarray] = dict(graph.constants)
    for info in graph.inputs:
        env[info.name] = np.asarray(inputs[info.name], dtype=info.dtype)
    for node in graph.nodes:
        args = [env[name] if name else None for name in node.inputs]
        env[node.outputs[0]] = KERNELS[node.op](args, node.attrs)
    return {o.name: env[o.name] for o in graph.outputs}


# geometry -------------------------------------------------------------------------------------------
def window_geometry(size: tuple[int, ...], kernel: tuple[int, ...], attrs: dict,
                    ceil: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(output sizes, pads at the start, pads at the end) of a sliding window (Conv, pools)."""
    n = len(kernel)
    strides, dil = attrs.get("strides", [1] * n), attrs.get("dilations", [1] * n)
    pads, auto = attrs.get("pads", [0] * 2 * n), attrs.get("auto_pad", "NOTSET")
    out, begin, end = [], [], []
    for i in range(n):
        span = (kernel[i] - 1) * dil[i] + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + span - size[i])
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            e = total - b
        else:
            b, e = (0, 0) if auto == "VALID" else (pads[i], pads[i + n])
            room = size[i] + b + e - span
            o = (-(-room // strides[i]) if ceil else room // strides[i]) + 1
            if ceil and (o - 1) * strides[i] >= size[i] + b:  # the last window would start in the end padding
                o -= 1
        if o < 1:
            raise ValueError(f"window {kernel} does not fit input {size} with pads {b},{e}")
        out.append(o)
        begin.append(b)
        end.append(e)
    return out, begin, end


def _windows(x: np.ndarray, kernel: tuple[int, int], attrs: dict, pad_value: float, ceil: bool = False):
    """x (N, C, H, W) -> windows (N, C, kh, kw, OH, OW) and an in-bounds mask (kh, kw, OH, OW)."""
    (oh, ow), b, e = window_geometry(x.shape[2:], kernel, attrs, ceil)
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    extra_h = max(0, (oh - 1) * sh + (kernel[0] - 1) * dh + 1 - (x.shape[2] + b[0] + e[0]))
    extra_w = max(0, (ow - 1) * sw + (kernel[1] - 1) * dw + 1 - (x.shape[3] + b[1] + e[1]))
    pads = ((0, 0), (0, 0), (b[0], e[0] + extra_h), (b[1], e[1] + extra_w))
    xp = np.pad(x, pads, constant_values=pad_value)
    inside = np.pad(np.ones(x.shape[2:], bool), pads[2:], constant_values=False)
    in_pads = np.pad(np.ones(x.shape[2:], bool), ((b[0], e[0]), (b[1], e[1])), constant_values=True)
    in_pads = np.pad(in_pads, ((0, extra_h), (0, extra_w)), constant_values=False)
    cols = np.empty(x.shape[:2] + tuple(kernel) + (oh, ow), x.dtype)
    mask = np.empty(tuple(kernel) + (oh, ow), bool)
    padded = np.empty(tuple(kernel) + (oh, ow), bool)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            columns = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            cols[:, :, i, j] = xp[:, :, rows, columns]
            mask[i, j] = inside[rows, columns]
            padded[i, j] = in_pads[rows, columns]
    return cols, mask, padded


# float ops ------------------------------------------------------------------------------------------
def _activation(y: np.ndarray, attrs: dict) -> np.ndarray:
    kind = attrs.get("activation", "none")
    if kind == "relu":
        return np.maximum(y, F32(0))
    if kind == "clip":
        return np.minimum(np.maximum(y, F32(attrs["act_min"])), F32(attrs["act_max"]))
    if kind == "hardswish":
        return hard_swish([y], {})
    return y


def _conv_accumulate(x: np.ndarray, w: np.ndarray, attrs: dict, pad_value: float) -> np.ndarray:
    group = int(attrs.get("group", 1))
    kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
    cols, _, _ = _windows(x, kernel, attrs, pad_value)
    n, c, kh, kw, oh, ow = cols.shape
    cols = cols.reshape(n, group, (c // group) * kh * kw, oh * ow)
    wg = w.reshape(group, w.shape[0] // group, -1)
    y = np.einsum("gmk,ngkp->ngmp", wg, cols)
    return y.reshape(n, w.shape[0], oh, ow)


def conv(args: list, attrs: dict) -> np.ndarray:
    x, w, bias, residual = (args + [None, None])[:4]
    y = _conv_accumulate(x, w, attrs, 0.0).astype(F32)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    if residual is not None:
        y = (y + residual).astype(F32)
    return _activation(y, attrs)


def gemm(args: list, attrs: dict) -> np.ndarray:
    a, b, c = (args + [None])[:3]
    a = a.T if attrs.get("transA", 0) else a
    b = b.T if attrs.get("transB", 0) else b
    y = F32(attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + F32(attrs.get("beta", 1.0)) * c
    return _activation(y.astype(F32), attrs)


def sigmoid(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    e = np.exp(-np.abs(x))  # never overflows: 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) below
    return np.where(x >= 0, F32(1) / (F32(1) + e), e / (F32(1) + e)).astype(F32)


def hard_sigmoid(args: list, attrs: dict) -> np.ndarray:
    alpha, beta = F32(attrs.get("alpha", 0.2)), F32(attrs.get("beta", 0.5))
    return np.minimum(np.maximum(alpha * args[0] + beta, F32(0)), F32(1)).astype(F32)


def hard_swish(args: list, attrs: dict) -> np.ndarray:
    return (args[0] * hard_sigmoid(args, {"alpha": 1 / 6, "beta": 0.5})).astype(F32)


def leaky_relu(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    return np.where(x >= 0, x, F32(attrs.get("alpha", 0.01)) * x).astype(F32)


def clip(args: list, attrs: dict) -> np.ndarray:
    x, low, high = (args + [None, None])[:3]
    if low is not None:
        x = np.maximum(x, low)
    if high is not None:
        x = np.minimum(x, high)
    return x


def max_pool(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    low = -np.inf if x.dtype == F32 else np.iinfo(x.dtype).min
    cols, _, _ = _windows(x, tuple(attrs["kernel_shape"]), attrs, low, bool(attrs.get("ceil_mode", 0)))
    return cols.max(axis=(2, 3))


def average_pool(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    cols, inside, padded = _windows(x, tuple(attrs["kernel_shape"]), attrs, 0.0, bool(attrs.get("ceil_mode", 0)))
    count = (padded if attrs.get("count_include_pad", 0) else inside).sum(axis=(0, 1))
    return (cols.sum(axis=(2, 3), dtype=F32) / count.astype(F32)).astype(F32)


def softmax(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    axis = int(attrs.get("axis", -1)) % x.ndim
    shape = x.shape
    if attrs.get("coerce_2d", 0):
        x = x.reshape(int(np.prod(shape[:axis])), -1)
        axis = 1
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(F32).reshape(shape)


# shape ops ------------------------------------------------------------------------------------------
def reshape(args: list, attrs: dict) -> np.ndarray:
    x, shape = args[0], [int(d) for d in args[1]]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def flatten(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    axis = int(attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


def squeeze(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    if len(args) < 2 or args[1] is None:
        return x.reshape([d for d in x.shape if d != 1])
    return np.squeeze(x, axis=tuple(int(a) % x.ndim for a in args[1]))


def unsqueeze(args: list, attrs: dict) -> np.ndarray:
    x, axes = args[0], args[1]
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(int(a) % rank for a in axes)))


def transpose(args: list, attrs: dict) -> np.ndarray:
    perm = attrs.get("perm") or list(range(args[0].ndim))[::-1]
    return np.array(np.transpose(args[0], perm), order="C")


# quantization ---------------------------------------------------------------------------------------
def _per_axis(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if param.ndim == 0 or param.size == 1 and ndim == 0:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = param.size
    return param.reshape(shape)


def saturate(value: np.ndarray, zero_point: np.ndarray | int, dtype: np.dtype, floor: float | None = None):
    """float32 value -> saturate(round_half_even(value) + zero_point) as dtype (the requantize step)."""
    info = np.iinfo(dtype)
    low = F32(info.min if floor is None else max(info.min, floor))
    total = np.rint(value).astype(F32) + np.asarray(zero_point).astype(F32)
    return np.minimum(np.maximum(total, low), F32(info.max)).astype(dtype)


def quantize_linear(args: list, attrs: dict) -> np.ndarray:
    x, scale, zp = (args + [None])[:3]
    dtype = np.dtype(attrs.get("output_dtype") or (zp.dtype if zp is not None else "uint8"))
    axis = int(attrs.get("axis", 1))
    zp = np.zeros((), dtype) if zp is None else zp
    value = (x / _per_axis(scale, x.ndim, axis)).astype(F32)
    return saturate(value, _per_axis(zp, x.ndim, axis), dtype)


def dequantize_linear(args: list, attrs: dict) -> np.ndarray:
    x, scale, zp = (args + [None])[:3]
    axis = int(attrs.get("axis", 1))
    shifted = x.astype(np.int64) - (0 if zp is None else _per_axis(zp, x.ndim, axis).astype(np.int64))
    return (shifted.astype(F32) * _per_axis(scale, x.ndim, axis)).astype(F32)


def multiplier(x_scale: np.ndarray, w_scale: np.ndarray, y_scale: np.ndarray) -> np.ndarray:
    """The requantize multiplier per output channel: float32(float32(x_scale * w_scale) / y_scale)."""
    return ((F32(x_scale) * w_scale.astype(F32).reshape(-1)).astype(F32) / F32(y_scale)).astype(F32)


def qconv(args: list, attrs: dict) -> np.ndarray:
    x, sx, zx, w, sw, zw, sy, zy, bias = (args + [None])[:9]
    xs = x.astype(np.int64) - zx.astype(np.int64)
    ws = w.astype(np.int64) - zw.astype(np.int64).reshape(-1, *([1] * (w.ndim - 1)))
    acc = _conv_accumulate(xs, ws, attrs, 0)
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, -1, 1, 1)
    mult = np.broadcast_to(multiplier(sx, sw, sy), (w.shape[0],)).reshape(1, -1, 1, 1)
    value = (acc.astype(np.int32).astype(F32) * mult).astype(F32)
    floor = int(zy) if attrs.get("activation", "none") == "relu" else None
    return saturate(value, zy, zy.dtype, floor)


def qgemm(args: list, attrs: dict) -> np.ndarray:
    a, sa, za, b, sb, zb, sy, zy, bias = (args + [None])[:9]
    acc = (a.astype(np.int64) - za.astype(np.int64)) @ (b.astype(np.int64) - zb.astype(np.int64).reshape(1, -1))
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    mult = np.broadcast_to(multiplier(sa, sb, sy), (b.shape[1],))
    value = (acc.astype(np.int32).astype(F32) * mult).astype(F32)
    floor = int(zy) if attrs.get("activation", "none") == "relu" else None
    return saturate(value, zy, zy.dtype, floor)


def qbinary(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Kernel:
    """QAdd / QMul: DequantizeLinear of both inputs, the float32 op, [Relu,] QuantizeLinear."""
    def kernel(args: list, attrs: dict) -> np.ndarray:
        a, sa, za, b, sb, zb, sy, zy = args
        y = op(dequantize_linear([a, sa, za], {}), dequantize_linear([b, sb, zb], {})).astype(F32)
        floor = int(zy) if attrs.get("activation", "none") == "relu" else None
        return saturate((y / sy).astype(F32), zy, zy.dtype, floor)
    return kernel


KERNELS: dict[str, Kernel] = {
    "Conv": conv, "Gemm": gemm,
    "MatMul": lambda args, attrs: np.matmul(args[0], args[1]).astype(F32),
    "Relu": lambda args, attrs: np.maximum(args[0], F32(0)),
    "Clip": clip, "Sigmoid": sigmoid, "Tanh": lambda args, attrs: np.tanh(args[0]).astype(F32),
    "HardSigmoid": hard_sigmoid, "HardSwish": hard_swish, "LeakyRelu": leaky_relu,
    "Concat": lambda args, attrs: np.concatenate(args, axis=int(attrs.get("axis", 0))),
    "Add": lambda args, attrs: (args[0] + args[1]).astype(F32),
    "Sub": lambda args, attrs: (args[0] - args[1]).astype(F32),
    "Mul": lambda args, attrs: (args[0] * args[1]).astype(F32),
    "Div": lambda args, attrs: (args[0] / args[1]).astype(F32),
    "MaxPool": max_pool, "AveragePool": average_pool,
    "GlobalAveragePool": lambda args, attrs: args[0].mean(axis=tuple(range(2, args[0].ndim)), keepdims=True,
                                                          dtype=F32),
    "GlobalMaxPool": lambda args, attrs: args[0].max(axis=tuple(range(2, args[0].ndim)), keepdims=True),
    "Softmax": softmax,
    "Flatten": flatten, "Reshape": reshape, "Squeeze": squeeze, "Unsqueeze": unsqueeze,
    "Identity": lambda args, attrs: args[0], "Transpose": transpose,
    "QuantizeLinear": quantize_linear, "DequantizeLinear": dequantize_linear,
    "QConv": qconv, "QGemm": qgemm, "QAdd": qbinary(np.add), "QMul": qbinary(np.multiply),
    **TENSOR_KERNELS, **RNN_KERNELS,
}
