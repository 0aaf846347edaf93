"""The monitor's batched data path (cloud/drift_cusum_batch.py, one read of the open alerts per run) gives
the results, alerts and CUSUM checkpoints that feeding and querying one scope at a time gives: the same
gauges (the Nile's annual flow, statsmodels.datasets.nile, a level drop after 1898) go through a
reference monitor that runs the per-scope path of before and through the monitor, on real SQLite and
real PostgreSQL, with a gauge that goes quiet for longer than the lookback, a backlog delivered after it
(late windows that rewind the sums) and a restart in between."""

from __future__ import annotations

from sqlalchemy import select

from edgefleet.cloud.db import Alert, Device, DriftResult, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.drift_cusum_store import CusumCheckpoint
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.drift_sequential import SEQUENTIAL
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from tests.cloud.test_drift_sequential import FLOW, profile_of, row

T0 = 1_000.0
LOOKBACK = 15.0
PROFILE = profile_of(FLOW[:25])
GAUGES = [f"g{n:02d}" for n in range(12)]
QUIET, BACKLOG = "g03", "g05"  # silent for 18 years (> the lookback); readings of 1940-1958 held back


class QueriedAlerts(dict):
    """The alert look-up of before: one query per scope and kind, seeing what the session added."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session

    def get(self, key, default=None):
        scope, scope_id, kind, name, version = key
        return self.session.scalars(select(Alert).where(
            Alert.status == "open", Alert.scope == scope, Alert.scope_id == scope_id, Alert.kind == kind,
            Alert.model_name == name, Alert.model_version == version)).first()

    def __setitem__(self, key, value) -> None:
        pass

    def __delitem__(self, key) -> None:
        pass


class OneScopeAtATime(DriftMonitor):
    """The reference: every scope's CUSUMs fed by CusumStore.feed alone, alerts looked up one by one."""

    @staticmethod
    def _open_alerts(session, results):
        return QueriedAlerts(session)

    def _feed_sequential(self, session, evaluated, scopes, now, top, resolver, summed=frozenset()):
        target = {}
        for scope, result in evaluated:
            base = scope.__class__(scope.scope, scope.scope_id, scope.fleet, scope.model_name, scope.model_version)
            if base not in target or target[base].late_by is not None:
                target[base] = result
        profiles = {(s.scope, s.scope_id): profile for s, (profile, _) in scopes.items()}
        for base, result in target.items():
            settings = self._settings(resolver, base.fleet, base.model_name)
            section = self._cusums.feed(session, base, profiles[(base.scope, base.scope_id)], top=top, now=now,
                                        lookback=settings.lookback_seconds, slot_seconds=settings.interval_seconds)
            if section is not None:
                result.report = {**result.report, SEQUENTIAL: section}


def drive_gauges(sessions, monitors) -> None:
    """The gauges' windows, pass by pass: each pass run by every monitor `monitors()` makes, in order (made
    again at index 50, a restart: only the database is kept); a quiet gauge, a backlog sent late."""
    with sessions.begin() as session:
        session.add_all(Device(id=g, fleet="river", password_hash="-") for g in GAUGES)
    seq = dict.fromkeys(GAUGES, 0)

    def send(gauge: str, index: int) -> None:
        seq[gauge] += 1
        reading = FLOW[min(index + GAUGES.index(gauge) % 4, len(FLOW) - 1)]
        w = TelemetryWindow("river", gauge, seq[gauge], "nile-flow", 1, T0 + index, T0 + index + 1, 1, 1, 0,
                            (0,) * (len(LATENCY_EDGES_MS) + 2),
                            (FeatureCounts("flow", (tuple(int(v) for v in row([reading], PROFILE)),)),))
        with sessions.begin() as session:
            session.add(TelemetryRecord(device_id=gauge, fleet="river", seq=seq[gauge], model_name="nile-flow",
                                        model_version=1, window_start=w.start, window_end=w.end, requests=1,
                                        samples=1, errors=0, payload=w.to_payload().decode()))

    drift = monitors()
    for index in range(25, 70):
        if index == 50:
            drift = monitors()
        for gauge in GAUGES:
            if not (gauge == QUIET and 35 <= index < 53) and not (gauge == BACKLOG and 40 <= index < 59):
                send(gauge, index)
        if index == 66:
            for late in range(40, 59):
                send(BACKLOG, late)
        for monitor in drift:
            if monitor._shards is not None:
                monitor._shards.refresh()  # as its thread does every period / 3
            monitor.run_once(T0 + index + 1.5)


def run(url: str, monitor_class: type[DriftMonitor]) -> tuple[list, list, list, int]:
    """The scenario; returns (results, alerts, checkpoints, CUSUM feeds that went the one-scope way)."""
    engine = make_engine(url)
    sessions = make_sessions(engine)
    feeds = 0

    def monitor() -> DriftMonitor:
        nonlocal feeds
        made = monitor_class(sessions, lambda name, version: PROFILE, lookback_seconds=LOOKBACK,
                             interval_seconds=1.0)
        feed = made._cusums.feed

        def counted(*args, **kwargs):
            nonlocal feeds
            feeds += 1
            return feed(*args, **kwargs)

        made._cusums.feed = counted
        return made

    drive_gauges(sessions, lambda: [monitor()])
    with sessions() as session:
        results = [(r.id, r.scope, r.scope_id, r.verdict, r.window_start, r.window_end, r.samples, r.late_by, r.report)
                   for r in session.scalars(select(DriftResult).order_by(DriftResult.id))]
        alerts = [(a.scope, a.scope_id, a.kind, a.status, a.opened_at, a.closed_at, a.late_by, a.message, a.details)
                  for a in session.scalars(select(Alert).order_by(Alert.id))]
        checkpoints = sorted((c.scope, c.scope_id, c.step_end, c.row_id, c.window_samples, c.state)
                             for c in session.scalars(select(CusumCheckpoint)))
    engine.dispose()
    return results, alerts, checkpoints, feeds


def check_same(reference_url: str, batched_url: str) -> None:
    reference = run(reference_url, OneScopeAtATime)
    batched = run(batched_url, DriftMonitor)
    assert batched[0] == reference[0]  # every result, its report and CUSUM section included
    assert batched[1] == reference[1]
    assert batched[2] == reference[2]
    assert {(scope, kind) for scope, _, kind, *_ in batched[1]} >= {("device", SEQUENTIAL), ("fleet", SEQUENTIAL)}
    rewound = {scope_id for _, _, scope_id, *_, report in batched[0] if "replayed_from" in report.get(SEQUENTIAL, {})}
    assert BACKLOG in rewound, rewound  # the backlog's late windows rewound its sums
    assert 0 < batched[3] < reference[3] / 10, (batched[3], reference[3])  # mostly batched; rewinds one by one


def test_the_batched_pass_gives_the_same_results_alerts_and_sums_on_sqlite(tmp_path):
    check_same(f"sqlite:///{tmp_path / 'reference.db'}", f"sqlite:///{tmp_path / 'batched.db'}")


def test_the_batched_pass_gives_the_same_results_alerts_and_sums_on_postgresql(tmp_path, postgres):
    check_same(f"sqlite:///{tmp_path / 'reference.db'}", postgres.url)
