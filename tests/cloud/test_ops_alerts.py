"""Operational alerts end to end (issue 14): a real device agent serving the digits CNN reports through a
real Mosquitto to an in-process cloud; its camera freezes on one frame (a dead sensor). The operations
monitor raises a "data quality" alert, the webhook dispatcher delivers it, signed, to a real HTTP
receiver that fails its first two tries, and the drift alert the frozen frame also causes lists the data
quality alert as evidence. `edgefleet alerts` and `edgefleet webhook deliveries`, run as processes, show
both."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import register_device
from tests.cloud.api_kit import GZIP
from tests.cloud.webhook_receiver import Receiver
from tests.waiting import until

pytestmark = pytest.mark.slow  # trains the digits bundle once per session
SECRET = "webhook-secret-for-the-ops-test"


def cli(cloud, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", *args, "--cloud", cloud.server.url,
                             "--token", cloud.token], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_frozen_camera_raises_data_quality_delivered_by_webhook_and_cited_by_drift(
        start_cloud, mosquitto, digits_bundle, digits_splits, tmp_path: Path):
    cloud = start_cloud(ops_interval_seconds=0.3, webhook_retry_seconds=0.1, drift_interval_seconds=0.5)
    client = cloud.client
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    assert client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    # limits per model: a bad one is refused with its range, nothing stored
    bad = client.put("/api/v1/ops/settings/models/digits-cnn", json={"max_error_rate": 2})
    assert bad.status_code == 400 and "max_error_rate must be between 0 and 1" in bad.json()["detail"]
    assert client.put("/api/v1/ops/settings/models/digits-cnn",
                      json={"stuck_min_samples": 30, "lookback_seconds": 3,
                            "max_cpu_load": 1000}).status_code == 200  # 2 shared cores: load is no signal here
    effective = client.get("/api/v1/ops/settings/effective", params={"fleet": "lab", "model": "digits-cnn"}).json()
    assert effective["stuck_min_samples"] == 30 and effective["max_p99_ms"] == 500.0  # the rest: global
    # no drift verdict until the data quality alert is in (the test orders the two alerts)
    assert client.put("/api/v1/drift/settings/models/digits-cnn", json={"min_samples": 10 ** 8}).status_code == 200
    credentials = register_device(cloud.server.url, cloud.token, "cam-1", "lab")
    config = DeviceConfig(device="cam-1", fleet="lab", bundle=digits_bundle.root,
                          trusted_keys=(digits_bundle.public_key,), data_dir=tmp_path / "cam-1", threads=1,
                          window_seconds=0.3,
                          mqtt=MqttConfig(mosquitto.url, credentials["username"], credentials["password"]))

    def alerts(kind: str) -> list[dict]:
        return [a for a in client.get("/api/v1/alerts", params={"status": "all"}).json() if a["kind"] == kind]

    with Receiver(SECRET, fail_first=2) as receiver:
        hook = client.post("/api/v1/webhooks", json={"url": receiver.url, "secret": SECRET})
        assert hook.status_code == 201 and hook.json()["secret"] == SECRET
        assert client.post("/api/v1/webhooks", json={"url": "file:///etc/passwd"}).status_code == 422
        agent = DeviceAgent(config, serve_http=False).start()
        stop = threading.Event()
        frame = digits_splits.x_test[7:8]

        def camera() -> None:
            for image in digits_splits.x_test[:40]:  # a healthy start: every frame differs
                agent.predict(image[None])
            while not stop.wait(0.01):
                agent.predict(frame)  # then the sensor dies on one frame

        thread = threading.Thread(target=camera, daemon=True)
        thread.start()
        try:
            (quality,) = until(lambda: alerts("data_quality"), "a data quality alert", 60)
            client.put("/api/v1/drift/settings/models/digits-cnn", json={"min_samples": 100})
            drift = until(lambda: [a for a in alerts("data_drift") if a["scope"] == "device"], "a drift alert", 60)
            until(lambda: {quality["id"], drift[0]["id"]} <= {b["alert"]["id"] for b in receiver.accepted},
                  "both alerts delivered", 30)
            closing = time.time()  # later alerts (fleet, prediction drift) find the receiver gone
        finally:
            stop.set()
            thread.join(10)
            agent.stop()

    assert quality["scope_id"] == "cam-1" and quality["message"].startswith("data quality: ")
    assert "drift" not in quality["message"] and "pixels.c0.mean stuck" in quality["message"]
    stuck = [i for i in quality["details"]["issues"] if i["problem"] == "stuck"]
    assert {i["feature"] for i in stuck} == {"pixels.c0.mean", "pixels.c0.std"} and stuck[0]["samples"] >= 30
    # the drift alert names the data quality alert as its evidence
    assert drift[0]["details"]["data_quality"][0]["alert_id"] == quality["id"]
    # delivered after two refusals, with a signature the receiver verified
    assert receiver.answers[:2] == [503, 503] and receiver.forged == 0
    delivered = {b["alert"]["id"]: b["alert"] for b in receiver.accepted}
    assert delivered[quality["id"]]["kind"] == "data_quality" and drift[0]["id"] in delivered
    log = client.get(f"/api/v1/webhooks/{hook.json()['id']}/deliveries").json()
    # the receiver's two refusals hit whichever alerts were sent first (a sequential-drift alert can open
    # before the quality one): each refused attempt is logged and retried until the receiver took it.
    # Attempts after the receiver closed are logged with their connection error and no status.
    attempts = [h for d in log for h in d["history"]]
    answered = [h["status"] for h in attempts if h["status"] is not None]
    assert answered.count(503) == 2 and set(answered) <= {503, 204}
    gone = [h for h in attempts if h["status"] is None]
    assert all(h["at"] >= closing and h["error"] for h in gone), gone
    ours = next(d for d in log if d["alert_id"] == quality["id"])
    assert ours["state"] == "delivered" and ours["history"][-1]["status"] == 204
    # the CLI, as a user runs it
    listed = cli(cloud, "alerts", "--status", "all")
    assert "data quality" in listed and "data drift" in listed
    assert "delivered" in cli(cloud, "webhook", "deliveries", str(hook.json()["id"]))
    assert receiver.url in cli(cloud, "webhook", "list") and SECRET not in cli(cloud, "webhook", "list")
