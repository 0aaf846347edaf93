"""Drift in event time: windows are judged in the period they describe, whenever they arrive.

End to end: a real device agent serving the digits CNN reports through a real Mosquitto to the cloud's
ingest and drift monitor; the broker is stopped (by PID) for longer than the lookback while the camera's
images brighten, then restarted on the same port. The device's outbox drains its backlog and the alert
arrives after the reconnect, marked late. Before event time, those windows were never evaluated: the
monitor read only windows that ended inside its lookback when it ran.
The sequential detectors (CUSUMs, their sums in the database) are fed the backlog in event order too, so
they also alarm on a window of the outage, marked late.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from edgefleet.cli.fleet_commands import alerts_table
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import drifted, register_device
from tests.cloud import test_drift_monitor as recorded
from tests.cloud.api_kit import GZIP
from tests.cloud.test_drift_monitor import T0, alerts, end_of
from tests.waiting import until

pytestmark = pytest.mark.slow  # trains the digits bundle once per session

# the fixtures of the monitor's own tests: a real SQLite file, windows of the real digits model, a monitor
sessions, traffic, feed, monitor = recorded.sessions, recorded.traffic, recorded.feed, recorded.monitor

LOOKBACK = 4.0  # seconds; the outage below lasts three times as long
RATE = 120.0  # requests per second: a lookback holds ~480, well above min_samples


class Camera:
    """Requests from the digits test split at a steady rate, brightened by +0.15 while `drifting` is set."""

    def __init__(self, agent: DeviceAgent, images: np.ndarray) -> None:
        self.agent, self.images = agent, images
        self.drifting = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self.sent = 0

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        next_at = time.monotonic()
        while not self._stop.is_set():
            x = self.images[rng.integers(0, len(self.images), 4)]
            if self.drifting.is_set():
                x = drifted("brightness", x, 0.15, rng)
            self.agent.predict(x)
            self.sent += len(x)
            next_at += 4 / RATE
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Camera:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_shift_during_an_outage_longer_than_the_lookback_raises_a_late_alert(
        start_cloud, mosquitto, digits_bundle, digits_splits, tmp_path: Path):
    cloud = start_cloud(drift_lookback_seconds=LOOKBACK, drift_interval_seconds=0.25)
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    credentials = register_device(cloud.server.url, cloud.token, "cam-1", "lab")
    config = DeviceConfig(device="cam-1", fleet="lab", bundle=digits_bundle.root,
                          trusted_keys=(digits_bundle.public_key,), data_dir=tmp_path / "cam-1", threads=1,
                          window_seconds=0.5,
                          mqtt=MqttConfig(mosquitto.url, credentials["username"], credentials["password"]))
    agent = DeviceAgent(config, serve_http=False).start()

    def results() -> list[dict]:
        return cloud.client.get("/api/v1/devices/cam-1/drift", params={"limit": 1000}).json()

    def alerts() -> list[dict]:
        return [a for a in cloud.client.get("/api/v1/alerts", params={"status": "all"}).json()
                if a["scope"] == "device" and a["scope_id"] == "cam-1"]

    try:
        with Camera(agent, digits_splits.x_test) as camera:
            until(lambda: any(r["verdict"] == "ok" for r in results()), "an on-time ok evaluation", 30)
            mosquitto.stop()  # SIGTERM to its PID: the ingest keeps its persistent session in the broker's file
            down_at = time.time()
            until(lambda: not agent.transport.connected, "the device to notice the outage", 10)
            camera.drifting.set()
            time.sleep(6.0)  # the camera brightens for 6 s of the outage ...
            camera.drifting.clear()
            shift_end = time.time()
            time.sleep(LOOKBACK + 2.0)  # ... then is clean again, for longer than the lookback, still offline
            assert len(agent.outbox) >= 15  # the windows of the outage wait on the device's disk
            mosquitto.start()  # the same port
            up_at = time.time()
            late = until(lambda: [a for a in alerts() if a["kind"] == "data_drift" and a["late_by"] is not None],
                         "a late data drift alert after the reconnect", 60)
            until(lambda: len(agent.outbox) == 0, "the backlog to drain", 30)
            assert camera.sent > 0
    finally:
        agent.stop()

    [alert] = late
    assert alert["opened_at"] > up_at  # it came after the reconnect ...
    # its period is one lookback of the outage, in event time (it may reach a little before or after the shift)
    assert down_at - LOOKBACK - 1.0 <= alert["details"]["window_start"] <= shift_end
    assert down_at < alert["details"]["window_end"] <= shift_end + LOOKBACK + 0.5
    assert alert["late_by"] > LOOKBACK  # ... about data older than the lookback, and says how late it is
    assert alert["late_by"] == pytest.approx(alert["opened_at"] - alert["details"]["window_end"], abs=0.5)
    assert alert["message"].startswith("late (") and "pixels.c0.mean" in alert["details"]["drifting"]
    # The live evaluation never saw the shift: every on-time result is ok or insufficient, and no on-time
    # data drift alert exists. Without event time, this outage raised nothing at all.
    on_time = [r for r in results() if r["late_by"] is None]
    assert on_time and {r["verdict"] for r in on_time} <= {"ok", "insufficient"}
    assert [a for a in alerts() if a["kind"] == "data_drift" and a["late_by"] is None] == []
    late_results = [r for r in results() if r["late_by"] is not None]
    assert any(r["report"]["data_drift"]["verdict"] == "drift" for r in late_results)
    # the CUSUMs were fed the backlog in event order: they alarm on a window of the outage, marked late
    sequential = [a for a in alerts() if a["kind"] == "sequential_drift" and a["late_by"] is not None]
    assert sequential and sequential[0]["message"].startswith("late (")
    at = [e["at"] for e in sequential[0]["details"]["signals"].values() if e["alarm"]]
    assert at and all(down_at < t <= shift_end + 1.0 for t in at), (at, down_at, shift_end)
    fleet = [a for a in cloud.client.get("/api/v1/alerts", params={"status": "all", "fleet": "lab"}).json()
             if a["scope"] == "fleet" and a["kind"] == "data_drift"]
    assert fleet and all(a["late_by"] is not None for a in fleet)
    # `edgefleet alerts` prints the delay in its "late" column
    console = Console(record=True, width=240)
    console.print(alerts_table([alert]))
    assert f"{alert['late_by']:.0f} s" in console.export_text()


# --- the same rule on a real SQLite file, with the monitor's clock in our hands ---------------------------
def test_a_backlog_reopens_the_periods_it_belongs_to_and_only_the_present_closes_alerts(monitor, feed, sessions):
    """Lookback 300 s, one window a minute (tests/cloud/test_drift_monitor.py). d1 is offline for minutes
    1-12; minutes 1-4 are brightened. The backlog drains in two batches."""
    feed.send("d1", 0)
    assert {r.verdict for r in monitor.run_once(end_of(0))} == {"ok"}
    for minute in range(1, 7):  # first batch: 1-4 drifted, 5-6 clean
        feed.send("d1", minute, drift=minute <= 4)
    first = monitor.run_once(end_of(12))  # their ends are all older than the lookback now: none is on time
    late = {(r.scope, r.window_end): r for r in first if r.late_by is not None}
    assert [r for r in first if r.late_by is None] == []
    # period (T0, T0 + 300]: minute 0 (on time back then) and 1-4 (late), judged together
    assert late[("device", T0 + 300)].report["windows"] == 5 and late[("device", T0 + 300)].verdict == "drift"
    assert late[("device", T0 + 300)].report["period"] == [T0, T0 + 300]
    assert late[("fleet", T0 + 300)].verdict == "drift"
    assert late[("device", T0 + 420)].report["windows"] == 2  # minutes 5-6 so far, of (T0 + 300, T0 + 600]
    assert late[("device", T0 + 300)].late_by == pytest.approx(end_of(12) - (T0 + 300))
    [alert] = alerts(sessions, scope="device", kind="data_drift")
    assert alert.late_by == pytest.approx(481.0) and alert.message.startswith("late (481 s after its data")
    assert alert.opened_at == end_of(12) and alert.details["window_end"] == T0 + 300

    for minute in range(7, 13):  # second batch: clean; 7 is still late, 8-12 are in the lookback
        feed.send("d1", minute)
    second = monitor.run_once(end_of(12) + 5)
    again = [r for r in second if r.late_by is not None and r.scope == "device"]
    assert [(r.window_end, r.report["windows"], r.verdict) for r in again] == [(T0 + 600, 5, "ok")]  # re-opened
    [live] = [r for r in second if r.late_by is None and r.scope == "device"]
    assert (live.report["windows"], live.verdict) == (5, "ok")
    assert alerts(sessions, scope="device", kind="data_drift")[0].status == "open"  # late "ok" closes nothing

    feed.send("d1", 13)
    monitor.run_once(end_of(13))
    assert alerts(sessions, scope="device", kind="data_drift")[0].status == "open"  # 2 on-time ok runs
    feed.send("d1", 14)
    monitor.run_once(end_of(14))
    assert alerts(sessions, scope="device", kind="data_drift")[0].status == "closed"  # the third closes it


def test_windows_in_the_lookback_are_on_time_even_when_they_arrive_late(monitor, feed):
    feed.send("d1", 0)
    monitor.run_once(end_of(0))
    feed.send("d1", 1)
    feed.send("d1", 2)  # both arrive after the run that should have seen minute 1, but inside the lookback
    results = monitor.run_once(end_of(2))
    assert {(r.scope, r.late_by, r.report["windows"]) for r in results} == {("device", None, 3), ("fleet", None, 3)}
