"""Labels that arrive later, on the device: POST /v1/feedback on a real uvicorn serving the digits CNN joins a
label to the prediction its request id names, once, and the next telemetry window counts it; every refusal
comes from outside as a client would send it, with its status and reason."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from edgefleet.core.labels import error_edges
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.edge_runtime.feedback import LabelWindow, RecentPredictions
from edgefleet.edge_runtime.http_api import create_app
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.telemetry import TelemetryAggregator
from tests.edge_runtime.http_kit import serve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def device(digits_bundle):
    """(client, host, clock) of a device whose predictions are kept 60 s, at most 5 of them."""
    clock = Clock()
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key], threads=1) as predictor:
        host = ModelHost(predictor, telemetry=lambda p: TelemetryAggregator(p.bundle, fleet="lab", device="d1"))
        app = create_app(host, recent=RecentPredictions(capacity=5, ttl_seconds=60, clock=clock))
        with serve(app) as base, httpx.Client(base_url=base, timeout=30) as client:
            yield client, host, clock


def predict(client: httpx.Client, x: np.ndarray, request_id: str | None = None) -> dict:
    headers = {"X-Request-Id": request_id} if request_id else {}
    response = client.post("/v1/predict", json={"inputs": x.tolist()}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_label_joins_its_prediction_once_and_the_window_counts_it(device, digits_splits):
    client, host, _ = device
    host.current.telemetry.close_window()  # start from an empty window
    x, y = digits_splits.x_test[:3], digits_splits.y_test[:3]
    answer = predict(client, x)
    assert len(answer["request_id"]) == 32  # a fresh uuid4 when the client sends none
    mine = predict(client, x[:1], request_id="cam-7:000042")
    assert mine["request_id"] == "cam-7:000042"  # the client's own id is kept
    predicted = [int(p["class"]) for p in answer["predictions"]]
    wrong = (int(y[0]) + 1) % 10  # a label the model did not predict, by class name
    labels = [str(wrong), int(y[1]), int(y[2])]
    joined = client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": labels})
    assert joined.status_code == 200, joined.text
    truth = [wrong, int(y[1]), int(y[2])]
    assert joined.json() == {"request_id": answer["request_id"], "labelled": 3,
                             "correct": sum(p == t for p, t in zip(predicted, truth, strict=True))}
    assert client.post("/v1/feedback", json={"request_id": "cam-7:000042", "label": int(y[0])}).status_code == 200
    again = client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": labels})
    assert (again.status_code, again.json()["reason"]) == (404, "labelled")  # never counted twice
    window = parse_telemetry(host.current.telemetry.close_window().to_payload())
    assert window.labels.count == 4
    expected: dict[tuple[int, int], int] = {}
    for t, p in [*zip(truth, predicted, strict=True), (int(y[0]), int(mine["predictions"][0]["class"]))]:
        expected[(t, p)] = expected.get((t, p), 0) + 1
    assert {(t, p): n for t, p, n in window.labels.confusion} == expected
    assert host.current.telemetry.close_window().labels is None  # the next window starts without labels


@pytest.mark.parametrize(("body", "status", "reason", "message"), [
    (b"{", 400, "bad_label", "not JSON"),
    (b'{"request_id": "x"}', 400, "bad_label", "the body must be"),
    (b'{"request_id": "x", "label": 1, "extra": 2}', 400, "bad_label", "the body must be"),
    (b'{"request_id": 7, "label": 1}', 400, "bad_label", "request_id must be"),
    (b'{"request_id": "never-seen", "label": 1}', 404, "unknown_request", "no recent prediction"),
    (b'{"request_id": "KNOWN", "label": 10}', 400, "bad_label", "not a class index 0..9"),
    (b'{"request_id": "KNOWN", "label": "ten"}', 400, "bad_label", "not a class index"),
    (b'{"request_id": "KNOWN", "label": [1, 2]}', 400, "bad_label", "predicted 1 samples: send 1 labels, got 2"),
    (b'{"request_id": "KNOWN", "value": 1.5}', 400, "bad_label", "was a classification prediction: send 'label'"),
    (b'{"request_id": "KNOWN", "label": true}', 400, "bad_label", "not a class index"),
])
def test_bad_feedback_is_refused_with_its_reason_and_leaves_the_prediction(device, digits_splits, body, status,
                                                                            reason, message):
    client, _, _ = device
    known = predict(client, digits_splits.x_test[:1])["request_id"]
    response = client.post("/v1/feedback", content=body.replace(b"KNOWN", known.encode()),
                           headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["reason"]) == (status, reason)
    assert message in response.json()["detail"]
    # a malformed label does not use up the prediction: the corrected one is taken
    assert client.post("/v1/feedback", json={"request_id": known, "label": 3}).status_code == 200


def test_expired_and_evicted_predictions_are_404_with_the_reason(device, digits_splits):
    client, _, clock = device
    old = predict(client, digits_splits.x_test[:1])["request_id"]
    clock.now += 61  # past the 60 s the device keeps a prediction
    expired = client.post("/v1/feedback", json={"request_id": old, "label": 1})
    assert (expired.status_code, expired.json()["reason"]) == (404, "expired")
    assert "more than the 60 s" in expired.json()["detail"]
    first = predict(client, digits_splits.x_test[:1])["request_id"]
    for _ in range(5):  # the map holds 5: the first is pushed out
        predict(client, digits_splits.x_test[:1])
    evicted = client.post("/v1/feedback", json={"request_id": first, "label": 1})
    assert (evicted.status_code, evicted.json()["reason"]) == (404, "unknown_request")


def test_a_bad_request_id_header_and_an_oversized_body_are_refused(device, digits_splits):
    client, _, _ = device
    bad = client.post("/v1/predict", json={"inputs": digits_splits.x_test[:1].tolist()},
                      headers={"X-Request-Id": "../" + "x" * 80})
    assert bad.status_code == 400 and "X-Request-Id must be" in bad.json()["detail"]
    huge = client.post("/v1/feedback", content=b'{"request_id": "a", "label": [' + b"1," * 40000 + b"1]}")
    assert (huge.status_code, huge.json()["reason"]) == (413, "too_large")


def test_regression_errors_are_binned_on_the_profile_spread():
    profile = {"outputs": [{"edges": [[0.0, 1.0, 2.0, 4.0]]}]}  # spread 4: edges at -8 ... 8
    edges = error_edges(profile)
    window = LabelWindow(edges)
    window.add_values([1.0, 2.0, 10.0], [1.0, 1.0, 0.0])  # errors 0, 1, 10
    counts = window.take()
    assert counts.count == 3 and counts.abs_error_sum == 11.0 and counts.squared_error_sum == 101.0
    assert list(np.flatnonzero(counts.errors)) == [6, 8, 11]  # 0 -> right of edge 0; 1 -> (0.4, 1]; 10 -> beyond 8
    payload = json.loads(json.dumps(counts.to_dict()))
    assert payload["errors"] == list(counts.errors)
