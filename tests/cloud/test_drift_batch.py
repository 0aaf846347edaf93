"""The window tests of many scopes at once (cloud/drift_batch.py) give the reports of cloud/drift.py's
`evaluate`, scope by scope: the same verdicts, the same counts and degrees of freedom, statistics equal to
the last bits a sum in another order can change. On the real digits traffic (with and without the
profile's magnitude facts, which send the feature rows through the scalar path) and on synthetic counts
with empty bins, empty windows, small samples (the permutation test) and per-output rows."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from edgefleet.cloud.drift import DRIFT, INSUFFICIENT, OK, DriftThresholds, WindowCounts, evaluate
from edgefleet.cloud.drift_batch import evaluate_many
from edgefleet.edge_runtime import Predictor
from tests.cloud.test_drift import Traffic, brightness, noise, sample


def same(a, b, path: str = "report") -> None:
    """Equal reports: floats to 1e-9 relative, everything else exactly (types included)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, float):
        assert type(b) is float, f"{path}: {b!r} is not a float"
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), \
            f"{path}: {a!r} != {b!r}"
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} != {b!r}"


def check(counts: list[WindowCounts], profile, thresholds: DriftThresholds) -> list[str]:
    one_by_one = [evaluate(c, profile, thresholds) for c in counts]
    for single, batched in zip(one_by_one, evaluate_many(counts, profile, thresholds), strict=True):
        same(single, batched)
    return [report["verdict"] for report in one_by_one]


@pytest.mark.slow  # trains the digits bundle once per session
def test_real_traffic_gets_the_reports_of_evaluate(digits_bundle, digits_splits):
    rng = np.random.default_rng(3)
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        traffic = Traffic(predictor)
        counts = [traffic.counts(make(sample(digits_splits, size, rng), rng))
                  for make in (lambda x, _: x, brightness, noise) for size in (20, 99, 150, 600)]
    plain = copy.deepcopy(traffic.profile)
    for feature in plain["features"]:
        feature.pop("magnitude", None)  # every row through the stacked path
    for profile in (traffic.profile, plain):
        for thresholds in (DriftThresholds(), DriftThresholds(min_samples=20)):
            verdicts = check(counts, profile, thresholds)
            assert {DRIFT, OK} <= set(verdicts)


def test_synthetic_counts_with_empty_bins_small_samples_and_outputs():
    rng = np.random.default_rng(7)
    bins = 12
    reference = [rng.integers(0, 400, bins + 2), np.r_[rng.integers(0, 900, bins), 0, 0]]
    reference[0][4:6] = 0  # bins the reference never saw
    profile = {
        "count": 5000,
        "features": [{"input": "x", "names": ["x.a", "x.b"], "counts": [r.tolist() for r in reference]}],
        "predictions": {"classes": ["0", "1", "2"], "counts": [1200, 1800, 2000]},
        "confidence": {"edges": [0.5], "counts": [900, 4100, 0]},
        "outputs": [{"output": "score", "names": ["count", "score"], "counts": [[100, 300, 600, 0], [0, 0, 0, 0]]}],
    }
    proportions = [np.asarray(r, float) / np.sum(r) for r in reference]
    counts = []
    for index in range(60):
        n = int(rng.choice([0, 10, 60, 120, 400, 3000]))
        drifted = index % 3 == 0
        features = np.stack([rng.multinomial(n, rng.dirichlet(np.ones(bins + 2)) if drifted else p)
                             for p in proportions])
        if index % 5 == 0:
            features[:, 7:10] = 0  # empty on both sides where the reference is empty too
        outputs = {} if index % 4 == 0 else {"score": np.stack([rng.multinomial(n, [0.1, 0.3, 0.6, 0.0]),
                                                                np.zeros(4, np.int64)])}
        counts.append(WindowCounts(samples=n, features={"x": features},
                                   predictions=rng.multinomial(n, [0.24, 0.36, 0.4]),
                                   confidence=rng.multinomial(n, [0.18, 0.82, 0.0]), outputs=outputs))
    for thresholds in (DriftThresholds(), DriftThresholds(min_samples=1), DriftThresholds(min_samples=50, alpha=0.05)):
        verdicts = check(counts, profile, thresholds)
        assert {DRIFT, OK, INSUFFICIENT} <= set(verdicts) or thresholds.min_samples == 1


def test_no_scopes_no_reports():
    assert evaluate_many([], {"count": 1, "features": []}) == []
