"""Type stub for the compiled module edgefleet.cpp_ext._native (built from cpp_ext/src/bindings.cpp)."""

from typing import TypedDict

import numpy as np
import numpy.typing as npt

def histogram_update(
    counts: npt.NDArray[np.int64],
    x: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    edges: npt.NDArray[np.float64],
) -> None:
    """Adds x (N, F) to the per-feature histograms counts (F, E + 2) in place; see reference.py."""

class _SketchSnapshot(TypedDict):  # type-only: snapshot() returns a plain dict
    requests: int
    samples: int
    errors: int
    latency: npt.NDArray[np.int64]  # (L + 2,)
    features: npt.NDArray[np.int64]  # (F, E + 2)
    predictions: npt.NDArray[np.int64]  # (n_classes,)
    confidence: npt.NDArray[np.int64]  # (Ec + 2,), or (0,) when n_classes == 0

class RequestSketch:
    """One telemetry window's counters for one model input; see reference.RequestSketchReference."""

    def __init__(
        self,
        kind: str,
        feature_edges: npt.ArrayLike,
        confidence_edges: npt.ArrayLike | None,
        latency_edges_ms: npt.ArrayLike,
        n_classes: int,
        softmax: bool,
    ) -> None: ...
    def update(
        self,
        x: npt.NDArray[np.float32] | npt.NDArray[np.float64],
        scores: npt.NDArray[np.float32] | npt.NDArray[np.float64] | None,
        latency_ns: int,
    ) -> None:
        """Counts one request (samples, features, predictions, confidence, latency)."""
    def error(self, latency_ns: int) -> None:
        """Counts one failed request: requests += 1, errors += 1, latency binned."""
    def snapshot(self, reset: bool = True) -> _SketchSnapshot:
        """Copies of the counts; reset=True zeroes them in the same atomic step."""
