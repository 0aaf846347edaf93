"""The device agent end to end: a real bundle, real HTTP, real Mosquitto, the cloud's real ingest."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from sqlalchemy import select

from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ingest import Ingest
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig
from tests.mosquitto import free_port


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def config(digits_bundle, tmp_path, mosquitto) -> DeviceConfig:
    text = f"""
[device]
id = "pi-01"
fleet = "lab"
data_dir = "{tmp_path / 'device'}"
[model]
bundle = "{digits_bundle.root}"
trusted_keys = ["{digits_bundle.public_key}"]
threads = 1
[mqtt]
url = "{mosquitto.url}"
[telemetry]
window_seconds = 0.5
[http]
port = {free_port()}
max_body_bytes = 20000
"""
    path = tmp_path / "device.toml"
    path.write_text(text)
    return DeviceConfig.load(path)


@pytest.fixture
def sessions(tmp_path):
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add(Device(id="pi-01", fleet="lab", password_hash="x"))
    return sessions


def test_serves_http_and_reports_windows_the_cloud_stores(config, sessions, mosquitto, digits_splits):
    ingest = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    ingest.start()
    assert ingest.wait_connected(10)
    with DeviceAgent(config) as agent:
        x = digits_splits.x_test[:5]
        status, body = http("POST", agent.http_url + "/v1/predict", json.dumps({"inputs": x.tolist()}).encode())
        assert status == 200, body
        reply = json.loads(body)
        assert reply["model"] == {"name": "digits-cnn", "version": 1}
        assert [p["class"] for p in reply["predictions"]] == [str(c) for c in
                                                              agent.predictor.predict(x)["logits"].argmax(1)]
        for row in digits_splits.x_test[5:25]:
            agent.predictor.predict(row[None])  # the Python API is observed too

        # bad requests: one precise 4xx each, and the device keeps serving
        bad_shape = json.dumps({"inputs": np.zeros((1, 1, 7, 8)).tolist()}).encode()
        status, body = http("POST", agent.http_url + "/v1/predict", bad_shape)
        assert status == 422 and b"axis 2 must be 8" in body
        assert http("POST", agent.http_url + "/v1/predict", b"{nope")[0] == 400
        assert http("POST", agent.http_url + "/v1/predict", b"[" + b"0," * 20000 + b"0]")[0] == 413
        assert http("POST", agent.http_url + "/v1/predict", json.dumps({"inputs": [["a"]]}).encode())[0] == 400

        status, body = http("GET", agent.http_url + "/healthz")
        assert status == 200 and json.loads(body)["mqtt"]["connected"] is True
        assert json.loads(body)["runtime"] == {"backend": "onnxruntime", "target": "onnx", "path": "model.onnx",
                                               "format": "onnx", "precision": "fp32", "fallbacks": []}
        status, body = http("GET", agent.http_url + "/metrics")
        metrics = body.decode()
        assert 'edgefleet_requests_total{device="pi-01",fleet="lab",model="digits-cnn",version="1"}' in metrics
        total = next(line for line in metrics.splitlines() if line.startswith("edgefleet_requests_total{"))
        # /metrics counts HTTP predict requests, answered or refused: the good one and the four bad ones
        # (the 20 Python calls are in the telemetry windows below)
        assert float(total.split()[-1]) == 5
        time.sleep(1.2)  # at least two windows close
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sessions() as session:
            rows = session.scalars(select(TelemetryRecord).order_by(TelemetryRecord.seq)).all()
        if sum(r.requests for r in rows) >= 23:
            break
        time.sleep(0.1)
    ingest.stop()
    windows = [parse_telemetry(r.payload) for r in rows]
    assert [w.seq for w in windows] == list(range(1, len(windows) + 1))
    assert sum(w.requests for w in windows) == 23 and sum(w.errors for w in windows) == 1
    assert sum(w.samples for w in windows) == 5 + 5 + 20  # a failed request adds no samples
    assert sum(sum(w.predictions) for w in windows) == 30
    assert sum(sum(w.features[0].counts[0]) for w in windows) == 30


def test_refuses_a_bundle_whose_self_test_fails(config, digits_bundle, tmp_path):
    import shutil

    from edgefleet.core.bundle import sign, write_manifest
    from edgefleet.core.signing import SigningKey

    broken = shutil.copytree(digits_bundle.root, tmp_path / "broken")
    with np.load(broken / "golden.npz") as data:
        arrays = dict(data)
    arrays["outputs/logits"] += 1.0
    np.savez(broken / "golden.npz", **arrays)
    write_manifest(broken, json.loads((broken / "manifest.json").read_text()))
    sign(broken, SigningKey.load(digits_bundle.private_key))
    from dataclasses import replace

    from edgefleet.core.errors import EdgefleetError

    with pytest.raises(EdgefleetError, match="self-test failed, refusing to serve"):
        DeviceAgent(replace(config, bundle=broken)).start()
