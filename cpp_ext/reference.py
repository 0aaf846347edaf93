"""The numpy reference of the native kernels: this file defines what they compute.

`histogram_update_reference` and `RequestSketchReference` are written for reading, not speed. The native
`histogram_update` and `RequestSketch` must give the same counts on every input, and reject the same bad
arguments with the same messages (tests/cpp_ext/test_histogram.py and test_sketch.py check both).
`sketch_config` validates a sketch's construction arguments for both classes: construction is not hot, so
the native constructor calls it instead of repeating its rules and messages in C++.
"""

from __future__ import annotations

import math
import operator
import threading
from dataclasses import dataclass

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


# --- the per-request telemetry sketch ---------------------------------------------------------------

FEATURE_KINDS = ("elements", "channel_stats")  # core.profile.feature_kind
LATENCY_NS_LIMIT = 2**63


@dataclass(frozen=True)
class SketchConfig:
    """Validated construction arguments of a sketch; the arrays are read-only C-contiguous float64 copies."""

    kind: str
    feature_edges: np.ndarray  # (F, E)
    confidence_edges: np.ndarray | None  # (Ec,), None when n_classes == 0
    latency_edges_ms: np.ndarray  # (L,)
    n_classes: int
    softmax: bool  # ignored when n_classes == 0


def sketch_config(
    kind: str,
    feature_edges: np.ndarray,
    confidence_edges: np.ndarray | None,
    latency_edges_ms: np.ndarray,
    n_classes: int,
    softmax: bool,
) -> SketchConfig:
    """Checks a sketch's construction arguments; raises TypeError or ValueError naming the problem.

    Edges may be any array-like of real numbers (LATENCY_EDGES_MS is a tuple); each row must hold at least
    one edge, sorted ascending (duplicates allowed) and free of NaN, as histogram_update requires.
    """
    if not isinstance(kind, str) or kind not in FEATURE_KINDS:
        raise ValueError(f"kind must be 'elements' or 'channel_stats' (core.profile.feature_kind), got {kind!r}")
    if isinstance(n_classes, (bool, np.bool_)) or not isinstance(n_classes, (int, np.integer)):
        raise TypeError(f"n_classes must be an int, got {type(n_classes).__name__}")
    if n_classes < 0:
        raise ValueError(f"n_classes must be >= 0 (0 when the model is not a classifier), got {n_classes}")
    if not isinstance(softmax, (bool, np.bool_)):
        raise TypeError(f"softmax must be a bool, got {type(softmax).__name__}")
    features = _checked_edges("feature_edges", feature_edges, 2)
    if kind == "channel_stats" and features.shape[0] % 2:
        raise ValueError(
            "'channel_stats' features come in pairs (the mean and the std of each channel), so feature_edges "
            f"must have an even number of rows, got shape {features.shape}"
        )
    confidence = None
    if n_classes == 0 and confidence_edges is not None:
        raise ValueError(
            "confidence_edges must be None when n_classes is 0 (not a classifier), "
            f"got {type(confidence_edges).__name__}"
        )
    if n_classes > 0:
        if confidence_edges is None:
            raise ValueError(f"confidence_edges must be given for a classifier (n_classes = {n_classes}), got None")
        confidence = _checked_edges("confidence_edges", confidence_edges, 1)
    latency = _checked_edges("latency_edges_ms", latency_edges_ms, 1)
    return SketchConfig(kind, features, confidence, latency, int(n_classes), bool(softmax))


