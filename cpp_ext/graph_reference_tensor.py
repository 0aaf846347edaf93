"""The numpy spec of the ops transformer encoders, audio models and up-sampling heads need (element-wise
math, Cast, Equal, Where, Expand, Gather, Slice, Pad, reductions, LayerNormalization, Resize,
ConvTranspose); graph_reference.KERNELS includes them.
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


def _source(i: np.ndarray, n_in: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    if mode == "align_corners":
        return np.zeros(len(i)) if n_out == 1 else i * (n_in - 1) / (n_out - 1)
    if mode == "asymmetric":
        return i / scale
    if mode == "pytorch_half_pixel" and n_out == 1:
        return np.zeros(len(i))
    return (i + 0.5) / scale - 0.5


def _nearest(x: np.ndarray, n: int, mode: str) -> np.ndarray:
    if mode == "floor":
        r = np.floor(x)
    elif mode == "ceil":
        r = np.ceil(x)
    else:
        half = x - np.floor(x) == 0.5
        tie = np.ceil(x) if mode == "round_prefer_ceil" else np.floor(x)
        r = np.where(half, tie, np.floor(x + 0.5))
    return np.clip(r, 0, n - 1).astype(np.int64)


def resize(args: list, attrs: dict) -> np.ndarray:
    """One axis at a time (nearest and linear are separable), as the C++ op does."""
    x, _, scales, sizes = (args + [None, None, None])[:4]
    if scales is not None and scales.size:
        out = [int(np.floor(n * float(s))) for n, s in zip(x.shape, scales, strict=True)]
        factors = [float(s) for s in scales.astype(F32)]
    else:
        out = [int(s) for s in sizes]
        factors = [o / n if n else 1.0 for o, n in zip(out, x.shape, strict=True)]
    coords = attrs.get("coordinate_transformation_mode", "half_pixel")
    for axis, (n_in, n_out, scale) in enumerate(zip(x.shape, out, factors, strict=True)):
        if n_in == n_out and scale == 1.0:
            continue
        source = _source(np.arange(n_out, dtype=np.float64), n_in, n_out, scale, coords)
        if attrs.get("mode", "nearest") == "nearest":
            x = np.take(x, _nearest(source, n_in, attrs.get("nearest_mode", "round_prefer_floor")), axis=axis)
            continue
        c = np.clip(source, 0, n_in - 1)
        lo = np.floor(c).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        shape = [1] * x.ndim
        shape[axis] = n_out
        w = (c - lo).astype(F32).reshape(shape)
        a, b = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
        x = (a + w * (b - a)).astype(F32)
    return np.array(x, dtype=F32)


def conv_transpose(args: list, attrs: dict) -> np.ndarray:
    x, w, bias = (args + [None])[:3]
    group = int(attrs.get("group", 1))
    (sh, sw), (dh, dw) = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    top, left, bottom, right = [0] * 4 if attrs.get("auto_pad") == "VALID" else attrs.get("pads", [0] * 4)
    extra = attrs.get("output_padding", [0, 0])
    n, c, h, wd = x.shape
    mg, kh, kw = w.shape[1:]
    oh = sh * (h - 1) + extra[0] + (kh - 1) * dh + 1 - top - bottom
    ow = sw * (wd - 1) + extra[1] + (kw - 1) * dw + 1 - left - right
    full = np.zeros((n, group * mg, sh * (h - 1) + (kh - 1) * dh + 1 + extra[0],
                     sw * (wd - 1) + (kw - 1) * dw + 1 + extra[1]), np.float64)
    cg = c // group
    for g in range(group):
        cols = np.einsum("nchw,cmyx->nmyxhw", x[:, g * cg:(g + 1) * cg].astype(np.float64),
                         w[g * cg:(g + 1) * cg].astype(np.float64))
        for ky in range(kh):
            for kx in range(kw):
                full[:, g * mg:(g + 1) * mg, ky * dh:ky * dh + sh * (h - 1) + 1:sh,
                     kx * dw:kx * dw + sw * (wd - 1) + 1:sw] += cols[:, :, ky, kx]
    y = full[:, :, top:top + oh, left:left + ow]
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y.astype(F32)


KERNELS = {
    "Erf": erf, "Gelu": gelu, "Sqrt": lambda args, attrs: np.sqrt(args[0]),
    "Reciprocal": lambda args, attrs: (F32(1) / args[0]).astype(F32),
    "Exp": lambda args, attrs: np.exp(args[0]), "Neg": lambda args, attrs: -args[0],
    "Pow": power, "PRelu": prelu,
    "Equal": lambda args, attrs: (args[0] == args[1]).astype(np.uint8),
    "Where": lambda args, attrs: np.where(args[0] != 0, args[1], args[2]),
    "Cast": cast, "Expand": expand, "Gather": gather, "Slice": slice_, "Pad": pad,
    "ReduceSum": _reduce("sum"), "ReduceMean": _reduce("mean"), "ReduceMax": _reduce("max"), "ReduceL2": _reduce("l2"),
    "LayerNormalization": layer_norm, "Resize": resize, "ConvTranspose": conv_transpose,
}
