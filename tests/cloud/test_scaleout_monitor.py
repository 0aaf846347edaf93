"""Monitor workers sharing one PostgreSQL through leases (cloud/leases.py): each drift pass evaluates only
the devices of the shards its worker holds, fleets by their own lease; `cloud up --role monitor` processes
split 10,000 devices, and when one is killed with -9 the other judges every device within two passes."""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack

from sqlalchemy import func, insert, select

from edgefleet.cloud.db import Alert, Device, DriftResult, TelemetryRecord
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.leases import FLEETS, SHARDS, LeaseRecord, Leases, ShardLeases
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from tests.cloud.cloud_process import cloud_up
from tests.cloud.test_roles import database_url
from tests.waiting import until

# A profile shaped like window(): 2 features over 1 edge, 2 classes, 1 confidence edge (as in test_postgres).
PROFILE = {"count": 1000, "bins": 2,
           "features": [{"input": "pixels", "kind": "channel_stats", "names": ["m", "s"],
                         "edges": [[0.5], [0.5]], "counts": [[500, 500, 0], [500, 500, 0]]}],
           "predictions": {"classes": ["0", "1"], "counts": [500, 500]},
           "confidence": {"edges": [0.5], "counts": [500, 500, 0]}}


def window(device: str, seq: int, end: float, *, errors: int = 0, slow: bool = False) -> TelemetryWindow:
    requests = 30
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[len(LATENCY_EDGES_MS) if slow else 3] = requests  # slow: every request past the last edge
    return TelemetryWindow("lab", device, seq, "digits-cnn", 1, end - 60, end, requests, requests, errors,
                           tuple(latency), (FeatureCounts("pixels", ((15, 15, 0), (15, 15, 0))),), (15, 15),
                           (15, 15, 0))


def store(sessions, windows: list[TelemetryWindow]) -> None:
    with sessions.begin() as session:
        session.execute(insert(TelemetryRecord), [
            {"device_id": w.device, "fleet": w.fleet, "seq": w.seq, "model_name": w.model_name,
             "model_version": w.model_version, "window_start": w.start, "window_end": w.end, "requests": w.requests,
             "samples": w.samples, "errors": w.errors, "dropped_windows": 0, "payload": w.to_payload().decode()}
            for w in windows])


def add_devices(sessions, count: int) -> list[str]:
    ids = [f"d{n:05d}" for n in range(count)]
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": i, "fleet": "lab", "password_hash": "-"} for i in ids])
    return ids


def evaluated(sessions, since: int = 0) -> dict[str, list[float]]:
    """device -> the times its drift scope was evaluated (one DriftResult per evaluation)."""
    with sessions() as session:
        rows = session.execute(select(DriftResult.scope_id, DriftResult.computed_at)
                               .where(DriftResult.scope == "device", DriftResult.id > since)).all()
    times: dict[str, list[float]] = {}
    for device, at in rows:
        times.setdefault(device, []).append(at)
    return times


def test_drift_workers_evaluate_only_their_shards_and_take_over_a_silent_one(postgres):
    sessions, _url = database_url(postgres, "scaleout_drift")
    devices = add_devices(sessions, 200)
    now = time.time()
    store(sessions, [window(d, 1, now - 5) for d in devices])
    keepers = [ShardLeases(Leases(sessions, name, 10.0), "monitor", singletons=(FLEETS,)) for name in ("a", "b")]
    monitors = [DriftMonitor(sessions, lambda name, version: PROFILE, shards=k) for k in keepers]
    for keeper in (*keepers, keepers[0]):  # a takes everything, b joins, a gives half back
        keeper.refresh()
    keepers[1].refresh()
    runs = []
    for keeper, monitor in reversed(list(zip(keepers, monitors, strict=True))):  # b first: a sums its partials
        keeper.refresh()  # as its thread does every period / 3 (a run here may outlast a period)
        runs.insert(0, monitor.run_once(now))
    first = [{r.scope_id for r in run if r.scope == "device"} for run in runs]
    fleet = [[r for r in run if r.scope == "fleet"] for run in runs]
    assert first[0].isdisjoint(first[1]) and first[0] | first[1] == set(devices)  # each device once
    assert 50 < len(first[0]) < 150  # 32 of 64 shards each: about half the devices
    assert [len(f) for f in fleet] == [1, 0] and fleet[0][0].samples == 30 * len(devices)  # all windows, once
    assert fleet[0][0].report["windows"] == len(devices) and "shard_passes" in fleet[0][0].report  # b's sums
    time.sleep(10.2)  # a stops renewing (as if frozen): its leases expire
    assert keepers[0].held_shards() == set()  # nor does a trust them any more
    assert {r.scope_id for r in monitors[0].run_once(now) if r.scope == "device"} == set()
    keepers[1].refresh()
    assert {r.scope_id for r in monitors[1].run_once(now) if r.scope == "device"} == set(devices)


DEVICES = 10_000
LEASE, PASS = 5.0, 10.0  # seconds; a pass every 10 s leaves a dead worker's 5 s leases time to expire between two


def monitor_worker(stack: ExitStack, tmp_path, url: str):
    env = {"EDGEFLEET_LEASE_SECONDS": str(LEASE)}
    process, _lines, _url, printed = stack.enter_context(cloud_up(
        tmp_path, "--role", "monitor", "--db", url, "--data", str(tmp_path / "data"), "--ops-interval", str(PASS),
        env=env))
    assert "role: monitor" in printed
    return process


def holders(sessions) -> dict[str, int]:
    """holder -> how many shards it holds now."""
    with sessions() as session:
        rows = session.execute(select(LeaseRecord.holder, func.count()).where(
            LeaseRecord.name.startswith("monitor/shard/"), LeaseRecord.expires_at > time.time())
            .group_by(LeaseRecord.holder)).all()
    return dict(rows)


def alerted(sessions, kind: str) -> dict[str, float]:
    with sessions() as session:
        return dict(session.execute(select(Alert.scope_id, Alert.opened_at).where(Alert.kind == kind)).all())


def test_two_monitor_processes_split_10000_devices_and_one_killed_is_taken_over(tmp_path, postgres):
    sessions, url = database_url(postgres, "scaleout_monitor")
    with ExitStack() as stack:
        first = monitor_worker(stack, tmp_path, url)
        devices = add_devices(sessions, DEVICES)  # the schema exists now: the first worker made it
        second = monitor_worker(stack, tmp_path, url)
        split = until(lambda: (h := holders(sessions)) and len(h) == 2 and sorted(h.values()) == [32, 32] and h,
                      "the shards split 32/32", 60)
        # every device's error rate is over the limit: each worker judges its half
        end = time.time() - 1  # before the pass that sees the rows (its `now` is taken before it reads)
        store(sessions, [window(d, 1, end, errors=10) for d in devices])
        until(lambda: len(alerted(sessions, "error_rate")) == DEVICES, "every device judged by the two workers", 300)
        victim = second if any(f":{second.pid}:" in holder for holder in split) else first
        survivor = first if victim is second else second
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        killed = time.time()
        # now every device's latency goes over the limit: only the survivor runs
        end = time.time()
        store(sessions, [window(d, 2, end, slow=True) for d in devices])
        until(lambda: len(alerted(sessions, "latency")) == DEVICES, "every device judged after the kill", 300)
        assert survivor.poll() is None
        assert list(holders(sessions).values()) == [SHARDS]  # the survivor holds every shard
    passes = sorted(set(alerted(sessions, "latency").values()))  # one opened_at per pass (its `now`)
    assert passes[0] > killed and len(passes) <= 2, passes  # half in the first pass, the rest in the second
