"""The drift monitor on a real SQLite file, fed with telemetry windows of the real digits model."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from edgefleet.cloud.db import Alert, Device, DriftResult, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.core.telemetry import TelemetryWindow
from edgefleet.edge_runtime import Predictor
from tests.cloud.test_drift import Traffic, brightness, sample

pytestmark = pytest.mark.slow  # trains the digits bundle once per session

MODEL = "digits-cnn"
T0 = 1_764_230_400.0
WINDOW = 60.0  # each device window covers a minute; the monitor looks back 5 minutes


@pytest.fixture(scope="module")
def traffic(digits_bundle):
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        yield Traffic(predictor)


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    made = make_sessions(engine)
    with made() as session:
        for device, fleet in (("d1", "f1"), ("d2", "f1"), ("d3", "f1"), ("e1", "f2")):
            session.add(Device(id=device, fleet=fleet, password_hash="$7$unused"))
        session.commit()
    yield made
    engine.dispose()


class Feed:
    """Stores telemetry windows the way the ingest does (one TelemetryRecord per window)."""

    def __init__(self, sessions, traffic: Traffic, splits) -> None:
        self.sessions, self.traffic, self.splits = sessions, traffic, splits
        self.rng = np.random.default_rng(0)
        self.seq: dict[str, int] = {}

    def send(self, device: str, minute: int, *, drift: bool = False, requests: int = 150, fleet: str = "f1",
             version: int | None = None, window: TelemetryWindow | None = None) -> TelemetryWindow:
        seq = self.seq[device] = self.seq.get(device, 0) + 1
        start = T0 + minute * WINDOW
        if window is None:
            x = sample(self.splits, requests, self.rng)
            x = brightness(x, self.rng) if drift else x
            window = self.traffic.telemetry(x, fleet=fleet, device=device, seq=seq, start=start,
                                            end=start + WINDOW, version=version)
        with self.sessions() as session:
            session.add(TelemetryRecord(
                device_id=device, fleet=fleet, seq=seq, model_name=window.model_name,
                model_version=window.model_version, window_start=window.start, window_end=window.end,
                requests=window.requests, samples=window.samples, errors=window.errors,
                payload=window.to_payload().decode(), received_at=window.end,
            ))
            session.commit()
        return window


@pytest.fixture
def feed(sessions, traffic, digits_splits):
    return Feed(sessions, traffic, digits_splits)


@pytest.fixture
def monitor(sessions, traffic):
    profile = traffic.profile
    version = traffic.predictor.bundle.version

    def profile_for(name: str, model_version: int):
        return profile if (name, model_version) == (MODEL, version) else None

    return DriftMonitor(sessions, profile_for, lookback_seconds=300.0, interval_seconds=0.05)


def end_of(minute: int) -> float:
    """The monitor's `now` just after the window of `minute` closed."""
    return T0 + (minute + 1) * WINDOW + 1.0


def alerts(sessions, **where) -> list[Alert]:
    with sessions() as session:
        query = select(Alert).filter_by(**where).order_by(Alert.id)
        return list(session.scalars(query).all())


def by_scope(results: list[DriftResult]) -> dict[tuple[str, str], DriftResult]:
    return {(r.scope, r.scope_id): r for r in results}


# ------------------------------------------------------------------------------------------------------------
def test_clean_traffic_writes_ok_results_and_no_alert(monitor, feed, sessions):
    for minute in range(20):
        feed.send("d1", minute)
        feed.send("d2", minute)
        results = monitor.run_once(end_of(minute))
        assert {(r.scope, r.scope_id): r.verdict for r in results} == {
            ("device", "d1"): "ok", ("device", "d2"): "ok", ("fleet", "f1"): "ok"}
    assert alerts(sessions) == []
    last = by_scope(results)
    # the lookback holds the last 5 windows of each device; the fleet adds both devices
    assert last[("device", "d1")].samples == 5 * 150 and last[("fleet", "f1")].samples == 2 * 5 * 150
    assert last[("fleet", "f1")].report["windows"] == 10
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(DriftResult)) == 20 * 3


def unique_open(sessions) -> set[tuple[str, str, str]]:
    """The open alerts as (scope, scope_id, kind), checking that none is open twice."""
    opened = [(a.scope, a.scope_id, a.kind) for a in alerts(sessions, status="open")]
    assert len(opened) == len(set(opened)), opened
    return set(opened)


