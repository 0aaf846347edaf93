"""Sequential empirical bias correction of a static int8 (QDQ) model: each quantized Conv/Gemm's bias
takes back the mean shift its output has in the quantized model, measured on calibration rows.

    corrected, record = correct_biases_empirically(qdq_model_bytes, float_model_path, batches)

The analytic correction (bias_correction.py) removes the shift that rounding a layer's OWN weights
adds, assuming its input is the float model's. In a deep int8 network the input is not: every upstream
rounding, clipped activation range and requantization shifts it, and the shifts add up (depthwise
convolutions, with 9 taps per channel, average nothing out). The empirical correction measures the
whole shift instead: in graph (topological) order, for each Conv/Gemm whose weight and bias are
DequantizeLinear of initializers (onnxruntime's QDQ format), the calibration rows go through

- the float model: the mean of the node's output per channel (axis 1; the last axis of a 2-D output),
  one pass for every node at once, only the means kept;
- the QDQ model cut just after that node (its ancestors only, upstream nodes already corrected): the
  same mean, computed by onnxruntime's integer kernels for every upstream layer (their outputs feed only
  a QuantizeLinear, so they fuse as they will on the device), and for the node itself the accumulator
  in float (the integer result before requantization);

and the difference, float minus quantized, is added to the node's int32 bias (rounded to its scale).
Format, size and speed stay as they were. Cost: one pass of the float model plus, per corrected node,
a pass of the model up to it (about half the model on average).

Nodes kept in float, and nodes without a bias, are left as they are (they are not corrected, but the
ones after them see their real output).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgefleet.cloud.compress.bias_correction import CORRECTED, _is_dq

Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


def correct_biases_empirically(model: bytes, float_model: Path, batches: Batches) -> tuple[bytes, dict]:
    """The QDQ model with each quantized Conv/Gemm bias shifted by E[y_float - y_int8] per channel, in graph
    order; `batches()` yields the calibration feeds anew for each pass. Returns (model bytes, record):
    the record has the nodes corrected, the passes and the seconds, and the mean abs shift per node
    before its correction (the output error it took out)."""
    started = time.perf_counter()
    qdq = onnx.load_from_string(model)
    floats = {n.name: n for n in onnx.load(str(float_model)).graph.node}
    inits = {t.name: t for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    targets = [n for n in qdq.graph.node
               if n.op_type in CORRECTED and len(n.input) > 2 and n.name in floats
               and _is_dq(producer.get(n.input[1]), inits) and _is_dq(producer.get(n.input[2]), inits)]
    if not targets:
        return model, {"nodes": 0, "passes": 0, "seconds": 0.0, "shift": {}}
    reference = output_means(onnx.load(str(float_model)), [floats[n.name].output[0] for n in targets], batches)
    shifts: dict[str, float] = {}
    for node in targets:
        quantized = output_means(_cut(qdq, node.output[0]), [node.output[0]], batches)[0]
        delta = reference[targets.index(node)] - quantized
        shifts[node.name] = float(np.abs(delta).mean())
        bias = producer[node.input[2]]
        q_bias, scale = inits[bias.input[0]], numpy_helper.to_array(inits[bias.input[1]]).astype(np.float64)
        values = numpy_helper.to_array(q_bias)
        info = np.iinfo(values.dtype)
        moved = values.astype(np.int64) + np.round(delta / np.where(scale == 0, 1, scale)).astype(np.int64)
        q_bias.CopyFrom(numpy_helper.from_array(np.clip(moved, info.min, info.max).astype(values.dtype), q_bias.name))
    record = {"nodes": len(targets), "passes": len(targets) + 1, "seconds": time.perf_counter() - started,
              "shift": shifts}
    return qdq.SerializeToString(), record


def output_means(model: onnx.ModelProto, names: Sequence[str], batches: Batches) -> list[np.ndarray]:
    """The mean per channel of each tensor in `names` over every row of `batches()` (one pass)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in dict.fromkeys(names):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    order = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    rows = 0
    for batch in batches():
        values = dict(zip(order, sess.run(None, {k: v for k, v in batch.items() if k in inputs}), strict=True))
        count = len(next(iter(batch.values())))
        rows += count
        for name in order:
            x = values[name].astype(np.float64)
            mean = x.mean(axis=(0, *range(2, x.ndim))) if x.ndim > 2 else x.reshape(-1, x.shape[-1]).mean(axis=0)
            sums[name] = sums.get(name, 0.0) + mean * count
    return [sums[name] / max(rows, 1) for name in names]


def _cut(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The model reduced to the ancestors of `output`, which becomes its one output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    needed: set[str] = set()
    stack = [output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.output[0] in needed:
            continue
        needed.add(node.output[0])
        stack.extend(i for i in node.input if i)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    kept = [n for n in model.graph.node if n.output[0] in needed]
    used = {i for n in kept for i in n.input}
    del cut.graph.node[:]
    cut.graph.node.extend(kept)
    inits = [t for t in model.graph.initializer if t.name in used]
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(inits)
    inputs = [i for i in model.graph.input if i.name in used]
    del cut.graph.input[:]
    cut.graph.input.extend(inputs)
    del cut.graph.output[:]
    cut.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    return cut
