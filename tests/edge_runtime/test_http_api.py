"""The device HTTP API attacked from outside (issue 11, point 5): a real uvicorn server on loopback, the real
digits CNN, raw request bodies. Every bad request gets one precise 4xx, a model fault a 500 that says so,
and kept-alive connections survive all of it."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from edgefleet.core.errors import EdgefleetError
from edgefleet.edge_runtime.http_api import create_app
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.request_files import read_request
from tests.edge_runtime.http_kit import serve

LIMIT = 64 * 1024


def pixels_with(literal: str) -> bytes:
    """A one-sample request whose first pixel is the JSON number literal `literal`, as an attacker writes it."""
    text = json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist()})
    return text.replace("0.0", literal, 1).encode()


@pytest.fixture(scope="module")
def predictor(digits_bundle):
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key], threads=1) as predictor:
        yield predictor


@pytest.fixture(scope="module")
def url(predictor):
    with serve(create_app(ModelHost(predictor), max_body_bytes=LIMIT)) as base:
        yield base + "/v1/predict"


@pytest.fixture(scope="module")
def good(digits_splits):
    return json.dumps({"inputs": digits_splits.x_test[:2].tolist()}).encode()


def post(client: httpx.Client, url: str, body: bytes) -> httpx.Response:
    return client.post(url, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(("literal", "status", "message"), [
    ("NaN", 400, "request body holds NaN: only finite numbers are accepted"),
    ("Infinity", 400, "request body holds Infinity"),
    ("-Infinity", 400, "request body holds -Infinity"),
    ("1e999", 400, "request body holds the number 1e999, too large for a double"),
    ("1e39", 422, "input 'pixels': expected finite float32 values, got 1e+39 at index [0, 0, 0, 0], beyond the "
                  "float32 range"),
    ("-3.5e38", 422, "input 'pixels': expected finite float32 values, got -3.5e+38"),
])
def test_non_finite_inputs_are_refused_not_answered_with_null(url, literal, status, message):
    with httpx.Client(timeout=10) as client:
        answer = post(client, url, pixels_with(literal))
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    assert "null" not in answer.text


@pytest.mark.parametrize(("body", "status", "message"), [
    (pixels_with("1" + "0" * 400), 400, "request body holds a 401-digit integer; integers must fit in 64 bits"),
    (pixels_with(str(2**63)), 400, "outside the 64-bit range"),
    (b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, "request body nests arrays/objects 3001 deep"),
    (json.dumps({"inputs": {"pixels": np.zeros((1, 1, 8, 8)).tolist(), "extra": [[1], [1, 2]]}}).encode(), 422,
     "input 'extra': expected only inputs ['pixels'], got an unknown input"),
    (json.dumps({"inputs": [[[[0.0] * 8] * 7 + [[0.0] * 7]]]}).encode(), 400,
     "input 'pixels': not a regular array of numbers (nested lists of different lengths)"),
    (json.dumps({"inputs": [[[["0"] * 8] * 8]]}).encode(), 400, "input 'pixels': not a regular array of numbers"),
    (json.dumps({"inputs": [[[[None] * 8] * 8]]}).encode(), 400, "input 'pixels': not a regular array of numbers"),
    (json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist(), "pixels": 1}).encode(), 400, "unknown fields ['pixels']"),
    (json.dumps({"inputs": np.zeros((1, 1, 7, 8)).tolist()}).encode(), 422, "axis 2 must be 8"),
    (b"\xff\xfe[]", 400, "request body is not UTF-8"),
    (b"[1, 2", 400, "request body is not JSON"),
    (b"[" + b"0," * LIMIT + b"0]", 413, f"exceeds the limit of {LIMIT} bytes"),
])
def test_hostile_bodies_get_one_precise_4xx(url, body, status, message):
    with httpx.Client(timeout=10) as client:
        answer = post(client, url, body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]


def test_a_model_fault_is_a_500_that_says_so_and_the_connection_survives(url, good):
    # 3e38 is a finite float32, so the request is valid; the CNN's sums overflow to inf and NaN. Before, that
    # was a 200 with "logits": [null, ...].
    with httpx.Client(timeout=10) as client:
        fault = post(client, url, json.dumps({"inputs": np.full((1, 1, 8, 8), 3e38).tolist()}).encode())
        after = post(client, url, good)
    assert fault.status_code == 500
    assert fault.json() == {"detail": "model digits-cnn v1 produced 10 non-finite value(s) (NaN or inf) in output "
                                      "'logits' from finite inputs: a model fault, not an answer"}
    assert after.status_code == 200 and len(after.json()["predictions"]) == 2


def test_an_unexpected_error_is_answered_and_keeps_the_connection(predictor, good):
    def broken_health() -> dict:
        raise RuntimeError("a bug")

    with serve(create_app(ModelHost(predictor), health=broken_health)) as base, httpx.Client(timeout=10) as client:
        first = client.get(base + "/healthz")
        second = post(client, base + "/v1/predict", good)
        third = client.get(base + "/healthz")
    assert first.status_code == third.status_code == 500
    assert first.json() == {"detail": "internal error (RuntimeError); see the device log"}
    assert second.status_code == 200


def test_eight_keep_alive_clients_get_every_answer_and_no_connection_error(url, good, predictor, digits_splits):
    """Before: 500s closed kept-alive connections under the clients (211 ReadErrors with 8 clients)."""
    expected = [str(c) for c in predictor.predict(digits_splits.x_test[:2])["logits"].argmax(1)]
    bad = [pixels_with("1" + "0" * 400), b'{"inputs": ' + b"[" * 3000 + b"]" * 3000 + b"}", pixels_with("NaN"),
           pixels_with("1e39"), b"{nope", b"\xff",
           json.dumps({"inputs": {"pixels": np.zeros((1, 1, 8, 8)).tolist(), "extra": [[1], [1, 2]]}}).encode(),
           b"[" + b"0," * LIMIT + b"0]"]
    outcomes: list[tuple[str, int | str]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=30) as session:
            for step in range(2 * len(bad)):
                kind, body = ("good", good) if step % 2 == 0 else ("bad", bad[(step // 2 + index) % len(bad)])
                try:
                    answer = post(session, url, body)
                    result = answer.status_code
                    if kind == "good" and [p["class"] for p in answer.json()["predictions"]] != expected:
                        result = "wrong answer"
                except httpx.HTTPError as err:
                    result = type(err).__name__
                with lock:
                    outcomes.append((kind, result))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 8 * 2 * len(bad)
    good_results = [r for kind, r in outcomes if kind == "good"]
    bad_results = [r for kind, r in outcomes if kind == "bad"]
    assert good_results == [200] * len(good_results)
    assert all(isinstance(r, int) and 400 <= r < 500 for r in bad_results), sorted(set(map(str, bad_results)))


def test_a_json_request_file_is_parsed_with_the_same_limits(tmp_path, predictor):
    path = tmp_path / "request.json"
    for text, message in [("[" * 3000 + "]" * 3000, "nests arrays/objects 3000 deep"),
                          (pixels_with("1" + "0" * 400).decode(), "401-digit integer"),
                          (json.dumps([[[[1e39] * 8] * 8]]), "expected finite float32 values")]:
        path.write_text(text)
        with pytest.raises(EdgefleetError, match=message.replace("[", r"\[")):
            read_request(path, predictor.bundle.inputs)


def test_a_client_that_leaves_mid_body_is_counted_and_nothing_breaks(url, good):
    host, port = url.split("/")[2].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n[[[[0.0,")  # then hang up
    metrics_url = url.replace("/v1/predict", "/metrics")
    deadline = time.monotonic() + 10
    with httpx.Client(timeout=10) as client:
        while 'code="499"' not in client.get(metrics_url).text:
            assert time.monotonic() < deadline, "the abandoned request was never counted"
            time.sleep(0.05)
        assert post(client, url, good).status_code == 200
