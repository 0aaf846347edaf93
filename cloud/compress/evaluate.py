"""Measuring a model for the compression report: what it predicts on a dataset, and how well.

`onnx_outputs` runs an ONNX model (a path or serialized bytes) over a dataset in chunks with
onnxruntime on the CPU; `onnx_metrics` scores it with core.metrics (overall, per class, per slice).

Without labels the metric is top-1 agreement with the float model (AGREEMENT): `reference_labels`
turns the float model's outputs into labels (its top-1 class), so the "accuracy" of a compressed model
on them is the fraction of inputs on which it decides as the float model does, and the float model's
own is 1 by construction.

`wilson_interval` is the 95% interval of such a fraction: on a few hundred held-out rows it is several
points wide, which is what a step's change has to beat before it means anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import onnxruntime as ort

from edgefleet.core.metrics import classification_metrics
from edgefleet.core.profile import class_confidence

CHUNK = 256
ACCURACY = "accuracy"
AGREEMENT = "top1_agreement_with_float"
AGREEMENT_NOTE = ("no labels were given: the metric is top-1 agreement with the float model (the fraction of "
                  "inputs on which the compressed model picks the float model's class), not accuracy")


def session(model: Path | bytes, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_outputs(model: Path | bytes | ort.InferenceSession, inputs: Mapping[str, np.ndarray] | np.ndarray,
                 chunk: int = CHUNK) -> np.ndarray:
    """The first output of the model over all rows of `inputs` (an array for a single-input model)."""
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    if isinstance(inputs, np.ndarray):
        inputs = {sess.get_inputs()[0].name: inputs}
    total = len(next(iter(inputs.values())))
    parts = [sess.run(None, {k: v[i:i + chunk] for k, v in inputs.items()})[0] for i in range(0, total, chunk)]
    return np.concatenate(parts)


def onnx_metrics(model: Path | bytes | ort.InferenceSession, inputs: Mapping[str, np.ndarray] | np.ndarray,
                 labels: np.ndarray, *, postprocess: str = "softmax", class_names: Sequence[str] | None = None,
                 slices: Mapping[str, np.ndarray] | None = None) -> dict:
    return classification_metrics(onnx_outputs(model, inputs), labels, postprocess, class_names, slices)


def reference_labels(scores: np.ndarray, postprocess: str = "softmax") -> np.ndarray:
    """The float model's top-1 class per row: the labels against which agreement is measured."""
    return class_confidence(np.asarray(scores), postprocess)[0].astype(np.int64)


def metric_name(labels: np.ndarray | None) -> str:
    return ACCURACY if labels is not None else AGREEMENT


def wilson_interval(successes: int, rows: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion at `level`; (0, 1) for no rows."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    if rows <= 0:
        return 0.0, 1.0
    p = successes / rows
    centre = (p + z * z / (2 * rows)) / (1 + z * z / rows)
    half = z * np.sqrt(p * (1 - p) / rows + z * z / (4 * rows * rows)) / (1 + z * z / rows)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
