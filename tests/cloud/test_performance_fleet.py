"""Labels later, and accuracy without labels, end to end: two real device agents serving the digits CNN over
HTTP report through a real Mosquitto to a real cloud (ingest, drift and performance monitors, API). A client
per device asks for predictions and sends each one's true label to the device's POST /v1/feedback LABEL_DELAY
seconds later (30 s in the field, scaled down here; the order is kept: every label comes after its
prediction, in the order the predictions were made). One camera's images brighten by +0.4.

What must happen, in event time (window ends, not test timings):
- the label-free estimate of the drifting device falls, and its "estimated_accuracy" alert opens, before
  the first label of a brightened image reaches the device;
- the measured accuracy falls in the performance API in the bucket of the window those labels arrived in;
- the clean camera's estimate and accuracy stay, and it raises no alert.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.background import BackgroundThreads
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import drifted, register_device
from tests.cloud.api_kit import GZIP
from tests.mosquitto import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow  # trains the digits bundle once per session

LABEL_DELAY = 8.0  # seconds from a prediction to its label (30 s in the field)
WINDOW = 0.5  # device telemetry window
LOOKBACK = 3.0  # the monitors' lookback
BUCKET = 1.0  # seconds per performance point


class Camera(BackgroundThreads):
    """Requests of 4 digits every 50 ms over the device's HTTP API, brightened by +0.4 while `drifting`; each
    prediction's labels go to POST /v1/feedback LABEL_DELAY s later, in order."""

    def __init__(self, url: str, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        self.url, self.x, self.y, self.seed = url, x, y, seed
        self.drifting = threading.Event()
        self.stop = threading.Event()
        self.pending: collections.deque = collections.deque()  # (due, request_id, labels, drifted)
        self.first_drifted_label: float | None = None  # wall time the first brightened image's label was sent
        self.first_drifted_request: float | None = None
        self.refused: list[str] = []
        self.threads = [threading.Thread(target=self._ask, daemon=True), threading.Thread(target=self._label,
                                                                                          daemon=True)]

    def _ask(self) -> None:
        rng = np.random.default_rng(self.seed)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.wait(0.05):
                rows = rng.integers(0, len(self.x), 4)
                x, shifted = self.x[rows], self.drifting.is_set()
                if shifted:
                    x = drifted("brightness", x, 0.4, rng)
                    self.first_drifted_request = self.first_drifted_request or time.time()
                answer = client.post("/v1/predict", json={"inputs": x.tolist()}).json()
                self.pending.append((time.time() + LABEL_DELAY, answer["request_id"],
                                     [int(v) for v in self.y[rows]], shifted))

    def _label(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                if not self.pending or self.pending[0][0] > time.time():
                    self.stop.wait(0.02)
                    continue
                _, request_id, labels, shifted = self.pending.popleft()
                if shifted and self.first_drifted_label is None:
                    self.first_drifted_label = time.time()
                response = client.post("/v1/feedback", json={"request_id": request_id, "label": labels})
                if response.status_code != 200:
                    self.refused.append(response.text)


def test_the_estimate_falls_before_the_labels_come_and_the_measure_when_they_do(
        start_cloud, mosquitto, digits_bundle, digits_splits, tmp_path: Path):
    cloud = start_cloud(drift_lookback_seconds=LOOKBACK, drift_interval_seconds=0.25)
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    agents, started = {}, time.time()
    for name in ("cam-1", "cam-2"):
        credentials = register_device(cloud.server.url, cloud.token, name, "lab")
        config = DeviceConfig(device=name, fleet="lab", bundle=digits_bundle.root, http_port=free_port(),
                              trusted_keys=(digits_bundle.public_key,), data_dir=tmp_path / name, threads=1,
                              window_seconds=WINDOW,
                              mqtt=MqttConfig(mosquitto.url, credentials["username"], credentials["password"]))
        agents[name] = DeviceAgent(config).start()

    def points(device: str) -> list[dict]:
        answer = cloud.client.get(f"/api/v1/devices/{device}/performance",
                                  params={"bucket_seconds": BUCKET, "since": started - 5})
        assert answer.status_code == 200, answer.text
        return answer.json()["points"]

    def estimate_alerts(device: str) -> list[dict]:
        return [a for a in cloud.client.get("/api/v1/alerts", params={"status": "all"}).json()
                if a["kind"] == "estimated_accuracy" and a["scope"] == "device" and a["scope_id"] == device]

    x, y = digits_splits.x_test, digits_splits.y_test
    try:
        with Camera(agents["cam-1"].http_url, x, y, 1) as shifting, Camera(agents["cam-2"].http_url, x, y, 2) as clean:
            # clean traffic until labels have come in for a few seconds on both devices
            until(lambda: sum(p["labels"] for p in points("cam-1")) >= 400
                  and sum(p["labels"] for p in points("cam-2")) >= 400, "labels of clean traffic", 60)
            shifting.drifting.set()
            alert = until(lambda: estimate_alerts("cam-1"), "the label-free accuracy alert", 30)[0]
            alert_seen = time.time()
            until(lambda: shifting.first_drifted_label is not None and time.time() > shifting.first_drifted_label
                  + 3 * LOOKBACK, "labels of brightened images to come in", 60)
    finally:
        for agent in agents.values():
            agent.stop()  # closes and sends the last windows
    windows = {name: agent.windows_closed for name, agent in agents.items()}
    until(lambda: sum(p["windows"] for p in points("cam-1")) == windows["cam-1"]
          and sum(p["windows"] for p in points("cam-2")) == windows["cam-2"], "every window in the cloud", 30)
    device_points, clean_points = points("cam-1"), points("cam-2")
    fleet = cloud.client.get("/api/v1/fleets/lab/performance", params={"bucket_seconds": BUCKET,
                                                                        "since": started - 5}).json()

    assert not shifting.refused and not clean.refused  # every label joined its prediction
    shift, label_at = shifting.first_drifted_request, shifting.first_drifted_label
    assert label_at >= shift + LABEL_DELAY  # the order of the field: the labels come after
    # the estimate fell without labels: the alert opened before the first brightened image's label was sent
    assert alert_seen < label_at and alert["opened_at"] < label_at
    assert alert["details"]["expected_accuracy"] - alert["details"]["estimated_accuracy"] > 0.05
    assert alert["details"]["window_end"] < label_at and "estimated without labels" in alert["message"]
    before = [p for p in device_points if p["end"] <= shift and p["labels"]]
    clean_accuracy = sum(p["accuracy"] * p["labels"] for p in before) / sum(p["labels"] for p in before)
    assert clean_accuracy > 0.9
    # the estimate of a bucket that ends before any brightened label was sent is already down ...
    early = [p for p in device_points if shift < p["start"] and p["end"] <= label_at]
    assert early and min(p["estimated_accuracy"] for p in early) < alert["details"]["expected_accuracy"] - 0.05
    # ... while the labels of those buckets are still the clean ones
    assert all(p["accuracy"] > clean_accuracy - 0.1 for p in early if p["labels"] >= 40)
    # the measure falls in the bucket of the window the first brightened labels arrived in (or the next,
    # when they arrived in its last moments), and stays down
    dropped = [p for p in device_points if p["labels"] >= 40 and p["accuracy"] < clean_accuracy - 0.15]
    assert dropped and dropped[0]["start"] <= label_at + WINDOW + BUCKET
    assert dropped[0]["end"] > label_at
    # the clean camera: no alert, its estimate and accuracy where they were
    assert not estimate_alerts("cam-2")
    late_clean = [p for p in clean_points if p["start"] > label_at and p["labels"]]
    assert late_clean and sum(p["accuracy"] * p["labels"] for p in late_clean) / sum(
        p["labels"] for p in late_clean) > 0.9
    # the fleet adds both devices' windows
    assert fleet["scope"] == "fleet" and fleet["models"][0]["calibrated_on"] == "eval"
    assert sum(p["samples"] for p in fleet["points"]) == sum(p["samples"] for p in device_points + clean_points)
    # the CLI shows the same points, and refuses a contradictory scope in one line
    env = {**os.environ, "COLUMNS": "200", "EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token}
    shown = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "performance", "--device", "cam-1",
                            "--minutes", "10", "--bucket", "5", "--json"], capture_output=True, text=True, env=env,
                           timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert sum(p["labels"] for p in json.loads(shown.stdout)["points"]) == sum(p["labels"] for p in device_points)
    table = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "performance", "--fleet", "lab",
                            "--minutes", "10"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert table.returncode == 0 and "performance of fleet lab" in table.stdout and "digits-cnn:1" in table.stdout
    both = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "performance", "--device", "cam-1", "--fleet",
                           "lab"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert both.returncode == 2 and both.stderr.strip() == "error: pass one of --device ID, --fleet ID or --model NAME"
