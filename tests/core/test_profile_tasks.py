"""Per-task output summaries of the reference profile (core/output_summary.py) and the profile plan
(compilers/profile_plan.py): which inputs are profiled, column names, and the task rules."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.compilers.profile_plan import infer_task, plan_profile
from edgefleet.core.errors import ExportError
from edgefleet.core.output_summary import PROJECTIONS, plan_summaries, summarise_outputs, summary_columns
from edgefleet.core.profile import build_profile
from edgefleet.core.schema import TensorSpec

RNG = np.random.default_rng(3)


def _profile(task: str, outputs: list[TensorSpec], chunks: list[dict], detection: dict | None = None) -> dict:
    x = TensorSpec("x", "float32", ("batch", 2))
    data = {"x": RNG.standard_normal((4, 2)).astype(np.float32)}  # the inputs' side is test_profile.py's
    return build_profile(data, [x], None, summaries=plan_summaries(task, outputs, detection), output_chunks=chunks)


def test_regression_rows_per_element_when_few_else_sample_statistics():
    price = TensorSpec("price", "float32", ("batch", 2))
    curve = TensorSpec("curve", "float32", ("batch", 40))
    chunks = [{"price": RNG.normal(size=(50, 2)), "curve": RNG.normal(size=(50, 40))} for _ in range(3)]
    profile = _profile("regression", [price, curve], chunks)
    first, second = profile["outputs"]
    assert (first["output"], first["summary"], first["names"]) == ("price", "values", ["price[0]", "price[1]"])
    assert second["names"] == ["mean", "std", "min", "max"]
    for entry in profile["outputs"]:
        counts = np.asarray(entry["counts"])
        assert counts.shape == (len(entry["names"]), 11) and (counts.sum(axis=1) == 150).all()
        assert counts[:, -1].sum() == 0 and counts[:, :-1].max() <= 150 * 0.2  # quantile bins: ~10% each
    stats = summary_columns(plan_summaries("regression", [curve])[0], chunks[0]["curve"])[0]
    np.testing.assert_allclose(stats[:, 2], chunks[0]["curve"].min(axis=1))


def test_embedding_has_norm_and_fixed_unit_projections():
    pooled = TensorSpec("pooled", "float32", ("batch", 32))
    hidden = TensorSpec("hidden", "float32", ("batch", "tokens", 32))
    chunks = [{"pooled": RNG.normal(size=(64, 32)) * 3.0}]
    profile = _profile("embedding", [hidden, pooled], chunks)
    (entry,) = profile["outputs"]  # the first output with a fixed size per sample
    assert entry["output"] == "pooled" and entry["names"] == ["norm"] + [f"proj{i}" for i in range(PROJECTIONS)]
    directions = np.asarray(entry["projections"])
    assert directions.shape == (PROJECTIONS, 32)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    again = plan_summaries("embedding", [hidden, pooled])[0].projections
    np.testing.assert_array_equal(again, directions)  # the same seed: every export draws the same directions
    # the projections of unit vectors are cosines; a scaled embedding changes the norm row only
    columns = summary_columns(plan_summaries("embedding", [pooled])[0], chunks[0]["pooled"])[0]
    scaled = summary_columns(plan_summaries("embedding", [pooled])[0], chunks[0]["pooled"] * 5)[0]
    assert np.abs(columns[:, 1:]).max() <= 1.0
    np.testing.assert_allclose(scaled[:, 0], columns[:, 0] * 5)
    np.testing.assert_allclose(scaled[:, 1:], columns[:, 1:])


def test_detections_count_per_sample_and_score_per_detection():
    boxes, scores = TensorSpec("boxes", "float32", ("batch", "D", 4)), TensorSpec("scores", "float32", ("batch", "D"))
    detection = {"scores": "scores", "score_threshold": 0.5}
    # chunks with different numbers of detections (D is dynamic), as a detector's runs give them
    chunks = [{"scores": np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.4]])}, {"scores": np.array([[0.7], [0.55], [0.2]])}]
    (entry,) = _profile("detection", [boxes, scores], chunks, detection)["outputs"]
    assert (entry["output"], entry["summary"], entry["names"]) == ("scores", "detections", ["count", "score"])
    counts = np.asarray(entry["counts"])
    assert counts[0].sum() == 5  # one count per sample
    assert counts[1].sum() == 4  # one score per detection at or above 0.5: 0.9, 0.6, 0.7, 0.55
    class_scores = TensorSpec("scores", "float32", ("batch", "D", 3))
    summary = plan_summaries("detection", [boxes, class_scores], detection)[0]
    per_class = np.array([[[0.1, 0.8, 0.0], [0.2, 0.1, 0.3]]])  # a detection's score is its best class's
    count, score = summary_columns(summary, per_class)
    assert count.tolist() == [[1.0]] and score.tolist() == [[0.8]]


def test_counts_summed_over_requests_equal_the_profile_exactly():
    value = TensorSpec("value", "float32", ("batch", 1))
    data = RNG.normal(size=(300, 1)).astype(np.float32)
    chunks = [{"value": data[i:i + 128]} for i in range(0, 300, 128)]
    (entry,) = _profile("regression", [value], chunks)["outputs"]
    summary = plan_summaries("regression", [value])[0].with_edges(np.asarray(entry["edges"]))
    total = sum(summarise_outputs([summary], {"value": row[None]})[0] for row in data)  # request by request
    assert total.tolist() == entry["counts"]


def test_state_and_scalar_inputs_are_not_profiled_by_default():
    x, h0 = TensorSpec("x", "float32", (5, "batch", 8)), TensorSpec("h0", "float32", (2, "batch", 16))
    rate = TensorSpec("rate", "float32", ())
    y, hn = TensorSpec("y", "float32", (5, "batch", 16)), TensorSpec("hn", "float32", (2, "batch", 16))
    plan = plan_profile([x, h0, rate], [y, hn], "other")
    assert plan.profiled == ["x"]
    assert plan.unprofiled == [{"input": "h0", "reason": "a recurrent state (it pairs with output 'hn')"},
                               {"input": "rate", "reason": "no batch axis: one value serves every sample"}]
    # named state/next_state pair too; an autoencoder's input of its output's shape is not a state
    state, next_state = TensorSpec("state", "float32", ("batch", 4)), TensorSpec("next_state", "float32", ("batch", 4))
    assert plan_profile([state], [next_state], "other").profiled == []
    image, recon = TensorSpec("image", "float32", ("batch", 8)), TensorSpec("reconstruction", "float32", ("batch", 8))
    assert plan_profile([image], [recon], "other").profiled == ["image"]
    assert plan_profile([x, h0, rate], [y, hn], "other", profiled_inputs=["x", "h0"]).profiled == ["x", "h0"]
    with pytest.raises(ExportError, match="input 'rate' cannot be profiled: no batch axis"):
        plan_profile([x, h0, rate], [y, hn], "other", profiled_inputs=["rate"])


def test_feature_names_name_the_columns_and_a_wrong_count_is_one_error():
    x = TensorSpec("features", "float32", ("batch", 3))
    plan = plan_profile([x], [TensorSpec("value", "float32", ("batch", 1))], "regression",
                        feature_names=["age", "income", "debt"])
    data = {"features": RNG.normal(size=(40, 3)).astype(np.float32)}
    profile = build_profile(data, [x], None, names=plan.names)
    assert profile["features"][0]["names"] == ["age", "income", "debt"]
    with pytest.raises(ExportError, match=r"feature_names for input 'features': expected 3 non-empty names \(one "
                                          r"per column\), got 2"):
        plan_profile([x], [], "other", feature_names=["age", "income"])
    with pytest.raises(ExportError, match="'pixels' is not a profiled tabular input"):
        plan_profile([x], [], "other", feature_names={"pixels": ["a"]})


def test_task_is_inferred_only_when_unambiguous():
    two_d = [TensorSpec("embedding", "float32", ("batch", 384))]
    assert infer_task(two_d, None) == "other"  # 2-D is not enough
    assert infer_task([TensorSpec("logits", "float32", ("batch", 3))], ["a", "b", "c"]) == "classification"
    detector = [TensorSpec("boxes", "float32", ("batch", "D", 4)), TensorSpec("scores", "float32", ("batch", "D"))]
    assert infer_task(detector, None) == "detection"
    assert plan_profile([], detector, "detection").detection == {"layout": "boxes+scores", "scores": "scores",
                                                                 "boxes": "boxes", "score_threshold": 0.5}
    with pytest.raises(ExportError, match="a detector's layout is not clear from its outputs"):
        plan_profile([], [TensorSpec("out", "float32", ("batch", "D", 85))], "detection")
    with pytest.raises(ExportError, match="detection scores must name an output"):
        plan_profile([], detector, "detection", detection={"scores": "logits"})
