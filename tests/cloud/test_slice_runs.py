"""A device whose slice has no earlier accuracy yet is no longer looked up in full on every pass (cloud/
slice_runs.py): the monitor keeps the run of its first labelled windows and reads only its rows stored
since. 12 cameras send a window every pass with 17-20 labels of "night" (no accuracy for it in the bundle),
four of them from the fourth pass on, so each slice crosses min_samples over several passes; windows
arrive late (an older end, a new row id): before the lookback of the pass that reads them, in it, after a
baseline was found; one camera sends no "night" labels in its first windows, so its oldest BASELINE_ROWS
(6 here) hold too few, and its run reads nothing more until a late window sorts before them. Every record
and alert is the one of a monitor looking every device up in full on every pass (`remember_runs=False`),
on SQLite and on PostgreSQL, where two workers split the shards and one's shards are taken over mid-way
(the new holder has no runs: it looks them up in full once). The same scenario checks the monitor's
parsed windows kept from pass to pass (cloud/decoded_rows.py): each stored payload is parsed once, and the
records are those of a monitor parsing every payload on every pass."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
from sqlalchemy import select

from edgefleet.cloud import performance_monitor, slice_alerts, slice_runs
from edgefleet.cloud.db import Alert, make_engine, make_sessions
from edgefleet.cloud.drift import DriftThresholds
from edgefleet.cloud.drift_settings import MonitorSettings
from edgefleet.cloud.leases import shard_of
from edgefleet.cloud.performance_monitor import PerformanceMonitor
from edgefleet.core.slices import SliceCounts
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow
from tests.cloud.test_drift_fleet_partials import renew, split
from tests.cloud.test_performance_partials import PROFILE, labels, put
from tests.cloud.test_roles import database_url

MODEL, LOOKBACK, MIN_SAMPLES, DROP = "digits", 30.0, 50, 0.05
CAMERAS = [f"cam-{i:02d}" for i in range(12)]
LATE_STARTERS = {"cam-04", "cam-05", "cam-06", "cam-07"}  # their first window in the fourth pass
SPARSE = "cam-09"  # no "night" labels in its first 5 windows: its oldest 6 hold 18
PASSES = [100.0 + 10 * n for n in range(11)]
# (pass, camera, window end, labels, accuracy): stored before that pass, each a new row id
LATE = [(140.0, "cam-01", 60.0, 20, 0.3),  # before every lookback, before cam-01 crossed: in its baseline
        (140.0, "cam-02", 105.0, 20, 0.5),  # before this pass's lookback (110), after cam-02's first window
        (140.0, "cam-03", 125.0, 20, 0.5),  # in this pass's lookback: read with the pass, moved on later
        (170.0, "cam-00", 50.0, 20, 0.0),  # after cam-00's baseline was found: it stays
        (200.0, SPARSE, 40.0, 60, 0.5)]  # before the 6 oldest of SPARSE: its run is read in full again


def window(camera: str, seq: int, end: float, count: int, right: float, rng: np.random.Generator) -> TelemetryWindow:
    night = labels(rng, count, right) if count else None
    low = int(rng.binomial(30, 0.1))
    return TelemetryWindow("north", camera, seq, MODEL, 1, end - 5, end, 30, 30, 0, (0,) * (len(LATENCY_EDGES_MS) + 2),
                           confidence=(low, 30 - low, 0), labels=night,
                           slices=(SliceCounts("night", count, (), night),) if count else ())


def windows(step: int) -> list[TelemetryWindow]:
    """Each camera's window ending 2 s before pass `step`, from a generator seeded by camera and step: 17-20
    "night" labels, 0.9 right, 0.6 for the first four cameras from the eighth pass on (an alert)."""
    made, now = [], PASSES[step]
    for index, camera in enumerate(CAMERAS):
        if camera in LATE_STARTERS and step < 3:
            continue
        rng = np.random.default_rng(index * 100 + step)
        count = 0 if camera == SPARSE and step < 5 else 17 + index % 4
        made.append(window(camera, 1 + step, now - 2, count, 0.6 if index < 4 and step >= 7 else 0.9, rng))
    return made


def late(now: float) -> list[TelemetryWindow]:
    return [window(camera, 100 + n, end, count, right, np.random.default_rng(n))
            for n, (at, camera, end, count, right) in enumerate(LATE) if at == now]


def monitor(sessions, keeper=None, **options) -> PerformanceMonitor:  # noqa: ANN001
    return PerformanceMonitor(sessions, lambda name, version: PROFILE, drop=DROP, shards=keeper,
                              drift=MonitorSettings(DriftThresholds(min_samples=MIN_SAMPLES), LOOKBACK, 10.0),
                              **options)


def scenario(sessions, run_pass, monkeypatch) -> tuple[list[str], list, Counter, int]:  # noqa: ANN001
    """Every pass: its windows and late windows stored, then `run_pass(now)` (the records). Returns the
    device records, the device alerts, the full look-ups per device and the rows read since runs' tops."""
    lookups, late_read = Counter(), [0]
    full, since = slice_alerts.earlier_accuracies, slice_runs.late_rows

    def counted(session, wanted, **options):  # noqa: ANN001, ANN202
        lookups.update(key[1] for key in wanted if key[0] == "device")
        return full(session, wanted, **options)

    def counted_rows(*args):  # noqa: ANN002, ANN202
        found = since(*args)
        late_read[0] += sum(len(rows) for rows in found.values())
        return found

    monkeypatch.setattr(slice_alerts, "earlier_accuracies", counted)
    monkeypatch.setattr(slice_runs, "late_rows", counted_rows)
    monkeypatch.setattr(slice_alerts, "BASELINE_ROWS", 6)
    monkeypatch.setattr(slice_alerts, "SCOPES_PER_QUERY", 5)  # a pass's look-up in several queries
    records = []
    for step, now in enumerate(PASSES):
        put(sessions, windows(step), bundle=step == 0)
        put(sessions, late(now))
        records += [r for r in run_pass(now) if r["scope"] == "device"]
    monkeypatch.undo()
    with sessions() as session:
        alerts = sorted((a.opened_at, a.scope_id, a.kind, a.status, a.closed_at, a.message)
                        for a in session.scalars(select(Alert).where(Alert.scope == "device")))
    return sorted(json.dumps(r, sort_keys=True) for r in records), alerts, lookups, late_read[0]


