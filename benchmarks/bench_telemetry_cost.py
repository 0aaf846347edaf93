"""What telemetry costs per request: Predictor.predict with telemetry on vs off, batch 1.

    python benchmarks/bench_telemetry_cost.py [--model digits|regression|embedding|other] [--runs 20000]
                                              [--threads 1] [--out runs/telemetry_cost.json]

Two Predictors on the same bundle, one with a TelemetryAggregator, called alternately on the same
request in one process. digits: the CNN classifier (the native sketch: channel taps, predicted class,
confidence, latency). regression: an 8-feature MLP (feature columns and its value histogram, binned in
numpy by core/output_summary.py). embedding: an MLP to a 64-d embedding (its norm and 8 projections).
other: the regression MLP exported without a task (feature columns only, no output summary).
Prints JSON with both distributions and the ratios against the goal (<= 1.05x), the counts the
telemetry recorded (so the measured path really did the work), and the machine.
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
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime import Predictor
from edgefleet.edge_runtime.bench import time_interleaved
from edgefleet.edge_runtime.telemetry import TelemetryAggregator

GOAL = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("digits", "regression", "embedding", "other"), default="digits")
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-telemetry-") as workdir:
        with contextlib.redirect_stdout(sys.stderr):
            root, key = (build_digits_bundle(Path(workdir), epochs=3) if args.model == "digits"
                         else build_mlp_bundle(Path(workdir), args.model))
        plain = Predictor(root, trusted_keys=[key], threads=args.threads)
        observed = Predictor(root, trusted_keys=[key], threads=args.threads)
        aggregator = TelemetryAggregator(observed.bundle, fleet="bench", device="bench-0")
        observed.enable_telemetry(aggregator)
        inputs, _, _ = Bundle.open(root).golden()
        feed = {name: value[:1].copy() for name, value in inputs.items()}
        on, off = time_interleaved(observed.predict, plain.predict, feed, args.runs)
        window = aggregator.close_window()

    ratio_p50 = on["latency_ms"]["p50"] / off["latency_ms"]["p50"]
    ratio_mean = on["latency_ms"]["mean"] / off["latency_ms"]["mean"]
    report = {
        "benchmark": "telemetry_cost",
        "model": args.model, "batch": 1, "threads": args.threads, "runs": on["runs"],
        "telemetry_on_latency_ms": on["latency_ms"],
        "telemetry_off_latency_ms": off["latency_ms"],
        "ratio_p50": ratio_p50,
        "ratio_mean": ratio_mean,
        "cost_us_p50": (on["latency_ms"]["p50"] - off["latency_ms"]["p50"]) * 1e3,
        "goal_ratio": GOAL,
        "meets_goal": ratio_p50 <= GOAL and ratio_mean <= GOAL,
        "sketch_recorded": {"requests": window.requests, "samples": window.samples,
                            "features": [list(map(sum, f.counts)) for f in window.features],
                            "predictions": sum(window.predictions), "confidence": sum(window.confidence),
                            "outputs": [list(map(sum, o.counts)) for o in window.outputs]},
    }
    emit(report, args.out)


def build_mlp_bundle(workdir: Path, kind: str) -> tuple[Path, Path]:
    """A regression MLP (8 features -> 1 value) or an embedding MLP (8 -> 64), exported with 1,000 reference
    rows and the task, so the profile has its output summary ("other": the regression MLP, no summary)."""
    import numpy as np
    import torch

    from edgefleet.compilers import export_torch

    torch.manual_seed(0)
    width = 64 if kind == "embedding" else 1
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, width)).eval()
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    key = SigningKey.generate()
    _, public = key.save(workdir / "keys", "release")
    bundle = export_torch(model, x[:4], workdir / kind, name=kind, version=1, reference_data=x, task=kind,
                          input_names=["features"], output_names=["embedding" if kind == "embedding" else "value"],
                          signing_key=key)
    return bundle.root, public


if __name__ == "__main__":
    main()
