"""Magnitude-aware bins: tail bins beyond the reference's range, and the facts that turn counts into distances.

Quantile bins alone say which share of values moved, not how far: their outer bins are open-ended, so a
series that collapses to a quarter of its level lands in the lowest bin exactly like one that dips just
below the reference's 10th percentile. A feature's edges are therefore

    [min - 4s, min - 2s, min - s, min,  q1 .. q(B-1),  max+, max+ + s, max+ + 2s, max+ + 4s]

with s the reference's standard deviation, min and max its smallest and largest finite values and max+
the float after max (the maximum itself is inside the range). The B bins between min and max+ are the
reference's quantile bins; the reference has no value in the eight tail bins, so a window's counts there
say at once that values left the reference's range and by about how many reference deviations. The
outermost two stay open-ended: beyond 4 s the move is "at least" that.

Each feature row also gets `magnitude` facts, so the cloud can compute location statistics on the
binned counts alone (cloud/drift_magnitude.py): the reference's exact mean and standard deviation, the
mean of the reference values in each finite bin (None where it holds none: the tail bins, empty
quantile bins), and the lag-1 autocorrelation of the values in the order the reference gave them
(cloud/drift_dependence.py: a series in time order is not a set of independent samples, and the window
tests widen their null by it; None under 3 values or without spread). Since the window's values in a bin
are summarised by the reference's mean of that bin (or the bin's midpoint), the binned mean of the
reference equals its exact mean.

A profile written before these bins (edges = the B - 1 quantile edges, no `magnitude`) stays valid: the
device bins on whatever edges the profile has, and the cloud leaves the location statistics out.
"""

from __future__ import annotations

import warnings

import numpy as np

TAIL_STEPS = (1.0, 2.0, 4.0)  # tail edges beyond min and max, in reference standard deviations
TAIL_EDGES = 2 * (len(TAIL_STEPS) + 1)  # edges added to the B - 1 quantile edges of each feature


def range_edges(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """(N, F) reference values and their (F, B - 1) quantile edges -> (F, B - 1 + TAIL_EDGES) edges with
    the range and tail edges added (module docstring). A feature without a finite value gets zeros."""
    finite = np.isfinite(values)
    has = finite.any(axis=0) if len(values) else np.zeros(values.shape[1], bool)
    low = np.where(has, np.where(finite, values, np.inf).min(axis=0, initial=np.inf), 0.0)
    high = np.nextafter(np.where(has, np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf), 0.0), np.inf)
    scale = np.where(has, np.nan_to_num(_nanstd(values), nan=0.0), 0.0)
    steps = np.asarray(TAIL_STEPS)
    below = low[:, None] - scale[:, None] * steps[::-1][None, :]
    above = high[:, None] + scale[:, None] * steps[None, :]
    quantiles = np.clip(quantiles, low[:, None], high[:, None])  # already inside; keeps rows sorted
    edges = np.concatenate([below, low[:, None], quantiles, high[:, None], above], axis=1)
    return np.ascontiguousarray(edges, dtype=np.float64)


def magnitude_facts(values: np.ndarray, edges: np.ndarray) -> dict:
    """{"mean": [F], "std": [F], "bin_means": [F][E + 1], "lag1": [F]} of the reference values on `edges`
    (None where a feature or a bin has no finite value)."""
    means, stds, bin_means, lags = [], [], [], []
    for column, row in zip(np.asarray(values, np.float64).T, edges, strict=True):
        finite = column[np.isfinite(column)]
        if not len(finite):
            means.append(None)
            stds.append(None)
            bin_means.append([None] * (len(row) + 1))
            lags.append(None)
            continue
        means.append(float(finite.mean()))
        stds.append(float(finite.std()))
        where = np.searchsorted(row, finite, side="right")
        sums = np.bincount(where, weights=finite, minlength=len(row) + 1)
        counts = np.bincount(where, minlength=len(row) + 1)
        bin_means.append([float(s / c) if c else None for s, c in zip(sums, counts, strict=True)])
        lags.append(_lag1(finite))
    return {"mean": means, "std": stds, "bin_means": bin_means, "lag1": lags}


def _lag1(finite: np.ndarray) -> float | None:
    """The lag-1 autocorrelation of finite values in their given order."""
    centred = finite - finite.mean()
    denominator = float(centred @ centred)
    if len(finite) < 3 or not denominator > 0:
        return None
    return float(centred[1:] @ centred[:-1]) / denominator


def _nanstd(values: np.ndarray) -> np.ndarray:
    if not len(values):
        return np.zeros(values.shape[1])
    finite = np.where(np.isfinite(values), values, np.nan)
    with warnings.catch_warnings():  # an all-NaN feature: NaN, made 0 by the caller
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(finite, axis=0)
