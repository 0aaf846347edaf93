"""Fleet scopes summed from the device shards' partial sums (cloud/drift_fleet_partials.py) give the results
of one worker reading every row: on the Nile's annual flow read by river gauges (the scenario of
tests/cloud/test_drift_monitor_batch.py: a quiet gauge, a backlog of late windows, a restart), a monitor
that goes through the partials on SQLite and two workers splitting the shards on PostgreSQL write the
results, alerts and CUSUM sums of a lone monitor of before. A fleet whose shard worker is gone gets no
result until the shard is passed again or taken over: never a result of some shards only."""

from __future__ import annotations

import logging
import time

from sqlalchemy import func, select, update

from edgefleet.cloud import drift_monitor
from edgefleet.cloud.db import Alert, DriftResult, make_engine, make_sessions
from edgefleet.cloud.drift_cusum_store import CusumCheckpoint
from edgefleet.cloud.drift_fleet_partials import FleetPartial, ShardPass
from edgefleet.cloud.drift_late_periods import LatePeriod
from edgefleet.cloud.drift_late_periods import fleet_scopes as late_fleet_scopes
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.drift_sequential import SEQUENTIAL
from edgefleet.cloud.drift_shard_steps import CusumPartial
from edgefleet.cloud.leases import FLEETS, Leases, ShardLeases, shard_of
from tests.cloud.test_drift_fleet_scope import fleet_rows
from tests.cloud.test_drift_monitor_batch import GAUGES, LOOKBACK, PROFILE, T0, drive_gauges
from tests.cloud.test_roles import database_url


def scenario(sessions, monitors) -> tuple[list, list, list, int, tuple[int, int, int]]:
    """test_drift_monitor_batch's gauges, each pass run by every monitor `monitors()` makes, in order (made
    again at the restart); returns the results, alerts and CUSUM checkpoints, in an order that does not
    depend on which worker wrote them, the partials' `shard_passes` left out of the reports and the result
    ids out of the alerts, the fleet results summed from partials, and the fleet CUSUM feeds and late fleet
    periods that read the fleet's rows (`CusumStore.feed`, the fallback of drift_late_periods.fleet_scopes)
    with the late period marks left."""
    from_rows = 0
    late_from_rows = []  # the late fleet periods judged from the fleet's rows, not from the shards' sums

    def late_scopes(session, *, from_rows, **kwargs):
        def counted(period, lookback):
            late_from_rows.append(period)
            return from_rows(period, lookback)
        return late_fleet_scopes(session, from_rows=counted, **kwargs)

    def counting():
        made = monitors()
        for monitor in made:
            feed = monitor._cusums.feed

            def counted(session, scope, *args, _feed=feed, **kwargs):
                nonlocal from_rows
                from_rows += scope.scope == "fleet"
                return _feed(session, scope, *args, **kwargs)

            monitor._cusums.feed = counted
        return made

    drift_monitor.late_fleet_scopes = late_scopes
    try:
        drive_gauges(sessions, counting)
    finally:
        drift_monitor.late_fleet_scopes = late_fleet_scopes
    with sessions() as session:
        results = sorted(((r.computed_at, r.scope, r.scope_id, r.late_by or 0.0, r.verdict, r.window_start,
                           r.window_end, r.samples, {k: v for k, v in r.report.items() if k != "shard_passes"})
                          for r in session.scalars(select(DriftResult))), key=lambda r: r[:4])
        alerts = sorted((a.opened_at, a.scope, a.scope_id, a.kind, a.status, a.closed_at, a.late_by, a.message,
                         str({k: v for k, v in a.details.items() if k != "drift_result_id"}))
                        for a in session.scalars(select(Alert)))  # result ids depend on which worker wrote first
        checkpoints = sorted((c.scope, c.scope_id, c.step_end, c.row_id, c.window_samples, str(c.state))
                             for c in session.scalars(select(CusumCheckpoint)))
        summed = session.scalar(select(func.count()).select_from(DriftResult).where(
            DriftResult.scope == "fleet", DriftResult.report["shard_passes"].isnot(None)))
        marks = session.scalar(select(func.count()).select_from(LatePeriod))
    return results, alerts, checkpoints, summed, (from_rows, len(late_from_rows), marks)