def _checked_edges(name: str, value: object, ndim: int) -> np.ndarray:
    if value is None:
        raise TypeError(f"{name} must be an array of real numbers, got None")
    raw = np.asarray(value)
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be an array of real numbers, got dtype {raw.dtype}")
    if raw.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {raw.ndim}-D with shape {raw.shape}")
    if raw.shape[-1] < 1:
        raise ValueError(f"{name} must hold at least one edge per row, got shape {raw.shape}")
    edges = np.array(raw, dtype=np.float64, order="C")  # a copy: the caller's array may change later
    rows = [(f"{name}[{i}]", row) for i, row in enumerate(edges)] if ndim == 2 else [(name, edges)]
    for label, row in rows:
        if np.isnan(row).any() or (row[1:] < row[:-1]).any():  # no subtraction: edges may be +-inf
            raise ValueError(f"{label} must be sorted ascending (non-decreasing) and free of NaN, got {row.tolist()}")
    edges.flags.writeable = False
    return edges


def sketch_features(x: np.ndarray, kind: str) -> np.ndarray:
    """(N, ...) -> (N, F) float64 features, as core.profile.extract_features computes them.

    "elements": x viewed as (N, F). "channel_stats": x viewed as (N, C, S); the C means, then the C
    population stds (ddof=0), with numpy's own float64 summation; a channel of S = 0 values gives NaN.
    """
    n = x.shape[0]
    values = np.asarray(x, dtype=np.float64)  # exact for float32
    if kind == "elements":
        return values.reshape(n, math.prod(x.shape[1:]))
    channels, size = x.shape[1], math.prod(x.shape[2:])
    flat = values.reshape(n, channels, size)
    if size == 0:
        return np.full((n, 2 * channels), np.nan)
    with np.errstate(all="ignore"):  # inf - inf etc. give NaN, as they should
        return np.concatenate([flat.mean(axis=2), flat.std(axis=2)], axis=1)


