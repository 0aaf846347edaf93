"""Adaptive rounding of static int8 weights (cloud/compress/adaround.py) on an EfficientNet-Lite-class CNN
(tests/compilers/edge_cnns.py: MBConv blocks with depthwise convolutions and squeeze-excite, seeded random
weights) fed natural photo crops: the rounded model is onnxruntime's own QDQ model with only int8 weight
values changed, each by one step at most, and its logits are closer to the float model's on held-out
crops than nearest rounding's. Through quantize_static_int8 (rounding="adaround") the lineage records it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnxruntime import quantization as ortq

from edgefleet.cloud.compress.adaround import AdaRoundOptions, adaround
from edgefleet.cloud.compress.calibration import CalibrationReader
from edgefleet.cloud.compress.quantize import QuantizationError, quantize_static_int8
from tests.cloud.compress.lite_kit import lite_cnn, logits

FAST = AdaRoundOptions(rows=32, positions=32, iterations=150, batch=256)
BRIEF = AdaRoundOptions(rows=8, positions=16, iterations=20, batch=128)  # the lineage test checks records only


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return lite_cnn(tmp_path_factory.mktemp("adaround"), 64)


def test_adaptive_rounding_moves_weights_by_one_step_at_most_and_cuts_the_held_out_error(cnn):
    bundle, calibration, held_out, work = cnn
    float_path = bundle.root / "model.onnx"
    ortq.quantize_static(str(float_path), str(work / "nearest.onnx"), CalibrationReader({"image": calibration}, 16),
                         quant_format=ortq.QuantFormat.QDQ, per_channel=True)
    nearest = (work / "nearest.onnx").read_bytes()
    rounded, record = adaround(nearest, float_path, iter(CalibrationReader({"image": calibration}, 16).get_next,
                                                         None), FAST)

    convs = [n for n in onnx.load(str(float_path)).graph.node if n.op_type in ("Conv", "Gemm")]
    assert set(record["layers"]) == {n.name for n in convs}  # every conv, depthwise and the classifier
    old, new = onnx.load_from_string(nearest), onnx.load_from_string(rounded)
    assert [(n.op_type, list(n.input)) for n in old.graph.node] == [(n.op_type, list(n.input)) for n in new.graph.node]
    moved = 0
    for before, after in zip(old.graph.initializer, new.graph.initializer, strict=True):
        a, b = numpy_helper.to_array(before), numpy_helper.to_array(after)
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype != np.int8:
            np.testing.assert_array_equal(a, b)  # scales, zero points, biases: as onnxruntime chose them
        else:
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # up or down, never further
            moved += int((a != b).sum())
    assert moved == sum(v["flipped"] for v in record["layers"].values()) > 0
    assert all(v["mse_adaround"] <= v["mse_nearest"] for v in record["layers"].values())

    reference = logits(float_path, held_out)
    plain_error = np.abs(logits(nearest, held_out) - reference).mean()
    rounded_error = np.abs(logits(rounded, held_out) - reference).mean()
    assert rounded_error < 0.9 * plain_error, (plain_error, rounded_error)


def test_quantize_static_int8_records_adaround_in_the_lineage_and_refuses_it_for_qoperator(cnn):
    bundle, calibration, held_out, work = cnn
    result = quantize_static_int8(bundle, work / "int8", calibration, calibration_batch=16, rounding="adaround",
                                  adaround_options=BRIEF, eval_data=(held_out[:16], None))
    options = result.bundle.manifest["lineage"]["steps"][-1]["options"]
    assert options["rounding"] == "adaround" and options["bias_correction"] == "analytic"
    convs = [n for n in onnx.load(str(bundle.root / "model.onnx")).graph.node if n.op_type in ("Conv", "Gemm")]
    assert options["adaround"]["layers"] == len(convs) and options["adaround"]["flipped_weights"] > 0
    assert options["adaround"]["options"]["iterations"] == BRIEF.iterations
    assert result.quantized_accuracy is not None and 0 < result.quantized_accuracy <= 1
    with pytest.raises(QuantizationError, match="rounding must be 'nearest' or 'adaround' \\(QDQ only\\)"):
        quantize_static_int8(bundle, work / "q", calibration, quant_format="QOperator", rounding="adaround")
    with pytest.raises(QuantizationError, match="got 'up'"):
        quantize_static_int8(bundle, work / "q", calibration, rounding="up")
