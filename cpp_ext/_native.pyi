"""Type stub for the compiled module edgefleet.cpp_ext._native (built from cpp_ext/src/bindings.cpp)."""

import numpy as np
import numpy.typing as npt

def histogram_update(
    counts: npt.NDArray[np.int64],
    x: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    edges: npt.NDArray[np.float64],
) -> None:
    """Adds x (N, F) to the per-feature histograms counts (F, E + 2) in place; see reference.py."""
