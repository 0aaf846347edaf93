"""The drift monitor's read of stored telemetry: rows without payloads, each payload parsed once and its
window kept while its row is in a lookback. What it merges must be what parsing every stored payload
again gives (the read before the cache), on real digits telemetry in a real SQLite file."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from sqlalchemy import func, select

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.drift import WindowCounts, merge_windows
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.core.telemetry import parse_telemetry
from tests.cloud.test_drift_monitor import end_of, feed, sessions, traffic  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # trains the digits bundle once per session

LOOKBACK = 300.0


class Recording(DriftMonitor):
    """Records the merged counts of each on-time scope it evaluates, and how many payloads it parsed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.merged: dict[tuple[str, str], WindowCounts] = {}
        self.parsed = 0
        decode = self._windows.decode

        def counted(row, profile):  # noqa: ANN001, ANN202 - WindowReader.decode's signature
            self.parsed += 1
            return decode(row, profile)

        self._windows.decode = counted

    def _evaluate_all(self, items, now, resolver):
        self.merged = {(scope.scope, scope.scope_id): merge_windows(w.counts for w in windows)
                       for scope, (_, windows) in items if scope.period_end is None}
        return super()._evaluate_all(items, now, resolver)


@pytest.fixture
def monitor(sessions, traffic):  # noqa: F811 - the imported fixtures
    profile, version = traffic.profile, traffic.predictor.bundle.version
    return Recording(sessions, lambda name, v: profile if v == version else None, lookback_seconds=LOOKBACK,
                     interval_seconds=0.05)


def parsed_again(sessions, now: float) -> dict[tuple[str, str], WindowCounts]:  # noqa: F811
    """The read before the cache: every row of the lookback loaded whole, its payload parsed, merged."""
    with sessions() as session:
        rows = session.scalars(select(TelemetryRecord).where(TelemetryRecord.window_end > now - LOOKBACK,
                                                             TelemetryRecord.window_end <= now)
                               .order_by(TelemetryRecord.id)).all()
    scopes = defaultdict(list)
    for row in rows:
        counts = WindowCounts.from_telemetry(parse_telemetry(row.payload))
        scopes[("device", row.device_id)].append(counts)
        scopes[("fleet", row.fleet)].append(counts)
    return {scope: merge_windows(windows) for scope, windows in scopes.items()}


def assert_same(a: WindowCounts, b: WindowCounts) -> None:
    assert a.samples == b.samples
    assert a.features.keys() == b.features.keys()
    for name in a.features:
        np.testing.assert_array_equal(a.features[name], b.features[name])
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    assert a.outputs.keys() == b.outputs.keys()


def test_cached_windows_merge_to_what_parsing_every_payload_gives(monitor, feed, sessions):  # noqa: F811
    for minute in range(9):
        for device in ("d1", "d2", "d3"):
            if (minute + len(device) + int(device[1])) % 4:  # gaps: scopes with 1 to 5 windows
                feed.send(device, minute, drift=device == "d3" and minute >= 4)
        before = monitor.parsed
        results = monitor.run_once(end_of(minute))
        reference = parsed_again(sessions, end_of(minute))
        assert set(monitor.merged) == set(reference) == {(r.scope, r.scope_id) for r in results}
        for scope, counts in reference.items():
            assert_same(monitor.merged[scope], counts)
        with sessions() as session:  # each payload parsed once: only this minute's new rows
            new = session.scalar(select(func.count()).where(TelemetryRecord.window_end == end_of(minute) - 1.0))
        assert monitor.parsed - before == new
    assert {r.scope_id: r.verdict for r in results if r.scope == "device"}["d3"] == "drift"


def test_a_new_row_with_the_id_of_a_deleted_one_is_parsed_not_taken_from_memory(monitor, feed, sessions):  # noqa: F811
    feed.send("d1", 0)
    feed.send("d2", 0)
    monitor.run_once(end_of(0))
    with sessions() as session:  # SQLite gives a new row the id of a deleted newest one
        newest = session.scalar(select(TelemetryRecord).order_by(TelemetryRecord.id.desc()).limit(1))
        newest_id = newest.id
        session.delete(newest)
        session.commit()
    feed.send("d2", 0, drift=True)
    with sessions() as session:
        assert session.scalar(select(func.max(TelemetryRecord.id))) == newest_id
    results = monitor.run_once(end_of(0) + 1)
    reference = parsed_again(sessions, end_of(0) + 1)
    for scope, counts in reference.items():
        assert_same(monitor.merged[scope], counts)
    assert {r.scope_id: r.samples for r in results} == {"d1": 150, "d2": 150, "f1": 300}


def test_a_refused_payload_stays_refused_on_every_run(monitor, feed, sessions):  # noqa: F811
    feed.send("d1", 0)
    with sessions() as session:
        session.add(TelemetryRecord(device_id="d2", fleet="f1", seq=1, model_name="digits-cnn", model_version=1,
                                    window_start=end_of(0) - 61, window_end=end_of(0) - 1, requests=1,
                                    samples=1, errors=0, payload="{not json"))
        session.commit()
    for tick in range(3):
        results = monitor.run_once(end_of(0) + tick)
        assert {(r.scope, r.scope_id) for r in results} == {("device", "d1"), ("fleet", "f1")}
