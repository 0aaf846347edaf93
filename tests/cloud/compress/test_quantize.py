"""Post-training quantization of the real digits bundle: calibrated on training rows, scored on the
held-out split, loaded and self-tested by the edge Predictor."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.cloud.compress.evaluate import onnx_outputs
from edgefleet.cloud.compress.quantize import (
    QuantizationError,
    convert_fp16,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from edgefleet.core.bundle import Bundle
from edgefleet.core.decision import margins, tie_margin
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.predictor import Predictor
from tests.cloud.compress import decision_kit

CALIBRATION_ROWS = 512


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def model_of(result) -> onnx.ModelProto:
    return onnx.load(str(result.bundle.root / result.bundle.artifacts[0]["path"]))


def weight_types(model: onnx.ModelProto) -> dict[str, int]:
    """Node name -> element type of the weight it computes with (int8 if it comes through a DequantizeLinear)."""
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = node.input[1]
        if weight in producers and producers[weight].op_type == "DequantizeLinear":
            weight = producers[weight].input[0]
        found[node.name] = initializers[weight].data_type
    return found


@pytest.fixture
def key(digits_bundle) -> SigningKey:
    return SigningKey.load(digits_bundle.private_key)


def self_test(result, digits_bundle) -> None:
    with Predictor(result.bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        assert predictor.artifact["precision"] == result.precision
        report = predictor.self_test()
    assert report.passed, report.failures


def test_static_int8_keeps_digits_accuracy_in_a_smaller_qdq_graph(digits_bundle, digits_splits, key, tmp_path):
    splits = digits_splits
    before = tree_hashes(digits_bundle.root)
    result = quantize_static_int8(digits_bundle.root, tmp_path / "int8", splits.x_train[:CALIBRATION_ROWS],
                                  eval_data=(splits.x_test, splits.y_test), signing_key=key)

    assert tree_hashes(digits_bundle.root) == before  # the input bundle is only read
    assert result.float_accuracy > 0.9
    assert result.accuracy_drop <= 0.01, (result.float_accuracy, result.quantized_accuracy)
    # the accuracy is the new model's, measured independently of the stage
    scores = onnx_outputs(result.bundle.root / "model.int8.onnx", splits.x_test)
    assert (scores.argmax(1) == splits.y_test).mean() == pytest.approx(result.quantized_accuracy)

    model = model_of(result)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    assert set(weight_types(model).values()) == {onnx.TensorProto.INT8}
    assert result.quantized_bytes < result.float_bytes
    assert (result.bundle.root / "model.int8.onnx").stat().st_size == result.quantized_bytes

    artifact = result.bundle.artifacts[0]
    assert len(result.bundle.artifacts) == 1 and "model.onnx" not in result.bundle.manifest["files"]
    assert artifact["format"] == "onnx" and artifact["precision"] == "int8"
    assert artifact["quantization"]["quant_format"] == "QDQ" and artifact["quantization"]["per_channel"]
    assert artifact["flops_per_sample"] == Bundle.open(digits_bundle.root).artifacts[0]["flops_per_sample"]
    assert artifact["numeric_error"]["max_abs"] == result.numeric_error["max_abs"] > 0

    step = result.bundle.manifest["lineage"]["steps"][-1]
    assert step["stage"] == "quantize" and step["options"]["method"] == "MinMax"
    assert step["accuracy"]["drop"] == result.accuracy_drop
    tolerance = step["golden_tolerance"]
    assert tolerance["before"]["atol"] < tolerance["after"]["atol"] == result.bundle.manifest["golden"]["atol"]
    assert tolerance["after"]["atol"] >= 2 * result.numeric_error["max_abs"]
    # the golden expected outputs are still the float model's
    _, float_outputs, _ = Bundle.open(digits_bundle.root).golden()
    _, outputs, _ = result.bundle.golden()
    np.testing.assert_array_equal(outputs["logits"], float_outputs["logits"])
    assert result.bundle.manifest["metrics"]["eval"]["accuracy"] == result.quantized_accuracy
    self_test(result, digits_bundle)


@pytest.mark.parametrize("method", ["MinMax", "Entropy", "Percentile"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_every_calibration_method_runs(digits_bundle, digits_splits, tmp_path, method, per_channel):
    splits = digits_splits
    result = quantize_static_int8(digits_bundle.root, tmp_path / "int8", splits.x_train[:300], method=method,
                                  per_channel=per_channel, calibration_batch=64,  # 300 rows: a ragged last batch
                                  eval_data=(splits.x_test, splits.y_test))
    assert result.accuracy_drop <= 0.02, (method, per_channel, result.quantized_accuracy)
    model = model_of(result)
    scales = {t.name: t for t in model.graph.initializer}
    conv_scale = scales["conv2.weight_scale"]
    assert list(conv_scale.dims) == ([32] if per_channel else [])  # one scale per output channel, or one
    assert result.bundle.manifest["lineage"]["steps"][-1]["options"]["method"] == method


def test_qoperator_format_uses_integer_kernels(digits_bundle, digits_splits, tmp_path):
    result = quantize_static_int8(digits_bundle.root, tmp_path / "int8", digits_splits.x_train[:256],
                                  quant_format="QOperator", eval_data=(digits_splits.x_test, digits_splits.y_test))
    assert "QLinearConv" in {n.op_type for n in model_of(result).graph.node}
    assert result.accuracy_drop <= 0.01


@pytest.mark.parametrize("stage", ["dynamic_int8", "fp16", "fp16_io"])
def test_dynamic_int8_and_fp16_bundles_load_and_pass_the_self_test(digits_bundle, digits_splits, key, tmp_path,
                                                                    stage):
    before = tree_hashes(digits_bundle.root)
    out, data = tmp_path / stage, (digits_splits.x_test, digits_splits.y_test)
    if stage == "dynamic_int8":
        result = quantize_dynamic_int8(digits_bundle.root, out, eval_data=data, signing_key=key)
        assert {"DynamicQuantizeLinear", "ConvInteger"} <= {n.op_type for n in model_of(result).graph.node}
    elif stage == "fp16":
        result = convert_fp16(digits_bundle.root, out, eval_data=data, signing_key=key)
        assert result.bundle.inputs[0].dtype == "float32"
    else:
        result = convert_fp16(digits_bundle.root, out, keep_io_types=False, eval_data=data, signing_key=key)
        assert result.bundle.inputs[0].dtype == "float16"
        assert result.bundle.golden()[0]["pixels"].dtype == np.float16
    assert tree_hashes(digits_bundle.root) == before
    assert result.quantized_bytes < result.float_bytes
    assert abs(result.accuracy_drop) <= 0.01
    assert result.bundle.manifest["lineage"]["steps"][-1]["stage"] == "quantize"
    self_test(result, digits_bundle)
    with Predictor(result.bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        pixels = digits_splits.x_test[:64].astype(result.bundle.inputs[0].dtype)
        predicted = predictor.predict(pixels)["logits"].argmax(1)
    assert (predicted == digits_splits.y_test[:64]).mean() > 0.9


def test_an_impossible_gate_raises_with_the_numbers(digits_bundle, digits_splits, tmp_path):
    with pytest.raises(QuantizationError, match=r"float accuracy 0\.\d+.*max_drop -1") as caught:
        quantize_static_int8(digits_bundle.root, tmp_path / "int8", digits_splits.x_train[:256],
                             eval_data=(digits_splits.x_test, digits_splits.y_test), max_drop=-1)
    error = caught.value
    assert error.max_drop == -1 and error.float_accuracy > 0.9
    assert len(error.steps) == 4  # all quantized, then the three weighted nodes kept in float one by one
    assert all("drop" in step and "excluded" in step for step in error.steps)
    assert not (tmp_path / "int8" / "manifest.json").exists()


def test_the_gate_keeps_the_harmful_layers_in_float(digits_bundle, digits_splits, key, tmp_path):
    # A calibration set of under-exposed images (30% brightness): the activation ranges come out too
    # narrow, real inputs clip, and int8 costs several points - a case the gate must repair. Without bias
    # correction: its means, from the dim images too, reorder the near-tied second and third groups (drop
    # 0.0644 vs 0.0667 alone), and this test is about the ranking.
    splits = digits_splits
    dim, data = splits.x_train[:CALIBRATION_ROWS] * 0.3, (splits.x_test, splits.y_test)
    plain = quantize_static_int8(digits_bundle.root, tmp_path / "plain", dim, eval_data=data, bias_correction=False)
    assert plain.accuracy_drop > 0.01  # the premise: quantization hurts here

    gated = quantize_static_int8(digits_bundle.root, tmp_path / "gated", dim, eval_data=data, max_drop=0.01,
                                 signing_key=key, bias_correction=False)
    assert gated.accuracy_drop <= 0.01
    assert gated.excluded_nodes
    types = weight_types(model_of(gated))
    for node, elem_type in types.items():  # kept nodes compute in float, the others in int8
        assert elem_type == (onnx.TensorProto.FLOAT if node in gated.excluded_nodes else onnx.TensorProto.INT8)
    assert set(types) - set(gated.excluded_nodes)  # a weighted node is still quantized

    gate = gated.bundle.manifest["lineage"]["steps"][-1]["gate"]
    assert gate["max_drop"] == 0.01 and len(gate["ranking"]) == len(types)
    assert gate["steps"][0]["drop"] == pytest.approx(plain.accuracy_drop)
    assert [s["excluded"] for s in gate["steps"][1:]][-1] == list(gated.excluded_nodes)
    assert all(s["drop"] > 0.01 for s in gate["steps"][:-1]) and gate["steps"][-1]["drop"] <= 0.01
    assert gated.bundle.manifest["lineage"]["steps"][-1]["excluded_nodes"] == list(gated.excluded_nodes)
    # Accurate, but its logits still clip (the output's range came from the dim images too): off by
    # several units on the golden examples, more than their top-1 margins, so no golden decision can
    # tell a flip from that error. The stage says so, and the device's self-test refuses it (core/decision.py).
    decisions = gated.bundle.artifacts[0]["numeric_error"]["decisions"]
    assert decisions["compared"] < 4 and "have a top-1 margin over the tie margin" in decisions["refused"]
    with Predictor(gated.bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        report = predictor.self_test()
    assert not report.passed and report.failures == [f"logits: {decisions['refused']}"]


def test_a_gate_met_only_by_keeping_everything_in_float_is_refused(digits_bundle, digits_splits, tmp_path):
    # Under-exposed calibration (as above) costs several points; the only candidate group is every
    # weighted node, so the gate could pass only with nothing left in int8: that is refused, not returned.
    dim, data = digits_splits.x_train[:CALIBRATION_ROWS] * 0.3, (digits_splits.x_test, digits_splits.y_test)
    everything = list(weight_types(onnx.load(str(digits_bundle.root / "model.onnx"))))
    with pytest.raises(QuantizationError, match="only with every candidate node kept in float") as caught:
        quantize_static_int8(digits_bundle.root, tmp_path / "int8", dim, eval_data=data, max_drop=0.01,
                             gate_candidates=[everything], preprocess=False)
    assert caught.value.steps[-1]["drop"] <= 0.01 < caught.value.steps[0]["drop"]
    assert not (tmp_path / "int8" / "manifest.json").exists()


def test_refuses_unknown_nodes_and_a_used_output_directory(digits_bundle, digits_splits, tmp_path):
    with pytest.raises(QuantizationError, match="no node named 'nope'"):
        quantize_static_int8(digits_bundle.root, tmp_path / "a", digits_splits.x_train[:64], nodes_to_exclude=["nope"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("taken")
    with pytest.raises(QuantizationError, match="not empty"):
        quantize_dynamic_int8(digits_bundle.root, tmp_path / "b")
    with pytest.raises(QuantizationError, match="needs eval_data"):
        quantize_static_int8(digits_bundle.root, tmp_path / "c", digits_splits.x_train[:64], max_drop=0.01)


# the tolerance written and the decision check (core/decision.py) ------------------------------------------
@pytest.fixture(scope="module")
def near_tie(digits_bundle, digits_splits, tmp_path_factory):
    """A real near tie: an input on the float model's decision boundary that the real int8 model decides
    otherwise, and the int8 bundle it was found with."""
    key = SigningKey.load(digits_bundle.private_key)
    int8 = decision_kit.quantize(digits_bundle.root, tmp_path_factory.mktemp("near") / "int8",
                                 digits_splits.x_train, key)
    x = decision_kit.boundary_input(digits_bundle.root / "model.onnx", int8.root / "model.int8.onnx",
                                    digits_splits.x_train, digits_splits.y_train)
    return x, int8


def test_the_tolerance_it_writes_and_the_decision_check_agree(digits_bundle, digits_splits, key, tmp_path):
    bundles = {margin: decision_kit.quantize(digits_bundle.root, tmp_path / f"m{margin}", digits_splits.x_train,
                                             key, margin=margin) for margin in (3.0, decision_kit.WIDE_MARGIN)}
    for margin, bundle in bundles.items():
        golden, artifact = bundle.manifest["golden"], bundle.artifacts[0]
        noise = artifact["numeric_error"]["max_abs"]
        assert golden["noise"] == noise > Bundle.open(digits_bundle.root).golden()[2]["atol"]  # measured
        assert golden["atol"] == pytest.approx(margin * noise)
        # the tie margin follows the noise, not the widened atol: a wider tolerance excuses no flip
        assert tie_margin(golden) == 2 * noise < golden["atol"]
        assert artifact["numeric_error"]["decisions"] == {"compared": 8, "agreed": 8, "near_ties": 0,
                                                          "tie_margin": 2 * noise}
        assert bundle.manifest["lineage"]["steps"][-1]["golden_tolerance"]["tie_margin"] == 2 * noise
    assert bundles[3.0].manifest["golden"]["noise"] == bundles[decision_kit.WIDE_MARGIN].manifest["golden"]["noise"]


def test_a_near_tie_golden_example_may_flip_and_is_counted_not_compared(digits_bundle, digits_splits, near_tie,
                                                                       key, tmp_path):
    x_near, _ = near_tie
    source = Bundle.open(digits_bundle.root)
    golden_in, _, _ = source.golden()
    root = decision_kit.with_golden(source, tmp_path / "fp32", np.concatenate([golden_in["pixels"], x_near]),
                                    digits_bundle.root / "model.onnx", key)
    int8 = decision_kit.quantize(root, tmp_path / "int8", digits_splits.x_train, key)
    _, want, _ = int8.golden()
    got = decision_kit.run(int8.root / "model.int8.onnx", int8.golden()[0]["pixels"])
    assert got[8].argmax() != want["logits"][8].argmax()  # the premise: the real int8 model flips it
    tie = tie_margin(int8.manifest["golden"])
    assert margins(want["logits"])[8] <= tie < margins(want["logits"])[:8].min()
    record = {"compared": 8, "agreed": 8, "near_ties": 1, "tie_margin": tie}
    assert int8.artifacts[0]["numeric_error"]["decisions"] == record
    with Predictor(int8.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        report = predictor.self_test()
    assert report.passed and report.decisions == record, report.failures


def test_too_few_decisive_golden_examples_are_refused(digits_bundle, digits_splits, near_tie, key, tmp_path):
    x_near, _ = near_tie
    source = Bundle.open(digits_bundle.root)
    golden_in, _, _ = source.golden()
    inputs = np.concatenate([golden_in["pixels"][:3], np.repeat(x_near, 5, axis=0)])  # 3 decisive, 5 near ties
    root = decision_kit.with_golden(source, tmp_path / "fp32", inputs, digits_bundle.root / "model.onnx", key)
    int8 = decision_kit.quantize(root, tmp_path / "int8", digits_splits.x_train, key)
    decisions = int8.artifacts[0]["numeric_error"]["decisions"]
    assert (decisions["compared"], decisions["agreed"], decisions["near_ties"]) == (3, 3, 5)
    assert re.fullmatch(r"only 3 of 8 golden examples have a top-1 margin over the tie margin \S+ \(at least 4 are "
                        r"needed to check decisions\).*", decisions["refused"])
    with Predictor(int8.root, trusted_keys=[digits_bundle.public_key]) as predictor:  # the device refuses it
        assert predictor.self_test().failures == [f"logits: {decisions['refused']}"]