def one_worker(sessions):
    return lambda: [DriftMonitor(sessions, lambda name, version: PROFILE, lookback_seconds=LOOKBACK,
                                 interval_seconds=1.0)]


def check(reference, partials, from_rows: tuple[int, int] = (0, 0)) -> None:
    assert partials[0] == reference[0]  # every result, its report and CUSUM section included
    assert partials[1] == reference[1]
    assert partials[2] == reference[2]
    fleets = sum(1 for r in reference[0] if r[1] == "fleet" and r[3] == 0.0)
    assert partials[3] >= fleets > 30  # every on-time fleet result was summed from the partials
    assert {(scope, kind) for _, scope, _, kind, *_ in partials[1]} >= {("fleet", SEQUENTIAL)}
    assert any(r[1] == "fleet" and r[3] > 0 for r in partials[0])  # the backlog's late period, for the fleet too
    # the fleet's CUSUMs were fed from the shards' step sums, the backlog's rewind and the restart included,
    # and its late periods judged from the shards' period sums, every mark taken
    assert partials[4] == (*from_rows, 0) and reference[4][0] > 0
    assert any("replayed_from" in r[8].get(SEQUENTIAL, {}) for r in partials[0] if r[1] == "fleet")


def test_fleets_summed_from_the_shard_partials_give_the_one_worker_results_on_sqlite(tmp_path):
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'partials.db'}"))

    def through_partials():
        keeper = ShardLeases(Leases(sessions, "solo"), "monitor", singletons=(FLEETS,))  # SQLite: every shard
        return [DriftMonitor(sessions, lambda name, version: PROFILE, lookback_seconds=LOOKBACK,
                             interval_seconds=1.0, shards=keeper, fleet_partials=True)]

    check(scenario(reference, one_worker(reference)), scenario(sessions, through_partials))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ShardPass)) == 64
        steps = sorted((p.shard, p.step_end, p.windows, str(p.counts)) for p in session.scalars(select(CusumPartial)))
    assert steps and {shard for shard, *_ in steps} == {shard_of(g) for g in GAUGES}
    # a pass retried (run again at the same time, no new row) adds nothing twice to the step sums
    through_partials()[0].run_once(T0 + 69 + 1.5)
    with sessions() as session:
        assert sorted((p.shard, p.step_end, p.windows, str(p.counts))
                      for p in session.scalars(select(CusumPartial))) == steps


def test_shards_that_start_again_feed_the_fleet_from_its_rows_once_then_from_the_steps(tmp_path):
    """A shard whose last pass does not say which rows it read (written before the step sums, or by a worker
    that read every row itself and wrote no sums) starts its steps again at the restart: the fleet's CUSUMs
    go through the rows when the steps do not reach back far enough (at the restart, and at the backlog,
    whose late windows rewind the sums to before it), else through the steps, and so does the backlog's
    late period that began before the restart; the results and sums are the lone monitor's."""
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'partials.db'}"))
    made = 0

    def through_partials():
        nonlocal made
        made += 1
        if made == 2:  # the restart
            with sessions.begin() as session:
                session.execute(update(ShardPass).values(row_id=None))
        keeper = ShardLeases(Leases(sessions, "solo"), "monitor", singletons=(FLEETS,))
        return [DriftMonitor(sessions, lambda name, version: PROFILE, lookback_seconds=LOOKBACK,
                             interval_seconds=1.0, shards=keeper, fleet_partials=True)]

    check(scenario(reference, one_worker(reference)), scenario(sessions, through_partials),
          from_rows=(2, 1))