def check_same(reference, runs) -> None:  # noqa: ANN001
    assert runs[0] == reference[0] and runs[1] == reference[1]
    earlier = [json.loads(r) for r in reference[0] if "its own earlier labels" in r]
    assert {r["scope_id"] for r in earlier} == set(CAMERAS)  # every camera found its baseline in the end
    first = {c: min(r["window_end"] for r in earlier if r["scope_id"] == c) for c in CAMERAS}
    assert first["cam-00"] == 148.0 and first["cam-04"] == 178.0  # crossed over several passes
    assert first[SPARSE] == 198.0  # after the late window made its oldest 6 hold enough
    assert any(kind == "performance_drop" and "its own earlier labels" in message
               for *_, kind, _, _, message in reference[1])
    # the full look-ups a pass made before: every pass of every device judged without a baseline
    assert sum(reference[2].values()) > 3 * len(CAMERAS) and reference[3] == 0


def parsed_rows(monkeypatch) -> list[int]:  # noqa: ANN001
    """The ids of the rows whose payload the accuracy monitor parses from now on (until monkeypatch.undo)."""
    ids, parse = [], performance_monitor._parse

    def counted(row):  # noqa: ANN001, ANN202
        ids.append(row.id)
        return parse(row)

    monkeypatch.setattr(performance_monitor, "_parse", counted)
    return ids


