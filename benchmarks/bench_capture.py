"""What data capture costs a predict request: the device's HTTP predict path with capture off, at 1% and at 100%.

    python benchmarks/bench_capture.py [--runs 20000] [--repeats 5] [--out runs/capture_cost.json]

Three arms on the same digits CNN bundle, each its own ModelHost with telemetry on, called in turn on the
same request body (interleaved call by call, so machine load hits all alike): the worker-thread part of
POST /v1/predict (`http_api._predict`: parse the body, predict, build the answer, keep the request id,
count the slice, offer the capture), which is where capture runs; the HTTP server around it is the same
for every arm and only dilutes the ratio. "1%" and "100%" have a real Capturer with its SQLite spool and
writer thread (rate limit 1e6/s, so nothing is rate-limited away). Capture's cost is in the few requests
that are captured, so the mean ratio is the figure to read; p50 shows the draw every request pays. The
report gives each ratio's median over the repeats and its spread (interleaving still leaves a position
effect of about ±0.02), the capture counts (so the measured path really did the work), and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
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
RATES = {"off": None, "1%": 0.01, "100%": 1.0}


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
        for name, rate in RATES.items():
            predictor = Predictor(root, trusted_keys=[key], threads=1, backends=["onnxruntime"])
            host = ModelHost(predictor, telemetry=lambda p: TelemetryAggregator(p.bundle, fleet="bench",
                                                                                device="bench-0"))
            capture = None
            if rate is not None:
                spool = CaptureSpool(work / f"capture-{rate}.sqlite", max_bytes=2**31)
                capturers[name] = capturer = Capturer(spool, fleet="bench", device="bench-0")
                capturer.apply(CapturePolicy(enabled=True, sample_rate=rate, max_per_second=1e6,
                                             max_spool_bytes=2**31), persist=False)
                capture = capturer.offer
            arms[name] = _arm(host, host.current.bundle, body, RecentPredictions(), capture)
        names = list(arms)  # each repeat starts with another arm: the position effect falls on each in turn
        repeats = [interleaved({n: arms[n] for n in names[i % 3:] + names[:i % 3]}, args.runs)
                   for i in range(args.repeats)]
        counts = {}
        for name, capturer in capturers.items():
            capturer.flush(120)
            calls = (args.runs + min(args.runs, 1000)) * args.repeats  # with interleaved()'s warm-up calls
            counts[name] = {**dict(capturer.counts), "requests": calls, "spool_bytes": capturer.spool.pending_bytes}
            capturer.close()
            capturer.spool.close()

    emit({
        "benchmark": "capture_cost", "model": "digits-cnn", "path": "http_api._predict (worker thread)",
        "runs": args.runs, "repeats": args.repeats, "goal_ratio_at_1pct": GOAL,
        "latency_us": {name: _stats(np.concatenate([r[name] for r in repeats])) for name in RATES},
        "ratio_vs_off": {name: _ratios(repeats, name) for name in ("1%", "100%")},
        "meets_goal_at_1pct": bool(_ratios(repeats, "1%")["mean"]["median"] <= GOAL),
        "captured": counts,
    }, args.out)


def _arm(host, bundle, body, recent, capture):  # noqa: ANN001, ANN202
    counter = iter(range(10**12))

    def call() -> object:
        return _predict(host, bundle, body, [], f"r{next(counter)}", recent, None, capture)

    return call


def _stats(times: np.ndarray) -> dict:
    return {"p50": round(float(np.percentile(times, 50)), 2), "p99": round(float(np.percentile(times, 99)), 2),
            "mean": round(float(times.mean()), 2)}


def _ratios(repeats: list[dict], name: str) -> dict:
    """Per statistic: the median of the per-repeat ratios against "off", and their min and max."""
    out = {}
    for stat, fn in (("p50", lambda t: np.percentile(t, 50)), ("mean", np.mean)):
        values = [float(fn(r[name]) / fn(r["off"])) for r in repeats]
        out[stat] = {"median": round(float(np.median(values)), 3), "min": round(min(values), 3),
                     "max": round(max(values), 3)}
    return out


if __name__ == "__main__":
    main()
