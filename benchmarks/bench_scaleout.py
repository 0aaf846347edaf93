"""Monitor and rollout workers on one PostgreSQL (cloud/leases.py): the drift monitor's pass over N devices
(one window each in the lookback) by 1 worker and by 2 worker processes that split the 64 shards, and the
take-over time after kill -9 of a monitor worker (until the other holds all 64 shards) and of a rollout
worker (until the other holds the deployment's lease).

    python benchmarks/bench_scaleout.py [--devices 100000] [--lease 5]

The database is seeded with COPY-sized executemany batches; the pass times of the 2 workers are measured
in the same run as the 1-worker pass (ratio), both after a first pass that fills PostgreSQL's cache; each
worker's "passes" list that first pass, the timed second one at the same `now` and a third one an interval
later (the monitors keep state from pass to pass: the first pass is not the later ones). The
fleet scope is evaluated by the worker holding the "fleets" lease, which sums the shards' partial sums
(cloud/drift_fleet_partials.py; the main branch's code before it read every device's rows, and that
worker's pass was the longer one). Each worker's fleet results and the windows they add up are printed
(100,000: the whole fleet, once). Aim: a pass under the 10 s interval with 2 workers. Each worker's CPU
seconds for its pass (its own process; PostgreSQL's not included) are printed beside the wall time: on a
shared machine they are the steadier figure.

`--monitor performance` times the accuracy monitor's pass instead (cloud/performance_monitor.py: each
window carries labels and one slice, the bundle a per-slice reference), 1 worker, 2 workers summing the
fleet from the shards' partial totals (cloud/performance_partials.py) and, side by side in the same run,
2 workers whose fleet holder reads every device's rows (`fleet_partials=False`, the code of before) and
2 workers looking every device without an earlier accuracy up in full on every pass (`remember_runs=False`,
the code of before cloud/slice_runs.py; it matters with `--no-slice-metrics` only); the take-over figures
are left out (they do not depend on the monitor).

    python benchmarks/bench_scaleout.py --monitor performance [--devices 100000]
    python benchmarks/bench_scaleout.py --monitor performance --no-slice-metrics [--history 3]
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
from edgefleet.cloud.db import BundleRecord, Device, TelemetryRecord, make_engine, make_sessions  # noqa: E402
from edgefleet.cloud.drift import DriftThresholds  # noqa: E402
from edgefleet.cloud.drift_monitor import DriftMonitor  # noqa: E402
from edgefleet.cloud.drift_settings import MonitorSettings  # noqa: E402
from edgefleet.cloud.leases import FLEETS, SHARDS, LeaseRecord, Leases, ShardLeases  # noqa: E402
from edgefleet.cloud.performance_monitor import PerformanceMonitor  # noqa: E402
from edgefleet.core.labels import LabelCounts  # noqa: E402
from edgefleet.core.slices import SliceCounts  # noqa: E402
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

PROFILE = {"count": 1000, "bins": 2,
           "features": [{"input": "pixels", "kind": "channel_stats", "names": ["m", "s"],
                         "edges": [[0.5], [0.5]], "counts": [[500, 500, 0], [500, 500, 0]]}],
           "predictions": {"classes": ["0", "1"], "counts": [500, 500]},
           "confidence": {"edges": [0.5], "counts": [500, 500, 0],
                          "calibration": {"accuracy": [0.6, 0.9], "expected_accuracy": 0.75,
                                          "measured_accuracy": 0.8, "on": "eval"}}}
LABELS = LabelCounts(10, confusion=((0, 0, 5), (1, 1, 3), (1, 0, 2)))  # 0.8, as the bundle says: no alert
MANIFEST = {"name": "digits-cnn", "version": 1, "metrics": {"eval": {"per_slice": {"day": {"accuracy": 0.8}}}}}


def seed(url: str, devices: int, end: float, labels: bool = False, slice_metrics: bool = True,
         history: int = 0) -> None:
    """One window per device in fleet "lab"; `labels`: each with LABELS, in one slice "day" too;
    `slice_metrics`: the bundle says the slice's accuracy (without, as in an imported model, every device
    and the fleet look for their slice's own earlier labels, cloud/slice_alerts.py); `history`: that many
    older windows per device, without labels, ended before the lookback (a slice labelled only lately:
    what a device's look-up of its earlier labels reads and finds nothing in)."""
    sessions = make_sessions(make_engine(url))
    extra = {"labels": LABELS, "slices": (SliceCounts("day", 30, (), LABELS),)} if labels else {}
    if labels:
        with sessions.begin() as session:
            session.add(BundleRecord(name="digits-cnn", version=1, path="-", sha256="0" * 64, size=0,
                                     manifest=MANIFEST if slice_metrics else {"name": "digits-cnn",
                                                                              "version": 1}))
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[3] = 30
    for start in range(0, devices, 10_000):
        ids = [f"d{n:06d}" for n in range(start, min(devices, start + 10_000))]
        windows = [TelemetryWindow("lab", i, 1, "digits-cnn", 1, end - 60, end, 30, 30, 0, tuple(latency),
                                   (FeatureCounts("pixels", ((15, 15, 0), (15, 15, 0))),), (15, 15), (15, 15, 0),
                                   **extra)
                   for i in ids]
        windows += [TelemetryWindow("lab", i, 2 + k, "digits-cnn", 1, end - 720 - 60 * k, end - 660 - 60 * k, 30,
                                    30, 0, tuple(latency), (FeatureCounts("pixels", ((15, 15, 0), (15, 15, 0))),),
                                    (15, 15), (15, 15, 0))
                    for i in ids for k in range(history)]
        with sessions.begin() as session:
            session.execute(insert(Device), [{"id": i, "fleet": "lab", "password_hash": "-"} for i in ids])
            session.execute(insert(TelemetryRecord), [
                {"device_id": w.device, "fleet": "lab", "seq": w.seq, "model_name": w.model_name, "model_version": 1,
                 "window_start": w.start, "window_end": w.end, "requests": 30, "samples": 30, "errors": 0,
                 "dropped_windows": 0, "payload": w.to_payload().decode()} for w in windows])


def summary(results: list) -> dict:
    """A pass's scopes and fleet results, and the windows the fleet results add up."""
    if results and isinstance(results[0], dict):  # the accuracy monitor's records: 30 samples a window
        fleets = [r for r in results if r["scope"] == "fleet" and "slice" not in r]
        return {"scopes": len(results), "fleet_results": len(fleets),
                "fleet_windows": sum(r["samples"] for r in fleets) // 30}
    return {"scopes": len(results), "fleet_results": sum(r.scope == "fleet" for r in results),
            "fleet_windows": sum(r.report["windows"] for r in results if r.scope == "fleet")}


def make_monitor(kind: str, sessions, keeper: ShardLeases, fleet_partials: bool | None,  # noqa: ANN001, ANN201
                 remember_runs: bool = True):
    if kind == "drift":
        return DriftMonitor(sessions, lambda n, v: PROFILE, lookback_seconds=600, shards=keeper,
                            fleet_partials=fleet_partials)
    return PerformanceMonitor(sessions, lambda n, v: PROFILE, drift=MonitorSettings(DriftThresholds(min_samples=10),
                                                                                    600.0, 10.0),
                              shards=keeper, fleet_partials=fleet_partials, remember_runs=remember_runs)


def monitor_pass(url: str, name: str, workers: int, now: float, ready, go, warm, out, kind: str = "drift",
                 fleet_partials: bool | None = None, remember_runs: bool = True) -> None:
    """One worker: waits until `workers` hold an even split, then times three monitor passes, every worker
    starting each at once: a first one (it also fills PostgreSQL's cache), the timed one at the same `now`
    (the fleet holder's finds the others' shard sums of that `now`), and a later one an interval after."""
    sessions = make_sessions(make_engine(url))
    keeper = ShardLeases(Leases(sessions, name, 600.0), "bench", singletons=(FLEETS,))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        keeper.refresh()
        if len(keeper.held_shards()) == SHARDS // workers:
            break
        time.sleep(0.2)
    monitor = make_monitor(kind, sessions, keeper, fleet_partials, remember_runs)
    ready.put(name)
    go.wait()
    passes, timed = [], None
    for step, at in enumerate((now, now, now + 10.0)):
        warm.wait()
        keeper.refresh()
        started, cpu = time.perf_counter(), time.process_time()
        results = monitor.run_once(at)
        passes.append({"seconds": round(time.perf_counter() - started, 3),
                       "cpu_seconds": round(time.process_time() - cpu, 3)})
        timed = results if step == 1 else timed
    out.put({"worker": name, **passes[1], "passes": passes, "shards": len(keeper.held_shards()),
             "fleets": keeper.holds(FLEETS), **summary(timed)})
    go.wait()  # stays alive (its leases too) until the other is done


def timed_passes(url: str, workers: int, now: float, tag: str, kind: str = "drift",
                 fleet_partials: bool | None = None, remember_runs: bool = True) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    ready, out, go, warm = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Barrier(workers)
    procs = [ctx.Process(target=monitor_pass, args=(url, f"{tag}-{i}", workers, now, ready, go, warm, out, kind,
                                                    fleet_partials, remember_runs))
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
    parser.add_argument("--monitor", choices=("drift", "performance"), default="drift")
    parser.add_argument("--no-slice-metrics", action="store_true",
                        help="performance: a bundle without per-slice accuracies (slices judged on earlier labels)")
    parser.add_argument("--history", type=int, default=0,
                        help="older windows per device without labels, before the lookback (default 0)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    server = PostgresServer().start()
    try:
        url = server.url
        make_engine(url).dispose()  # the schema
        now = time.time()
        started = time.perf_counter()
        seed(url, args.devices, now - 5, labels=args.monitor == "performance",
             slice_metrics=not args.no_slice_metrics, history=args.history)
        seeded = time.perf_counter() - started
        one = timed_passes(url, 1, now, "one", args.monitor)
        two = timed_passes(url, 2, now, "two", args.monitor)
        pass_one, pass_two = one[0]["seconds"], max(r["seconds"] for r in two)
        report = {
            "benchmark": "scaleout", "monitor": args.monitor, "slice_metrics": not args.no_slice_metrics,
            "code": str(Path(edgefleet.cloud.__file__).parents[1]),
            "devices": args.devices, "history": args.history, "seed_seconds": round(seeded, 1),
            "monitor_pass_seconds": {"1_worker": pass_one, "2_workers": pass_two,
                                     "speedup": round(pass_one / pass_two, 2), "workers": one + two},
            "aim_2_workers_under_10s": pass_two < 10.0,
        }
        if args.monitor == "performance":  # the fleet holder reading every row, in the same run
            rows = timed_passes(url, 2, now, "rows", args.monitor, fleet_partials=False)
            pass_rows = max(r["seconds"] for r in rows)
            holder = [next(r["cpu_seconds"] for r in run if r["fleets"]) for run in (two, rows)]
            report["fleet_from_rows"] = {"2_workers": pass_rows, "workers": rows,
                                         "partials_speedup": round(pass_rows / pass_two, 2),
                                         "fleet_holder_cpu_ratio": round(holder[1] / holder[0], 2)}
            # devices without an earlier accuracy looked up in full on every pass (cloud/slice_runs.py)
            full = timed_passes(url, 2, now, "full", args.monitor, remember_runs=False)
            report["full_look_ups"] = {"2_workers": max(r["seconds"] for r in full), "workers": full,
                                       "runs_speedup": round(max(r["seconds"] for r in full) / pass_two, 2)}
        else:
            report["lease_seconds"] = args.lease
            report["takeover_seconds"] = {
                "monitor_kill9": takeover(url, "monitor", [], args.lease),
                "rollout_kill9": takeover(url, "rollouts", ["rollouts/deployment/bench"], args.lease)}
    finally:
        server.stop()
    emit(report, args.out)


if __name__ == "__main__":
    main()
