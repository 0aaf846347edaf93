"""Data capture end to end: a real cloud (SQLite), real Mosquitto, the real device agent serving the digits CNN
over HTTP and uploading over HTTP with its own credentials. Capture is off until the fleet's settings turn it
on; samples reach the cloud once each and leave the device; a fleet with the privacy switch never sends one
upload request (a proxy in front of the cloud counts them); a kill -9 while the cloud's answer to an upload
is held resends exactly that batch and nothing is lost."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import CloudConfig, DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import register_device
from tests.cloud.capture_kit import UPLOAD, CountingProxy, device_toml, start_agent_process
from tests.mosquitto import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow  # trains the digits bundle once per session
SETTINGS = "/api/v1/device/capture"


def agent_config(tmp_path: Path, digits_bundle, mosquitto, credentials: dict, fleet: str, cloud_url: str):
    return DeviceConfig(device=credentials["username"], fleet=fleet, bundle=digits_bundle.root, http_port=free_port(),
                        trusted_keys=(digits_bundle.public_key,), data_dir=tmp_path / credentials["username"],
                        threads=1, window_seconds=1.0, backends=("onnxruntime",),
                        mqtt=MqttConfig(mosquitto.url, credentials["username"], credentials["password"]),
                        cloud=CloudConfig(cloud_url, credentials["username"], credentials["password"],
                                          poll_seconds=0.5, upload_seconds=0.3))


def predict(device: httpx.Client, x, count: int, prefix: str) -> list[str]:
    ids = []
    for index in range(count):
        answer = device.post("/v1/predict", json={"inputs": x[index:index + 1].tolist()},
                             headers={"X-Request-Id": f"{prefix}-{index}"})
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["request_id"])
    return ids


def test_captured_requests_reach_the_cloud_once_with_their_labels(start_cloud, mosquitto, digits_bundle,
                                                                  digits_splits, tmp_path: Path):
    cloud = start_cloud()
    credentials = register_device(cloud.server.url, cloud.token, "cam-1", "lab")
    config = agent_config(tmp_path, digits_bundle, mosquitto, credentials, "lab", cloud.server.url)
    x = digits_splits.x_test
    with DeviceAgent(config) as agent, httpx.Client(base_url=agent.http_url, timeout=30) as device:
        until(lambda: agent.uplink.polls >= 1, "the first settings poll", 15)
        predict(device, x, 10, "before")  # off by default: nothing is captured
        assert agent.capturer.flush() and len(agent.capturer.spool) == 0
        assert device.get("/v1/model-card").json()["model_card"]["data_capture_in_force"] == "off"
        changed = cloud.client.put("/api/v1/fleets/lab/capture", json={"enabled": True, "sample_rate": 1.0,
                                                                       "max_per_second": 1000})
        assert changed.status_code == 200, changed.text
        until(lambda: agent.capturer.policy.enabled, "the device to read the new settings", 15)
        ids = predict(device, x, 20, "on")
        rows = until(lambda: len(r := cloud.client.get("/api/v1/captures", params={"device": "cam-1"}).json()) >= 20
                     and r, "20 samples in the cloud", 30)
        until(lambda: len(agent.capturer.spool) == 0, "the device to delete what the cloud acknowledged", 10)
        health = device.get("/healthz").json()["capture"]
        card = device.get("/v1/model-card").json()["model_card"]
    assert sorted(r["request_id"] for r in rows) == sorted(ids)  # each once, none of the requests before
    assert health["uploaded"] == 20 and health["mode"].startswith("on") and card["data_capture_never"] is False
    labelled = cloud.client.post("/api/v1/feedback", json={"device": "cam-1", "request_id": ids[0],
                                                           "label": int(digits_splits.y_test[0])})
    assert labelled.status_code == 202
    first = cloud.client.get("/api/v1/captures", params={"device": "cam-1", "limit": 1}).json()[0]
    assert first["request_id"] == ids[0] and first["label"] == {"label": int(digits_splits.y_test[0])}
    assert first["inputs"]["pixels"]["shape"] == [1, 1, 8, 8] and first["model"]["name"] == agent.predictor.bundle.name


def test_a_fleet_with_the_privacy_switch_never_uploads_a_sample(start_cloud, mosquitto, digits_bundle,
                                                                digits_splits, tmp_path: Path):
    cloud = start_cloud()
    credentials = register_device(cloud.server.url, cloud.token, "cam-7", "clinic")
    cloud.client.put("/api/v1/fleets/clinic/capture", json={"enabled": True, "sample_rate": 1.0,
                                                             "max_per_second": 1000, "never_capture": True})
    with CountingProxy(cloud.server.url) as proxy:
        config = agent_config(tmp_path, digits_bundle, mosquitto, credentials, "clinic", proxy.url)
        with DeviceAgent(config) as agent, httpx.Client(base_url=agent.http_url, timeout=30) as device:
            until(lambda: agent.capturer.policy.never_capture, "the device to read the privacy switch", 15)
            predict(device, digits_splits.x_test, 50, "private")
            polls = proxy.seen[("GET", SETTINGS)]
            until(lambda: proxy.seen[("GET", SETTINGS)] >= polls + 3, "three more settings polls", 15)
            card = device.get("/v1/model-card").json()
            health = device.get("/healthz").json()["capture"]
            pending = len(agent.capturer.spool)
    assert proxy.seen[("POST", UPLOAD)] == 0  # the cloud's upload endpoint saw no request at all
    assert pending == 0 and health["pending_bytes"] == 0 and health["counts"].get("captured", 0) == 0
    assert card["model_card"]["data_capture_never"] is True
    assert "privacy switch" in card["model_card"]["data_capture_in_force"]
    assert cloud.client.get("/api/v1/captures").json() == []


def spool_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "capture.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]


def test_a_kill_9_mid_upload_resends_only_what_the_cloud_did_not_acknowledge(start_cloud, mosquitto, digits_bundle,
                                                                            digits_splits, tmp_path: Path):
    cloud = start_cloud()
    credentials = register_device(cloud.server.url, cloud.token, "cam-3", "lab")
    cloud.client.put("/api/v1/fleets/lab/capture", json={"enabled": True, "sample_rate": 1.0, "max_per_second": 1000})
    data_dir, port = tmp_path / "cam-3", free_port()
    with CountingProxy(cloud.server.url) as proxy:
        config = device_toml(tmp_path / "device.toml", device="cam-3", fleet="lab", bundle=digits_bundle.root,
                             key=digits_bundle.public_key, data_dir=data_dir, http_port=port,
                             mqtt_url=mosquitto.url, password=credentials["password"], cloud_url=proxy.url)
        proxy.hold_uploads.set()  # the cloud stores the first batch; its answer never reaches the device
        process = start_agent_process(config, tmp_path / "agent.log")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as device:
                until(lambda: device.get("/healthz").json()["capture"]["mode"].startswith("on"), "capture on", 15)
                ids = predict(device, digits_splits.x_test, 30, "k")
                until(lambda: proxy.held >= 1, "an upload the cloud stored, its answer held", 15)
                until(lambda: device.get("/healthz").json()["capture"]["pending"] == 30, "all 30 in the spool", 15)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            process.kill()
        in_flight = cloud.client.get("/api/v1/ingest").json()["capture_stored"]
        assert 1 <= in_flight <= 30 and spool_count(data_dir) == 30  # stored, yet still on the device
        proxy.hold_uploads.clear()
        proxy.release.set()
        process = start_agent_process(config, tmp_path / "agent.log")
        try:
            until(lambda: spool_count(data_dir) == 0, "the restarted device to drain its spool", 30)
        finally:
            process.kill()
            process.wait(10)
    counters = cloud.client.get("/api/v1/ingest").json()
    rows = cloud.client.get("/api/v1/captures", params={"device": "cam-3", "limit": 1000}).json()
    assert sorted(r["request_id"] for r in rows) == sorted(ids)  # nothing lost, nothing twice
    assert counters["capture_stored"] == 30
    assert counters.get("capture_duplicate", 0) == in_flight  # exactly the batch whose answer was lost
