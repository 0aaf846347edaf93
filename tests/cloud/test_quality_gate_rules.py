"""The quality gates' rules without I/O (cloud/quality_gates.py): when a verdict is due, what insufficient
data does before and after the deadline, and that two samples of one distribution pass the drift gate
while a moved one fails it. Counts are the real digits CNN's answers (the session's bundle on the test
split), split between a canary and a control side as two groups of devices would see them."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.quality_gates import QualityGates, Side, drift_gate, error_gate, judge, verdict
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.predictor import Predictor


@pytest.fixture(scope="module")
def answers(digits_bundle, digits_splits) -> np.ndarray:
    predictor = Predictor(Bundle.open(digits_bundle.root), backends=["onnxruntime"], threads=1,
                          trusted_keys=[digits_bundle.public_key])
    try:
        logits = next(iter(predictor.predict(digits_splits.x_test.astype(np.float32)).values()))
    finally:
        predictor.close()
    return np.argmax(logits, axis=1)


def side(classes: np.ndarray, requests: int | None = None, errors: int = 0) -> Side:
    counts = np.bincount(classes, minlength=10).astype(np.int64)
    return Side(windows=1, requests=requests if requests is not None else len(classes), samples=len(classes),
                errors=errors, predictions=counts, shapes={10})


def test_two_halves_of_the_same_traffic_pass_and_a_moved_distribution_fails(answers: np.ndarray):
    gates = QualityGates(max_prediction_psi=0.2, min_samples=100)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(answers))
    same = drift_gate(gates, side(answers[order[:225]]), side(answers[order[225:]]))
    assert same["outcome"] == "pass" and same["value"] <= same["threshold"]
    # a candidate that answers 0, 1 and 2 on everything it used to call 7, 8 or 9
    moved = np.where(answers >= 7, answers - 7, answers)
    failed = drift_gate(gates, side(moved[order[:225]]), side(answers[order[225:]]))
    assert failed["outcome"] == "fail" and failed["value"] > failed["threshold"] and failed["p"] < 0.01
    assert failed["text"].startswith(f"canary vs control PSI {failed['value']:.3f} > threshold")
    regression = Side(windows=1, requests=300, samples=300)  # windows without class counts
    unjudged = drift_gate(gates, regression, regression)
    assert unjudged["outcome"] == "insufficient" and "not a classifier" in unjudged["text"]
    short = drift_gate(gates, side(answers[:99]), side(answers[99:]))
    assert short["outcome"] == "insufficient" and "canary 99, control 351 predictions" in short["text"]


def test_the_verdict_waits_for_the_observation_and_for_data_until_the_deadline(answers: np.ndarray):
    gates = QualityGates(max_prediction_psi=0.2, max_error_rate_increase=0.01, min_samples=100,
                         observation_seconds=10)
    enough = judge(gates, side(answers[:225]), side(answers[225:]), lambda *_: None)
    common = {"started": 100.0, "deadline": 160.0, "canary": ["a"], "control": ["b"]}
    assert verdict(gates, enough, now=105.0, **common).action == "wait"  # observation not over
    passed = verdict(gates, enough, now=110.0, **common)
    assert passed.action == "pass" and passed.record["outcome"] == "passed"
    errors = error_gate(gates, side(answers[:225], errors=20), side(answers[225:]))
    failed = verdict(gates, [enough[0], errors], now=110.0, **common)
    assert failed.action == "fail" and failed.reason == (
        "quality gate failed after the canary wave: error_rate: error rate canary 0.0889 vs control 0.0000: "
        "increase 0.0889 > max_error_rate_increase 0.0100 (20 of 225, 0 of 225 requests)")
    short = judge(gates, side(answers[:50]), side(answers[225:]), lambda *_: None)
    assert verdict(gates, short, now=159.0, **common).action == "wait"  # data may still come
    late = verdict(gates, short, now=160.0, **common)
    assert late.action == "fail" and "insufficient data: canary 50, control 225" in late.reason
    lenient = QualityGates(**{**gates.model_dump(), "on_insufficient": "pass"})
    let_through = verdict(lenient, short, now=160.0, **common)
    assert let_through.action == "pass" and "insufficient" in let_through.record["outcome"]
    # a real failure does not wait for the gates still short of data
    mixed = verdict(gates, [short[0], errors], now=110.0, **common)
    assert mixed.action == "fail" and mixed.reason == failed.reason  # the short gate is not named before the deadline
    assert [r["outcome"] for r in mixed.record["results"]] == ["insufficient", "fail"]
