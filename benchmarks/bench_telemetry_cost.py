"""What telemetry costs per request: Predictor.predict with telemetry on vs off, digits CNN, batch 1.

    python benchmarks/bench_telemetry_cost.py [--runs 20000] [--threads 1] [--out runs/telemetry_cost.json]

Two Predictors on the same bundle, one with a TelemetryAggregator (the native per-request sketch:
channel taps, predicted class, confidence, latency), called alternately on the same real digit in one
process. Prints JSON with both distributions and the ratios against the goal (<= 1.05x), the counts
the sketch recorded (so the measured path really did the work), and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.digits import build_digits_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime import Predictor
from edgefleet.edge_runtime.bench import time_interleaved
from edgefleet.edge_runtime.telemetry import TelemetryAggregator

GOAL = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-telemetry-") as workdir:
        with contextlib.redirect_stdout(sys.stderr):
            root, key = build_digits_bundle(Path(workdir), epochs=3)
        plain = Predictor(root, trusted_keys=[key], threads=args.threads)
        observed = Predictor(root, trusted_keys=[key], threads=args.threads)
        aggregator = TelemetryAggregator(observed.bundle, fleet="bench", device="bench-0")
        observed.enable_telemetry(aggregator)
        inputs, _, _ = Bundle.open(root).golden()
        feed = {"pixels": inputs["pixels"][:1].copy()}
        on, off = time_interleaved(observed.predict, plain.predict, feed, args.runs)
        window = aggregator.close_window()

    ratio_p50 = on["latency_ms"]["p50"] / off["latency_ms"]["p50"]
    ratio_mean = on["latency_ms"]["mean"] / off["latency_ms"]["mean"]
    report = {
        "benchmark": "telemetry_cost",
        "model": "digits-cnn", "batch": 1, "threads": args.threads, "runs": on["runs"],
        "telemetry_on_latency_ms": on["latency_ms"],
        "telemetry_off_latency_ms": off["latency_ms"],
        "ratio_p50": ratio_p50,
        "ratio_mean": ratio_mean,
        "cost_us_p50": (on["latency_ms"]["p50"] - off["latency_ms"]["p50"]) * 1e3,
        "goal_ratio": GOAL,
        "meets_goal": ratio_p50 <= GOAL and ratio_mean <= GOAL,
        "sketch_recorded": {"requests": window.requests, "samples": window.samples,
                            "features": [list(map(sum, f.counts)) for f in window.features],
                            "predictions": sum(window.predictions), "confidence": sum(window.confidence)},
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
