"""Accuracy without labels: confidence-based performance estimation (the idea of NannyML's CBPE).

At export, a classifier's confidence (its top-1 probability) is calibrated against correctness on
labelled data the model did not train on when there is some (the export's eval data, else the
reference data, said in `on`): for each bin of the reference profile's confidence histogram, the
probability that a prediction with that confidence is right. The map is stored in the profile,
beside the histogram it reads:

    profile["confidence"]["calibration"] = {
        "method": "isotonic-binned", "on": "eval", "count": 450,
        "accuracy": [..one per bin: E + 1..],       # P(correct | confidence in bin b)
        "expected_accuracy": 0.968,                 # the estimate on the calibration data itself
        "measured_accuracy": 0.971}                 # what its labels said

A telemetry window already carries the confidence histogram on those bins, so the estimate for any
set of windows is the count-weighted mean of the per-bin accuracies (`estimated_accuracy`); a NaN
confidence counts as wrong. The estimate moves when confidence moves: it catches shifts that make the
model unsure (new inputs far from the training data) before any label arrives, and misses shifts where
the model stays confidently wrong, which only labels reveal (both are reported side by side).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def calibration_of(profile: Mapping | None) -> Mapping | None:
    """The profile's confidence calibration, or None (no profile, not a classifier, made without labels)."""
    confidence = (profile or {}).get("confidence") or {}
    calibration = confidence.get("calibration")
    return calibration if isinstance(calibration, Mapping) else None


def estimated_accuracy(confidence_counts: Sequence[int], calibration: Mapping) -> float | None:
    """The expected accuracy of the predictions counted in a confidence histogram (E + 2 counts, the
    NaN column last); None when it counts nothing or does not fit the calibration's E + 1 bins."""
    counts = np.asarray(confidence_counts, np.float64)
    accuracy = np.asarray(calibration["accuracy"], np.float64)
    if counts.shape != (accuracy.size + 1,) or counts.sum() <= 0:
        return None
    return float(counts[:-1] @ accuracy / counts.sum())
