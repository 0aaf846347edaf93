"""One drift monitor pass over N devices on PostgreSQL, side by side in one run: the per-scope data path of
before (each scope's CUSUMs fed alone, each open alert looked up alone: the reference monitor of
tests/cloud/test_drift_monitor_batch.py) and the batched one (cloud/drift_cusum_batch.py). Both monitors
judge the same rows, alternating; the figure is the ratio and the milliseconds per device of the best of
`--repeat` passes each, after a warm-up pass each.

    python benchmarks/bench_monitor_pass.py [--devices 2000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from bench_scaleout import PROFILE, seed  # noqa: E402 - benchmarks/, beside this script
from report import emit  # noqa: E402

from edgefleet.cloud.db import make_engine, make_sessions  # noqa: E402
from edgefleet.cloud.drift_monitor import DriftMonitor  # noqa: E402
from tests.cloud.test_drift_monitor_batch import OneScopeAtATime  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    server = PostgresServer().start()
    try:
        make_engine(server.url).dispose()  # the schema
        now = time.time()
        seed(server.url, args.devices, now - 5)
        sessions = make_sessions(make_engine(server.url))
        monitors = {name: kind(sessions, lambda name, version: PROFILE, lookback_seconds=600)
                    for name, kind in (("one_scope_at_a_time", OneScopeAtATime), ("batched", DriftMonitor))}
        for monitor in monitors.values():
            monitor.run_once(now)  # warm-up: PostgreSQL's cache, the CUSUM calibration, the first checkpoints
        seconds: dict[str, list[float]] = {name: [] for name in monitors}
        for _ in range(args.repeat):
            for name, monitor in monitors.items():
                started = time.perf_counter()
                monitor.run_once(now)
                seconds[name].append(round(time.perf_counter() - started, 3))
    finally:
        server.stop()
    best = {name: min(values) for name, values in seconds.items()}
    emit({"benchmark": "monitor_pass", "devices": args.devices, "seconds": seconds,
          "ms_per_device": {name: round(1000 * value / args.devices, 2) for name, value in best.items()},
          "speedup": round(best["one_scope_at_a_time"] / best["batched"], 2)}, args.out)


if __name__ == "__main__":
    main()
