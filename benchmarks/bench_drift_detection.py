"""How fast injected drift is detected, and how often clean traffic alerts, on the real digits model.

    python benchmarks/bench_drift_detection.py [--epochs 15] [--seeds 10] [--windows 2000] [--out runs/drift.json]
    python benchmarks/bench_drift_detection.py --series-only     # the real series alone (no CNN training)

Trains and exports the digits CNN (edgefleet.cloud.digits.build_digits_bundle), serves it with the real
Predictor and bins every request like a device does (core.profile on the profile's edges). The
reference profile is the training split; traffic is resampled from the held-out test split.

- detection delay: requests arrive in steps of 10 and accumulate into one window; the delay is the
  number of requests after which the verdict is first "drift", averaged over seeds. Measured with the
  default thresholds (whose min_samples gates the first verdict) and with min_samples lowered to 10,
  which shows how much evidence the statistics themselves need.
- false alerts per 100 clean windows at several window sizes, with the default rule side by side with
  the chi-square test alone (p < alpha / G) and PSI alone (> 0.1), to show what each half of the rule buys.

Real series with documented change points (benchmarks/drift_series.py: the Nile 1898, the US real
interest rate 1980, euro area electrical equipment 2008, US GDP growth volatility 1984), replayed one
sample per evaluation: delay after the change and false alarms per 100 clean evaluations, for the
project (CUSUM or the window rule) and scipy's KS on the same windows, under "real_series"; the table
is also printed to stderr.

Prints JSON with the thresholds and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from drift_series import run as run_series  # benchmarks/drift_series.py, beside this script
from drift_series import table as series_table
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.digits import build_digits_bundle, load_splits
from edgefleet.cloud.drift import DRIFT, DriftThresholds, WindowCounts, evaluate
from edgefleet.core.profile import bin_counts, class_confidence, extract_features, feature_kind
from edgefleet.edge_runtime import Predictor

STEP = 10
LIMIT = 3000
WINDOW_SIZES = (100, 200, 500, 1000)
Make = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class Traffic:
    """Requests through the Predictor, binned on the reference profile's edges."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.profile = predictor.bundle.reference_profile()
        self.postprocess = predictor.bundle.manifest["interface"]["postprocess"]
        self.specs = {spec.name: spec for spec in predictor.bundle.inputs}
        self.output = predictor.bundle.outputs[0].name

    def counts(self, x: np.ndarray) -> WindowCounts:
        features = {f["input"]: bin_counts(extract_features(x, feature_kind(self.specs[f["input"]])),
                                           np.asarray(f["edges"]))
                    for f in self.profile["features"]}
        predicted, confidence = class_confidence(self.predictor.predict(x)[self.output], self.postprocess)
        return WindowCounts(
            samples=len(x), features=features,
            predictions=np.bincount(predicted, minlength=len(self.profile["predictions"]["classes"])),
            confidence=bin_counts(confidence[:, None], np.asarray(self.profile["confidence"]["edges"])[None, :])[0],
        )


def brightness(shift: float) -> Make:
    return lambda x, rng: np.clip(x + shift, 0.0, 1.0).astype(np.float32)


def noise(sigma: float) -> Make:
    return lambda x, rng: np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)


