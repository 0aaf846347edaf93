"""edgefleet.cpp_ext: the native (C++) kernels behind one small Python face.

Kernels are plain C++17 in `src/` (a portable generic version; per-ISA variants can be added next to
it), `src/bindings.cpp` is the only file that includes pybind11, and the compiled module is `_native`.
Each kernel has a plain-numpy twin in `reference.py` that defines its semantics; the tests check the
two against each other.

    histogram_update(counts, x, edges)  per-feature telemetry histograms, updated in place
    RequestSketch(kind, feature_edges, confidence_edges, latency_edges_ms, n_classes, softmax)
                                        one telemetry window's counters, one update() per request
"""

from __future__ import annotations

try:
    from edgefleet.cpp_ext._native import RequestSketch, histogram_update
except ImportError as err:
    raise ImportError(
        "edgefleet's native extension (edgefleet.cpp_ext._native) is not built or cannot be loaded "
        f"({err}). Install a C++ compiler and the Python headers (e.g. `apt-get install g++ python3-dev`), "
        "then reinstall edgefleet: `pip install --force-reinstall --no-deps edgefleet`, "
        "or `pip install -e .` in a source checkout."
    ) from err

__all__ = ["RequestSketch", "histogram_update"]
