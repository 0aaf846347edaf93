"""What data capture costs a predict request: the device's HTTP predict path with capture off, at 1% and at 100%.

    python benchmarks/bench_capture.py [--runs 20000] [--repeats 5] [--out runs/capture_cost.json]

Capture runs in the worker-thread part of POST /v1/predict (`http_api._predict`: parse the body, predict,
build the answer, keep the request id, count the slice, offer the capture), so that is what is timed, on one
ModelHost serving the digits CNN with telemetry on; the HTTP server around it is the same with or without
capture and only dilutes the ratio. Arms differ only in the capture each request is offered to; "1%" and
"100%" have a real Capturer with its SQLite spool and writer thread (rate limit 1e6/s, so nothing is
rate-limited away).

1%: "off", "off (A/A)" (a second arm without capture: the noise floor) and "1%", interleaved call by call
on the same request body, each repeat starting with another arm; capture's cost is in the few requests
captured, so the mean ratio is the figure to read, p50 shows the draw every request pays.
100%: its writer thread's work lands on whichever call runs next, so call-by-call interleaving charges it
to the neighbour (an earlier version of this script measured "off" 1.65x slower than "off (A/A)"); the
100% arm is timed instead in alternating blocks of BLOCK calls against "off", each 100% block ending
when its writer has stored every sample, so the block pays for all of its capture.
The report gives each ratio's median over the repeats and its spread, the capture counts (so the measured
path really did the work), and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import emit, interleaved  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.digits import build_digits_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime import Predictor
from edgefleet.edge_runtime.capture import CapturePolicy, Capturer
from edgefleet.edge_runtime.capture_spool import CaptureSpool
from edgefleet.edge_runtime.feedback import RecentPredictions
from edgefleet.edge_runtime.http_api import _predict
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.telemetry import TelemetryAggregator

GOAL = 1.05
RATES = {"off": None, "off (A/A)": None, "1%": 0.01, "100%": 1.0}  # A/A: a second arm without capture
BLOCK = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-capture-") as workdir:
        work = Path(workdir)
        with contextlib.redirect_stdout(sys.stderr):
            root, key = build_digits_bundle(work, epochs=3)
        bundle = Bundle.open(root)
        inputs, _, _ = bundle.golden()
        body = json.dumps({"inputs": {n: v[:1].tolist() for n, v in inputs.items()}}).encode()
        arms, capturers = {}, {}
        predictor = Predictor(root, trusted_keys=[key], threads=1, backends=["onnxruntime"])
        host = ModelHost(predictor, telemetry=lambda p: TelemetryAggregator(p.bundle, fleet="bench", device="bench-0"))
        for name, rate in RATES.items():
            capture = None
            if rate is not None:
                spool = CaptureSpool(work / f"capture-{rate}.sqlite", max_bytes=2**31)
                capturers[name] = capturer = Capturer(spool, fleet="bench", device="bench-0")
                capturer.apply(CapturePolicy(enabled=True, sample_rate=rate, max_per_second=1e6,
                                             max_spool_bytes=2**31), persist=False)
                capture = capturer.offer
            arms[name] = _arm(host, host.current.bundle, body, RecentPredictions(), capture)
        names = ["off", "off (A/A)", "1%"]  # each repeat starts with another arm
        repeats = [interleaved({n: arms[n] for n in names[i % 3:] + names[:i % 3]}, args.runs)
                   for i in range(args.repeats)]
        full = [_blocks(arms["off"], arms["100%"], capturers["100%"], args.runs) for _ in range(args.repeats)]
        counts = {}
        for name, capturer in capturers.items():
            capturer.flush(120)
            counts[name] = {**dict(capturer.counts), "spool_bytes": capturer.spool.pending_bytes}
            capturer.close()
            capturer.spool.close()

    emit({
        "benchmark": "capture_cost", "model": "digits-cnn", "path": "http_api._predict (worker thread)",
        "runs": args.runs, "repeats": args.repeats, "goal_ratio_at_1pct": GOAL,
        "interleaved_latency_us": {name: _stats(np.concatenate([r[name] for r in repeats])) for name in names},
        "ratio_vs_off": {name: _ratios(repeats, name, "off") for name in ("off (A/A)", "1%")},
        "ratio_vs_off_aa": {name: _ratios(repeats, name, "off (A/A)") for name in ("off", "1%")},
        "meets_goal_at_1pct": bool(max(_ratios(repeats, "1%", base)["mean"]["median"] for base in ("off", "off (A/A)"))
                                   <= GOAL),
        "at_100pct_blocks": {"block": BLOCK, "mean_us": {name: round(float(np.mean([f[name] for f in full])), 2)
                                                         for name in ("off", "100%")},
                             "ratio_mean": _spread([f["100%"] / f["off"] for f in full])},
        "captured": counts,
    }, args.out)


def _arm(host, bundle, body, recent, capture):  # noqa: ANN001, ANN202
    counter = iter(range(10**12))

    def call() -> object:
        return _predict(host, bundle, body, [], f"r{next(counter)}", recent, None, capture)

    return call


def _blocks(off, full, capturer: Capturer, runs: int) -> dict[str, float]:  # noqa: ANN001
    """Mean µs per call of `off` and `full` timed in alternating blocks; a `full` block ends when its writer
    has stored every sample it was given."""
    clock, totals = time.perf_counter_ns, {"off": 0, "100%": 0}
    for index in range(max(2, runs // BLOCK)):
        order = (("off", off), ("100%", full)) if index % 2 else (("100%", full), ("off", off))
        for name, call in order:
            start = clock()
            for _ in range(BLOCK):
                call()
            if name == "100%":
                capturer.flush(120)
            totals[name] += clock() - start
    calls = max(2, runs // BLOCK) * BLOCK
    return {name: total / calls / 1e3 for name, total in totals.items()}


def _spread(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _stats(times: np.ndarray) -> dict:
    return {"p50": round(float(np.percentile(times, 50)), 2), "p99": round(float(np.percentile(times, 99)), 2),
            "mean": round(float(times.mean()), 2)}


def _ratios(repeats: list[dict], name: str, base: str) -> dict:
    """Per statistic: the median of the per-repeat ratios against `base`, and their min and max."""
    out = {}
    for stat, fn in (("p50", lambda t: np.percentile(t, 50)), ("mean", np.mean)):
        values = [float(fn(r[name]) / fn(r[base])) for r in repeats]
        out[stat] = _spread(values)
    return out


if __name__ == "__main__":
    main()
