"""The figures offline evaluation decides on, each with its 95% interval, so a difference within noise is
never called worse.

- `paired_interval`: the mean of a - b over paired rows (the candidate's and the serving model's score on
  the same inputs) with a percentile bootstrap interval. Pairing matters: both models see the same hard
  rows, so the difference is far tighter than two separate intervals suggest. Scores with few distinct
  differences (classification: -1, 0, +1) are resampled as multinomial counts of those values, which is
  the same distribution as resampling rows at O(resamples) cost, whatever the row count.
- `proportion`: a share with its Wilson score interval (cloud/compress/evaluate.py).
- `calibration`: expected calibration error (ECE) over equal-width confidence bins (lo, hi], the first
  bin also holding 0: ECE = sum over bins of (count_b / N) * |accuracy_b - mean confidence_b|; the
  reliability bins beside it, and a bootstrap interval of the ECE (it is biased upwards on few rows).
"""

from __future__ import annotations

import numpy as np

from edgefleet.cloud.compress.evaluate import wilson_interval

LEVEL = 0.95
RESAMPLES = 2000
MULTINOMIAL_VALUES = 64  # at most this many distinct differences: resample their counts, not rows
ROW_CHUNK = 1 << 22  # rows x resamples drawn at once when rows are resampled


def proportion(successes: int, rows: int) -> dict:
    """{"value", "ci95", "count"} of a share; value None for no rows."""
    low, high = wilson_interval(int(successes), int(rows), LEVEL)
    return {"value": successes / rows if rows else None, "ci95": [low, high], "count": int(rows)}


def paired_interval(a: np.ndarray, b: np.ndarray | None = None, *, seed: int = 0,
                    resamples: int = RESAMPLES) -> dict:
    """{"value", "ci95", "count"}: the mean of a - b (or of a alone) and its percentile bootstrap interval."""
    d = np.asarray(a, np.float64) - (0.0 if b is None else np.asarray(b, np.float64))
    n = d.size
    if n == 0:
        return {"value": None, "ci95": None, "count": 0}
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if values.size <= MULTINOMIAL_VALUES:
        means = rng.multinomial(n, counts / n, size=resamples) @ values / n
    else:
        per_chunk = max(1, ROW_CHUNK // n)
        means = np.concatenate([d[rng.integers(0, n, (min(per_chunk, resamples - start), n))].mean(axis=1)
                                for start in range(0, resamples, per_chunk)])
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {"value": float(d.mean()), "ci95": [float(low), float(high)], "count": int(n)}


def verdict(difference: dict, min_rows: int, max_drop: float = 0.0) -> str:
    """"worse" only when the whole interval of candidate - serving is below -max_drop (the loss the user
    accepts, 0 by default), "better" only when it is above zero; otherwise "within noise"."""
    if difference["count"] < min_rows or difference["ci95"] is None:
        return "too few rows"
    low, high = difference["ci95"]
    return "worse" if high < -max_drop else "better" if low > 0 else "within noise"


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The bin (lo, hi] of each confidence among `bins` equal-width bins over [0, 1]; 0 goes to the first."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, np.clip(confidence, 0.0, 1.0), side="left") - 1, 0, bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE (module docstring) of top-1 confidences against whether each answer was right."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    index = bin_index(confidence, bins)
    counts = np.bincount(index, minlength=bins)
    gaps = np.abs(np.bincount(index, correct, bins) - np.bincount(index, confidence, bins))
    return float(gaps.sum() / max(counts.sum(), 1))


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 10, *, seed: int = 0,
                resamples: int = 200) -> dict:
    """{"ece", "ci95", "bins": [{"lo", "hi", "count", "confidence", "accuracy"}], "count"}."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    n = confidence.size
    index = bin_index(confidence, bins)
    counts = np.bincount(index, minlength=bins)
    sums_conf, sums_acc = np.bincount(index, confidence, bins), np.bincount(index, correct, bins)
    table = [{"lo": b / bins, "hi": (b + 1) / bins, "count": int(counts[b]),
              "confidence": float(sums_conf[b] / counts[b]) if counts[b] else None,
              "accuracy": float(sums_acc[b] / counts[b]) if counts[b] else None} for b in range(bins)]
    ece = expected_calibration_error(confidence, correct, bins)
    interval = None
    if n:
        rng = np.random.default_rng(seed)
        draws = [rng.integers(0, n, n) for _ in range(resamples)]
        values = [expected_calibration_error(confidence[i], correct[i], bins) for i in draws]
        interval = [float(v) for v in np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])]
    return {"ece": ece, "ci95": interval, "bins": table, "count": int(n)}
