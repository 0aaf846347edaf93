"""A fleet scope's windows summed per signal at once (cloud/drift.py `merge_windows` from SUM_AT_ONCE windows
on) and a worker that reads other shards' rows for the fleet only (cloud/drift_monitor.py) give the results
of before, when the windows were added pair by pair and every row made its device's scope too: on the Nile's
annual flow (statsmodels.datasets.nile) read by river gauges, on real SQLite and real PostgreSQL."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import insert

from edgefleet.cloud import drift
from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.drift import CountsMismatch, WindowCounts, merge_windows
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.leases import FLEETS, Leases, ShardLeases
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from tests.cloud.test_drift_monitor_batch import PROFILE, run
from tests.cloud.test_drift_sequential import FLOW, row
from tests.cloud.test_roles import database_url


def gauge_window(gauge: int, index: int, *, outputs: bool = False) -> WindowCounts:
    readings = FLOW[(gauge + index) % 80:(gauge + index) % 80 + 1 + gauge % 5]
    window = TelemetryWindow("river", f"g{gauge:03d}", index + 1, "nile-flow", 1, 0.0, 1.0, len(readings),
                             len(readings), 0, (0,) * (len(LATENCY_EDGES_MS) + 2),
                             (FeatureCounts("flow", (tuple(int(v) for v in row(readings, PROFILE)),)),),
                             (len(readings), gauge % 3), (1, len(readings), gauge % 2))
    counts = WindowCounts.from_telemetry(window)
    if outputs:
        counts = WindowCounts(counts.samples, counts.features, counts.predictions, counts.confidence,
                              {"boxes": np.array([[gauge % 7, index % 5, 1]], dtype=np.int64)})
    return counts


def same(a: WindowCounts, b: WindowCounts) -> bool:
    arrays = lambda c: [*c.features.items(), ("p", c.predictions), ("c", c.confidence), *c.outputs.items()]  # noqa: E731
    return a.samples == b.samples and all(
        na == nb and (x is None and y is None or x.dtype == y.dtype and np.array_equal(x, y))
        for (na, x), (nb, y) in zip(arrays(a), arrays(b), strict=True))


def test_many_windows_summed_at_once_equal_the_pairwise_sum_and_refuse_what_it_refuses():
    for outputs in (False, True):
        windows = [gauge_window(g, i, outputs=outputs) for g in range(40) for i in range(30)]
        pairwise = windows[0]
        for window in windows[1:]:
            pairwise = pairwise + window
        assert drift._sum_alike(windows) is not None  # the fast path is taken
        assert same(merge_windows(windows), pairwise) and same(merge_windows(iter(windows)), pairwise)
    mixed = [gauge_window(g, 0) for g in range(20)] + [gauge_window(20, 0, outputs=True)]  # an older agent beside
    assert drift._sum_alike(mixed) is None and merge_windows(mixed).outputs["boxes"].tolist() == [[6, 0, 1]]
    odd = gauge_window(1, 1)
    odd = WindowCounts(odd.samples, {"flow": np.zeros((1, 3), dtype=np.int64)}, odd.predictions, odd.confidence)
    with pytest.raises(CountsMismatch):  # another model version's bins in the middle of a fleet
        merge_windows([gauge_window(g, 0) for g in range(20)] + [odd])


def test_the_monitor_gives_the_results_alerts_and_sums_of_the_pairwise_merge(tmp_path, monkeypatch):
    at_once = drift.SUM_AT_ONCE
    new = run(f"sqlite:///{tmp_path / 'new.db'}", DriftMonitor)
    monkeypatch.setattr(drift, "SUM_AT_ONCE", 10**9)
    old = run(f"sqlite:///{tmp_path / 'old.db'}", DriftMonitor)
    assert new[:3] == old[:3]
    assert any(scope == "fleet" and report["windows"] >= at_once for _, scope, *_, report in new[0])


def fleet_rows(sessions, gauges: int, runs: int, now: float) -> None:
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": f"g{g:03d}", "fleet": "river", "password_hash": "-"}
                                         for g in range(gauges)])
        rows = []
        for g in range(gauges):
            for i in range(runs):
                counts = gauge_window(g, i)
                w = TelemetryWindow("river", f"g{g:03d}", i + 1, "nile-flow", 1, now - 60 + i, now - 59 + i,
                                    counts.samples, counts.samples, 0, (0,) * (len(LATENCY_EDGES_MS) + 2),
                                    (FeatureCounts("flow", tuple(map(tuple, counts.features["flow"].tolist()))),),
                                    (), ())  # the gauges' profile has no classes
                rows.append({"device_id": w.device, "fleet": "river", "seq": w.seq, "model_name": "nile-flow",
                             "model_version": 1, "window_start": w.start, "window_end": w.end,
                             "requests": w.requests, "samples": w.samples, "errors": 0, "dropped_windows": 0,
                             "payload": w.to_payload().decode()})
        session.execute(insert(TelemetryRecord), rows)


def test_a_worker_with_half_the_shards_judges_the_fleet_as_one_worker_did_before(tmp_path, postgres, monkeypatch):
    now = time.time()
    gauges, runs = 120, 5
    sessions, _url = database_url(postgres, "fleet_scope")
    fleet_rows(sessions, gauges, runs, now)
    keepers = [ShardLeases(Leases(sessions, name, 30.0), "monitor", singletons=(FLEETS,)) for name in ("a", "b")]
    for keeper in (*keepers, keepers[0], keepers[1]):  # a takes everything, b joins, a gives half back
        keeper.refresh()
    assert keepers[0].holds(FLEETS) and 0 < len(keepers[0].held_shards()) < 64
    # the fleet as it was judged before the shards' partial sums (cloud/drift_fleet_partials.py): from rows
    sharded = DriftMonitor(sessions, lambda name, version: PROFILE, shards=keepers[0],
                           fleet_partials=False).run_once(now)
    reference_sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'old.db'}"))
    fleet_rows(reference_sessions, gauges, runs, now)
    monkeypatch.setattr(drift, "SUM_AT_ONCE", 10**9)
    old = DriftMonitor(reference_sessions, lambda name, version: PROFILE).run_once(now)

    def fleet(results):
        return [(r.scope_id, r.verdict, r.window_start, r.window_end, r.samples, r.report)
                for r in results if r.scope == "fleet"]

    assert fleet(sharded) == fleet(old) and fleet(old)[0][5]["windows"] == gauges * runs
    mine = {r.scope_id for r in sharded if r.scope == "device"}
    assert 0 < len(mine) < gauges  # its own shards' devices only

    def devices(results):
        return [(r.scope_id, r.verdict, r.samples, r.report) for r in results
                if r.scope == "device" and r.scope_id in mine]

    assert devices(sharded) == devices(old)
