"""The performance and operations monitors' settings (issue 14): `edgefleet cloud up --performance-drop
--ops-*` as a real process (a bad value: exit 2 and one line; --ops-interval sets how soon a slow device is
judged, --performance-drop the threshold its accuracy alert names), the per-fleet/model API they share with the
drift settings (cloud/api/scoped_settings.py) on a real cloud, and the label-free accuracy alert using a
fleet's drop and its drift min_samples and lookback on a real SQLite database."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.cloud.db import Device, DriftSettingsRecord, TelemetryRecord, make_sessions, open_engine
from edgefleet.cloud.drift_settings import MonitorSettings
from edgefleet.cloud.ops_tables import PerformanceSettingsRecord
from edgefleet.cloud.performance_monitor import PerformanceMonitor
from edgefleet.cloud.performance_settings import PerformanceSettingsError
from edgefleet.core.bundle import Bundle
from edgefleet.core.calibration import calibration_of, estimated_accuracy
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow
from tests.cloud.api_kit import GZIP
from tests.cloud.cloud_process import cloud_servers, cloud_up
from tests.cloud.test_performance import PROFILE, alerts, sessions, store  # noqa: F401 - sessions is a fixture
from tests.cloud.test_scaleout_monitor import add_devices, window
from tests.cloud.test_scaleout_monitor import store as store_windows
from tests.waiting import until

OPS_DEFAULTS = {"max_p99_ms": 500.0, "max_error_rate": 0.05, "min_requests": 20, "max_cpu_load": None,
                "max_memory_used": 0.95, "min_disk_free_bytes": 100 * 1024 * 1024, "max_temperature_c": 80.0,
                "max_nonfinite_share": 0.01, "max_out_of_range_share": 0.05, "stuck_min_samples": 20,
                "lookback_seconds": 300.0, "interval_seconds": 10.0}


def test_cloud_up_takes_the_performance_and_ops_settings_and_refuses_bad_ones(tmp_path: Path, mosquitto):
    args = ("--data", str(tmp_path / "data"), "--mqtt-url", mosquitto.url, "--performance-drop", "0.1",
            "--ops-interval", "2", "--ops-lookback", "60", "--ops-max-p99-ms", "200", "--ops-min-requests", "5",
            "--ops-max-cpu-load", "3.5", "--ops-max-temperature", "70", "--ops-stuck-min-samples", "50")
    with cloud_up(tmp_path, *args) as (process, _lines, url, output):
        token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
            ops = api.get("/api/v1/ops/settings").json()["global"]
            assert ops == {**OPS_DEFAULTS, "max_p99_ms": 200.0, "min_requests": 5, "max_cpu_load": 3.5,
                           "max_temperature_c": 70.0, "stuck_min_samples": 50, "lookback_seconds": 60.0,
                           "interval_seconds": 2.0}
            assert api.get("/api/v1/performance/settings").json() == {"global": {"drop": 0.1}, "overrides": []}
            # an override is checked on top of these globals and resolved over them
            assert api.put("/api/v1/ops/settings/fleets/lab", json={"max_p99_ms": 50}).status_code == 200
            effective = api.get("/api/v1/ops/settings/effective", params={"fleet": "lab", "model": "m"}).json()
            assert (effective["max_p99_ms"], effective["min_requests"]) == (50.0, 5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0

    for option, value, message in (
            ("--ops-max-error-rate", "2", "ops_max_error_rate must be between 0 and 1, got 2.0"),
            ("--ops-min-requests", "0", "ops_min_requests must be between 1 and 1e+09, got 0"),
            ("--ops-interval", "0", "ops_interval_seconds: Input should be greater than 0"),
            ("--performance-drop", "1", "performance_drop: Input should be less than 1"),
            ("--ops-max-p99-ms", "fast", "Invalid value for '--ops-max-p99-ms': Input should be a valid number")):
        refused = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--data",
                                  str(tmp_path / "x"), "--mqtt-url", mosquitto.url, option, value],
                                 capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
        said = " ".join(refused.stderr.replace("│", " ").split())
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert message in said, said


def test_cloud_up_ops_interval_is_how_soon_a_slow_device_is_judged(tmp_path: Path, mosquitto):
    """--ops-interval takes effect in a real `cloud up`: the same slow window (p99 past the last latency edge)
    opens a latency alert within a pass at --ops-interval 0.3, and is still unjudged 12 s after it ended at
    --ops-interval 3600 (longer than the default 10 s, so an option the monitor ignored fails here). The
    window ends 2 s after it is stored, so the pass each process makes at start cannot have judged it."""
    waited: dict[str, float | None] = {}
    for interval in ("3600", "0.3"):
        data = tmp_path / f"data-{interval}"
        with cloud_up(tmp_path, "--data", str(data), "--mqtt-url", mosquitto.url, "--ops-interval",
                      interval) as (process, _lines, url, output):
            token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
            engine = open_engine(f"sqlite:///{data / 'edgefleet.db'}")
            sessions = make_sessions(engine)
            end = time.time() + 2
            store_windows(sessions, [window(device, 1, end, slow=True) for device in add_devices(sessions, 1)])
            engine.dispose()
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
                def latency() -> list[dict]:
                    every = api.get("/api/v1/alerts", params={"status": "all"}).json()
                    return [a for a in every if a["kind"] == "latency"]

                if interval == "3600":
                    time.sleep(max(0.0, end + 12 - time.time()))
                    assert latency() == [], "judged although the next pass is an hour away"
                    waited[interval] = None
                else:
                    (alert,) = until(latency, "the latency alert", 30)
                    assert alert["scope_id"] == "d00000" and "p99 latency inf ms over the limit 500 ms" in \
                        alert["message"]
                    waited[interval] = alert["opened_at"] - end
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    print(f"latency alert {waited['0.3']:.2f} s after the window ended at --ops-interval 0.3; none after 12 s "
          "at 3600")
    assert 0 <= waited["0.3"] < 12


def test_a_fleets_ops_interval_overrides_the_global_one(tmp_path: Path, mosquitto):
    """interval_seconds per fleet through the API, on a real `cloud up --ops-interval 3600`: once the
    process has read the override (it persists; here across a restart, as a wait of the global hour would
    take), a slow device of fleet lab (0.3 s) is judged within seconds while one of fleet yard, on the
    global hour, is still unjudged 12 s after its window ended."""
    data = tmp_path / "data"
    args = ("--data", str(data), "--mqtt-url", mosquitto.url, "--ops-interval", "3600")
    with cloud_up(tmp_path, *args) as (process, _lines, url, output):
        token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
            assert api.put("/api/v1/ops/settings/fleets/lab", json={"interval_seconds": 0.3}).status_code == 200
            refused = api.put("/api/v1/ops/settings/fleets/lab", json={"interval_seconds": 0})
            assert refused.status_code == 400 and "interval_seconds must be between" in refused.text, refused.text
            effective = {fleet: api.get("/api/v1/ops/settings/effective", params={"fleet": fleet, "model": "m"})
                         .json()["interval_seconds"] for fleet in ("lab", "yard")}
            assert effective == {"lab": 0.3, "yard": 3600.0}
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    with cloud_up(tmp_path, *args) as (process, _lines, url, _output):
        engine = open_engine(f"sqlite:///{data / 'edgefleet.db'}")
        sessions = make_sessions(engine)
        (lab,) = add_devices(sessions, 1)
        with sessions.begin() as session:
            session.add(Device(id="yard-1", fleet="yard", password_hash="-"))
        end = time.time() + 2
        slow = window(lab, 1, end, slow=True)
        store_windows(sessions, [slow, dataclasses.replace(slow, fleet="yard", device="yard-1")])
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
            def latency() -> dict[str, float]:
                every = api.get("/api/v1/alerts", params={"status": "all"}).json()
                return {a["scope_id"]: a["opened_at"] for a in every if a["kind"] == "latency"}

            opened = until(latency, "the lab device's latency alert", 30)
            assert list(opened) == [lab] and opened[lab] - end < 12
            time.sleep(max(0.0, end + 12 - time.time()))
            assert list(latency()) == [lab], "the yard device was judged before its fleet's hour"
        engine.dispose()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.mark.slow  # the digits bundle: its calibration is what the estimate is judged against
def test_cloud_up_performance_drop_is_the_threshold_the_accuracy_alert_uses(tmp_path: Path, mosquitto,
                                                                            digits_bundle):
    """--performance-drop takes effect in a real `cloud up`: a device whose predictions all fall in the digits
    CNN's least accurate confidence bin gets an accuracy alert that names the option's threshold, not the
    default 0.05."""
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    profile = Bundle.open(digits_bundle.root).reference_profile()
    calibration = calibration_of(profile)
    worst = int(np.nanargmin(calibration["accuracy"]))
    counts = [0] * (len(calibration["accuracy"]) + 1)
    counts[worst] = 200
    gap = calibration["expected_accuracy"] - estimated_accuracy(counts, calibration)
    assert gap > 0.1, calibration  # room for a threshold between the default and the gap
    drop = round(gap / 2, 2)
    data = tmp_path / "data"
    with cloud_up(tmp_path, "--data", str(data), "--mqtt-url", mosquitto.url, "--trust", str(digits_bundle.public_key),
                  "--performance-drop", str(drop), "--drift-interval", "0.5") as (process, _lines, url, output):
        token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            uploaded = api.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
            assert uploaded.status_code == 201, uploaded.text
            name, version = uploaded.json()["name"], uploaded.json()["version"]
            engine = open_engine(f"sqlite:///{data / 'edgefleet.db'}")
            sessions = make_sessions(engine)
            (device,) = add_devices(sessions, 1)
            end = time.time()
            window = TelemetryWindow("lab", device, 1, name, version, end - 60, end, 200, 200, 0,
                                     (0,) * (len(LATENCY_EDGES_MS) + 2), confidence=tuple(counts))
            with sessions.begin() as session:
                session.add(TelemetryRecord(device_id=device, fleet="lab", seq=1, model_name=name,
                                            model_version=version, window_start=end - 60, window_end=end,
                                            requests=200, samples=200, errors=0,
                                            payload=window.to_payload().decode()))
            engine.dispose()

            def accuracy_alerts() -> list[dict]:
                every = api.get("/api/v1/alerts", params={"status": "all"}).json()
                return [a for a in every if a["kind"] == "estimated_accuracy" and a["scope"] == "device"]

            (alert,) = until(accuracy_alerts, "the device's accuracy alert", 60)
        assert f"{gap:.3f} below" in alert["message"] and f"(threshold {drop:g})" in alert["message"], alert
        assert alert["details"]["threshold"] == drop
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.fixture
def api(tmp_path: Path, mosquitto):
    with cloud_servers() as start:
        _server, client = start({"data_dir": tmp_path / "cloud", "port": 0, "mqtt_url": mosquitto.url,
                                 "performance_drop": 0.08})
        yield client


def test_performance_settings_per_fleet_and_model_share_the_drift_settings_shape(api):
    assert api.put("/api/v1/performance/settings/models/digits-cnn", json={"drop": 0.2}).status_code == 200
    both = api.put("/api/v1/performance/settings/fleets/lab/models/digits-cnn", json={"drop": 0.3})
    assert both.status_code == 200 and (both.json()["fleet"], both.json()["model"], both.json()["drop"]) == (
        "lab", "digits-cnn", 0.3)

    def effective(**query: str) -> float:
        answer = api.get("/api/v1/performance/settings/effective", params=query)
        assert answer.status_code == 200, answer.text
        return answer.json()["drop"]

    assert (effective(fleet="lab", model="digits-cnn"), effective(fleet="yard", model="digits-cnn"),
            effective(fleet="lab", model="other")) == (0.3, 0.2, 0.08)
    listed = api.get("/api/v1/performance/settings").json()
    assert listed["global"] == {"drop": 0.08}
    assert [(o["fleet"], o["model"], o["drop"]) for o in listed["overrides"]] == [
        (None, "digits-cnn", 0.2), ("lab", "digits-cnn", 0.3)]
    assert api.delete("/api/v1/performance/settings/models/digits-cnn").status_code == 204
    gone = api.delete("/api/v1/performance/settings/models/digits-cnn")
    assert (gone.status_code, gone.json()) == (404, {"detail": "no performance settings for model 'digits-cnn'"})
    assert effective(fleet="yard", model="digits-cnn") == 0.08


@pytest.mark.parametrize(("path", "body", "code", "detail"), [
    ("performance/settings/fleets/lab", {"drop": 1.5}, 422, "body.drop: Input should be less than 1"),
    ("performance/settings/fleets/lab", {"drop": 0}, 422, "body.drop: Input should be greater than 0"),
    ("performance/settings/fleets/lab", {"dropp": 0.1}, 422, "body.dropp: Extra inputs are not permitted"),
    ("performance/settings/fleets/-x", {"drop": 0.1}, 400, "fleet '-x' must be 1-64 characters of letters, "
                                                           "digits, '_', '.', '-', starting with a letter or digit"),
    ("ops/settings/models/m", {"max_error_rate": 2}, 400, "max_error_rate must be between 0 and 1, got 2.0"),
    ("ops/settings/models/m", {"lookback_seconds": "long"}, 422, "body.lookback_seconds: Input should be a valid "
                                                                 "number, unable to parse string as a number"),
])
def test_bad_settings_get_one_precise_error_and_store_nothing(api, path, body, code, detail):
    answer = api.put(f"/api/v1/{path}", json=body)
    assert (answer.status_code, answer.json()) == (code, {"detail": detail})
    assert api.get(f"/api/v1/{path.split('/')[0]}/settings").json()["overrides"] == []
    missing = api.delete("/api/v1/ops/settings/fleets/lab/models/m")
    assert missing.json() == {"detail": "no operational limits for fleet 'lab' and model 'm'"}


# --- the monitor follows them ---------------------------------------------------------------------------------
def test_the_accuracy_alert_uses_a_fleets_drop_and_its_drift_min_samples_and_lookback(sessions):  # noqa: F811
    monitor = PerformanceMonitor(sessions, lambda name, version: PROFILE, drop=0.05,
                                 drift=MonitorSettings(lookback_seconds=10.0))
    store(sessions, "d1", 1, 100.0, 30, 20)  # 50 samples at 0.5 * 30/50 + 20/50 = 0.7: 0.25 below 0.95
    assert monitor.run_once(now=101) == []  # 50 < the global min_samples (100): not judged
    with sessions.begin() as session:
        session.add(DriftSettingsRecord(fleet="f1", model_name="", min_samples=40, lookback_seconds=60.0))
        session.add(PerformanceSettingsRecord(fleet="f1", model_name="digits-cnn", values={"drop": 0.3}))
    store(sessions, "d1", 2, 140.0, 30, 20)  # 100 samples within the fleet's 60 s lookback (10 s globally)
    records = monitor.run_once(now=141)
    assert {(r["scope"], r["samples"], r["threshold"]) for r in records} == {("device", 100, 0.3),
                                                                             ("fleet", 100, 0.3)}
    assert alerts(sessions) == []  # 0.25 below: within the fleet's 0.3
    with sessions.begin() as session:
        session.query(PerformanceSettingsRecord).delete()
    monitor.run_once(now=142)
    assert {(a.scope, a.status, a.details["threshold"]) for a in alerts(sessions)} == {
        ("device", "open", 0.05), ("fleet", "open", 0.05)}  # the global drop again


def test_a_bad_drop_is_refused_up_front():
    with pytest.raises(PerformanceSettingsError, match=r"drop must be between 0 and 1 \(both excluded\), got 1.5"):
        PerformanceMonitor(None, lambda name, version: None, drop=1.5)


# --- webhook subscriptions (cloud/webhooks.py) through the API and the CLI -------------------------------------
def test_a_webhook_subscribes_to_some_events_and_kinds_and_a_typo_is_refused(api, tmp_path: Path):
    import os

    token = api.headers["Authorization"].removeprefix("Bearer ")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "webhook", *args, "--cloud",
                               str(api.base_url), "--token", token], capture_output=True, text=True, timeout=60,
                              check=False, env={**os.environ, "COLUMNS": "200"})

    added = cli("add", "http://127.0.0.1:9/hook", "--event", "alert.resolved", "--kind", "latency", "--kind",
                "data_quality")
    assert added.returncode == 0, added.stderr
    (hook,) = api.get("/api/v1/webhooks").json()
    assert (hook["events"], hook["kinds"]) == (["alert.resolved"], ["data_quality", "latency"])
    listed = cli("list").stdout
    assert "alert.resolved" in listed and "data_quality, latency" in listed
    typo = cli("add", "http://127.0.0.1:9/other", "--kind", "latnecy")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "unknown alert kinds ['latnecy']; expected some of ['data_drift'," in typo.stderr
    bad_event = api.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["alert.closed"]})
    assert bad_event.status_code == 422 and "body.events.0: Input should be 'alert.opened' or 'alert.resolved'" \
        in bad_event.json()["detail"]
    assert len(api.get("/api/v1/webhooks").json()) == 1  # nothing stored for either refusal
