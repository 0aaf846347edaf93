"""Each task's own answer over the device's HTTP API (issue 12): a real uvicorn server on loopback serving
real bundles exported from torch (task_kit.py); the answer is checked against the raw outputs the same
response carries, and bad answer options get one 400 while the server keeps serving."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from edgefleet.edge_runtime.http_api import create_app
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from tests.edge_runtime import task_kit
from tests.edge_runtime.http_kit import serve

TASKS = ["classification", "regression", "embedding", "detection", "other"]


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    """(task, predict URL, the sample request) for a real bundle of each task behind a real server."""
    built = task_kit.build(request.param, tmp_path_factory.mktemp(request.param))
    with Predictor(built.root, trusted_keys=[built.public_key], threads=1) as predictor, \
            serve(create_app(ModelHost(predictor))) as base:
        yield request.param, base + "/v1/predict", built.sample


def ask(url: str, sample: dict, params: dict | list | None = None) -> httpx.Response:
    body = json.dumps({"inputs": {k: v.tolist() for k, v in sample.items()}})
    with httpx.Client(timeout=30) as client:
        return client.post(url, content=body, params=params, headers={"Content-Type": "application/json"})


def keys_anywhere(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_anywhere(v)}
    return set()


def samples_counted(metrics: str) -> float:
    lines = [line for line in metrics.splitlines() if line.startswith("edgefleet_samples_total{")]
    return float(lines[0].split()[-1]) if lines else 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("served", TASKS, indirect=True)
def test_each_task_answers_in_its_own_terms(served):
    task, url, sample = served
    answer = ask(url, sample).json()
    assert answer["task"] == task
    outputs = {k: np.asarray(v) for k, v in answer["outputs"].items()}  # the raw outputs stay
    if task == "classification":
        probs = softmax(outputs["logits"])
        assert [len(row) for row in answer["top_k"]] == [1, 1, 1]  # default k = 1
        assert [row[0]["class"] for row in answer["top_k"]] == [task_kit.CLASS_NAMES[i] for i in probs.argmax(1)]
        np.testing.assert_allclose([row[0]["score"] for row in answer["top_k"]], probs.max(1), rtol=1e-9)
        assert answer["predictions"] == [{"class": r[0]["class"], "confidence": r[0]["score"]} for r in answer["top_k"]]
    elif task == "regression":
        assert answer["values"] == [{"value": float(v)} for v in outputs["value"][:, 0]]
        assert {"class", "confidence", "predictions", "top_k", "score"}.isdisjoint(keys_anywhere(answer))
        assert '"class"' not in json.dumps(answer)
    elif task == "embedding":
        pooled = outputs["pooled"]
        assert answer["normalized"] is False and len(answer["embeddings"]) == 3
        np.testing.assert_array_equal([e["vector"] for e in answer["embeddings"]], pooled)
        np.testing.assert_allclose([e["norm"] for e in answer["embeddings"]], np.linalg.norm(pooled, axis=1))
        assert {"class", "confidence"}.isdisjoint(keys_anywhere(answer))
    elif task == "other":  # the raw outputs are the whole answer
        assert set(answer) == {"model", "task", "outputs", "request_id"} and outputs["y"].shape == (5, 2, 16)
    else:
        scores, boxes = outputs["scores"], outputs["boxes"]
        threshold = task_kit.DETECTION_THRESHOLD  # the manifest's, not the default 0.5
        assert answer["score_threshold"] == threshold
        for i, found in enumerate(answer["detections"]):
            kept = [d for d in np.argsort(-scores[i], kind="stable") if scores[i, d] >= threshold]
            assert [f["score"] for f in found] == [float(scores[i, d]) for d in kept]
            assert [f["box"] for f in found] == [boxes[i, d].tolist() for d in kept]
            assert all("class" not in f for f in found)  # no class output: none invented
        counts = [len(found) for found in answer["detections"]]
        assert counts == [int((row >= threshold).sum()) for row in scores] and 0 < sum(counts) < scores.size


@pytest.mark.parametrize("served", ["classification"], indirect=True)
def test_top_k_classes_with_probabilities(served):
    _task, url, sample = served
    answer = ask(url, sample, {"top_k": 3}).json()
    probs = softmax(np.asarray(answer["outputs"]["logits"]))
    for row, p in zip(answer["top_k"], probs, strict=True):
        order = np.argsort(-p, kind="stable")[:3]
        assert [c["class"] for c in row] == [task_kit.CLASS_NAMES[i] for i in order]
        np.testing.assert_allclose([c["score"] for c in row], p[order], rtol=1e-9)
        assert row[0]["score"] >= row[1]["score"] >= row[2]["score"]
    clamped = ask(url, sample, {"top_k": 50}).json()["top_k"]  # more than the 10 classes: all of them
    assert [len(row) for row in clamped] == [10, 10, 10]
    assert sorted(c["class"] for c in clamped[0]) == sorted(task_kit.CLASS_NAMES)
    np.testing.assert_allclose([sum(c["score"] for c in row) for row in clamped], 1.0, rtol=1e-9)


@pytest.mark.parametrize("served", ["embedding"], indirect=True)
def test_normalized_embeddings_on_request(served):
    _task, url, sample = served
    plain, unit = ask(url, sample).json(), ask(url, sample, {"normalize": "true"}).json()
    assert unit["normalized"] is True
    vectors = np.asarray([e["vector"] for e in unit["embeddings"]])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(vectors * [[e["norm"]] for e in plain["embeddings"]],
                               [e["vector"] for e in plain["embeddings"]], rtol=1e-9, atol=1e-12)


BAD_OPTIONS = {
    "classification": [({"top_k": 0}, "top_k must be a positive integer, got 0"),
                       ({"top_k": -2}, "top_k must be a positive integer, got '-2'"),
                       ({"top_k": "three"}, "top_k must be a positive integer, got 'three'"),
                       ({"top_k": "2.5"}, "top_k must be a positive integer, got '2.5'"),
                       ({"top_k": "9" * 40}, "top_k must be a positive integer, got '99999999"),
                       ([("top_k", "2"), ("top_k", "3")], "query parameter top_k is given more than once"),
                       ({"normalize": "true"}, "normalize does not apply to this model: its task is "
                                               "classification, which takes ?top_k="),
                       ({"topk": "3"}, "unknown query parameter 'topk': this model (classification) takes ?top_k=")],
    "regression": [({"top_k": 3}, "top_k does not apply to this model: its task is regression, which takes "
                                  "no query parameters")],
    "embedding": [({"normalize": "maybe"}, "normalize must be true or false, got 'maybe'"),
                  ({"top_k": 1}, "top_k does not apply to this model: its task is embedding, which takes ?normalize=")],
    "detection": [({"top_k": 1}, "top_k does not apply to this model: its task is detection")],
    "other": [({"normalize": "true"}, "normalize does not apply to this model: its task is other, which takes no "
                                      "query parameters")],
}


@pytest.mark.parametrize("served", TASKS, indirect=True)
def test_bad_answer_options_are_one_400_and_the_server_keeps_serving(served):
    task, url, sample = served
    body = json.dumps({"inputs": {k: v.tolist() for k, v in sample.items()}})
    with httpx.Client(timeout=30) as client:  # one kept-alive connection through all of it
        for params, message in BAD_OPTIONS[task]:
            answer = client.post(url, content=body, params=params, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, answer.text
            assert answer.json() == {"detail": answer.json()["detail"]} and message in answer.json()["detail"]
        before = samples_counted(client.get(url.replace("/v1/predict", "/metrics")).text)
        good = client.post(url, content=body, headers={"Content-Type": "application/json"})
        assert good.status_code == 200 and good.json()["task"] == task
        metrics = client.get(url.replace("/v1/predict", "/metrics")).text
    # samples on the batch axis: the GRU's [steps 5, batch 2, ...] request is 2 samples, not 5
    assert samples_counted(metrics) - before == (2 if task == "other" else len(next(iter(sample.values()))))
    errors = [line for line in metrics.splitlines() if line.startswith("edgefleet_request_errors_total{")]
    assert len(errors) == 1 and 'code="400"' in errors[0], errors  # each refusal counted, nothing else failed
    assert float(errors[0].split()[-1]) >= len(BAD_OPTIONS[task])
