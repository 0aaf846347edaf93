"""Cross-layer equalization of a float ONNX model before static int8 (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019).

    model, record = equalize(onnx.load("float.onnx"))

Two convolutions in a row, y = W2 f(W1 x + b1), give the same y when output channel i of the first is
divided by s_i (its weights and bias) and input channel i of the second multiplied by s_i, as long as
f is positive-homogeneous (f(x / s) = f(x) / s for s > 0: no activation, or Relu). With
s_i = sqrt(r1_i / r2_i), where r1_i is the largest |weight| of output channel i of the first and r2_i
that of input channel i of the second, both ranges become sqrt(r1_i * r2_i): channels whose weights
(and so whose activations) are tiny next to their neighbours' are brought up to them, so per-tensor
activation scales and per-channel weight scales waste fewer of their 256 levels.

ReLU6 (Clip(0, 6), what EfficientNet-Lite and MobileNet use between most convolutions) is not
positive-homogeneous: clip(x / s, 0, 6) != clip(x, 0, 6) / s once x passes 6. The pairs it separates
are left alone and counted in the record. Measured on the pretrained EfficientNet-Lite0, the two ways
around it change the float model itself too much to be worth it: ReLU6 replaced by Relu (what NNCF and
AIMET do before equalizing a network that was trained for it) agrees with the original's top-1 on 0.28
of validation crops (the bound binds: up to 7% of the activations pass 6); keeping Clip(0, 6) and only
enlarging channels whose calibration maximum stays below 6 agrees on 0.855, since held-out photos pass
the calibration maxima. An exact per-channel bound (Relu, then Min with a per-channel constant) leaves
the Min in float between two quantizations in onnxruntime's QDQ format, so it was not pursued.

Only Conv nodes whose weight (and bias) are initializers used by that node alone are rescaled, and the
intermediate tensor must have the second convolution (or the Relu) as its only consumer and not be a
graph output. The model is changed in place and returned; its outputs do not change (up to float
rounding).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

HOMOGENEOUS = ("Relu",)  # f(x / s) = f(x) / s for s > 0
ITERATIONS = 4  # a convolution between two pairs is rescaled by both; a few sweeps settle the ranges


@dataclass(frozen=True)
class _Pair:
    first: onnx.NodeProto
    second: onnx.NodeProto
    through: str  # "" or the activation's op type


def equalize(model: onnx.ModelProto, iterations: int = ITERATIONS) -> tuple[onnx.ModelProto, dict]:
    """The model with every equalizable Conv -> [Relu] -> Conv pair rescaled, and a record:
    {"pairs": [[first, second, through], ...], "skipped": {reason: count}, "range_ratio": {...}}, where
    range_ratio is the median over pairs of max/min of the per-channel weight ranges of the second
    convolution's input channels, before and after."""
    pairs, skipped = _pairs(model)
    inits = {t.name: t for t in model.graph.initializer}
    before = [_spread(_in_ranges(_weight(inits, p.second), p.second)) for p in pairs]
    for _ in range(max(1, iterations)):
        for pair in pairs:
            _rescale(pair, inits)
    after = [_spread(_in_ranges(_weight(inits, p.second), p.second)) for p in pairs]
    record = {"pairs": [[p.first.name, p.second.name, p.through or "none"] for p in pairs], "skipped": skipped,
              "range_ratio": {"before": float(np.median(before)) if before else None,
                              "after": float(np.median(after)) if after else None}}
    return model, record


def _pairs(model: onnx.ModelProto) -> tuple[list[_Pair], dict[str, int]]:
    """Conv -> [Relu] -> Conv chains whose middle tensors have one consumer each and whose weights are
    their own; pairs separated by a Clip are counted, not returned."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            uses[name].append(node)
    outputs = {o.name for o in model.graph.output}
    skipped: dict[str, int] = defaultdict(int)

    def only_use(tensor: str) -> onnx.NodeProto | None:
        return uses[tensor][0] if len(uses[tensor]) == 1 and tensor not in outputs else None

    def own_weights(conv: onnx.NodeProto) -> bool:
        names = [n for n in conv.input[1:3] if n]
        return len(conv.input) > 1 and all(n in inits and len(uses[n]) == 1 for n in names)

    pairs = []
    for first in model.graph.node:
        if first.op_type != "Conv" or not own_weights(first):
            continue
        second, through = only_use(first.output[0]), ""
        if second is not None and second.op_type in (*HOMOGENEOUS, "Clip"):
            through, second = second.op_type, only_use(second.output[0])
        if second is None or second.op_type != "Conv" or not own_weights(second):
            continue
        if through == "Clip":
            skipped["Clip (ReLU6) between the convolutions: not positive-homogeneous"] += 1
            continue
        if _groups(second) not in (1, int(inits[second.input[1]].dims[0])) or \
                (_groups(second) > 1 and inits[second.input[1]].dims[0] != inits[first.input[1]].dims[0]):
            skipped["grouped second convolution"] += 1
            continue
        pairs.append(_Pair(first, second, through))
    return pairs, dict(skipped)


def _groups(conv: onnx.NodeProto) -> int:
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


def _weight(inits: dict[str, onnx.TensorProto], conv: onnx.NodeProto) -> np.ndarray:
    return numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)


def _in_ranges(weight: np.ndarray, conv: onnx.NodeProto) -> np.ndarray:
    """Largest |weight| per input channel of `conv` (depthwise: each channel's own kernel)."""
    if _groups(conv) > 1:
        return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    return np.abs(weight).max(axis=tuple(a for a in range(weight.ndim) if a != 1))


def _spread(ranges: np.ndarray) -> float:
    positive = ranges[ranges > 0]
    return float(positive.max() / positive.min()) if positive.size else 1.0


def _rescale(pair: _Pair, inits: dict[str, onnx.TensorProto]) -> None:
    w1, w2 = _weight(inits, pair.first), _weight(inits, pair.second)
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = _in_ranges(w2, pair.second)
    if r1.shape != r2.shape:
        return
    scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1)), 1.0)
    shape = [-1] + [1] * (w1.ndim - 1)
    _store(inits, pair.first.input[1], w1 / scale.reshape(shape))
    if len(pair.first.input) > 2 and pair.first.input[2]:
        _store(inits, pair.first.input[2], _weight_of(inits, pair.first.input[2]) / scale)
    column = scale.reshape(shape) if _groups(pair.second) > 1 else scale.reshape([1, -1] + [1] * (w2.ndim - 2))
    _store(inits, pair.second.input[1], w2 * column)


def _weight_of(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return numpy_helper.to_array(inits[name]).astype(np.float64)


def _store(inits: dict[str, onnx.TensorProto], name: str, values: np.ndarray) -> None:
    dtype = numpy_helper.to_array(inits[name]).dtype
    inits[name].CopyFrom(numpy_helper.from_array(values.astype(dtype), name))
