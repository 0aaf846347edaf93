"""GET /metrics through prometheus_client (issue 11, point 6): read back with prometheus_client's own parser
from a real uvicorn server, with class names and labels that need escaping, numbers checked against the
requests made."""

from __future__ import annotations

import collections
import json
import shutil
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.core.bundle import sign, write_manifest
from edgefleet.core.signing import SigningKey
from edgefleet.core.telemetry import LATENCY_EDGES_MS
from edgefleet.edge_runtime.http_api import create_app
from edgefleet.edge_runtime.metrics import DeviceMetrics
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from tests.edge_runtime.http_kit import serve

LIMIT = 64 * 1024
DEVICE, FLEET = 'pi "9"', "lab\\east"


def class_name(digit: int) -> str:
    return f'digit "{digit}" \\ back\nslash'  # a quote, a backslash and a newline: the old page broke on each


@pytest.fixture(scope="module")
def odd_names_bundle(digits_bundle, tmp_path_factory):
    root = shutil.copytree(digits_bundle.root, tmp_path_factory.mktemp("odd-names") / "bundle")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["interface"]["class_names"] = [class_name(d) for d in range(10)]
    write_manifest(root, manifest)
    sign(root, SigningKey.load(digits_bundle.private_key))
    return root


def samples_of(page: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items without device/fleet/model/version): value}, checking those four."""
    found = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name.startswith(("edgefleet_requests", "edgefleet_request_errors", "edgefleet_samples",
                                       "edgefleet_predict", "edgefleet_predictions")):
                assert [labels.pop(k) for k in ("device", "fleet", "model", "version")] == [DEVICE, FLEET,
                                                                                            "digits-cnn", "1"]
            else:
                assert [labels.pop(k) for k in ("device", "fleet")] == [DEVICE, FLEET]
            found[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found


def test_metrics_page_parses_and_counts_what_was_asked(odd_names_bundle, digits_bundle, digits_splits):
    with Predictor(odd_names_bundle, trusted_keys=[digits_bundle.public_key], threads=1) as predictor:
        metrics = DeviceMetrics(device=DEVICE, fleet=FLEET, gauges=lambda: {"outbox_pending": 3, "mqtt_connected": 1})
        batches = [digits_splits.x_test[0:1], digits_splits.x_test[1:4], digits_splits.x_test[4:9]]
        expected = collections.Counter(class_name(int(c)) for batch in batches
                                       for c in predictor.predict(batch)["logits"].argmax(1))
        zeros = json.dumps({"inputs": np.zeros((1, 1, 8, 8)).tolist()})
        bad = {400: [zeros.replace("0.0", "NaN", 1), "{nope"], 422: [zeros.replace("0.0", "1e39", 1)],
               413: ["[" + "0," * LIMIT + "0]"], 500: [json.dumps({"inputs": np.full((1, 1, 8, 8), 3e38).tolist()})]}
        with serve(create_app(ModelHost(predictor), max_body_bytes=LIMIT, metrics=metrics)) as base, \
                httpx.Client(timeout=10) as client:
            started = time.perf_counter()
            for batch in batches:
                answer = client.post(base + "/v1/predict", json={"inputs": batch.tolist()})
                assert answer.status_code == 200, answer.text
            for status, bodies in bad.items():
                for body in bodies:
                    assert client.post(base + "/v1/predict", content=body.encode()).status_code == status
            wall = time.perf_counter() - started
            page = client.get(base + "/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    found = samples_of(page.text)

    requests = len(batches) + sum(len(bodies) for bodies in bad.values())
    assert found[("edgefleet_requests_total", ())] == requests
    errors = {dict(labels)["code"]: value for (name, labels), value in found.items()
              if name == "edgefleet_request_errors_total"}
    assert errors == {"400": 2, "413": 1, "422": 1, "500": 1}
    assert found[("edgefleet_samples_total", ())] == 1 + 3 + 5
    predictions = {dict(labels)["class"]: value for (name, labels), value in found.items()
                   if name == "edgefleet_predictions_total"}
    assert predictions == dict(expected)  # the names came back whole: quote, backslash and newline

    buckets = [(dict(labels)["le"], value) for (name, labels), value in found.items()
               if name == "edgefleet_predict_latency_seconds_bucket"]
    assert [float(le) for le, _ in buckets] == [edge / 1000 for edge in LATENCY_EDGES_MS] + [float("inf")]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts) and counts[-1] == requests
    assert found[("edgefleet_predict_latency_seconds_count", ())] == requests
    assert 0 < found[("edgefleet_predict_latency_seconds_sum", ())] <= wall

    assert found[("edgefleet_outbox_pending", ())] == 3 and found[("edgefleet_mqtt_connected", ())] == 1


def test_each_device_has_its_own_registry():
    first, second = DeviceMetrics(device="a"), DeviceMetrics(device="b")
    first.observe("m", 1, code=200, seconds=0.001)
    assert b'edgefleet_requests_total{device="a"' in first.render()
    assert b"edgefleet_requests_total{" not in second.render()  # nothing leaked into the other (or a global) registry