def test_one_alert_per_drifting_scope_closed_after_recovery(monitor, feed, sessions):
    for minute in range(3):  # a clean start
        feed.send("d1", minute)
        assert by_scope(monitor.run_once(end_of(minute)))[("device", "d1")].verdict == "ok"
    for minute in range(3, 8):  # the camera's exposure goes up
        feed.send("d1", minute, drift=True)
        results = by_scope(monitor.run_once(end_of(minute)))
        assert results[("device", "d1")].verdict == "drift"
    # one alert per scope and kind despite 5 drifting runs (unique_open checks it). Brightening also
    # makes the model less sure of itself: its confidence histogram drifts by PSI 0.16-0.25 against the
    # floor of 0.15, so a prediction_drift alert may open too; only for the drifting scopes, and once.
    opened = unique_open(sessions)
    assert {(scope, scope_id) for scope, scope_id, kind in opened if kind == "data_drift"} == {
        ("device", "d1"), ("fleet", "f1")}
    assert {(scope, scope_id) for scope, scope_id, _ in opened} == {("device", "d1"), ("fleet", "f1")}
    [data] = alerts(sessions, status="open", scope="device", kind="data_drift")
    assert data.opened_at == end_of(3)  # on the first drifting window
    assert "pixels.c0.mean PSI" in data.message and "pixels.c0.mean" in data.details["drifting"]
    assert data.details["drift_result_id"] is not None

    # fixed: clean windows again; the drifted ones leave the 5-minute lookback one by one
    verdicts = []
    for minute in range(8, 20):
        feed.send("d1", minute)
        report = by_scope(monitor.run_once(end_of(minute)))[("device", "d1")].report
        verdicts.append(report["data_drift"]["verdict"])
        if verdicts.count("ok") == 2:
            assert ("device", "d1", "data_drift") in unique_open(sessions)  # ok on only two runs so far
    first_ok = 8 + verdicts.index("ok")
    assert all(v == "ok" for v in verdicts[first_ok - 8:])
    closed = alerts(sessions, status="closed", kind="data_drift")
    assert {a.scope_id for a in closed} == {"d1", "f1"}
    assert all(a.closed_at == end_of(first_ok + 2) for a in closed)  # the third consecutive ok run
    assert unique_open(sessions) == set()
    # drifting again later opens a new alert
    for minute in range(20, 22):
        feed.send("d1", minute, drift=True)
        monitor.run_once(end_of(minute))
    assert len(alerts(sessions, status="open", scope="device", kind="data_drift")) == 1
    assert len(alerts(sessions, scope="device", kind="data_drift")) == 2


def test_fleet_merges_devices_one_drifting(monitor, feed, sessions):
    for minute in range(4):
        feed.send("d1", minute, drift=True)
        feed.send("d2", minute)
        results = by_scope(monitor.run_once(end_of(minute)))
    assert results[("device", "d1")].verdict == "drift"
    assert results[("device", "d2")].verdict == "ok"
    fleet = results[("fleet", "f1")]
    assert fleet.samples == results[("device", "d1")].samples + results[("device", "d2")].samples
    # half the fleet brightened by +0.15 moves the merged pixel-mean histogram far beyond the threshold:
    # the fleet's data drifts too (mean-tap PSI about 1.1, measured over seeds 1.06-1.12, against 4-5 for
    # the drifting device alone and a threshold of 0.15)
    assert fleet.report["data_drift"]["verdict"] == "drift"
    fleet_psi = fleet.report["data_drift"]["signals"]["pixels.c0.mean"]["psi"]
    device_psi = results[("device", "d1")].report["data_drift"]["signals"]["pixels.c0.mean"]["psi"]
    assert 0.5 < fleet_psi < device_psi
    opened = unique_open(sessions)
    assert {("device", "d1", "data_drift"), ("fleet", "f1", "data_drift")} <= opened
    assert not any(scope_id == "d2" for _, scope_id, _ in opened)


def test_one_drifting_device_among_many_does_not_move_the_fleet(monitor, feed, sessions):
    # 1 bright device of 150 requests a minute and 2 clean ones of 1500: the fleet is 95% clean, its
    # mean-tap PSI about 0.045 (measured), under the floor of 0.15: the device alerts, the fleet does not
    for minute in range(4):
        feed.send("d1", minute, drift=True)
        feed.send("d2", minute, requests=1500)
        feed.send("d3", minute, requests=1500)
        results = by_scope(monitor.run_once(end_of(minute)))
    assert results[("device", "d1")].verdict == "drift"
    assert results[("fleet", "f1")].verdict == "ok"
    assert {scope for scope, _, _ in unique_open(sessions)} == {"device"}
    assert {scope_id for _, scope_id, _ in unique_open(sessions)} == {"d1"}


def test_fleets_are_separate(monitor, feed, sessions):
    feed.send("d1", 0, drift=True)
    feed.send("e1", 0, fleet="f2")
    results = by_scope(monitor.run_once(end_of(0)))
    assert results[("fleet", "f1")].verdict == "drift" and results[("fleet", "f2")].verdict == "ok"


