"""The task answers (core/answers.py) and the task quality against golden outputs (core/task_quality.py) on
hand-made outputs whose right answer is known: the layouts, the options and their refusals, the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.answers import AnswerOptionError, AnswerOptions, check_top_k, parse_options, task_answer
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.schema import TensorSpec
from edgefleet.core.task_quality import golden_quality, max_errors


def spec(name: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name, "float32", ("batch", *shape))


def interface(task: str, **extra: object) -> dict:
    return {"task": task, "postprocess": "none", **extra}


# --- classification ----------------------------------------------------------------------------------------
def test_top_k_of_probabilities_with_ties_in_index_order_and_k_clamped():
    probs = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    answer = task_answer(interface("classification"), [spec("p", 4)], {"p": probs}, AnswerOptions(top_k=3))
    assert [[c["class"] for c in row] for row in answer["top_k"]] == [[1, 3, 0], [0, 1, 2]]  # no names: indices
    assert answer["top_k"][0][0]["score"] == pytest.approx(0.4)
    assert answer["predictions"] == [{"class": 1, "confidence": pytest.approx(0.4)},
                                     {"class": 0, "confidence": pytest.approx(0.7)}]
    every = task_answer(interface("classification", class_names=list("abcd")), [spec("p", 4)], {"p": probs},
                        AnswerOptions(top_k=99))["top_k"]
    assert [c["class"] for c in every[1]] == ["a", "b", "c", "d"]


def test_logits_become_probabilities_under_softmax():
    logits = np.array([[2.0, 0.0, -1.0]], dtype=np.float32)
    exp = np.exp(logits[0].astype(np.float64))
    want = exp / exp.sum()
    answer = task_answer({"task": "classification", "postprocess": "softmax"}, [spec("logits", 3)],
                         {"logits": logits}, AnswerOptions(top_k=3))
    np.testing.assert_allclose([c["score"] for c in answer["top_k"][0]], want, rtol=1e-12)


@pytest.mark.parametrize(("value", "message"), [
    (0, "got 0"), ("0", "got 0"), (-1, "got -1"), ("-1", "got '-1'"), ("1.5", "got '1.5'"), ("", "got ''"),
    (True, "got True"), ("٣", "got '٣'"), ("1" * 40, "got '11111111111111111111111111111111...'"),
])
def test_top_k_must_be_a_positive_integer(value, message):
    with pytest.raises(AnswerOptionError, match="top_k must be a positive integer, " + message.replace(".", r"\.")):
        check_top_k(value)
    assert check_top_k("7") == 7 and check_top_k(3) == 3


@pytest.mark.parametrize(("task", "pairs", "message"), [
    ("classification", [("k", "1")], "unknown query parameter 'k': this model (classification) takes ?top_k="),
    ("classification", [("top_k", "1"), ("top_k", "1")], "query parameter top_k is given more than once"),
    ("regression", [("top_k", "1")], "top_k does not apply to this model: its task is regression, which takes "
                                     "no query parameters"),
    ("other", [("normalize", "true")], "normalize does not apply to this model: its task is other"),
    ("embedding", [("normalize", "yes please")], "normalize must be true or false, got 'yes please'"),
])
def test_options_a_task_does_not_take_are_refused(task, pairs, message):
    with pytest.raises(AnswerOptionError) as caught:
        parse_options(pairs, {"task": task})
    assert str(caught.value) == message or str(caught.value).startswith(message)
    assert parse_options([], {"task": task}) == AnswerOptions()


# --- regression, embedding, other --------------------------------------------------------------------------
def test_regression_values_per_sample_by_output_and_never_a_class():
    price, quantiles = np.array([[1.5], [2.5]]), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    answer = task_answer(interface("regression"), [spec("price", 1), spec("quantiles", 3)],
                         {"price": price, "quantiles": quantiles})
    assert answer == {"values": [{"price": 1.5, "quantiles": [1.0, 2.0, 3.0]},
                                 {"price": 2.5, "quantiles": [4.0, 5.0, 6.0]}]}
    assert task_answer(interface("other"), [spec("y", 3)], {"y": quantiles}) == {}
    rate = TensorSpec("rate", "float32", ())  # no batch axis: one value for every sample, raw only
    answer = task_answer(interface("regression"), [spec("price", 1), rate], {"price": price, "rate": np.float32(8.0)})
    assert answer == {"values": [{"price": 1.5}, {"price": 2.5}]}


def test_samples_are_taken_on_each_outputs_batch_axis():
    sequence = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)  # [steps, batch, features]: a GRU's
    answer = task_answer(interface("regression"), [TensorSpec("y", "float32", (5, "batch", 3))], {"y": sequence})
    assert answer == {"values": [{"y": sequence[:, 0].tolist()}, {"y": sequence[:, 1].tolist()}]}


def test_embedding_picks_the_fixed_size_output_and_normalizes_on_request():
    specs = [TensorSpec("hidden", "float32", ("batch", "tokens", 2)), spec("pooled", 2)]
    outputs = {"hidden": np.ones((2, 5, 2)), "pooled": np.array([[3.0, 4.0], [0.0, 0.0]])}
    plain = task_answer(interface("embedding"), specs, outputs)
    assert plain == {"embeddings": [{"vector": [3.0, 4.0], "norm": 5.0}, {"vector": [0.0, 0.0], "norm": 0.0}],
                     "normalized": False}
    unit = task_answer(interface("embedding"), specs, outputs, AnswerOptions(normalize=True))
    assert unit["embeddings"] == [{"vector": [0.6, 0.8], "norm": 5.0}, {"vector": [0.0, 0.0], "norm": 0.0}]


# --- detection ---------------------------------------------------------------------------------------------
def test_detections_from_the_named_outputs_at_or_above_the_threshold_best_first():
    config = {"scores": "conf", "boxes": "loc", "classes": "cls", "score_threshold": 0.3}
    specs = [spec("loc", 3, 4), spec("conf", 3), spec("cls", 3)]
    outputs = {"loc": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
               "conf": np.array([[0.2, 0.9, 0.3], [0.1, 0.0, 0.29]]), "cls": np.array([[0, 2, 1], [1, 1, 1]])}
    answer = task_answer(interface("detection", detection=config, class_names=["cat", "dog", "car"]), specs, outputs)
    assert answer == {"score_threshold": 0.3, "detections": [
        [{"score": 0.9, "box": [4.0, 5.0, 6.0, 7.0], "class": "car", "class_id": 2},
         {"score": 0.3, "box": [8.0, 9.0, 10.0, 11.0], "class": "dog", "class_id": 1}],
        []]}


def test_per_class_scores_give_the_class_and_an_unknown_layout_gives_raw_only():
    scores = np.array([[[0.1, 0.8], [0.6, 0.2], [0.1, 0.1]]])  # [1, D=3, C=2], names like *score*
    answer = task_answer(interface("detection"), [spec("det_scores", 3, 2)], {"det_scores": scores})
    assert answer["detections"] == [[{"score": 0.8, "class": 1, "class_id": 1},
                                     {"score": 0.6, "class": 0, "class_id": 0}]]
    assert answer["score_threshold"] == 0.5  # the default without interface["detection"]
    assert task_answer(interface("detection"), [spec("out", 3)], {"out": np.ones((1, 3))}) == {}


# --- quality against golden outputs ------------------------------------------------------------------------
def test_quality_per_task_measures_what_moved():
    logits = np.array([[3.0, 0.0], [0.0, 3.0], [1.0, 0.9], [2.0, 0.0]])
    flipped = logits.copy()
    flipped[2] = [0.9, 1.0]
    quality = golden_quality(interface("classification"), [spec("y", 2)], {"y": logits}, {"y": flipped})
    assert quality == {"task": "classification", "examples": 4, "top1_agreement": 0.75}

    want = np.array([[1.0], [-2.0]])
    quality = golden_quality(interface("regression"), [spec("v", 1)], {"v": want}, {"v": want + [[0.01], [0.0]]})
    assert quality["max_abs_error"] == pytest.approx(0.01) and quality["max_rel_error"] == pytest.approx(0.01)

    vectors = np.array([[1.0, 0.0], [0.0, 2.0]])
    turned = np.array([[1.0, 1.0], [0.0, 5.0]])  # 45 degrees off, then only longer
    quality = golden_quality(interface("embedding"), [spec("e", 2)], {"e": vectors}, {"e": turned})
    assert quality["min_cosine"] == pytest.approx(np.sqrt(0.5)) and quality["max_abs_error"] == pytest.approx(3.0)

    scores = np.array([[0.9, 0.2], [0.6, 0.4]])
    moved = np.array([[0.9, 0.25], [0.45, 0.4]])  # the second sample loses a detection
    quality = golden_quality(interface("detection"), [spec("scores", 2)], {"scores": scores}, {"scores": moved})
    assert quality == {"task": "detection", "examples": 2, "count_agreement": 0.5,
                       "max_score_error": pytest.approx(0.15), "score_threshold": 0.5}

    quality = golden_quality({"task": "other"}, [spec("y", 2)], {"y": scores}, {"y": moved})
    assert quality == {"task": "other", "examples": 2, "max_abs_error": pytest.approx(0.15)}


def test_quality_refuses_outputs_of_another_shape():
    with pytest.raises(EdgefleetError, match=r"output 'y': expected the golden shape \(2, 2\), got \(1, 2\)"):
        golden_quality({"task": "other"}, [spec("y", 2)], {"y": np.zeros((2, 2))}, {"y": np.zeros((1, 2))})
    assert max_errors([np.array([1.0, 2.5])], [np.array([1.0, 2.0])]) == (0.5, 0.25)
