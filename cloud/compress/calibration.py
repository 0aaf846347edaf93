"""Calibration of static int8: feeding the calibration rows to onnxruntime's calibrators, and choosing
the calibration method on held-out data.

`CalibrationReader` feeds the rows in batches of one size, one batch per collection (onnxruntime's
strided calibration), so memory holds one batch's activations, not every batch's.

`choose_method` (quantize_static_int8(method="auto") or a list of methods): each method calibrates on
the same calibration rows and quantizes the whole model; each result is scored on the evaluation data
(accuracy with labels, top-1 agreement with the float model without; see evaluate.py) and the best
score wins, ties to the smaller mean abs error of the first output against the float model, then to
the order given. The record keeps every method's score, so the report says what was tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from onnxruntime import quantization as ortq

from edgefleet.cloud.compress.gate import Evaluate, QuantizationError

log = logging.getLogger(__name__)

METHODS = ("MinMax", "Entropy", "Percentile")


class CalibrationReader(ortq.CalibrationDataReader):
    """The calibration rows in batches of one size: the last batch wraps around to the first rows, since
    onnxruntime's histogram calibrators (Entropy, Percentile) stack the batches and need equal shapes.
    `__len__` and `set_range` (in batches) let onnxruntime collect one range of batches at a time."""

    def __init__(self, feed: dict[str, np.ndarray], batch: int) -> None:
        self.feed, self.total = feed, len(next(iter(feed.values())))
        self.batch = max(1, min(int(batch), self.total))
        self.all_starts = list(range(0, self.total, self.batch))
        self.starts = list(self.all_starts)
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.starts):
            return None
        start = self.starts[self.position]
        self.position += 1
        rows = np.arange(start, start + self.batch) % self.total
        return {k: np.ascontiguousarray(v[rows]) for k, v in self.feed.items()}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.all_starts)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.starts = self.all_starts[start_index:end_index]
        self.position = 0


def method_list(method: str | Sequence[str]) -> tuple[str, ...]:
    """"auto" -> every method; a name -> that one; a list -> those, each checked."""
    methods = METHODS if method == "auto" else (method,) if isinstance(method, str) else tuple(method)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise QuantizationError(f"method must be 'auto', one of {', '.join(METHODS)} or a list of them, "
                                f"got {method!r}")
    return methods


def choose_method(quantize: Callable[[str], bytes], evaluate: Evaluate, float_scores: np.ndarray,
                  methods: Sequence[str], metric: str) -> tuple[str, bytes, dict]:
    """Quantizes with each method, scores each; returns (best method, its model, the record)."""
    scores: dict[str, dict] = {}
    models: dict[str, bytes] = {}
    for method in methods:
        started = time.perf_counter()
        models[method] = quantize(method)
        value, outputs = evaluate(models[method])
        error = float(np.mean(np.abs(outputs.astype(np.float64) - float_scores)))
        scores[method] = {metric: value, "output_error": error, "seconds": time.perf_counter() - started}
        log.info("calibration %s: %s %.4f, mean abs output error %.4g", method, metric, value, error)
    chosen = min(methods, key=lambda m: (-scores[m][metric], scores[m]["output_error"], methods.index(m)))
    return chosen, models[chosen], {"chosen": chosen, "metric": metric, "scores": scores}