def unchanged(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x


DRIFTS: dict[str, tuple[Make, tuple[int, ...] | None]] = {
    "brightness +0.15": (brightness(0.15), None),
    "gaussian noise sigma 0.15": (noise(0.15), None),
    "class imbalance: only digits 0-2": (unchanged, (0, 1, 2)),
    # milder versions, where the statistics rather than min_samples set the delay
    "brightness +0.05": (brightness(0.05), None),
    "gaussian noise sigma 0.05": (noise(0.05), None),
    "class imbalance: only digits 0-6": (unchanged, (0, 1, 2, 3, 4, 5, 6)),
}


def sample(splits, n: int, rng: np.random.Generator, classes: tuple[int, ...] | None) -> np.ndarray:
    pool = splits.x_test if classes is None else splits.x_test[np.isin(splits.y_test, classes)]
    return pool[rng.integers(0, len(pool), n)]


def delay(traffic: Traffic, splits, make: Make, classes, thresholds: DriftThresholds, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    total: WindowCounts | None = None
    for seen in range(STEP, LIMIT + 1, STEP):
        batch = traffic.counts(make(sample(splits, STEP, rng, classes), rng))
        total = batch if total is None else total + batch
        report = evaluate(total, traffic.profile, thresholds)
        if report["verdict"] == DRIFT:
            groups = [g for g in ("data_drift", "prediction_drift") if report[g]["verdict"] == DRIFT]
            return {"requests": seen, "groups": groups}
    return {"requests": None, "groups": []}


def summarise_delays(runs: list[dict]) -> dict:
    found = [r["requests"] for r in runs if r["requests"] is not None]
    return {
        "mean_requests": float(np.mean(found)) if found else None,
        "min_requests": min(found) if found else None,
        "max_requests": max(found) if found else None,
        "detected": f"{len(found)}/{len(runs)}",
        "groups_at_detection": sorted({g for r in runs for g in r["groups"]}),
    }


def false_alerts(traffic: Traffic, splits, thresholds: DriftThresholds, size: int, windows: int) -> dict:
    rng = np.random.default_rng(size)
    rule = chi_only = psi_only = 0
    for _ in range(windows):
        report = evaluate(traffic.counts(sample(splits, size, rng, None)), traffic.profile, thresholds)
        rule += report["verdict"] == DRIFT
        signals = [(s, report[g]["alpha"]) for g in ("data_drift", "prediction_drift")
                   for s in report[g]["signals"].values()]
        chi_only += any(s["chi2"]["p"] < alpha for s, alpha in signals)
        psi_only += any(s["psi"] > 0.1 for s, _ in signals)
    per_100 = 100.0 / windows
    return {
        "windows": windows,
        "default_rule": rule * per_100,
        "chi_square_only": chi_only * per_100,
        "psi_over_0.1_only": psi_only * per_100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--windows", type=int, default=2000, help="clean windows per window size")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--series-only", action="store_true", help="only the real series (no digits CNN)")
    args = parser.parse_args()

    started = time.perf_counter()
    series = run_series()
    print(series_table(series), file=sys.stderr)
    if args.series_only:
        emit({"benchmark": "drift_detection", "real_series": series, "seconds": time.perf_counter() - started},
             args.out)
        return
    splits = load_splits()
    thresholds = DriftThresholds()
    eager = dataclasses.replace(thresholds, min_samples=STEP)
    with tempfile.TemporaryDirectory(prefix="edgefleet-drift-") as workdir:
        with contextlib.redirect_stdout(sys.stderr):
            root, public = build_digits_bundle(Path(workdir), epochs=args.epochs)
        with Predictor(root, trusted_keys=[public]) as predictor:
            traffic = Traffic(predictor)
            detection = {}
            for name, (make, classes) in DRIFTS.items():
                detection[name] = {
                    label: summarise_delays([delay(traffic, splits, make, classes, rule, seed)
                                             for seed in range(args.seeds)])
                    for label, rule in (("default_thresholds", thresholds), ("min_samples_10", eager))
                }
            clean = {str(size): false_alerts(traffic, splits, thresholds, size, args.windows)
                     for size in WINDOW_SIZES}
    report = {
        "benchmark": "drift_detection",
        "model": "digits-cnn",
        "reference": f"training split, {len(splits.x_train)} images",
        "traffic": f"resampled with replacement from the held-out test split, {len(splits.x_test)} images",
        "thresholds": thresholds.to_dict(),
        "detection_delay": {"step_requests": STEP, "limit_requests": LIMIT, "seeds": args.seeds, "by_drift": detection},
        "false_alerts_per_100_clean_windows": clean,
        "real_series": series,
        "seconds": time.perf_counter() - started,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
