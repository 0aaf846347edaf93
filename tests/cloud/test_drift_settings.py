"""Drift settings per fleet and model, through the real API of a running cloud, and the monitor using them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.core.bundle import Bundle
from tests.cloud import test_drift_monitor as recorded
from tests.cloud.api_kit import GZIP
from tests.cloud.cloud_process import cloud_up
from tests.cloud.test_drift import sample
from tests.waiting import until

pytestmark = pytest.mark.slow  # trains the digits bundle once per session

traffic = recorded.traffic
DEFAULTS = {"min_samples": 100, "alpha": 0.01, "psi_floor": 0.15, "noise_multiplier": 5.0,
            "lookback_seconds": 300.0, "interval_seconds": 10.0}


def test_overrides_resolve_field_by_field_most_specific_first(start_cloud):
    cloud = start_cloud(drift_min_samples=40)
    api = cloud.client
    assert api.get("/api/v1/drift/settings").json() == {"global": {**DEFAULTS, "min_samples": 40}, "overrides": []}
    model = api.put("/api/v1/drift/settings/models/digits-cnn", json={"min_samples": 50, "alpha": 0.001})
    fleet = api.put("/api/v1/drift/settings/fleets/slow", json={"min_samples": 10, "lookback_seconds": 3600})
    assert (model.status_code, fleet.status_code) == (200, 200)
    both = api.put("/api/v1/drift/settings/fleets/slow/models/digits-cnn", json={"psi_floor": 0.3})
    assert both.status_code == 200 and both.json()["fleet"] == "slow" and both.json()["model"] == "digits-cnn"

    def effective(**query: str) -> dict:
        answer = api.get("/api/v1/drift/settings/effective", params=query)
        assert answer.status_code == 200, answer.text
        return answer.json()

    # the fleet's min_samples beats the model's; alpha from the model; the floor from fleet + model
    assert effective(fleet="slow", model="digits-cnn") == {
        **DEFAULTS, "min_samples": 10, "alpha": 0.001, "psi_floor": 0.3, "lookback_seconds": 3600.0}
    assert effective(fleet="lab", model="digits-cnn") == {**DEFAULTS, "min_samples": 50, "alpha": 0.001}
    assert effective(fleet="lab", model="other") == {**DEFAULTS, "min_samples": 40}
    listed = api.get("/api/v1/drift/settings").json()["overrides"]
    assert [(o["fleet"], o["model"]) for o in listed] == [(None, "digits-cnn"), ("slow", None), ("slow", "digits-cnn")]

    # PUT replaces the whole override: fields left out inherit again
    assert api.put("/api/v1/drift/settings/fleets/slow", json={"interval_seconds": 60}).status_code == 200
    assert effective(fleet="slow", model="other") == {**DEFAULTS, "min_samples": 40, "interval_seconds": 60.0}
    assert api.delete("/api/v1/drift/settings/fleets/slow").status_code == 204
    gone = api.delete("/api/v1/drift/settings/fleets/slow")
    assert gone.status_code == 404 and gone.json() == {"detail": "no drift settings for fleet 'slow'"}
    assert effective(fleet="slow", model="other") == {**DEFAULTS, "min_samples": 40}


@pytest.mark.parametrize(("path", "body", "code", "detail"), [
    ("fleets/lab", {"alpha": 1.5}, 422, "body.alpha: Input should be less than 1"),
    ("fleets/lab", {"min_samples": 0}, 422, "body.min_samples: Input should be greater than or equal to 1"),
    ("fleets/lab", {"min_samples": "many"}, 422, "body.min_samples: Input should be a valid integer, unable to "
                                                  "parse string as an integer"),
    ("fleets/lab", {"lookback_seconds": -1}, 422, "body.lookback_seconds: Input should be greater than 0"),
    ("fleets/lab", {"interval_seconds": 0.001}, 422, "body.interval_seconds: Input should be greater than or "
                                                     "equal to 0.05"),
    ("fleets/lab", {"psi": 0.2}, 422, "body.psi: Extra inputs are not permitted"),
    ("fleets/lab", [1, 2], 422, "body: Input should be a valid dictionary or object to extract fields from"),
    ("models/-x", {"alpha": 0.05}, 400, "model '-x' must be 1-64 characters of letters, digits, '_', '.', '-', "
                                        "starting with a letter or digit"),
])
def test_bad_settings_get_one_precise_error_and_store_nothing(start_cloud, path, body, code, detail):
    cloud = start_cloud()
    answer = cloud.client.put(f"/api/v1/drift/settings/{path}", json=body)
    assert (answer.status_code, answer.json()) == (code, {"detail": detail})
    assert cloud.client.get("/api/v1/drift/settings").json()["overrides"] == []


def test_settings_need_the_admin_token(start_cloud):
    cloud = start_cloud()
    with httpx.Client(base_url=cloud.client.base_url) as anonymous:
        assert anonymous.get("/api/v1/drift/settings").status_code == 401
        assert anonymous.put("/api/v1/drift/settings/fleets/lab", json={"min_samples": 1}).status_code == 401
    assert cloud.client.get("/api/v1/drift/settings").json()["overrides"] == []


# --- the running monitor follows the overrides ------------------------------------------------------------
def _store_window(cloud, traffic, x: np.ndarray, device: str, fleet: str, seq: int) -> None:
    """One telemetry window ending now, stored the way the ingest stores it."""
    end = time.time()
    window = traffic.telemetry(x, fleet=fleet, device=device, seq=seq, start=end - 1.0, end=end)
    with cloud.server.sessions() as session:
        session.add(TelemetryRecord(
            device_id=device, fleet=fleet, seq=seq, model_name=window.model_name, model_version=window.model_version,
            window_start=window.start, window_end=window.end, requests=window.requests, samples=window.samples,
            errors=0, payload=window.to_payload().decode()))
        session.commit()


def test_the_running_monitor_uses_a_fleets_min_samples_and_interval(start_cloud, traffic, digits_bundle,
                                                                    digits_splits, tmp_path: Path):
    cloud = start_cloud(drift_interval_seconds=0.1)
    api = cloud.client
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    assert api.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    assert api.post("/api/v1/devices", json={"id": "probe-1", "fleet": "slow"}).status_code == 201
    _store_window(cloud, traffic, sample(digits_splits, 40, np.random.default_rng(1)), "probe-1", "slow", 1)

    def latest() -> dict | None:
        rows = api.get("/api/v1/devices/probe-1/drift", params={"limit": 1}).json()
        return rows[0] if rows else None

    first = until(latest, "a first evaluation", 20.0)
    assert first["verdict"] == "insufficient" and first["report"]["thresholds"]["min_samples"] == 100  # 40 < 100

    assert api.put("/api/v1/drift/settings/fleets/slow", json={"min_samples": 20}).status_code == 200
    judged = until(lambda: (row := latest()) and row["report"]["thresholds"]["min_samples"] == 20 and row,
                    "an evaluation with the fleet's min_samples")
    assert judged["verdict"] == "ok" and judged["samples"] == 40  # 40 held-out digits: judged, and clean

    slower = {"min_samples": 20, "interval_seconds": 3600}
    assert api.put("/api/v1/drift/settings/fleets/slow", json=slower).status_code == 200
    time.sleep(0.5)  # a run may be under way with the old interval
    count = len(api.get("/api/v1/devices/probe-1/drift", params={"limit": 1000}).json())
    time.sleep(1.5)  # 15 ticks of the global 0.1 s interval
    assert len(api.get("/api/v1/devices/probe-1/drift", params={"limit": 1000}).json()) == count


# --- `edgefleet cloud up --drift-*` ------------------------------------------------------------------------
def test_cloud_up_takes_the_global_drift_settings_and_refuses_bad_ones(tmp_path: Path, mosquitto):
    args = ("--data", str(tmp_path / "data"), "--mqtt-url", mosquitto.url, "--drift-min-samples", "25",
            "--drift-lookback", "3600", "--drift-interval", "2", "--drift-alpha", "0.05", "--drift-psi-floor", "0.2",
            "--drift-noise-multiplier", "3")
    with cloud_up(tmp_path, *args) as (process, _lines, url, output):
        token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
        answer = httpx.get(url + "/api/v1/drift/settings", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.json()["global"] == {"min_samples": 25, "alpha": 0.05, "psi_floor": 0.2, "noise_multiplier": 3.0,
                                           "lookback_seconds": 3600.0, "interval_seconds": 2.0}
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0

    refused = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--data", str(tmp_path / "x"),
                              "--mqtt-url", mosquitto.url, "--drift-alpha", "1.5"],
                             capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "drift_alpha: Input should be less than 1" in " ".join(refused.stderr.split()), refused.stderr
