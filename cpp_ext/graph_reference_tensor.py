"""The numpy spec of the ops transformer encoders and audio models need (element-wise math, Cast, Equal,
Where, Expand, Gather, Slice, Pad, reductions, LayerNormalization); graph_reference.KERNELS includes them.
Bool values are uint8 0/1 (the format has no bool dtype)."""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def erf(args: list, attrs: dict) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(args[0]).astype(F32)


def gelu(args: list, attrs: dict) -> np.ndarray:
    x = args[0]
    if attrs.get("approximate", "none") == "tanh":
        inner = F32(math.sqrt(2 / math.pi)) * (x + F32(0.044715) * x * x * x)
        return (F32(0.5) * x * (F32(1) + np.tanh(inner))).astype(F32)
    return (F32(0.5) * x * (F32(1) + erf([x * F32(math.sqrt(0.5))], {}))).astype(F32)


def power(args: list, attrs: dict) -> np.ndarray:
    return np.power(args[0], args[1]).astype(F32)


def prelu(args: list, attrs: dict) -> np.ndarray:
    x, slope = args
    return np.where(x < 0, slope * x, x).astype(F32)


def cast(args: list, attrs: dict) -> np.ndarray:
    return args[0].astype(attrs["to"])


def expand(args: list, attrs: dict) -> np.ndarray:
    x, shape = args
    return np.array(x * np.ones(tuple(int(d) for d in shape), x.dtype), dtype=x.dtype)


def gather(args: list, attrs: dict) -> np.ndarray:
    return np.take(args[0], args[1].astype(np.int64), axis=int(attrs.get("axis", 0)))


def slice_(args: list, attrs: dict) -> np.ndarray:
    x, starts, ends, axes, steps = (args + [None, None])[:5]
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return np.array(x[tuple(index)])


def pad(args: list, attrs: dict) -> np.ndarray:
    x, pads, value, axes = (args + [None, None])[:4]
    axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes]
    width = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        width[axis] = (int(pads[i]), int(pads[i + len(axes)]))
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        fill = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
        return np.pad(x, width, constant_values=fill)
    return np.pad(x, width, mode={"edge": "edge", "reflect": "reflect"}[mode])


def _reduce(kind: str):
    def kernel(args: list, attrs: dict) -> np.ndarray:
        x = args[0]
        axes = args[1] if len(args) > 1 and args[1] is not None else None
        if axes is not None and axes.size == 0:
            axes = None
        if axes is None and attrs.get("noop_with_empty_axes", 0):
            return x
        axis = None if axes is None else tuple(int(a) % x.ndim for a in axes)
        keep = bool(attrs.get("keepdims", 1))
        wide = x.astype(np.float64)
        if kind == "max":
            return x.max(axis=axis, keepdims=keep)
        if kind == "l2":
            return np.sqrt((wide * wide).sum(axis=axis, keepdims=keep)).astype(F32)
        total = wide.sum(axis=axis, keepdims=keep)
        count = x.size // max(1, total.size) if kind == "mean" else 1
        return (total / count).astype(F32)
    return kernel


def layer_norm(args: list, attrs: dict) -> np.ndarray:
    x, scale, bias = (args + [None])[:3]
    axis = int(attrs.get("axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    wide = x.astype(np.float64)
    mean = wide.mean(axis=axes, keepdims=True)
    inv = (1 / np.sqrt(((wide - mean) ** 2).mean(axis=axes, keepdims=True) + float(attrs.get("epsilon", 1e-5))))
    y = (x - mean.astype(F32)) * inv.astype(F32) * scale
    return (y if bias is None else y + bias).astype(F32)


KERNELS = {
    "Erf": erf, "Gelu": gelu, "Sqrt": lambda args, attrs: np.sqrt(args[0]),
    "Reciprocal": lambda args, attrs: (F32(1) / args[0]).astype(F32),
    "Exp": lambda args, attrs: np.exp(args[0]), "Neg": lambda args, attrs: -args[0],
    "Pow": power, "PRelu": prelu,
    "Equal": lambda args, attrs: (args[0] == args[1]).astype(np.uint8),
    "Where": lambda args, attrs: np.where(args[0] != 0, args[1], args[2]),
    "Cast": cast, "Expand": expand, "Gather": gather, "Slice": slice_, "Pad": pad,
    "ReduceSum": _reduce("sum"), "ReduceMean": _reduce("mean"), "ReduceMax": _reduce("max"), "ReduceL2": _reduce("l2"),
    "LayerNormalization": layer_norm,
}
