"""The operations monitor's rules on a real SQLite file, with its clock in the test's hands: p99 latency,
error rate and device health against per-model limits, each alert opened once and closed on recovery."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import insert, select

from edgefleet.cloud.db import Alert, Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ops_monitor import OpsMonitor, p99_ms
from edgefleet.cloud.ops_settings import OpsLimits, OpsSettingsError
from edgefleet.cloud.ops_tables import OpsSettingsRecord
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow
from edgefleet.core.window_quality import DeviceHealth

T0 = 1_700_000_000.0
FAST, SLOW = LATENCY_EDGES_MS.index(0.5), LATENCY_EDGES_MS.index(1000.0)  # bins [0.2, 0.5), [500, 1000)


@pytest.fixture
def sessions(tmp_path):
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("pi-1", "pi-2")])
    return sessions


class Feed:
    def __init__(self, sessions) -> None:
        self.sessions, self.seq = sessions, 0

    def send(self, device: str, end: float, *, requests: int = 50, errors: int = 0, slow: int = 0,
             health: DeviceHealth | None = None, model: str = "cnn") -> None:
        latency = [0] * (len(LATENCY_EDGES_MS) + 2)
        latency[FAST], latency[SLOW] = requests - slow, slow
        self.seq += 1
        window = TelemetryWindow(fleet="lab", device=device, seq=self.seq, model_name=model, model_version=1,
                                 start=end - 10, end=end, requests=requests, samples=requests - errors,
                                 errors=errors, latency_ms=tuple(latency), health=health)
        with self.sessions.begin() as session:
            session.execute(insert(TelemetryRecord), [{
                "device_id": device, "fleet": "lab", "seq": self.seq, "model_name": model, "model_version": 1,
                "window_start": window.start, "window_end": end, "requests": requests, "samples": window.samples,
                "errors": errors, "payload": window.to_payload().decode()}])


def open_alerts(sessions) -> set[tuple[str, str]]:
    with sessions() as session:
        return {(a.scope_id, a.kind) for a in session.scalars(select(Alert).where(Alert.status == "open"))}


def test_p99_is_the_upper_edge_of_the_bin_holding_it():
    counts = [0] * (len(LATENCY_EDGES_MS) + 2)
    counts[FAST] = 990
    assert p99_ms(counts) == 0.5
    counts[SLOW] = 11  # 11 of 1001 slow: the 99th percentile is slow
    assert p99_ms(counts) == 1000.0
    counts[len(LATENCY_EDGES_MS)] = 50  # past the last edge: unbounded
    assert p99_ms(counts) == math.inf and p99_ms([0] * len(counts)) is None


def test_latency_errors_and_health_open_once_per_device_and_close_on_recovery(sessions):
    feed = Feed(sessions)
    monitor = OpsMonitor(sessions, lambda name, version: None, OpsLimits(lookback_seconds=60))
    hot = DeviceHealth(cpu_load=0.3, memory_used=0.5, disk_free_bytes=10 ** 6, temperature_c=85.5,
                       uptime_seconds=10, restarts=4)
    feed.send("pi-1", T0, slow=5)  # 10% of requests take 0.5-1 s
    feed.send("pi-2", T0, errors=10, health=hot)
    opened = monitor.run_once(T0 + 1)
    assert {(a.scope_id, a.kind) for a in opened} == {("pi-1", "latency"), ("pi-2", "error_rate"),
                                                      ("pi-2", "device_health")}
    messages = {a.kind: a.message for a in opened}
    assert messages["latency"].startswith("p99 latency 1000 ms over the limit 500 ms")
    assert "temperature_c 85.5 > limit 80" in messages["device_health"]
    assert "disk_free_bytes 1e+06 < limit 1.04858e+08" in messages["device_health"]
    assert monitor.run_once(T0 + 2) == []  # open already: not again
    # pi-1's model may be slower: a per-model limit closes its alert; pi-2 recovers
    with sessions.begin() as session:
        session.add(OpsSettingsRecord(fleet="", model_name="cnn", limits={"max_p99_ms": 2000}))
    for offset in (70, 80):
        feed.send("pi-1", T0 + offset, slow=5)
        feed.send("pi-2", T0 + offset, health=DeviceHealth(0.3, 0.5, 10 ** 10, 50.0, 80, 4))
    assert monitor.run_once(T0 + 81) == [] and open_alerts(sessions) == set()


def test_too_few_requests_give_no_latency_or_error_verdict(sessions):
    feed = Feed(sessions)
    monitor = OpsMonitor(sessions, lambda name, version: None)
    feed.send("pi-1", T0, requests=5, errors=5, slow=5)
    assert monitor.run_once(T0 + 1) == []


def test_a_window_with_requests_and_no_latency_counts_does_not_stop_the_pass(sessions):
    """Requests with an empty latency histogram (a producer that does not time them) have no p99; the
    message built for it raised TypeError, which failed every pass for every device."""
    feed = Feed(sessions)
    monitor = OpsMonitor(sessions, lambda name, version: None)
    feed.send("pi-1", T0, errors=10)
    with sessions.begin() as session:
        window = TelemetryWindow(fleet="lab", device="pi-2", seq=99, model_name="cnn", model_version=1, start=T0 - 10,
                                 end=T0, requests=50, samples=50, errors=0,
                                 latency_ms=(0,) * (len(LATENCY_EDGES_MS) + 2))
        session.execute(insert(TelemetryRecord), [{
            "device_id": "pi-2", "fleet": "lab", "seq": 99, "model_name": "cnn", "model_version": 1,
            "window_start": T0 - 10, "window_end": T0, "requests": 50, "samples": 50, "errors": 0,
            "payload": window.to_payload().decode()}])
    assert {(a.scope_id, a.kind) for a in monitor.run_once(T0 + 1)} == {("pi-1", "error_rate")}


def test_limits_are_checked_as_a_whole():
    with pytest.raises(OpsSettingsError, match="max_memory_used must be between 0 and 1"):
        OpsLimits().with_values({"max_memory_used": 3})
    with pytest.raises(OpsSettingsError, match="unknown operational limits"):
        OpsLimits().with_values({"max_latency": 3})
    assert OpsLimits().with_values({"stuck_min_samples": 5.0}).stuck_min_samples == 5


def test_cpu_load_is_judged_only_where_a_limit_is_set(sessions):
    """The load average counts every process of the machine: no default limit, one per fleet where set."""
    feed = Feed(sessions)
    busy = DeviceHealth(cpu_load=6.9, memory_used=0.5, disk_free_bytes=10 ** 10, temperature_c=None,
                        uptime_seconds=10, restarts=0)
    monitor = OpsMonitor(sessions, lambda name, version: None, OpsLimits(lookback_seconds=60))
    feed.send("pi-1", T0, health=busy)
    assert monitor.run_once(T0 + 1) == []
    with sessions.begin() as session:
        session.add(OpsSettingsRecord(fleet="lab", model_name="", limits={"max_cpu_load": 2.0}))
    (alert,) = monitor.run_once(T0 + 2)
    assert alert.kind == "device_health" and "cpu_load 6.9 > limit 2" in alert.message
