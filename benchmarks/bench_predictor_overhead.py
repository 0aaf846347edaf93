"""What the Predictor costs over a bare onnxruntime session: digits CNN, batch 1, one process.

    python benchmarks/bench_predictor_overhead.py --runs 20000 --threads 1 --out runs/overhead.json

Builds the digits bundle (edgefleet.cloud.digits), then times Predictor.predict and a bare
InferenceSession.run on the same artifact with the same session options, interleaved call by call
(edgefleet.edge_runtime.bench with compare_raw=True), and prints JSON: both latency distributions,
the p50 and mean ratios against the project's goal (<= 1.10x, aiming for 1.03x), and the machine.
The ratio is the number to watch; absolute times depend on the machine and are never a gate.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.digits import build_digits_bundle
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime.bench import BenchOptions, run_bench

GOAL = 1.10
AIM = 1.03


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000, help="interleaved pairs of calls (default 20000)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both (default 1)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (cost is independent)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="edgefleet-overhead-") as workdir:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's chatter must not corrupt the JSON
            bundle_dir, public_key = build_digits_bundle(Path(workdir), epochs=args.epochs)
        options = BenchOptions(batches=(1,), threads=args.threads, runs=args.runs, compare_raw=True)
        report = run_bench(bundle_dir, TrustStore.from_paths([public_key]), options)

    (result,) = report["results"]
    summary = {
        "benchmark": "predictor_overhead",
        "model": f"{report['bundle']['name']} v{report['bundle']['version']}",
        "batch": 1,
        "threads": args.threads,
        "runs": result["runs"],
        "stopped_by": result["stopped_by"],
        "predictor_latency_ms": result["latency_ms"],
        "raw_latency_ms": result["raw"]["latency_ms"],
        "overhead_ratio_p50": result["overhead_ratio"],
        "overhead_ratio_mean": result["overhead_ratio_mean"],
        "overhead_us_p50": (result["latency_ms"]["p50"] - result["raw"]["latency_ms"]["p50"]) * 1e3,
        "goal_ratio": GOAL,
        "aim_ratio": AIM,
        "meets_goal": result["overhead_ratio"] <= GOAL,
        "meets_aim": result["overhead_ratio"] <= AIM,
        "machine": report["machine"],
        "bundle": {k: v for k, v in report["bundle"].items() if k != "root"},  # root was a temporary dir
    }
    emit(summary, args.out)
    return summary


if __name__ == "__main__":
    main()
