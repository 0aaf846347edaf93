"""Cross-layer equalization (cloud/compress/equalize.py) on a small convolution chain whose first
convolution's output channels differ by three orders of magnitude in range: the equalized float model
computes the same outputs, its per-tensor int8 activations lose less, and the pair behind a ReLU6 is
left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime import quantization as ortq

from edgefleet.cloud.compress.calibration import CalibrationReader
from edgefleet.cloud.compress.equalize import equalize

CHANNELS = 16


def chain() -> onnx.ModelProto:
    """conv1 -> Relu -> depthwise conv2 -> conv3 -> Clip(0, 6) -> conv4."""
    rng = np.random.default_rng(0)
    spread = np.logspace(-2, 1, CHANNELS)[rng.permutation(CHANNELS)]  # 0.01 .. 10 per output channel
    w1 = (rng.normal(0, 1, (CHANNELS, 3, 3, 3)) * spread[:, None, None, None]).astype(np.float32)
    weights = {
        "w1": w1, "b1": (rng.normal(0, 0.1, CHANNELS) * spread).astype(np.float32),
        "w2": rng.normal(0, 1, (CHANNELS, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None].astype(np.float32),
        "b2": rng.normal(0, 0.1, CHANNELS).astype(np.float32),
        "w3": rng.normal(0, 0.3, (CHANNELS, CHANNELS, 1, 1)).astype(np.float32),
        "b3": rng.normal(0, 0.1, CHANNELS).astype(np.float32),
        "w4": rng.normal(0, 0.3, (4, CHANNELS, 1, 1)).astype(np.float32),
        "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu"),
        helper.make_node("Conv", ["ra", "w2", "b2"], ["b"], name="conv2", group=CHANNELS, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", "w3", "b3"], ["c"], name="conv3"),
        helper.make_node("Clip", ["c", "lo", "hi"], ["rc"], name="relu6"),
        helper.make_node("Conv", ["rc", "w4"], ["y"], name="conv4"),
    ]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 8, 8])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def outputs(model: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def int8(model: onnx.ModelProto, calibration: np.ndarray, tmp_path, name: str) -> bytes:
    onnx.save(model, tmp_path / f"{name}.onnx")
    ortq.quantize_static(str(tmp_path / f"{name}.onnx"), str(tmp_path / f"{name}.int8.onnx"),
                         CalibrationReader({"x": calibration}, 64), quant_format=ortq.QuantFormat.QDQ, per_channel=True)
    return (tmp_path / f"{name}.int8.onnx").read_bytes()


def test_equalization_keeps_the_float_outputs_and_helps_int8(tmp_path):
    rng = np.random.default_rng(1)
    calibration = rng.normal(0, 1, (128, 3, 8, 8)).astype(np.float32)
    held_out = rng.normal(0, 1, (128, 3, 8, 8)).astype(np.float32)
    original = chain()
    equalized, record = equalize(chain())

    assert record["pairs"] == [["conv1", "conv2", "Relu"], ["conv2", "conv3", "none"]]
    assert list(record["skipped"].values()) == [1] and "Clip" in next(iter(record["skipped"]))
    assert record["range_ratio"]["after"] < record["range_ratio"]["before"] / 10
    reference = outputs(original, held_out)
    np.testing.assert_allclose(outputs(equalized, held_out), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    # conv4 sits behind the Clip: its weights are untouched
    w4 = [numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w4")) for m in (original, equalized)]
    np.testing.assert_array_equal(*w4)

    plain_error = np.abs(outputs(int8(original, calibration, tmp_path, "plain"), held_out) - reference).mean()
    equalized_error = np.abs(outputs(int8(equalized, calibration, tmp_path, "equalized"), held_out) - reference).mean()
    assert equalized_error < plain_error / 2, (plain_error, equalized_error)  # measured 1.41 -> 0.092


def test_a_tensor_the_caller_reads_is_not_rescaled():
    model = chain()
    # conv1's output also leaves the graph: rescaling it would change what the caller reads
    model.graph.output.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    _, record = equalize(model)
    assert record["pairs"] == [["conv2", "conv3", "none"]]