def test_runs_give_the_full_look_ups_records_and_read_only_new_rows_on_sqlite(tmp_path, monkeypatch):
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'runs.db'}"))
    full = monitor(reference, remember_runs=False)
    kept = monitor(sessions)

    def every_payload(now: float) -> list[dict]:  # the way of before: nothing parsed is kept
        full._windows.forget()
        return full.run_once(now)

    parsed_by_full = parsed_rows(monkeypatch)
    expected = scenario(reference, every_payload, monkeypatch)
    parsed = parsed_rows(monkeypatch)
    got = scenario(sessions, kept.run_once, monkeypatch)
    check_same(expected, got)
    # the same rows read (both databases got the same inserts: the same ids), each payload parsed once
    assert len(parsed) == len(set(parsed)) and set(parsed) == set(parsed_by_full)
    assert len(parsed_by_full) > 2 * len(parsed)  # a window is in about 3 passes' lookback
    # one full look-up per device; SPARSE again once its late window sorted before its oldest 6
    assert got[2] == Counter({c: 2 if c == SPARSE else 1 for c in CAMERAS})
    assert got[3] == 3  # the late windows of cam-01, cam-02 and SPARSE (cam-03's in its pass, cam-00's: no run)
    assert kept._runs.runs == {}  # every camera found its baseline: no run kept


def test_runs_go_on_across_two_workers_and_a_take_over_on_postgresql(tmp_path, postgres, monkeypatch):
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions, _url = database_url(postgres, "slice_runs")
    keepers = split(sessions, period=3.0)
    b_cameras = {c for c in CAMERAS if shard_of(c) in keepers[1].held_shards()}
    assert 0 < len(b_cameras) < len(CAMERAS) and b_cameras & LATE_STARTERS
    workers = [monitor(sessions, keeper) for keeper in keepers]
    taken_at = PASSES[6]

    def two_then_one(now: float) -> list[dict]:
        if now < taken_at:
            renew(keepers)
            return workers[1].run_once(now=now) + workers[0].run_once(now=now)
        if now == taken_at:  # b is gone: its leases expire, a takes its shards over
            time.sleep(3.2)
            keepers[0].refresh()
            keepers[0].refresh()
            assert len(keepers[0].held_shards()) == 64
        keepers[0].refresh()
        return workers[0].run_once(now=now)

    expected = scenario(reference, monitor(reference, remember_runs=False).run_once, monkeypatch)
    got = scenario(sessions, two_then_one, monkeypatch)
    check_same(expected, got)
    # a's own devices as on SQLite; b's, judged after the take-over, looked up in full once more by a (a new
    # holder knows neither their runs nor the baselines b found), then read on from there
    assert SPARSE not in b_cameras
    assert got[2] == Counter({c: 2 if c in b_cameras or c == SPARSE else 1 for c in CAMERAS})
    assert got[3] == 3


def test_a_look_up_in_several_queries_reads_each_scope_as_one_query_does(tmp_path, monkeypatch):
    """What earlier_accuracies hands on to the runs (`reads`) is each scope's own, however many queries
    the scopes are split in."""
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    for step, now in enumerate(PASSES):
        put(sessions, windows(step) + late(now), bundle=step == 0)
    wanted = {("device", c, "north", MODEL, 1): ({"night"}, 175.0, 10**6) for c in CAMERAS}  # none found

    def reads(per_query: int) -> dict:
        monkeypatch.setattr(slice_alerts, "SCOPES_PER_QUERY", per_query)
        found: dict = {}
        with sessions() as session:
            assert slice_alerts.earlier_accuracies(session, wanted, reads=found) == {}
        return {key[1]: (r.rows, r.last, {p: [(e, i) for e, i, _ in items] for p, items in r.slices.items()})
                for key, r in found.items()}

    whole, split_up = reads(10_000), reads(5)
    assert split_up == whole and set(whole) == set(CAMERAS)
    assert whole["cam-00"][0] == 9 and len(whole["cam-00"][2]["night"]) == 9  # 98..168 and the late one (50)
    assert whole["cam-04"][0] == 5 and whole[SPARSE][0] == 9
    assert [end for end, _ in whole[SPARSE][2]["night"]] == [40.0, 148.0, 158.0, 168.0]
