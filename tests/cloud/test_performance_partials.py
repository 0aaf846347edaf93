"""The accuracy monitor's fleet scopes summed from the device shards' partial totals (cloud/performance_
partials.py) give the records and alerts of one worker reading every row: 40 cameras in two fleets whose
confidence falls and whose "night" slice's labels go wrong in a second period and recover in a third, one
camera reporting a confidence histogram of another length (its fleet's estimate is then not judged, either
way). The bundle has no accuracy for "night", nor for "dusk", a sparse slice of every third camera from the
second period on that goes wrong in the fourth: both are judged against their own earlier labels, which
the fleet holder finds from the shards' runs (cloud/performance_baselines.py) without reading a row,
"dusk"'s run crossing min_samples in the middle of a window end shared by cameras of many shards. A monitor
forced through the partials on SQLite and two workers splitting the shards on PostgreSQL write the alerts
of a lone monitor reading every row. A fleet whose shard worker is gone gets no result
until the shard is passed again or taken over: never a result of some shards only."""

from __future__ import annotations

import itertools
import json
import logging
import time

import numpy as np
from sqlalchemy import func, select

from edgefleet.cloud import slice_alerts
from edgefleet.cloud.db import Alert, BundleRecord, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.drift import DriftThresholds
from edgefleet.cloud.drift_settings import MonitorSettings
from edgefleet.cloud.leases import FLEETS, Leases, ShardLeases, shard_of
from edgefleet.cloud.performance_baselines import SliceBaseline
from edgefleet.cloud.performance_monitor import PerformanceMonitor
from edgefleet.cloud.performance_partials import PerformancePartial, PerformanceShardPass
from edgefleet.core.labels import LabelCounts, merge_labels
from edgefleet.core.slices import SliceCounts
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow
from tests.cloud.test_drift_fleet_partials import renew, split
from tests.cloud.test_roles import database_url

MODEL, LOOKBACK, MIN_SAMPLES, DROP = "digits", 50.0, 50, 0.05
CAMERAS = [f"cam-{i:02d}" for i in range(40)]  # north: the first 24, south: the rest
PROFILE = {"confidence": {"edges": [0.9], "calibration": {"accuracy": [0.5, 1.0], "expected_accuracy": 0.95,
                                                          "measured_accuracy": 0.95, "on": "eval"}}}
MANIFEST = {"name": MODEL, "version": 1, "metrics": {"eval": {"per_slice": {"day": {"accuracy": 0.95}}}}}
PERIODS = (100.0, 200.0, 300.0, 400.0)  # clean, north degraded, recovered, clean again
DUSK = {1: 0.9, 2: 0.9, 3: 0.7}  # the accuracy of "dusk" by period: from the second on, wrong in the fourth


def fleet_of(camera: str) -> str:
    return "north" if int(camera[4:]) < 24 else "south"


def dusk(camera: str) -> bool:
    return int(camera[4:]) % 3 == 0


def labels(rng: np.random.Generator, n: int, right: float) -> LabelCounts:
    true = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < right, true, (true + 1) % 4)
    cells: dict[tuple[int, int], int] = {}
    for t, p in zip(true.tolist(), predicted.tolist(), strict=True):
        cells[(t, p)] = cells.get((t, p), 0) + 1
    return LabelCounts(n, confusion=tuple((t, p, c) for (t, p), c in sorted(cells.items())))


def windows(period: int) -> list[TelemetryWindow]:
    """Two windows per camera ending before PERIODS[period], from a generator seeded by camera and period."""
    end, made, seq = PERIODS[period], [], itertools.count(period * 10)
    for index, camera in enumerate(CAMERAS):
        rng = np.random.default_rng(index * 100 + period)
        degraded = period == 1 and fleet_of(camera) == "north"
        for offset in (10.0, 5.0):
            low = int(rng.binomial(30, 0.6 if degraded else 0.1))
            confidence = (low, 30 - low, 0)
            if camera == "cam-39" and period == 1 and offset == 5.0:
                confidence = (low, 30 - low, 0, 0)  # another length: neither it nor its fleet is estimated
            slices = (SliceCounts("day", 15, (), labels(rng, 30, 0.96)),
                      SliceCounts("night", 15, (), labels(rng, 30, 0.6 if degraded else 0.95)))
            if period in DUSK and dusk(camera):
                slices += (SliceCounts("dusk", 5, (), labels(rng, 5, DUSK[period])),)
            made.append(TelemetryWindow(fleet_of(camera), camera, next(seq), MODEL, 1, end - offset - 5,
                                        end - offset, 30, 30, 0, (0,) * (len(LATENCY_EDGES_MS) + 2),
                                        confidence=confidence, labels=merge_labels([s.labels for s in slices]),
                                        slices=slices))
    return made