def test_counts_of_another_shape_are_refused_and_logged(monitor, feed, sessions, caplog):
    good = feed.send("d1", 0)
    # d2 claims the same model version but bins on two more edges: refused, never merged
    rows = tuple(row + (0, 0) for row in good.features[0].counts)
    width = len(rows[0])
    odd = TelemetryWindow(**{**good.__dict__, "device": "d2", "seq": 1,
                             "features": (type(good.features[0])("pixels", rows),)})
    feed.send("d2", 0, window=odd)
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.drift_monitor"):
        results = by_scope(monitor.run_once(end_of(0)))
        monitor.run_once(end_of(0) + 10)
    assert set(results) == {("device", "d1"), ("fleet", "f1")}
    assert results[("fleet", "f1")].samples == good.samples  # d2's window was not merged
    refusals = [r.getMessage() for r in caplog.records if "window refused" in r.getMessage()]
    assert len(refusals) == 1 and "device d2" in refusals[0] and f"(2, {width})" in refusals[0]


def test_model_without_profile_is_skipped_and_logged_once(monitor, feed, sessions, caplog):
    feed.send("d1", 0)
    feed.send("d2", 0, version=99)  # a version the registry does not know
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.drift_monitor"):
        for tick in range(3):
            results = monitor.run_once(end_of(0) + tick)
    assert {(r.scope, r.scope_id, r.model_version) for r in results} == {("device", "d1", 1), ("fleet", "f1", 1)}
    missing = [r for r in caplog.records if "no reference profile for digits-cnn v99" in r.getMessage()]
    assert len(missing) == 1


def test_unparseable_payload_is_refused_not_fatal(monitor, feed, sessions):
    feed.send("d1", 0)
    with sessions() as session:
        session.add(TelemetryRecord(device_id="d2", fleet="f1", seq=1, model_name=MODEL, model_version=1,
                                    window_start=T0, window_end=T0 + WINDOW, requests=1, samples=1, errors=0,
                                    payload="{not json"))
        session.commit()
    results = by_scope(monitor.run_once(end_of(0)))
    assert set(results) == {("device", "d1"), ("fleet", "f1")}


def test_few_samples_give_insufficient_and_no_alert(monitor, feed, sessions):
    feed.send("d1", 0, drift=True, requests=40)
    [device, fleet] = monitor.run_once(end_of(0))
    assert device.verdict == fleet.verdict == "insufficient"
    assert alerts(sessions, kind="data_drift") == alerts(sessions, kind="prediction_drift") == []
    # the sequential detector is made for few samples: 40 brightened ones (3.7 sd) are enough for it
    assert {(a.scope, a.kind) for a in alerts(sessions)} == {("device", "sequential_drift"),
                                                             ("fleet", "sequential_drift")}


def test_lookback_window_bounds(monitor, feed):
    feed.send("d1", 0)  # window ends at T0 + 60
    assert monitor.run_once(T0 + 59.0) == []  # not ended yet
    assert len(monitor.run_once(T0 + 60.0)) == 2  # (now - lookback, now] includes its end
    assert monitor.run_once(T0 + 60.0 + 300.0) == []  # out of the lookback


def test_background_thread_runs_survives_errors_and_stops(sessions, traffic, feed):
    feed.send("d1", 0)
    calls = {"n": 0}

    def flaky_sessions():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database went away")
        return sessions()

    monitor = DriftMonitor(flaky_sessions, lambda name, version: traffic.profile, interval_seconds=0.02,
                           clock=lambda: end_of(0))
    assert monitor.name == "drift-monitor"
    monitor.start()
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with sessions() as session:
                if session.scalar(select(func.count()).select_from(DriftResult)) >= 4:
                    break
            time.sleep(0.02)
        else:
            pytest.fail("the monitor wrote no results after its first run failed")
    finally:
        monitor.stop()
    assert not any(t.name == "drift-monitor" and t.is_alive() for t in threading.enumerate())
    with sessions() as session:
        written = session.scalar(select(func.count()).select_from(DriftResult))
    time.sleep(0.1)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(DriftResult)) == written  # stopped means stopped


def test_a_broken_profile_source_skips_only_its_model(sessions, traffic, feed, caplog):
    feed.send("d1", 0)
    feed.send("d2", 0, version=2)

    def profile_for(name: str, version: int):
        if version == 2:
            raise OSError("bundle file missing from the artifact store")
        return traffic.profile

    monitor = DriftMonitor(sessions, profile_for)
    with caplog.at_level(logging.ERROR, logger="edgefleet.cloud.drift_monitor"):
        results = monitor.run_once(end_of(0))
    assert {(r.scope, r.scope_id, r.model_version) for r in results} == {("device", "d1", 1), ("fleet", "f1", 1)}
    assert any("digits-cnn v2 failed" in r.getMessage() for r in caplog.records)
