"""Data quality inside the telemetry sketch, at no extra call per request: non-finite values, values
outside the reference range, and inputs stuck on one value (a dead sensor), per input feature.

    quality = FeatureQuality(profile_feature)             # one per profiled input
    plan = quality.plan(probe)                            # probe: the features of the window's last sample
    sketch = RequestSketch(kind, plan.edges, ...)         # the one native sketch, on the augmented edges
    ...                                                   # requests: sketch.update(x, scores, latency)
    features, counts = plan.split(snapshot["features"])   # profile-binned counts, (F, 4) quality counts

The sketch bins each feature on the reference profile's edges plus six more: -MAX (below it only -inf),
the reference minimum and the float after its maximum (the range), +inf (at it only +inf), and a probe
interval around the value the feature had on the last sample of the previous window. Every profile edge
is one of the augmented edges, so each augmented bin lies inside one profile bin and `split` adds the
bins back into exactly the counts the profile's edges give (the drift monitor's input is unchanged); each
augmented bin also lies inside one quality region, so the same counts say how many values were
non-finite, below or above the range, and equal to the probe. A feature whose every sample of a window
equals the last value of the window before is constant over both: stuck. The probe is found one window
late (the first window after a sensor dies is not flagged, the second is), the price of not looking at
every request's features in Python.

Quality counts per feature, in the order of core/window_quality.py QUALITY_COLUMNS: non-finite (NaN,
-inf, +inf), below the reference minimum, above the reference maximum, equal to the probe. A profile
written before reference ranges (no "min"/"max") has no range: its below/above counts are 0.

The probe interval is [p - tol, p + tol] with tol = PROBE_TOLERANCE * |p|: the native kernel's channel
mean and std may differ from numpy's in the last bit, and a dead camera's frames must still match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

PROBE_TOLERANCE = 1e-12
_MAX = np.finfo(np.float64).max


@dataclass(frozen=True)
class QualityPlan:
    """The augmented edges of one window and how their counts fold back."""

    edges: np.ndarray  # (F, E + 6) float64, each row sorted
    profile_bin: np.ndarray  # (F, E + 8) int: the profile column of each augmented column
    quality: np.ndarray  # (F, E + 8, 4) int64: 1 where a column counts toward a quality column
    profile_columns: int  # E + 2

    def split(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F, E + 8) augmented counts -> (F, E + 2) profile counts, (F, 4) quality counts."""
        features = np.zeros((counts.shape[0], self.profile_columns), np.int64)
        rows = np.broadcast_to(np.arange(counts.shape[0])[:, None], counts.shape)
        np.add.at(features, (rows, self.profile_bin), counts)
        return features, np.einsum("fb,fbq->fq", counts, self.quality)


class FeatureQuality:
    """The quality plans of one profiled input (its profile feature entry: edges, optional min/max)."""

    def __init__(self, feature: Mapping) -> None:
        self.profile_edges = np.asarray(feature["edges"], np.float64)
        count = self.profile_edges.shape[0]
        low, high = feature.get("min"), feature.get("max")
        self.low = np.array([-_MAX if v is None else v for v in (low or [None] * count)], np.float64)
        # the float after the maximum: the maximum itself is in range
        with np.errstate(over="ignore"):  # no range: the float after MAX is +inf, and nothing is above it
            self.high = np.nextafter(np.array([_MAX if v is None else v for v in (high or [None] * count)],
                                              np.float64), np.inf)
        self.has_range = low is not None and high is not None

    def plan(self, probe: np.ndarray | None = None) -> QualityPlan:
        """The plan of a window whose stuck test compares with `probe` ((F,) float64; non-finite entries
        and None: no probe for those features)."""
        count = self.profile_edges.shape[0]
        probe = np.full(count, np.inf) if probe is None else np.asarray(probe, np.float64)
        finite = np.isfinite(probe)
        tolerance = np.abs(np.where(finite, probe, 0.0)) * PROBE_TOLERANCE
        probe_low = np.where(finite, probe - tolerance, np.inf)
        probe_high = np.where(finite, np.nextafter(probe + tolerance, np.inf), np.inf)
        extra = np.stack([np.full(count, -_MAX), self.low, self.high, np.full(count, np.inf), probe_low, probe_high], 1)
        edges = np.sort(np.concatenate([self.profile_edges, extra], axis=1), axis=1)
        n_edges = edges.shape[1]
        # bin b (0..n_edges) holds [lower, upper): lower = edges[b - 1] (-inf for b = 0), upper = edges[b]
        lower = np.concatenate([np.full((count, 1), -np.inf), edges], axis=1)
        upper = np.concatenate([edges, np.full((count, 1), np.inf)], axis=1)
        profile_bin = np.stack([np.searchsorted(self.profile_edges[f], lower[f], side="right")
                                for f in range(count)]) if count else np.zeros((0, n_edges + 1), int)
        negative_inf = np.zeros_like(lower, bool)
        negative_inf[:, 0] = True
        positive_inf = lower == np.inf
        finite_bin = ~negative_inf & ~positive_inf
        below = finite_bin & (lower < self.low[:, None])
        above = finite_bin & (lower >= self.high[:, None])
        at_probe = (upper > lower) & (lower >= probe_low[:, None]) & (upper <= probe_high[:, None])
        nan = np.zeros((count, 1), bool)
        quality = np.stack([
            np.concatenate([negative_inf | positive_inf, ~nan], 1),  # the last column counts NaN
            np.concatenate([below, nan], 1),
            np.concatenate([above, nan], 1),
            np.concatenate([at_probe, nan], 1),
        ], axis=2).astype(np.int64)
        profile_bin = np.concatenate([profile_bin, np.full((count, 1), self.profile_edges.shape[1] + 1)], 1)
        return QualityPlan(np.ascontiguousarray(edges), profile_bin, quality, self.profile_edges.shape[1] + 2)