def put(sessions, made: list[TelemetryWindow], bundle: bool = False) -> None:
    with sessions.begin() as session:
        if bundle:
            session.add(BundleRecord(name=MODEL, version=1, path="unused.tar.gz", sha256="0" * 64, size=0,
                                     manifest=MANIFEST))
        session.add_all([TelemetryRecord(device_id=w.device, fleet=w.fleet, seq=w.seq, model_name=w.model_name,
                                         model_version=w.model_version, window_start=w.start, window_end=w.end,
                                         requests=w.requests, samples=w.samples, errors=w.errors,
                                         payload=w.to_payload().decode()) for w in made])


def store(sessions, period: int) -> None:
    put(sessions, windows(period), bundle=period == 0)


def monitor(sessions, shards: ShardLeases | None = None, **options) -> PerformanceMonitor:
    return PerformanceMonitor(sessions, lambda name, version: PROFILE, drop=DROP, shards=shards,
                              drift=MonitorSettings(DriftThresholds(min_samples=MIN_SAMPLES), LOOKBACK, 1.0), **options)


def scenario(sessions, monitors) -> tuple[list, list, int, dict]:
    """Every period stored, then judged by each monitor `monitors` made, in order; returns the fleet and
    device records (without `shard_passes`), the alerts (without ids) in an order that does not depend on
    which worker wrote them, how many fleet records were summed from partials, and how many times a
    slice's earlier accuracy was looked for in the rows (`slice_alerts.earlier_accuracies`, up to
    BASELINE_ROWS of the scope's rows each), by scope: {"device": n, "fleet": n}."""
    workers, records = monitors(), []
    reads = {"device": 0, "fleet": 0}
    read_rows = slice_alerts.earlier_accuracies

    def counted(session, wanted, **options):
        for key in wanted:
            reads[key[0]] += 1
        return read_rows(session, wanted, **options)

    slice_alerts.earlier_accuracies = counted
    try:
        for period, end in enumerate(PERIODS):
            store(sessions, period)
            for worker in workers:
                records += worker.run_once(now=end)
    finally:
        slice_alerts.earlier_accuracies = read_rows
    summed = sum(1 for r in records if "shard_passes" in r)
    records = sorted(json.dumps({k: v for k, v in r.items() if k != "shard_passes"}, sort_keys=True)
                     for r in records)
    with sessions() as session:
        alerts = sorted((a.opened_at, a.scope, a.scope_id, a.kind, a.status, a.closed_at, a.message,
                         json.dumps(a.details, sort_keys=True)) for a in session.scalars(select(Alert)))
    return records, alerts, summed, reads


def check(reference, partials) -> None:
    assert partials[0] == reference[0]  # every record, fleets and devices, estimates and slices
    assert partials[1] == reference[1]
    fleets = sum(1 for r in reference[0] if '"scope": "fleet"' in r)
    assert partials[2] == fleets > 8  # every fleet record was summed from the partials
    kinds = {(scope, kind, status) for _, scope, _, kind, status, *_ in reference[1]}
    assert kinds >= {("fleet", "estimated_accuracy", "closed"), ("fleet", "performance_drop", "closed")}
    south = [r for r in reference[0] if '"scope_id": "south"' in r and "estimated_accuracy" in r]
    assert len(south) == len(PERIODS) - 1  # the period with histograms of two lengths: no fleet estimate
    # "night" and "dusk" judged against their own earlier labels on both fleets, "dusk" going wrong in the last
    # period; the fleet holder found them without reading a fleet's rows, the devices' from their own rows
    earlier = {(r["scope_id"], r["slice"]) for r in map(json.loads, reference[0])
               if r["scope"] == "fleet" and r.get("reference", "").startswith("its own earlier labels, ")}
    assert earlier == {(fleet, part) for fleet in ("north", "south") for part in ("night", "dusk")}
    assert any(kind == "performance_drop" and scope == "fleet" and "slice dusk" in message and "its own" in message
               for _, scope, _, kind, _, _, message, _ in reference[1])
    assert reference[3]["fleet"] > 0 and partials[3]["fleet"] == 0
    assert partials[3]["device"] == reference[3]["device"] > 0


def test_fleets_summed_from_the_shard_partials_give_the_one_worker_records_on_sqlite(tmp_path):
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'partials.db'}"))

    def through_partials():
        keeper = ShardLeases(Leases(sessions, "solo"), "monitor", singletons=(FLEETS,))  # SQLite: every shard
        return [monitor(sessions, keeper, fleet_partials=True)]

    check(scenario(reference, lambda: [monitor(reference)]), scenario(sessions, through_partials))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(PerformanceShardPass)) == 64
        assert session.scalar(select(func.count()).select_from(PerformancePartial)) == len(
            {(fleet_of(c), shard_of(c)) for c in CAMERAS})
        runs = {(r.fleet, r.shard, r.slice): r for r in session.scalars(select(SliceBaseline))}
    # one run per fleet, shard and slice without a per-slice accuracy in the bundle ("day" has one)
    assert set(runs) == {(fleet_of(c), shard_of(c), part) for c in CAMERAS
                         for part in ("night", "dusk") if part == "night" or dusk(c)}
    assert all(r.labels >= MIN_SAMPLES or r.slice == "dusk" for r in runs.values())  # dusk: 2 cameras a shard or less