def split(sessions, period: float = 60.0) -> list[ShardLeases]:
    """Two workers' leases, 32 shards each, the fleets with the first."""
    keepers = [ShardLeases(Leases(sessions, name, period), "monitor", singletons=(FLEETS,)) for name in ("a", "b")]
    for keeper in (*keepers, keepers[0], keepers[1]):  # a takes everything, b joins, a gives half back
        keeper.refresh()
    assert keepers[0].holds(FLEETS) and len(keepers[0].held_shards()) == len(keepers[1].held_shards()) == 32
    return keepers


def renew(keepers: list[ShardLeases]) -> None:
    """Both leases renewed before a step: a slow (loaded) machine must not let them expire mid-test."""
    for keeper in reversed(keepers):
        keeper.refresh()
    assert len(keepers[0].held_shards()) == len(keepers[1].held_shards()) == 32


def test_two_workers_summing_shard_partials_give_the_one_worker_results_on_postgresql(tmp_path, postgres):
    reference = make_sessions(make_engine(f"sqlite:///{tmp_path / 'reference.db'}"))
    sessions, _url = database_url(postgres, "fleet_partials")
    keepers = split(sessions)
    assert {shard_of(g) in keepers[0].held_shards() for g in GAUGES} == {True, False}  # gauges on both

    def two_workers():  # the shard worker first, so the fleet holder finds its partials of this pass
        return [DriftMonitor(sessions, lambda name, version: PROFILE, lookback_seconds=LOOKBACK,
                             interval_seconds=1.0, shards=keeper) for keeper in reversed(keepers)]

    check(scenario(reference, one_worker(reference)), scenario(sessions, two_workers))


def fleet_results(results) -> list:
    return [r for r in results if r.scope == "fleet"]


def test_a_fleet_waits_for_a_missing_or_stale_shard_and_is_whole_after_the_take_over(postgres, caplog):
    gauges, runs, now = 120, 5, time.time()
    sessions, _url = database_url(postgres, "fleet_partials_stale")
    fleet_rows(sessions, gauges, runs, now)
    keepers = split(sessions, period=3.0)
    a, b = (DriftMonitor(sessions, lambda name, version: PROFILE, shards=keeper) for keeper in keepers)
    whole = DriftMonitor(make_sessions(make_engine(_url)), lambda name, version: PROFILE).run_once(now)
    expected = [(r.verdict, r.window_start, r.window_end, r.samples, r.report["windows"]) for r in fleet_results(whole)]
    assert expected and expected[0][4] == gauges * runs

    def fleet_of(results) -> list:
        return [(r.verdict, r.window_start, r.window_end, r.samples, r.report["windows"])
                for r in fleet_results(results)]


    # b has not passed yet: a judges its own devices, and no fleet rather than half of one
    renew(keepers)
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.drift_monitor"):
        first = a.run_once(now)
    assert fleet_results(first) == [] and any(r.scope == "device" for r in first)
    assert "fleet scopes not evaluated: no pass of device shard(s)" in caplog.text and "(32 of 64)" in caplog.text
    # b passes (twice: a retried pass writes the same rows), then a sums both halves
    renew(keepers)
    b.run_once(now)
    b.run_once(now)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(FleetPartial)) == len(
            {shard_of(f"g{g:03d}") for g in range(gauges)})
    renew(keepers)
    assert fleet_of(a.run_once(now)) == expected
    # b is killed: one lease period and two intervals after its last pass, a waits again
    caplog.clear()
    later = now + 3.0 + 2 * 10.0 + 1
    renew(keepers)  # b's leases still held (a hung worker): only its passes stop
    with caplog.at_level(logging.WARNING, logger="edgefleet.cloud.drift_monitor"):
        assert fleet_results(a.run_once(later)) == []
    assert "(32 of 64)" in caplog.text
    # b's leases expire; a takes its shards over and judges the whole fleet from the rows again
    time.sleep(3.2)
    keepers[0].refresh()
    keepers[0].refresh()
    assert len(keepers[0].held_shards()) == 64
    assert fleet_of(a.run_once(now)) == expected
