"""The numpy reference of the native kernels: this file defines what they compute.

`histogram_update_reference` is written for reading, not speed. The native `histogram_update` must give
the same counts on every input, and reject the same bad arguments with the same messages
(tests/cpp_ext/test_histogram.py checks both).
"""

from __future__ import annotations

import numpy as np

X_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def histogram_update_reference(counts: np.ndarray, x: np.ndarray, edges: np.ndarray) -> None:
    """Adds the values of x to per-feature histograms, in place.

    x (N, F) float32 or float64; edges (F, E) float64, each row sorted ascending (duplicates allowed,
    they make empty bins), E >= 1; counts (F, E + 2) int64, C-contiguous and writable.

    Value v of feature f goes to bin `searchsorted(edges[f], v, side="right")`, the number of edges
    <= v: bin 0 is below edges[f, 0] (with -inf), bin i holds edges[f, i-1] <= v < edges[f, i], bin E
    is at or above the last edge (with +inf). NaN goes to bin E + 1. Counts are added to, never reset.
    """
    check_arguments(counts, x, edges)
    n_edges = edges.shape[1]
    for f in range(edges.shape[0]):
        values = x[:, f].astype(np.float64)  # exact for float32
        is_nan = np.isnan(values)
        bins = np.searchsorted(edges[f], values[~is_nan], side="right")
        counts[f, : n_edges + 1] += np.bincount(bins, minlength=n_edges + 1)
        counts[f, n_edges + 1] += np.count_nonzero(is_nan)


def check_arguments(counts: np.ndarray, x: np.ndarray, edges: np.ndarray) -> None:
    """Raises TypeError (wrong type or dtype) or ValueError (wrong shape, layout or edges)."""
    for name, array in (("counts", counts), ("x", x), ("edges", edges)):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got {array.ndim}-D with shape {array.shape}")
    if x.dtype not in X_DTYPES:
        raise TypeError(f"x must have dtype float32 or float64, got {x.dtype}")
    if edges.dtype != np.dtype(np.float64):
        raise TypeError(f"edges must have dtype float64, got {edges.dtype}")
    if counts.dtype != np.dtype(np.int64):
        raise TypeError(f"counts must have dtype int64, got {counts.dtype}")

    n_features, n_edges = edges.shape
    if n_edges < 1:
        raise ValueError(f"edges must have at least one column (E >= 1), got shape {edges.shape}")
    if x.shape[1] != n_features:
        raise ValueError(
            f"x must have shape (N, {n_features}) to match edges of shape {edges.shape}, got {x.shape}"
        )
    if counts.shape != (n_features, n_edges + 2):
        raise ValueError(
            f"counts must have shape (F, E + 2) = {(n_features, n_edges + 2)} to match edges of shape "
            f"{edges.shape}, got {counts.shape}"
        )
    if not counts.flags.c_contiguous:
        raise ValueError(
            f"counts must be C-contiguous (it is updated in place), got strides {counts.strides} "
            f"for shape {counts.shape}"
        )
    if not counts.flags.writeable:
        raise ValueError("counts must be writable (it is updated in place), got a read-only array")

    for row in range(n_features):
        if np.isnan(edges[row]).any() or (np.diff(edges[row]) < 0).any():
            raise ValueError(
                f"edges[{row}] must be sorted ascending (non-decreasing) and free of NaN, "
                f"got {edges[row].tolist()}"
            )