def test_two_workers_summing_shard_partials_give_the_one_worker_records_on_postgresql(tmp_path, postgres):
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions, _url = database_url(postgres, "performance_partials")
    keepers = split(sessions)
    assert {shard_of(c) in keepers[0].held_shards() for c in CAMERAS} == {True, False}  # cameras on both

    def two_workers():  # the shard worker first, so the fleet holder finds its partials of this pass
        return [monitor(sessions, keeper) for keeper in reversed(keepers)]

    check(scenario(reference, lambda: [monitor(reference)]), scenario(sessions, two_workers))


def fleet_records(records: list[dict]) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r.items() if k != "shard_passes"}, sort_keys=True)
                  for r in records if r["scope"] == "fleet")


def test_a_fleet_waits_for_a_missing_or_stale_shard_and_is_whole_after_the_take_over(tmp_path, postgres,
                                                                                       caplog):
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions, _url = database_url(postgres, "performance_partials_stale")
    store(reference, 0)
    store(sessions, 0)
    now = PERIODS[0]
    expected = fleet_records(monitor(reference).run_once(now=now))
    assert len(expected) == 2 * 3  # north and south: the estimate and two slices each
    keepers = split(sessions, period=3.0)
    a, b = (monitor(sessions, keeper) for keeper in keepers)

    # b has not passed yet: a judges its own devices, and no fleet rather than half of one
    renew(keepers)
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.performance_monitor"):
        first = a.run_once(now=now)
    assert fleet_records(first) == [] and any(r["scope"] == "device" for r in first)
    assert "fleet scopes not evaluated: no pass of device shard(s)" in caplog.text and "(32 of 64)" in caplog.text
    # b passes (twice: a retried pass writes the same rows), then a sums both halves
    renew(keepers)
    b.run_once(now=now)
    b.run_once(now=now)
    renew(keepers)
    summed = a.run_once(now=now)
    assert fleet_records(summed) == expected
    assert all(r["shard_passes"] == [now, now] for r in summed if r["scope"] == "fleet")
    # b is killed: one lease period and two intervals after its last pass, a waits again
    caplog.clear()
    renew(keepers)  # b's leases still held (a hung worker): only its passes stop
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.performance_monitor"):
        assert fleet_records(a.run_once(now=now + 3.0 + 2 * 1.0 + 1)) == []
    assert "(32 of 64)" in caplog.text
    # b's leases expire; a takes its shards over and judges the whole fleet from the rows again
    time.sleep(3.2)
    keepers[0].refresh()
    keepers[0].refresh()
    assert len(keepers[0].held_shards()) == 64
    whole = a.run_once(now=now)
    assert fleet_records(whole) == expected and not any("shard_passes" in r for r in whole)


def test_a_window_no_shard_pass_read_is_in_the_rows_baseline_only(tmp_path):
    """What cloud/performance_baselines.py says differs: a window stored after its end had left every later
    pass's lookback was read by no shard pass, so the runs leave it out of the fleet slice's earlier
    accuracy while one worker reading the rows counts it; the windows every pass read give both the same."""
    def window(camera: str, seq: int, end: float, right: int) -> TelemetryWindow:
        counts = LabelCounts(30, confusion=tuple(cell for cell in ((0, 0, right), (0, 1, 30 - right)) if cell[2]))
        return TelemetryWindow("north", camera, seq, MODEL, 1, end - 5, end, 30, 30, 0,
                               (0,) * (len(LATENCY_EDGES_MS) + 2), confidence=(0, 30, 0), labels=counts,
                               slices=(SliceCounts("dusk", 30, (), counts),))

    def dusk_reference(sessions, make) -> tuple[float, str]:
        worker = make()
        put(sessions, [window("cam-00", 1, 90.0, 30), window("cam-01", 1, 90.0, 15)], bundle=True)
        worker.run_once(now=100.0)
        put(sessions, [window("cam-02", 1, 60.0, 0)])  # late: 60 is before the lookback of every pass from now on
        put(sessions, [window("cam-00", 2, 190.0, 30), window("cam-01", 2, 190.0, 30)])
        [record] = [r for r in worker.run_once(now=200.0) if r["scope"] == "fleet" and r.get("slice") == "dusk"]
        return record["reference_accuracy"], record["reference"]

    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'partials.db'}"))
    rows = dusk_reference(reference, lambda: monitor(reference))
    runs = dusk_reference(sessions, lambda: monitor(
        sessions, ShardLeases(Leases(sessions, "solo"), "monitor", singletons=(FLEETS,)), fleet_partials=True))
    source = "its own earlier labels, 60 up to 1970-01-01T00:01:30Z"  # the window ending at 90
    assert rows == (0.5, source)  # the late window (none right) and cam-00's
    assert runs == (0.75, source)  # cam-00's and cam-01's, as read in their pass

