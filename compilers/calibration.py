"""Calibrating a classifier's confidence at export, for accuracy estimation without labels
(core/calibration.py holds the contract and the estimate).

Histogram binning on the reference profile's confidence bins, made monotone: scikit-learn's isotonic
regression of correctness on confidence (the top-1 probability), averaged over the calibration samples
in each bin. A bin no calibration sample falls in takes the isotonic fit at the bin's middle, so a
window whose confidence lands where the calibration data never went still gets an estimate, the
nearest the data supports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.isotonic import IsotonicRegression

from edgefleet.core.errors import ExportError
from edgefleet.core.profile import class_confidence


def confidence_calibration(scores: np.ndarray, labels: np.ndarray, postprocess: str, edges: Sequence[float],
                           on: str) -> dict:
    """The calibration map of core/calibration.py from (N, C) scores and their N true class indices."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(scores):
        raise ExportError(f"calibration needs one label per sample: {len(scores)} samples, {len(labels)} labels")
    predicted, confidence = class_confidence(scores, postprocess)
    keep = np.isfinite(confidence)
    predicted, confidence, labels = predicted[keep], confidence[keep], labels[keep]
    if not len(labels):
        raise ExportError("calibration needs at least one sample with a finite confidence")
    correct = (predicted == labels).astype(np.float64)
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(confidence, correct)
    fitted = isotonic.predict(confidence)
    edges = np.asarray(edges, np.float64)
    bins = np.searchsorted(edges, confidence, side="right")
    low = np.concatenate([[min(1.0 / scores.shape[1], edges[0])], edges])  # a top-1 probability is >= 1/C
    high = np.concatenate([edges, [1.0]])
    accuracy = [float(fitted[bins == b].mean()) if (bins == b).any() else float(isotonic.predict([(lo + hi) / 2])[0])
                for b, (lo, hi) in enumerate(zip(low, high, strict=True))]
    return {"method": "isotonic-binned", "on": on, "count": int(len(labels)), "accuracy": accuracy,
            "expected_accuracy": float(np.asarray(accuracy)[bins].mean()),
            "measured_accuracy": float(correct.mean())}
