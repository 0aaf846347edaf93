"""The one definition of "numeric error" that export, compression and compile steps record."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

REL_FLOOR = 1e-12  # relative error is taken against max(|expected|, REL_FLOOR)


def max_errors(got: Iterable[np.ndarray], want: Iterable[np.ndarray]) -> tuple[float, float]:
    """Max absolute and max relative difference over pairs of arrays of equal shape, in float64."""
    max_abs = max_rel = 0.0
    for value, expected in zip(got, want, strict=True):
        expected = np.asarray(expected, dtype=np.float64)
        diff = np.abs(np.asarray(value, dtype=np.float64) - expected)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(expected), REL_FLOOR)).max()))
    return max_abs, max_rel