def sketch_classes(scores: np.ndarray, softmax: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) scores -> predicted class (N,) and confidence (N,) float64.

    predicted = np.argmax (the first maximum; the first NaN if the row has one). confidence = the largest
    softmax probability when softmax (scores are logits), else the largest score; NaN when the row holds
    a NaN. exp is the C library's (math.exp), so that the native kernel can match it bit for bit; numpy's
    SIMD exp differs in the last bit now and then. The sums are numpy's, like core.profile.softmax.
    """
    values = scores.astype(np.float64)
    predicted = values.argmax(axis=1)
    if not softmax:
        return predicted, values.max(axis=1)
    with np.errstate(all="ignore"):
        shifted = values - values.max(axis=1, keepdims=True)  # <= 0, or NaN
        exp = np.array([[math.exp(v) for v in row] for row in shifted.tolist()], dtype=np.float64)
        exp = exp.reshape(values.shape)
        probabilities = exp / exp.sum(axis=1, keepdims=True)
    return predicted, probabilities.max(axis=1)


class RequestSketchReference:
    """The counters of one telemetry window, updated once per request (the native RequestSketch's spec).

    update(x, scores, latency_ns): requests += 1, samples += N = x.shape[0]; each sample's features (see
    sketch_features) binned on feature_edges like histogram_update (NaN in the last column); for a
    classifier (n_classes > 0) each row of scores (N, n_classes) adds one to predictions[argmax] and bins
    its confidence (see sketch_classes) on confidence_edges; latency_ns / 1e6 ms binned on
    latency_edges_ms. x and scores are float32 or float64 C-contiguous arrays; scores are ignored when
    n_classes == 0. error(latency_ns): requests += 1, errors += 1, latency binned. Arguments are checked
    completely before anything is counted, and each call is atomic with respect to the others.
    """

    def __init__(
        self,
        kind: str,
        feature_edges: np.ndarray,
        confidence_edges: np.ndarray | None,
        latency_edges_ms: np.ndarray,
        n_classes: int,
        softmax: bool,
    ) -> None:
        self.config = sketch_config(kind, feature_edges, confidence_edges, latency_edges_ms, n_classes, softmax)
        self._lock = threading.Lock()
        config = self.config
        n_confidence = 0 if config.confidence_edges is None else len(config.confidence_edges) + 2
        self._requests = self._samples = self._errors = 0
        self._latency = np.zeros((1, len(config.latency_edges_ms) + 2), dtype=np.int64)
        self._features = np.zeros((config.feature_edges.shape[0], config.feature_edges.shape[1] + 2), dtype=np.int64)
        self._predictions = np.zeros(config.n_classes, dtype=np.int64)
        self._confidence = np.zeros((1, n_confidence), dtype=np.int64)

    def update(self, x: np.ndarray, scores: np.ndarray | None, latency_ns: int) -> None:
        config = self.config
        _check_array("x", x)
        _check_x_shape(x, config.kind, config.feature_edges.shape[0])
        _check_contiguous("x", x)
        n = x.shape[0]
        if config.n_classes:
            if scores is None:
                raise ValueError(
                    f"scores must be given: the sketch counts the predictions of {config.n_classes} classes, got None"
                )
            _check_array("scores", scores)
            if scores.shape != (n, config.n_classes):
                raise ValueError(
                    f"scores must have shape (N, n_classes) = ({n}, {config.n_classes}) to match x of shape "
                    f"{x.shape}, got {scores.shape}"
                )
            _check_contiguous("scores", scores)
        latency_ms = _latency_ms(latency_ns)

        features = sketch_features(x, config.kind)
        classes = sketch_classes(scores, config.softmax) if config.n_classes else None
        with self._lock:
            self._requests += 1
            self._samples += n
            histogram_update_reference(self._features, features, config.feature_edges)
            if classes is not None:
                predicted, confidence = classes
                self._predictions += np.bincount(predicted, minlength=config.n_classes)
                histogram_update_reference(self._confidence, confidence[:, None], config.confidence_edges[None])
            histogram_update_reference(self._latency, np.array([[latency_ms]]), config.latency_edges_ms[None])

    def error(self, latency_ns: int) -> None:
        latency_ms = _latency_ms(latency_ns)
        with self._lock:
            self._requests += 1
            self._errors += 1
            histogram_update_reference(self._latency, np.array([[latency_ms]]), self.config.latency_edges_ms[None])

    def snapshot(self, reset: bool = True) -> dict:
        """The counts so far, as copies: requests, samples, errors (int), latency (L + 2,), features
        (F, E + 2), predictions (n_classes,), confidence (Ec + 2,) or (0,); reset zeroes them."""
        with self._lock:
            snap = {
                "requests": self._requests,
                "samples": self._samples,
                "errors": self._errors,
                "latency": self._latency[0].copy(),
                "features": self._features.copy(),
                "predictions": self._predictions.copy(),
                "confidence": self._confidence[0].copy(),
            }
            if reset:
                self._requests = self._samples = self._errors = 0
                for counts in (self._latency, self._features, self._predictions, self._confidence):
                    counts[...] = 0
        return snap


def _check_array(name: str, array: object) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if array.dtype not in X_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {array.dtype}")


def _check_contiguous(name: str, array: np.ndarray) -> None:
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {array.strides} for shape {array.shape}")


def _check_x_shape(x: np.ndarray, kind: str, n_features: int) -> None:
    if kind == "elements":
        if x.ndim < 1:
            raise ValueError(f"x must have shape (N, ...) for 'elements' features, got shape {x.shape}")
        implied = math.prod(x.shape[1:])
        if implied != n_features:
            raise ValueError(
                f"x of shape {x.shape} has {implied} features per sample, but feature_edges has {n_features} rows"
            )
        return
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, C, ...) for 'channel_stats' features, got shape {x.shape}")
    if 2 * x.shape[1] != n_features:
        raise ValueError(
            f"x of shape {x.shape} has {x.shape[1]} channels, hence {2 * x.shape[1]} 'channel_stats' features, "
            f"but feature_edges has {n_features} rows"
        )


def _latency_ms(latency_ns: int) -> float:
    ns = operator.index(latency_ns)
    if not 0 <= ns < LATENCY_NS_LIMIT:
        raise ValueError(f"latency_ns must be a non-negative int below 2**63, got {ns}")
    return ns / 1e6
