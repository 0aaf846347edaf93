"""Retention (cloud/retention.py) on a real SQLite file with windows of the real digits CNN: raw windows
roll up by hour, then by day, and drift evaluated on a roll-up gives exactly the verdicts (the whole
report) it gives on the raw windows of the same period; old evaluations go."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from edgefleet.cloud.db import DriftResult, TelemetryRecord
from edgefleet.cloud.drift import DriftThresholds, WindowCounts, evaluate, merge_windows
from edgefleet.cloud.ops_tables import TelemetryRollup
from edgefleet.cloud.retention import DAY, HOUR, Retention, RetentionSettings
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.telemetry import TelemetryWindow, parse_telemetry
from tests.cloud import test_drift_monitor as recorded
from tests.cloud.test_drift_monitor import T0

pytestmark = pytest.mark.slow  # trains the digits bundle once per session
sessions, traffic, feed = recorded.sessions, recorded.traffic, recorded.feed
START = T0 - T0 % DAY  # a UTC midnight: the hours below fall in one day


def verdicts(windows: list[TelemetryWindow], profile: dict) -> dict:
    return evaluate(merge_windows(WindowCounts.from_telemetry(w) for w in windows), profile, DriftThresholds())


def test_rollups_keep_the_drift_verdicts_of_the_raw_windows(sessions, traffic, feed):
    profile = traffic.profile
    raw: dict[int, list[TelemetryWindow]] = {0: [], 1: [], 2: []}
    for minute in range(0, 180, 9):  # 3 hours of windows; the second hour's images are brightened
        hour = minute // 60
        window = feed.send("d1", minute + int((START - T0) // 60), drift=hour == 1, requests=40)
        raw[hour].append(window)
    with sessions.begin() as session:
        session.add_all([DriftResult(scope="device", scope_id="d1", fleet="f1", model_name="digits-cnn",
                                     model_version=1, window_start=0, window_end=0, samples=0, verdict="ok",
                                     report={}, computed_at=stamp) for stamp in (START - 40 * DAY, START)])
    before = {hour: verdicts(windows, profile) for hour, windows in raw.items()}
    assert [before[h]["data_drift"]["verdict"] for h in range(3)] == ["ok", "drift", "ok"]

    retention = Retention(sessions, RetentionSettings(raw_days=1, hourly_days=2, evaluations_days=30))
    done = retention.run_once(START + 1.5 * DAY)
    assert done == {"raw_windows": 20, "hourly_rollups": 0, "evaluations": 1, "captures": 0}
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(TelemetryRecord)) == 0
        hourly = session.scalars(select(TelemetryRollup).order_by(TelemetryRollup.bucket_start)).all()
    assert [(r.granularity, r.bucket_start - START, r.windows) for r in hourly] == [
        ("hour", 0.0, 7), ("hour", HOUR, 7), ("hour", 2 * HOUR, 6)]
    for hour, row in enumerate(hourly):
        rolled = parse_telemetry(row.payload)  # a roll-up is a telemetry message: every reader reads it
        assert rolled.samples == row.samples == sum(w.samples for w in raw[hour])
        assert verdicts([rolled], profile) == before[hour]  # the same report, every statistic

    assert retention.run_once(START + 3 * DAY) == {"raw_windows": 0, "hourly_rollups": 3, "evaluations": 0,
                                                 "captures": 0}
    with sessions() as session:
        (daily,) = session.scalars(select(TelemetryRollup)).all()
    assert (daily.granularity, daily.bucket_start, daily.windows) == ("day", START, 20)
    everything = [w for hour in range(3) for w in raw[hour]]
    assert verdicts([parse_telemetry(daily.payload)], profile) == verdicts(everything, profile)


def test_settings_that_would_drop_data_early_are_refused():
    with pytest.raises(EdgefleetError, match="cannot be kept shorter than raw windows"):
        RetentionSettings(raw_days=10, hourly_days=5)
    with pytest.raises(EdgefleetError, match="must be positive"):
        RetentionSettings(evaluations_days=0)
