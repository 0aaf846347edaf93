"""How far a run's outputs are from the bundle's golden outputs, in each task's own terms: the quality
fields of `edgefleet bench` (one per backend row), for compile checks and reports alike.

    quality = golden_quality(interface, bundle.outputs, golden_outputs, got)

- classification: `top1_agreement`, the fraction of golden examples whose top-1 class is the golden
  one (every example, near ties included: core/decision.py decides pass or fail, this measures).
- regression: `max_abs_error`, `max_rel_error` over every output (relative to max(|golden|, REL_FLOOR)).
- embedding: `min_cosine`, the smallest cosine similarity of an example's vector to its golden one;
  `max_abs_error`.
- detection: `count_agreement`, the fraction of examples with as many candidates at or above the score
  threshold as golden (before NMS, as telemetry counts them; core/detection.py reads the layout);
  `max_score_error`, the largest difference of a candidate's score; `score_threshold`. A layout
  core/detection.py does not read gets `max_abs_error` instead.
- other: `max_abs_error` over every output.

`max_errors` is the project's one definition of numeric error (compilers/numeric.py re-exports it); it
lives here because the device side (edge_runtime) may not import compilers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from edgefleet.core.answers import detection_layout, embedding_output, rows
from edgefleet.core.decision import decision_output
from edgefleet.core.detection import candidates
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.schema import TensorSpec

REL_FLOOR = 1e-12  # relative error is taken against max(|expected|, REL_FLOOR)
COSINE_FLOOR = 1e-30  # a zero vector against a zero vector is cosine 1, against anything else 0


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


def golden_quality(interface: Mapping, specs: Sequence[TensorSpec], want: Mapping[str, np.ndarray],
                   got: Mapping[str, np.ndarray]) -> dict:
    """The task's quality fields (module docstring) of `got` against the golden outputs `want`.

    EdgefleetError when an output is missing or has another shape than its golden value."""
    for spec in specs:
        if spec.name not in got or np.shape(got[spec.name]) != np.shape(want[spec.name]):
            shape = np.shape(got[spec.name]) if spec.name in got else "nothing"
            raise EdgefleetError(f"output {spec.name!r}: expected the golden shape {np.shape(want[spec.name])}, "
                                 f"got {shape}")
    task = interface.get("task") or "other"
    by_name = {spec.name: spec for spec in specs}
    examples = len(rows(specs[0], want))
    fields: dict = {"task": task, "examples": examples}
    if task == "classification":
        spec = by_name[decision_output(interface) or specs[0].name]
        fields["top1_agreement"] = top1_agreement(rows(spec, want), rows(spec, got))
    elif task == "regression":
        fields["max_abs_error"], fields["max_rel_error"] = _errors(specs, want, got)
    elif task == "embedding":
        spec = by_name[embedding_output(interface, specs)]
        fields["min_cosine"] = min_cosine(rows(spec, want), rows(spec, got))
        fields["max_abs_error"] = _errors(specs, want, got)[0]
    elif task == "detection":
        fields.update(detection_agreement(interface, specs, want, got))
    else:
        fields["max_abs_error"] = _errors(specs, want, got)[0]
    return fields


def top1_agreement(want: np.ndarray, got: np.ndarray) -> float:
    """The fraction of rows (samples first) whose argmax over the rest is the same in both."""
    want = np.asarray(want, dtype=np.float64).reshape(len(want), -1)
    got = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    return float((want.argmax(axis=1) == got.argmax(axis=1)).mean()) if len(want) else 1.0


def min_cosine(want: np.ndarray, got: np.ndarray) -> float:
    """The smallest cosine similarity between matching rows (samples first, each flattened)."""
    want = np.asarray(want, dtype=np.float64).reshape(len(want), -1)
    got = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    if not len(want):
        return 1.0
    norms = np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1)
    both_zero = ~want.any(axis=1) & ~got.any(axis=1)
    cosine = np.where(both_zero, 1.0, (want * got).sum(axis=1) / np.maximum(norms, COSINE_FLOOR))
    return float(cosine.min())


def detection_agreement(interface: Mapping, specs: Sequence[TensorSpec], want: Mapping[str, np.ndarray],
                        got: Mapping[str, np.ndarray]) -> dict:
    """{"count_agreement", "max_score_error"} of a detector, or {"max_abs_error"} for a layout not understood."""
    layout = detection_layout(interface, specs)
    found_want = candidates(layout, specs, want) if layout is not None else None
    found_got = candidates(layout, specs, got) if layout is not None else None
    if found_want is None or found_got is None:
        return {"max_abs_error": _errors(specs, want, got)[0]}
    threshold = layout.score_threshold
    counts_want = (found_want.scores >= threshold).sum(axis=1)
    counts_got = (found_got.scores >= threshold).sum(axis=1)
    score_error = float(np.abs(found_want.scores - found_got.scores).max()) if found_want.scores.size else 0.0
    return {"count_agreement": float((counts_want == counts_got).mean()) if len(counts_want) else 1.0,
            "max_score_error": score_error, "score_threshold": threshold}


def _errors(specs: Sequence[TensorSpec], want: Mapping[str, np.ndarray],
            got: Mapping[str, np.ndarray]) -> tuple[float, float]:
    return max_errors((got[s.name] for s in specs), (want[s.name] for s in specs))
