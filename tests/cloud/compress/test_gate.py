"""The accuracy gate's strategies on the real digits bundle: "sensitivity" (each group ranked by the KL
divergence it alone adds to the float model's output, then kept in float most sensitive first),
"budget", and "prefix16" (int8 weights with 16-bit activations when int8 activations miss)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgefleet.cloud.compress.evaluate import onnx_outputs
from edgefleet.cloud.compress.gate import (
    FLOAT_WEIGHT_BUDGET,
    SENSITIVITY_ROWS,
    divergence,
    prefix_ladder,
    weight_counts,
)
from edgefleet.cloud.compress.quantize import QuantizationError, quantize_static_int8
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.predictor import Predictor

CALIBRATION_ROWS = 512


def test_divergence_is_the_mean_kl_of_the_softmaxes():
    same = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    assert divergence(same, same) == pytest.approx(0.0, abs=1e-12)
    # p = (0.5, 0.5), q = (0.75, 0.25): 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25)
    assert divergence(np.array([[0.0, 0.0]]), np.array([[np.log(3.0), 0.0]])) == pytest.approx(0.143841, abs=1e-6)


def test_the_sensitivity_gate_keeps_the_groups_that_hurt_most_in_float(digits_bundle, digits_splits, tmp_path):
    # Under-exposed calibration (30% brightness): ranges too narrow, int8 costs several points.
    splits = digits_splits
    dim, data = splits.x_train[:CALIBRATION_ROWS] * 0.3, (splits.x_test, splits.y_test)
    gated = quantize_static_int8(digits_bundle.root, tmp_path / "gated", dim, eval_data=data, max_drop=0.01,
                                 bias_correction=False, gate_strategy="sensitivity")
    gate = gated.bundle.manifest["lineage"]["steps"][-1]["gate"]
    assert gate["strategy"] == "sensitivity" and gate["sensitivity_rows"] == SENSITIVITY_ROWS
    assert gate["steps"][0]["drop"] > 0.01  # the premise: every node int8 misses the gate
    assert gated.accuracy_drop <= 0.01 and gated.excluded_nodes

    ranking = gate["ranking"]
    weighted = [n.name for n in onnx.load(str(digits_bundle.root / "model.onnx")).graph.node
                if n.op_type in ("Conv", "Gemm")]
    assert sorted(r["node"] for r in ranking) == sorted(weighted)
    assert [r["divergence"] for r in ranking] == sorted((r["divergence"] for r in ranking), reverse=True)
    # the ladder keeps the top of the ranking in float, and stops at the first step that meets the gate
    ladder = [s["float_groups"] for s in gate["steps"][1:]]
    assert ladder == prefix_ladder(len(ranking))[:len(ladder)]
    kept = [n for r in ranking[:ladder[-1]] for n in r["nodes"]]
    assert list(gated.excluded_nodes) == kept == gate["kept_in_float"]
    assert all(s["drop"] > 0.01 for s in gate["steps"][:-1]) and gate["steps"][-1]["drop"] <= 0.01

    # the top entry's score is what that group alone in int8 does to the output, measured independently
    top = ranking[0]
    others = [n for r in ranking[1:] for n in r["nodes"]]
    alone = quantize_static_int8(digits_bundle.root, tmp_path / "alone", dim, nodes_to_exclude=others,
                                 bias_correction=False)
    rows = splits.x_test[:SENSITIVITY_ROWS]
    measured = divergence(onnx_outputs(digits_bundle.root / "model.onnx", rows),
                          onnx_outputs(alone.bundle.root / "model.int8.onnx", rows))
    assert measured == pytest.approx(top["divergence"], rel=1e-6)
    assert top["divergence"] > ranking[-1]["divergence"] > 0


def test_an_unknown_gate_strategy_is_refused(digits_bundle, digits_splits, tmp_path):
    refused = "must be 'auto', 'rank', 'prefix', 'sensitivity', 'budget' or 'prefix16'"
    with pytest.raises(QuantizationError, match=refused):
        quantize_static_int8(digits_bundle.root, tmp_path / "int8", digits_splits.x_train[:64] * 0.3,
                             eval_data=(digits_splits.x_test, None), max_drop=0.0, gate_strategy="best")


def test_the_budget_gate_keeps_no_more_than_its_share_of_the_weights_in_float(digits_bundle, digits_splits, tmp_path):
    # The same under-exposed calibration: "sensitivity" meets the gate by keeping groups in float, but on
    # this small CNN the most sensitive groups hold most of the weights, so the budget binds and the gate
    # fails with its trials rather than returning a model that is mostly float.
    dim = digits_splits.x_train[:CALIBRATION_ROWS] * 0.3
    with pytest.raises(QuantizationError, match="no set of float nodes meets the accuracy gate") as caught:
        quantize_static_int8(digits_bundle.root, tmp_path / "budget", dim, max_drop=0.01, bias_correction=False,
                             eval_data=(digits_splits.x_test, digits_splits.y_test), gate_strategy="budget")
    weights = weight_counts(digits_bundle.root / "model.onnx")
    steps = caught.value.steps
    assert steps[0]["excluded"] == [] and steps[0]["drop"] > 0.01 and len(steps) > 1
    for step in steps[1:]:
        kept = sum(weights.get(n, 0) for n in step["excluded"])
        assert 0 < kept <= FLOAT_WEIGHT_BUDGET * sum(weights.values())


def test_the_prefix16_gate_widens_the_activations_and_keeps_the_weights_int8(digits_bundle, digits_splits, tmp_path):
    # Four calibration rows 60 times too bright stretch the MinMax ranges: int8 activations keep too few
    # levels for ordinary rows and the gate misses; 16-bit activations keep them, with the weights in int8.
    calibration = digits_splits.x_train[:CALIBRATION_ROWS].copy()
    calibration[:4] *= 60.0
    data = (digits_splits.x_test, digits_splits.y_test)
    gated = quantize_static_int8(digits_bundle.root, tmp_path / "wide", calibration, eval_data=data, max_drop=0.01,
                                 bias_correction=False, gate_strategy="prefix16",
                                 signing_key=SigningKey.load(digits_bundle.private_key))
    step = gated.bundle.manifest["lineage"]["steps"][-1]
    steps = step["gate"]["steps"]
    assert steps[0]["drop"] > 0.01 and "activations" not in steps[0]  # the premise: int8 activations miss
    assert steps[1]["activations"] == "QUInt16" and steps[1]["float_groups"] == 0 and steps[1]["drop"] <= 0.01
    assert gated.accuracy_drop <= 0.01 and gated.excluded_nodes == ()
    assert step["options"]["activation_type"] == "QUInt16"

    model = onnx.load(str(gated.bundle.root / "model.int8.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    quantized = {n.input[0]: inits[n.input[0]].data_type for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2}
    assert quantized and set(quantized.values()) == {onnx.TensorProto.INT8}  # every weight int8
    activations = {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert activations == {onnx.TensorProto.UINT16}
    assert gated.size_ratio > 1.5
    with Predictor(gated.bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        assert predictor.self_test().passed
        served = predictor.predict({"pixels": digits_splits.x_test[:64]})
    assert np.array_equal(np.asarray(next(iter(served.values()))).argmax(1),
                          onnx_outputs(gated.bundle.root / "model.int8.onnx", digits_splits.x_test[:64]).argmax(1))
