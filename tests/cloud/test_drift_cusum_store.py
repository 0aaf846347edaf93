"""The CUSUM sums in the database (cloud/drift_cusum_store.py), on a real SQLite file and the Nile's annual
flow (statsmodels.datasets.nile, a level drop after 1898): a monitor restarted mid-drift alarms at the same
year, a backlog delivered after the lookback alarms late, and a fleet fed out of order ends as if in order."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select, text

from edgefleet.cloud.db import Alert, Device, DriftResult, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.drift_cusum_store import CusumCheckpoint
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.drift_sequential import SEQUENTIAL
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from tests.cloud.test_drift_sequential import CHANGE, FLOW, YEARS, detector, profile_of, row

T0 = 1_000.0  # year index i is the window (T0 + i, T0 + i + 1]
LOOKBACK = 15.0
PROFILE = profile_of(FLOW[:25])


class River:
    """A real SQLite file with gauges of one fleet; each reading is one stored telemetry window."""

    def __init__(self, path, gauges=("gauge-1",)) -> None:
        """path: an SQLite file, or a database URL."""
        self.url = path if str(path).startswith("postgresql") else f"sqlite:///{path}"
        self.seq = {}
        self.open()
        with self.sessions.begin() as session:
            session.add_all(Device(id=g, fleet="river", password_hash="$7$unused") for g in gauges)

    def open(self) -> None:
        """A new engine and a new monitor on the same file: what a cloud restart keeps is the database."""
        self.engine = make_engine(self.url)
        self.sessions = make_sessions(self.engine)
        self.monitor = DriftMonitor(self.sessions, lambda name, version: PROFILE if name == "nile-flow" else None,
                                    lookback_seconds=LOOKBACK, interval_seconds=1.0)

    def restart(self) -> None:
        self.engine.dispose()
        self.open()

    def send(self, index: int, gauge: str = "gauge-1") -> float:
        seq = self.seq[gauge] = self.seq.get(gauge, 0) + 1
        counts = tuple(int(v) for v in row([FLOW[index]], PROFILE))
        w = TelemetryWindow("river", gauge, seq, "nile-flow", 1, T0 + index, T0 + index + 1, 1, 1, 0,
                            (0,) * (len(LATENCY_EDGES_MS) + 2), (FeatureCounts("flow", (counts,)),))
        with self.sessions.begin() as session:
            session.add(TelemetryRecord(device_id=gauge, fleet="river", seq=seq, model_name="nile-flow",
                                        model_version=1, window_start=w.start, window_end=w.end, requests=1,
                                        samples=1, errors=0, payload=w.to_payload().decode()))
        return w.end

    def alerts(self, scope: str = "device") -> list[Alert]:
        with self.sessions() as session:
            return list(session.scalars(select(Alert).where(Alert.scope == scope, Alert.kind == SEQUENTIAL)).all())

    def sequential(self, scope: str = "device") -> list[dict]:
        with self.sessions() as session:
            results = session.scalars(select(DriftResult).where(DriftResult.scope == scope)
                                      .order_by(DriftResult.id)).all()
            return [r.report[SEQUENTIAL] for r in results if SEQUENTIAL in r.report]

    def close(self) -> None:
        self.engine.dispose()


def alarm_year_in_memory() -> int:
    """The year the same CUSUM alarms when fed the readings one by one, without any database."""
    cusum = detector(PROFILE)
    return next(int(YEARS[i]) for i in range(25, 60) if cusum.update(row([FLOW[i]], PROFILE))["alarm"])


def replay(path, restart_before: int | None) -> tuple[int, dict]:
    river = River(path)
    try:
        for index in range(25, 60):
            if index == restart_before:
                river.restart()
            river.monitor.run_once(river.send(index))
            if river.alerts():
                return int(YEARS[index]), river.sequential()[-1]["signals"]["flow[0]"]
        raise AssertionError("no sequential alert")
    finally:
        river.close()


def test_a_restart_mid_drift_alarms_at_the_same_year(tmp_path):
    expected = alarm_year_in_memory()
    assert 1899 < expected <= 1905  # the alarm needs several years of the drop: a restart can fall between
    year, evidence = replay(tmp_path / "straight.db", None)
    restart_before = int(np.flatnonzero(YEARS == 1900)[0])  # 1899 was fed, the sums are on their way up
    assert restart_before < int(np.flatnonzero(YEARS == expected)[0])
    restarted_year, restarted = replay(tmp_path / "restarted.db", restart_before)
    assert year == restarted_year == expected
    assert restarted == evidence  # the same sums, samples and threshold: the restart lost nothing
    assert restarted["samples"] == expected - 1896 + 1
    crossed = ((restarted["down"], restarted["threshold"]) if restarted["statistic"] == "mean"
               else (max(restarted["wider"], restarted["narrower"]), restarted["spread_threshold"]))
    assert crossed[0] > crossed[1]


def test_a_restart_mid_drift_alarms_at_the_same_year_on_postgresql(postgres):
    """The same on a real PostgreSQL: the checkpoints' JSON and floats round-trip there too."""
    admin = make_engine(postgres.url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in ("cusum_straight", "cusum_restarted"):
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    server = postgres.url.rsplit("/", 1)[0]
    restart_before = int(np.flatnonzero(YEARS == 1900)[0])
    assert replay(f"{server}/cusum_straight", None) == replay(f"{server}/cusum_restarted", restart_before)


def test_the_sums_continue_after_a_restart_instead_of_starting_at_zero(tmp_path):
    river = River(tmp_path / "cloud.db")
    try:
        for index in range(25, CHANGE):
            river.monitor.run_once(river.send(index))
        river.restart()
        river.monitor.run_once(river.send(CHANGE))
        samples = [s["signals"]["flow[0]"]["samples"] for s in river.sequential()]
        with river.sessions() as session:
            checkpoints = session.scalars(select(CusumCheckpoint).where(CusumCheckpoint.scope == "device")).all()
    finally:
        river.close()
    assert samples == [1, 2, 3, 4]  # 1896, 1897, 1898, then 1899 after the restart
    # thinned to the first and the newest of the bucket
    assert sorted(c.step_end for c in checkpoints) == [T0 + 26, T0 + CHANGE + 1]


def test_a_backlog_older_than_the_lookback_raises_a_sequential_alert_marked_late(tmp_path):
    """1896-1898 arrive on time; the gauge is then offline for 1899-1910 and its backlog arrives 100 s
    after the last of them: every late reading is older than the lookback, the window rule cannot judge
    a handful of samples, and the CUSUM, fed the backlog in event order, alarms at the year it would have."""
    expected = alarm_year_in_memory()
    river = River(tmp_path / "cloud.db")
    try:
        for index in range(25, CHANGE):
            river.monitor.run_once(river.send(index))
        last = max(river.send(index) for index in range(CHANGE, CHANGE + 12))
        now = last + 100.0
        results = river.monitor.run_once(now)
        [alert] = river.alerts()
    finally:
        river.close()
    assert all(r.late_by is not None for r in results)  # no on-time window: the section rides a late result
    at = alert.details["signals"]["flow[0]"]["at"]
    assert at == T0 + int(np.flatnonzero(YEARS == expected)[0]) + 1  # the alarm's year, in event time
    assert alert.late_by == pytest.approx(now - at) and alert.late_by > LOOKBACK
    assert alert.message.startswith(f"late ({now - at:.0f} s after its data") and "CUSUM" in alert.message


def test_a_fleet_fed_out_of_order_ends_where_the_in_order_fleet_does(tmp_path):
    """Two gauges read alternate years. In one river both report on time; in the other gauge-2 is offline
    for six of its readings and delivers them late: the fleet's CUSUM rewinds to before the first late
    reading and feeds everything in event order, so its sums and its alarm match the on-time river's."""
    gauges = ("gauge-1", "gauge-2")

    def gauge(index: int) -> str:
        return gauges[index % 2]

    on_time, late = River(tmp_path / "on_time.db", gauges), River(tmp_path / "late.db", gauges)
    held: list[int] = []
    try:
        for index in range(25, 50):
            on_time.monitor.run_once(on_time.send(index, gauge(index)) + 0.5)
            if gauge(index) == "gauge-2" and 26 <= index < 38:
                held.append(index)  # offline: kept on the device
                late.monitor.run_once(T0 + index + 1.5)
                continue
            if held and index >= 38:
                for index_held in held:
                    late.send(index_held, "gauge-2")
                held.clear()
            late.monitor.run_once(late.send(index, gauge(index)) + 0.5)
        states = []
        for river in (on_time, late):
            with river.sessions() as session:
                states.append(session.scalars(select(CusumCheckpoint).where(CusumCheckpoint.scope == "fleet")
                                              .order_by(CusumCheckpoint.step_end.desc())).first())
        sections = [river.sequential("fleet") for river in (on_time, late)]
        alarms = [[s["signals"]["flow[0]"]["at"] for s in section if s["verdict"] == "drift"] for section in sections]
    finally:
        on_time.close()
        late.close()
    assert states[0].step_end == states[1].step_end == T0 + 50
    assert states[0].state["flow[0]"] == pytest.approx(states[1].state["flow[0]"])
    # the on-time river's first alarm, at the same step in event time (the late river may also have
    # alarmed on gauge-1's readings alone during the outage)
    assert alarms[0] and alarms[0][0] in alarms[1]
    assert any("replayed_from" in s for s in sections[1])  # the late river did rewind


def test_a_window_older_than_every_checkpoint_is_not_fed_and_says_so(tmp_path, caplog):
    """The bound: the sums rewind at most to the oldest checkpoint kept; a window before it is logged and
    left to the late period evaluation, and the run goes on with the others."""
    river = River(tmp_path / "cloud.db")
    try:
        for index in range(25, 29):
            river.monitor.run_once(river.send(index))
        before = river.sequential()[-1]["signals"]["flow[0]"]
        river.send(10)  # 1881, delivered after 1899: older than the first checkpoint (1896)
        with caplog.at_level("WARNING", logger="edgefleet.cloud.drift_cusum_store"):
            river.monitor.run_once(river.send(29))
        after = river.sequential()[-1]
    finally:
        river.close()
    assert any("older than the CUSUM's oldest checkpoint" in r.getMessage() for r in caplog.records)
    assert after["signals"]["flow[0]"]["samples"] == before["samples"] + 1  # 1900 only, not 1881
    assert after["replayed_from"] == T0 + 26  # rewound to the oldest checkpoint and fed again from there
