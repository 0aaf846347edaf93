"""One drift monitor pass over N devices on PostgreSQL, side by side in one run:

- one_scope_at_a_time: each scope's CUSUMs fed alone, each open alert looked up alone (the reference
  monitor of tests/cloud/test_drift_monitor_batch.py);
- per_scope_tests: the batched CUSUMs, but each scope's window tests by cloud/drift.py's `evaluate` alone
  and the results added through the ORM (the monitor before the window tests were stacked);
- batched: the monitor as it is: CUSUMs batched (cloud/drift_cusum_batch.py), the window tests of all
  scopes of a profile at once (cloud/drift_batch.py), the results written by one COPY, and each payload
  parsed once: the windows the last pass decoded are taken from memory (the steady state, where a window
  is in lookback / interval passes);
- batched_cold: the same with nothing decoded in memory before each pass (every payload read and parsed,
  as after a restart or a shard take-over); the two reference paths above are timed this way too, as
  they were before the monitor kept its decoded windows.

All judge the same rows, alternating; the figures are the ratios and the milliseconds per device of the
best of `--repeat` passes each (after a warm-up pass each), with the time of the window tests and of the
result insert within the pass.

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


class Cold(DriftMonitor):
    """The monitor with its decoded windows dropped before each pass: every payload read and parsed."""

    def run_once(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - DriftMonitor's signature
        self._windows.forget()
        return super().run_once(*args, **kwargs)


class OneScopeCold(Cold, OneScopeAtATime):
    """The reference of tests/cloud/test_drift_monitor_batch.py, every payload parsed on each pass."""


class PerScopeTests(Cold):
    """Before cloud/drift_batch.py: the window tests scope by scope, the results added through the ORM."""

    def _evaluate_all(self, items, now, resolver):  # noqa: ANN001, ANN202 - DriftMonitor's signature
        return [(scope, result) for scope, (profile, windows) in items
                if (result := self._evaluate(scope, profile, windows, now, resolver)) is not None]

    @staticmethod
    def _insert(session, results) -> None:  # noqa: ANN001 - DriftMonitor's signature
        session.add_all(results)
        session.flush()


def timed(monitor: DriftMonitor, phases: dict[str, float]) -> DriftMonitor:
    """Adds the seconds the monitor spends in its window tests and its result insert to `phases`."""
    for method, phase in (("_evaluate_all", "window_tests"), ("_insert", "insert")):
        inner = getattr(monitor, method)

        def wrapper(*args, _inner=inner, _phase=phase, **kwargs):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                phases[_phase] += time.perf_counter() - started

        setattr(monitor, method, wrapper)
    return monitor


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
        kinds = (("one_scope_at_a_time", OneScopeCold), ("per_scope_tests", PerScopeTests),
                 ("batched", DriftMonitor), ("batched_cold", Cold))
        phases = {name: {"window_tests": 0.0, "insert": 0.0} for name, _ in kinds}
        monitors = {name: timed(kind(sessions, lambda name, version: PROFILE, lookback_seconds=600), phases[name])
                    for name, kind in kinds}
        for monitor in monitors.values():
            monitor.run_once(now)  # warm-up: PostgreSQL's cache, the CUSUM calibration, the first checkpoints
        seconds: dict[str, list[float]] = {name: [] for name in monitors}
        best_phases: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):
            for name, monitor in monitors.items():
                phases[name].update(dict.fromkeys(phases[name], 0.0))  # in place: the wrappers hold this dict
                started = time.perf_counter()
                monitor.run_once(now)
                seconds[name].append(round(time.perf_counter() - started, 3))
                if seconds[name][-1] == min(seconds[name]):
                    best_phases[name] = dict(phases[name])
    finally:
        server.stop()
    best = {name: min(values) for name, values in seconds.items()}
    per_device = {name: {"pass": round(1000 * best[name] / args.devices, 3),
                         **{phase: round(1000 * value / args.devices, 3) for phase, value in best_phases[name].items()}}
                  for name in best}
    emit({"benchmark": "monitor_pass", "devices": args.devices, "seconds": seconds, "ms_per_device": per_device,
          "speedup": {"batched_vs_one_scope_at_a_time": round(best["one_scope_at_a_time"] / best["batched"], 2),
                      "batched_vs_per_scope_tests": round(best["per_scope_tests"] / best["batched"], 2),
                      "batched_cold_vs_per_scope_tests": round(best["per_scope_tests"] / best["batched_cold"], 2),
                      "batched_vs_batched_cold": round(best["batched_cold"] / best["batched"], 2),
                      "window_tests": round(best_phases["per_scope_tests"]["window_tests"]
                                            / best_phases["batched"]["window_tests"], 2),
                      "insert": round(best_phases["per_scope_tests"]["insert"] / best_phases["batched"]["insert"], 2)}},
         args.out)


if __name__ == "__main__":
    main()
