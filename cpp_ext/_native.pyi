"""Type stub for the compiled module edgefleet.cpp_ext._native (built from cpp_ext/src/bindings.cpp)."""

from typing import Any, TypedDict

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

class GraphExecutor:
    """The native backend's graph executor; build it with edgefleet.cpp_ext.graph_native.load_executor."""

    def __init__(
        self,
        values: list[tuple[str, str]],
        inputs: list[int],
        outputs: list[int],
        constants: dict[int, npt.NDArray[Any]],
        nodes: list[tuple[str, str, list[int], int, dict[str, Any]]],
        threads: int = 1,
    ) -> None: ...
    def run(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Runs the graph: inputs {name: array of the declared dtype}; returns {output name: new array}."""
    def profile(self, inputs: dict[str, npt.NDArray[Any]], runs: int = 100) -> list[tuple[str, str, float]]:
        """Runs the graph `runs` times; returns [(op, node name, mean microseconds per run)] per node."""
    @property
    def arena_bytes(self) -> int:
        """Bytes the intermediate values of the last plan take (non-overlapping lifetimes share them)."""
    @property
    def threads(self) -> int:
        """Kernel threads including the caller's (1: no worker threads)."""
    @property
    def parallel_nodes(self) -> int:
        """Nodes of the last run that split their work across the thread pool (0 at threads=1)."""
    @property
    def input_names(self) -> list[str]: ...
    @property
    def output_names(self) -> list[str]: ...
    @property
    def cached_plans(self) -> int:
        """How many input-shape plans are cached (at most 8)."""

def graph_isa() -> str:
    """The ISA of the graph kernels in use: 'avx2' or 'portable'."""

def graph_select_isa(name: str) -> str:
    """Picks the graph kernels: 'auto', 'portable' or 'avx2'; returns the ISA now in use."""

def graph_peak_gflops(isa: str, seconds: float = 0.2) -> float:
    """One core's measured fp32 peak in GFLOP/s for an ISA (a register-only multiply-add loop)."""

def graph_available_isas() -> str:
    """The graph kernel ISAs this CPU runs, best first, comma-separated."""
