"""Accuracy per slice, end to end: two real device agents serving the digits CNN over HTTP report through a real
Mosquitto to a real cloud (SQLite). Each device serves two slices of requests: "north" (cam-1's default slice
from its config; cam-2's requests name it in the X-Edgefleet-Slice header) and "south" (`?slice=south`). Labels
go to cam-1's POST /v1/feedback and, for cam-2, to the cloud's POST /api/v1/feedback, which forwards them over
MQTT: either way the device counts each under the slice its prediction was made in.

First both slices see clean digits; then the south cameras' images brighten by +0.5. The performance API
(`?by=slice`, per device, fleet and model) and `edgefleet performance --by-slice` must show south's measured
and estimated accuracy fall in the second period while north's stay, and the totals equal the slices' sums.
A client sending many slice names lands beyond the window's bound in `_other`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.core.bundle import Bundle
from edgefleet.core.slices import MAX_SLICES, OTHER
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import drifted, register_device
from tests.cloud.api_kit import GZIP
from tests.mosquitto import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow  # trains the digits bundle once per session

REQUESTS = 40  # per device, slice and period, of 4 digits each


def serve_period(agents: dict, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, shift: float) -> list:
    """REQUESTS requests per device and slice, south brightened by `shift`; returns (device, request id,
    labels) of each."""
    made = []
    for name, agent in agents.items():
        with httpx.Client(base_url=agent.http_url, timeout=30) as client:
            for _ in range(REQUESTS):
                for where in ("north", "south"):
                    rows = rng.integers(0, len(x), 4)
                    inputs = drifted("brightness", x[rows], shift, rng) if where == "south" else x[rows]
                    query = "?slice=south" if where == "south" else ""
                    headers = {"X-Edgefleet-Slice": "north"} if where == "north" and name == "cam-2" else {}
                    answer = client.post(f"/v1/predict{query}", json={"inputs": inputs.tolist()}, headers=headers)
                    assert answer.status_code == 200 and answer.json()["slice"] == where, answer.text
                    made.append((name, answer.json()["request_id"], [int(v) for v in y[rows]]))
    return made


def send_labels(cloud, agents: dict, made: list) -> None:
    """cam-1's labels to the device, cam-2's to the cloud (forwarded over MQTT)."""
    with httpx.Client(base_url=agents["cam-1"].http_url, timeout=30) as device:
        for name, request_id, labels in made:
            if name == "cam-1":
                sent = device.post("/v1/feedback", json={"request_id": request_id, "label": labels})
                assert sent.status_code == 200, sent.text
            else:
                sent = cloud.client.post("/api/v1/feedback", json={"device": name, "request_id": request_id,
                                                                     "label": labels})
                assert sent.status_code == 202, sent.text


def test_one_slices_accuracy_falls_while_the_others_stays(start_cloud, mosquitto, digits_bundle, digits_splits,
                                                           tmp_path: Path):
    cloud = start_cloud()
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    agents, started = {}, time.time()
    for name, default in (("cam-1", "north"), ("cam-2", None)):
        credentials = register_device(cloud.server.url, cloud.token, name, "lab")
        config = DeviceConfig(device=name, fleet="lab", bundle=digits_bundle.root, http_port=free_port(),
                              trusted_keys=(digits_bundle.public_key,), data_dir=tmp_path / name, threads=1,
                              window_seconds=0.5, slice=default,
                              mqtt=MqttConfig(mosquitto.url, credentials["username"], credentials["password"]))
        agents[name] = DeviceAgent(config).start()

    def performance(path: str, **params) -> dict:
        answer = cloud.client.get(f"/api/v1/{path}/performance", params={"bucket_seconds": 3600, "since": started - 5,
                                                                         **params})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def by_slice(path: str, **params) -> dict:
        """{slice: (labels, accuracy, estimated accuracy)} over the period, the buckets added."""
        points = performance(path, by="slice", **params)["points"]
        out = {}
        for name in {p["slice"] for p in points}:
            mine = [p for p in points if p["slice"] == name]
            labels, samples = sum(p["labels"] for p in mine), sum(p["samples"] for p in mine)
            correct = sum(p["accuracy"] * p["labels"] for p in mine if p["labels"])
            estimate = sum(p["estimated_accuracy"] * p["samples"] for p in mine if p["samples"])
            out[name] = (labels, correct / labels if labels else None, estimate / samples if samples else None)
        return out

    x, y, rng = digits_splits.x_test, digits_splits.y_test, np.random.default_rng(7)
    labelled = 2 * 2 * REQUESTS * 4  # devices, slices, requests, digits
    try:
        until(lambda: all(a.transport.connected for a in agents.values()), "the devices to connect", 20)
        send_labels(cloud, agents, serve_period(agents, x, y, rng, 0.0))
        until(lambda: sum(v[0] for v in by_slice("fleets/lab").values()) == labelled, "the clean period's labels", 60)
        middle = time.time()
        time.sleep(0.6)  # a window later: no window of the first period ends after `middle`
        send_labels(cloud, agents, serve_period(agents, x, y, rng, 0.5))
        until(lambda: sum(v[0] for v in by_slice("fleets/lab", since=middle).values()) == labelled,
              "the shifted period's labels", 60)
        with httpx.Client(base_url=agents["cam-2"].http_url, timeout=30) as client:  # a client inventing names
            for index in range(MAX_SLICES + 5):
                assert client.post(f"/v1/predict?slice=made-up-{index}", json={"inputs": x[:1].tolist()}).is_success
    finally:
        for agent in agents.values():
            agent.stop()  # closes and sends the last windows
    until(lambda: sum(p["windows"] for p in performance("fleets/lab")["points"])
          == sum(a.windows_closed for a in agents.values()), "every window in the cloud", 30)

    before, after = by_slice("fleets/lab", until=middle), by_slice("fleets/lab", since=middle)
    assert {k: v[0] for k, v in before.items()} == {"north": labelled // 2, "south": labelled // 2}
    assert before["north"][1] > 0.85 and before["south"][1] > 0.85  # both slices fine while clean
    assert abs(before["north"][1] - before["south"][1]) < 0.1
    assert after["north"][1] > before["north"][1] - 0.1  # north stays ...
    assert after["south"][1] < before["south"][1] - 0.15  # ... south, brightened, falls
    assert after["south"][2] < after["north"][2] - 0.05  # and its estimate without labels falls with it
    # the overflow: cam-2's made-up names beyond the window's bound are counted as _other
    names = set(performance("devices/cam-2", by="slice", since=middle)["slices"])
    assert OTHER in names and {"north", "south"} <= names and len(names) <= 2 * (MAX_SLICES + 1)
    # each device's slices, the model's view, and the totals: the slices add up to them
    for device in ("cam-1", "cam-2"):
        per_device = by_slice(f"devices/{device}", since=middle)
        assert per_device["south"][1] < per_device["north"][1] - 0.1, per_device
    model = performance("models/digits-cnn", by="slice")
    assert model["by"] == "slice" and {"north", "south", OTHER} <= set(model["slices"])
    totals = performance("fleets/lab")["points"]
    assert sum(p["labels"] for p in totals) == 2 * labelled == sum(p["labels"] for p in model["points"])
    assert sum(p["samples"] for p in totals) == sum(p["samples"] for p in model["points"])
    refused = cloud.client.get("/api/v1/fleets/lab/performance", params={"by": "camera"})
    assert refused.status_code == 422 and "'model' or 'slice'" in refused.text, refused.text
    # the CLI: one table per slice, and the same numbers as JSON
    env = {**os.environ, "COLUMNS": "200", "EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token}
    run = [sys.executable, "-m", "edgefleet.cli.main", "performance", "--fleet", "lab", "--minutes", "30",
           "--bucket", "3600", "--by-slice"]
    table = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert table.returncode == 0, table.stderr
    assert "performance of fleet lab slice north" in table.stdout and "performance of fleet lab slice south" \
        in table.stdout and f"slice {OTHER}" in table.stdout
    shown = subprocess.run([*run, "--json"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    south = [p for p in json.loads(shown.stdout)["points"] if p["slice"] == "south"]
    assert sum(p["labels"] for p in south) == labelled
