"""Monitor and rollout workers on one PostgreSQL (cloud/leases.py): the drift monitor's pass over N devices
(one window each in the lookback) by 1 worker and by 2 worker processes that split the 64 shards, and the
take-over time after kill -9 of a monitor worker (until the other holds all 64 shards) and of a rollout
worker (until the other holds the deployment's lease).

    python benchmarks/bench_scaleout.py [--devices 100000] [--lease 5]

The database is seeded with COPY-sized executemany batches; the pass times of the 2 workers are measured
in the same run as the 1-worker pass (ratio), both after a warm-up pass that fills PostgreSQL's cache. The
fleet scope is evaluated by the worker holding the "fleets" lease, which sums the shards' partial sums
(cloud/drift_fleet_partials.py; the main branch's code before it read every device's rows, and that
worker's pass was the longer one). Each worker's fleet results and the windows they add up are printed
(100,000: the whole fleet, once). Aim: a pass under the 10 s interval with 2 workers. Each worker's CPU
seconds for its pass (its own process; PostgreSQL's not included) are printed beside the wall time: on a
shared machine they are the steadier figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.postgres

from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

import edgefleet.cloud  # noqa: E402
from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions  # noqa: E402
from edgefleet.cloud.drift_monitor import DriftMonitor  # noqa: E402
from edgefleet.cloud.leases import FLEETS, SHARDS, LeaseRecord, Leases, ShardLeases  # noqa: E402
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

PROFILE = {"count": 1000, "bins": 2,
           "features": [{"input": "pixels", "kind": "channel_stats", "names": ["m", "s"],
                         "edges": [[0.5], [0.5]], "counts": [[500, 500, 0], [500, 500, 0]]}],
           "predictions": {"classes": ["0", "1"], "counts": [500, 500]},
           "confidence": {"edges": [0.5], "counts": [500, 500, 0]}}


def seed(url: str, devices: int, end: float) -> None:
    sessions = make_sessions(make_engine(url))
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[3] = 30
    for start in range(0, devices, 10_000):
        ids = [f"d{n:06d}" for n in range(start, min(devices, start + 10_000))]
        windows = [TelemetryWindow("lab", i, 1, "digits-cnn", 1, end - 60, end, 30, 30, 0, tuple(latency),
                                   (FeatureCounts("pixels", ((15, 15, 0), (15, 15, 0))),), (15, 15), (15, 15, 0))
                   for i in ids]
        with sessions.begin() as session:
            session.execute(insert(Device), [{"id": i, "fleet": "lab", "password_hash": "-"} for i in ids])
            session.execute(insert(TelemetryRecord), [
                {"device_id": w.device, "fleet": "lab", "seq": 1, "model_name": w.model_name, "model_version": 1,
                 "window_start": w.start, "window_end": w.end, "requests": 30, "samples": 30, "errors": 0,
                 "dropped_windows": 0, "payload": w.to_payload().decode()} for w in windows])


def monitor_pass(url: str, name: str, workers: int, now: float, ready, go, warm, out) -> None:
    """One worker: waits until `workers` hold an even split, then times one drift pass (after a warm-up
    pass of every worker: the fleet holder's timed pass finds the others' shard sums of the same `now`)."""
    sessions = make_sessions(make_engine(url))
    keeper = ShardLeases(Leases(sessions, name, 600.0), "bench", singletons=(FLEETS,))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        keeper.refresh()
        if len(keeper.held_shards()) == SHARDS // workers:
            break
        time.sleep(0.2)
    monitor = DriftMonitor(sessions, lambda n, v: PROFILE, lookback_seconds=600, shards=keeper)
    ready.put(name)
    go.wait()
    monitor.run_once(now)  # warm-up
    warm.wait()
    keeper.refresh()
    started, cpu = time.perf_counter(), time.process_time()
    results = monitor.run_once(now)
    out.put({"worker": name, "seconds": round(time.perf_counter() - started, 3),
             "cpu_seconds": round(time.process_time() - cpu, 3), "shards": len(keeper.held_shards()),
             "fleets": keeper.holds(FLEETS), "scopes": len(results),
             "fleet_results": sum(r.scope == "fleet" for r in results),
             "fleet_windows": sum(r.report["windows"] for r in results if r.scope == "fleet")})
    go.wait()  # stays alive (its leases too) until the other is done


def timed_passes(url: str, workers: int, now: float, tag: str) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    ready, out, go, warm = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Barrier(workers)
    procs = [ctx.Process(target=monitor_pass, args=(url, f"{tag}-{i}", workers, now, ready, go, warm, out))
             for i in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    go.set()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join(60)
    release = make_sessions(make_engine(url))
    with release.begin() as session:
        session.query(LeaseRecord).delete()
    return results


def hold(url: str, role: str, name: str, names: list[str], lease: float) -> None:
    """A worker that keeps its leases (a shard set, or the named ones) until killed."""
    sessions = make_sessions(make_engine(url))
    leases = Leases(sessions, name, lease)
    keeper = ShardLeases(leases, role) if not names else None
    while True:
        if keeper is not None:
            keeper.refresh()
        else:
            leases.acquire(names)
        time.sleep(lease / 3)


def takeover(url: str, role: str, names: list[str], lease: float) -> float:
    """Two holders; the one holding the work is killed -9: seconds until the other holds all of it."""
    ctx = multiprocessing.get_context("spawn")
    procs = {f"{role}-{i}": ctx.Process(target=hold, args=(url, role, f"{role}-{i}", names, lease)) for i in range(2)}
    for p in procs.values():
        p.start()
        time.sleep(lease)  # the first one takes everything; the second joins
    sessions = make_sessions(make_engine(url))
    prefix = f"{role}/shard/" if not names else names[0]
    time.sleep(lease)
    with sessions() as session:
        holders = set(session.scalars(select(LeaseRecord.holder).where(LeaseRecord.name.startswith(prefix))))
    victim = sorted(holders)[0]
    os.kill(procs[victim].pid, signal.SIGKILL)
    killed = time.monotonic()
    survivor = next(n for n in procs if n != victim)
    expected = SHARDS if not names else len(names)
    while True:
        with sessions() as session:
            held = session.scalars(select(LeaseRecord.name).where(LeaseRecord.name.startswith(prefix),
                                                                  LeaseRecord.holder == survivor)).all()
        if len(held) == expected:
            break
        time.sleep(0.05)
    seconds = time.monotonic() - killed
    for p in procs.values():
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    return round(seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--lease", type=float, default=5.0, help="lease period for the take-over figures (s)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    server = PostgresServer().start()
    try:
        url = server.url
        make_engine(url).dispose()  # the schema
        now = time.time()
        started = time.perf_counter()
        seed(url, args.devices, now - 5)
        seeded = time.perf_counter() - started
        one = timed_passes(url, 1, now, "one")
        two = timed_passes(url, 2, now, "two")
        pass_one, pass_two = one[0]["seconds"], max(r["seconds"] for r in two)
        report = {
            "benchmark": "scaleout", "code": str(Path(edgefleet.cloud.__file__).parents[1]),
            "devices": args.devices, "seed_seconds": round(seeded, 1),
            "monitor_pass_seconds": {"1_worker": pass_one, "2_workers": pass_two,
                                     "speedup": round(pass_one / pass_two, 2), "workers": one + two},
            "aim_2_workers_under_10s": pass_two < 10.0,
            "lease_seconds": args.lease,
            "takeover_seconds": {"monitor_kill9": takeover(url, "monitor", [], args.lease),
                                 "rollout_kill9": takeover(url, "rollouts", ["rollouts/deployment/bench"], args.lease)},
        }
    finally:
        server.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
