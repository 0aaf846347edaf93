"""What a model swap costs the requests in flight: ModelHost.swap under constant load, digits CNN, batch 1.

    python benchmarks/bench_swap.py [--threads 4] [--swaps 200] [--interval-ms 10] [--out runs/swap.json]

Builds the digits bundle, loads it into two Predictors and serves one of them from a ModelHost while
`--threads` threads predict continuously. First a steady phase (no swap), then the same load while the
main thread swaps between the two Predictors `--swaps` times. Every request's start and end are kept,
so the report can compare the latency of requests around the moment of each switch (within --margin-ms)
with requests around instants halfway between swaps (the control: both are length-biased samples) and
with the steady state. Prints JSON: failed
requests (the goal is zero), latency p50/p99/max steady vs around the switches and their ratio (the swap
pause), how long swap() itself took (publish, then waiting for the old model's in-flight calls; only
the swapping thread waits), and the machine. Absolute times depend on the machine;
the failed count and the ratio are the numbers to watch.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.digits import build_digits_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime import Predictor
from edgefleet.edge_runtime.model_host import ModelHost

GOAL_FAILED = 0


class Load:
    """Threads calling host.predict until stopped; each keeps its own (start_ns, end_ns, ok, model) rows."""

    def __init__(self, host: ModelHost, feed: dict, threads: int) -> None:
        self.host, self.feed = host, feed
        self.stop = threading.Event()
        self.rows: list[list[tuple[int, int, bool]]] = [[] for _ in range(threads)]
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(rows,), daemon=True) for rows in self.rows]

    def _loop(self, rows: list[tuple[int, int, bool]]) -> None:
        predict, clock, feed = self.host.predict, time.perf_counter_ns, self.feed
        while not self.stop.is_set():
            start = clock()
            try:
                predict(feed)
                ok = True
            except Exception as err:  # noqa: BLE001 - counted: the number this benchmark exists for
                ok = False
                self.errors.append(repr(err))
            rows.append((start, clock(), ok))

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> np.ndarray:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        rows = [row for rows in self.rows for row in rows]
        return np.array(rows, dtype=np.int64).reshape(-1, 3)


def latency(rows: np.ndarray) -> dict:
    ms = (rows[:, 1] - rows[:, 0]) / 1e6
    if ms.size == 0:
        return {"requests": 0}
    return {"requests": int(ms.size), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "p999": float(np.percentile(ms, 99.9)), "max": float(ms.max()), "mean": float(ms.mean())}


def overlapping(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, margin: int) -> np.ndarray:
    """Which requests (start_ns, end_ns rows) overlap some interval [starts[i] - margin, ends[i] + margin];
    the intervals are sorted and disjoint."""
    index = np.searchsorted(starts, rows[:, 1] + margin, side="right") - 1  # the last interval begun by its end
    hit = np.zeros(len(rows), bool)
    valid = index >= 0
    hit[valid] = rows[valid, 0] <= ends[index[valid]] + margin
    return hit


def ratio(a: dict, b: dict, key: str) -> float | None:
    return a[key] / b[key] if a.get("requests") and b.get("requests") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4, help="threads predicting continuously (default 4)")
    parser.add_argument("--swaps", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=10.0, help="time between swaps (default 10)")
    parser.add_argument("--steady-seconds", type=float, default=2.0)
    parser.add_argument("--margin-ms", type=float, default=1.0, help="a request within this of a swap overlaps it")
    parser.add_argument("--intra-threads", type=int, default=1, help="onnxruntime intra-op threads per model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-swap-") as workdir:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's chatter must not corrupt the JSON
            root, key = build_digits_bundle(Path(workdir), epochs=3)
        models = [Predictor(root, trusted_keys=[key], threads=args.intra_threads) for _ in range(2)]
        inputs, _, _ = Bundle.open(root).golden()
        feed = {"pixels": inputs["pixels"][:1].copy()}
        for model in models:
            for _ in range(200):
                model.predict(feed)  # warm-up
        host = ModelHost(models[0])

        load = Load(host, feed, args.threads).start()
        time.sleep(args.steady_seconds)
        steady = load.finish()

        load = Load(host, feed, args.threads).start()
        time.sleep(0.2)
        swaps = []
        for i in range(args.swaps):
            start = time.perf_counter_ns()
            host.swap(models[(i + 1) % 2])
            swaps.append((start, time.perf_counter_ns()))
            time.sleep(args.interval_ms / 1e3)
        swapping = load.finish()
        for model in models:
            model.close()

    margin = int(args.margin_ms * 1e6)
    swap_starts = np.array([s for s, _ in swaps], np.int64)
    swap_ends = np.array([e for _, e in swaps], np.int64)
    # the new model is published microseconds after swap() is called; the rest of the call is the wait for
    # the old model's in-flight requests (only the swapping thread waits for it)
    at_switch = overlapping(swapping, swap_starts, swap_starts, margin)
    during_call = overlapping(swapping, swap_starts, swap_ends, margin)
    # the control: the same selection at instants halfway between swaps. Requests overlapping an instant
    # are a length-biased sample (a request descheduled for 10 ms is ten times likelier to cover a given
    # instant than a 1 ms one), so comparing them with all steady-state requests would overstate the pause.
    quiet = swap_ends[:-1] + (swap_starts[1:] - swap_ends[:-1]) // 2
    at_quiet = overlapping(swapping, quiet, quiet, margin)
    steady_latency, switch_latency, quiet_latency = latency(steady), latency(swapping[at_switch]), \
        latency(swapping[at_quiet])
    swap_ms = (swap_ends - swap_starts) / 1e6
    failed = int((steady[:, 2] == 0).sum() + (swapping[:, 2] == 0).sum())
    report = {
        "benchmark": "swap",
        "model": "digits-cnn", "batch": 1, "threads": args.threads, "intra_op_threads": args.intra_threads,
        "swaps": args.swaps, "interval_ms": args.interval_ms, "margin_ms": args.margin_ms,
        "failed_requests": failed,
        "errors": sorted(set(load.errors))[:5],
        "latency_ms": {
            "steady": steady_latency,
            "around_switch": switch_latency,  # requests within margin of the moment the new model took over
            "around_quiet_instant": quiet_latency,  # the same, halfway between two swaps (the control)
            "during_swap_call": latency(swapping[during_call]),  # ... of any part of a swap() call
            "swap_phase_all": latency(swapping),
        },
        "swap_pause_ratio_p99": ratio(switch_latency, quiet_latency, "p99"),  # around a switch vs the control
        "swap_pause_ratio_p50": ratio(switch_latency, quiet_latency, "p50"),
        "around_switch_vs_steady_p99": ratio(switch_latency, steady_latency, "p99"),  # length-biased, pessimistic
        "swap_call_ms": {"p50": float(np.percentile(swap_ms, 50)), "p99": float(np.percentile(swap_ms, 99)),
                         "max": float(swap_ms.max())},
        "goal_failed_requests": GOAL_FAILED,
        "meets_goal": failed <= GOAL_FAILED,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
