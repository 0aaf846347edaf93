"""Each task's own answer, the same over HTTP (edge_runtime/http_api.py) and in `edgefleet predict`.

    options = parse_options(request.query_params.multi_items(), interface)   # HTTP: ?top_k=3
    answer = task_answer(interface, bundle.outputs, outputs, options)         # merged into the response

The raw outputs always travel beside this answer; the answer adds, per sample (on each output's batch
axis, core/schema.py), what the task means:

- classification: `top_k`, per sample [{"class", "score"}, ...], scores descending; `predictions`, per
  sample the top-1 as {"class", "confidence"} (the field older clients read).
- regression: `values`, per sample {output name: value}; a number when the sample's slice holds one
  value, else nested lists.
- embedding: `embeddings`, per sample {"vector", "norm"}; `normalized`, whether the vectors were divided
  by their norm (the norm is always the model's own).
- detection: `detections`, per sample [{"score", "box"?, "class"?, "class_id"?}, ...] at or above
  `score_threshold`, best first, at most the layout's max_detections; after per-class non-maximum
  suppression when the layout sets an IoU threshold (`iou_threshold` in the answer then; the yolo
  layouts by default, their boxes as x1, y1, x2, y2); absent when the outputs fit no layout.
- other: nothing; the raw outputs are the answer.

A class is the interface's class name, else its index. Scores are probabilities: softmax over the first
output when the interface's postprocess is "softmax" (logits), the output as it is otherwise. No class or
confidence is ever invented for a task that is not classification or detection.

Options. Over HTTP they are query parameters (the body stays {"inputs": ...}, request_files.py):
`?top_k=K` (classification; default 1, K above the class count is clamped to it), `?normalize=true`
(embedding; default false) and `?score_threshold=T` (detection; a number from 0 to 1, default the
manifest's; the telemetry keeps counting at the manifest's, so drift is unaffected). `edgefleet predict
--top-k K --normalize --score-threshold T` passes the same. An option the model's task does not take, an
unknown parameter, a repeated one or a value out of its range is refused with one message naming it
(AnswerOptionError: HTTP 400, CLI exit 2), never ignored.

Which outputs. classification: the first output (core/decision.py `decision_output`), [batch, classes].
embedding: the first output with a batch axis and a fixed size per sample (as telemetry picks it), else
the first output, flattened per sample. detection: the manifest's layout, read as telemetry reads it
(core/detection.py: boxes+scores, yolov5 or yolov8, with its score threshold); a detection is kept when its
score is at or above the threshold (as telemetry counts it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.core import detection as det
from edgefleet.core.decision import decision_output
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.output_summary import embedding_output as summarised_embedding
from edgefleet.core.profile import softmax
from edgefleet.core.schema import TensorSpec, batch_axis

MAX_OPTION_CHARS = 32  # a query value longer than this is no integer or boolean we take
OPTIONS_BY_TASK = {"classification": ("top_k",), "embedding": ("normalize",), "detection": ("score_threshold",)}
OPTIONS = ("top_k", "normalize", "score_threshold")
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class AnswerOptionError(EdgefleetError):
    """An answer option (top_k, normalize) the request may not give, or with a value it cannot take."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class AnswerOptions:
    top_k: int = 1
    normalize: bool = False
    score_threshold: float | None = None  # None: the manifest's


def check_top_k(value: object) -> int:
    """`value` as a top_k: a positive integer (an int, or its decimal digits as text)."""
    text = value.strip() if isinstance(value, str) else ""
    digits = text.isascii() and text.isdigit() and len(text) <= MAX_OPTION_CHARS
    if isinstance(value, bool) or not (isinstance(value, int) or digits):
        raise AnswerOptionError("top_k", f"top_k must be a positive integer, got {_shown(value)}")
    k = int(value)
    if k < 1:
        raise AnswerOptionError("top_k", f"top_k must be a positive integer, got {k}")
    return k


def parse_options(pairs: Iterable[tuple[str, str]], interface: Mapping) -> AnswerOptions:
    """Query parameters (name, value) as the answer's options for a model with this interface."""
    task = interface.get("task") or "other"
    allowed = OPTIONS_BY_TASK.get(task, ())
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name not in OPTIONS:
            raise AnswerOptionError(name, f"unknown query parameter {_shown(name)}: this model ({task}) takes "
                                          f"{_listed(allowed)}")
        if name not in allowed:
            raise AnswerOptionError(name, f"{name} does not apply to this model: its task is {task}, which takes "
                                          f"{_listed(allowed)}")
        if name in seen:
            raise AnswerOptionError(name, f"query parameter {name} is given more than once")
        seen[name] = value
    options = {}
    if "top_k" in seen:
        options["top_k"] = check_top_k(seen["top_k"])
    if "normalize" in seen:
        flag = BOOLEANS.get(seen["normalize"].strip().lower())
        if flag is None:
            raise AnswerOptionError("normalize", f"normalize must be true or false, got {_shown(seen['normalize'])}")
        options["normalize"] = flag
    if "score_threshold" in seen:
        options["score_threshold"] = check_score_threshold(seen["score_threshold"])
    return AnswerOptions(**options)


def check_score_threshold(value: object) -> float:
    """`value` as a score threshold: a number from 0 to 1 (a float, or its decimal text)."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and len(value) <= MAX_OPTION_CHARS and value.strip().isascii():
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not 0.0 <= number <= 1.0:  # NaN fails the comparison too
        raise AnswerOptionError("score_threshold", f"score_threshold must be a number from 0 to 1, got "
                                                   f"{_shown(value)}")
    return number


def task_answer(interface: Mapping, specs: Sequence[TensorSpec], outputs: Mapping[str, np.ndarray],
                options: AnswerOptions = AnswerOptions()) -> dict:  # noqa: B008 - frozen, so sharing is safe
    """The task's fields of the answer (module docstring); {} for "other"."""
    task = interface.get("task") or "other"
    by_name = {spec.name: spec for spec in specs}
    if task == "classification":
        return classification_answer(interface, rows(by_name[decision_output(interface) or specs[0].name], outputs),
                                     options.top_k)
    if task == "regression":
        return {"values": regression_values([by_name[n] for n in outputs], outputs)}
    if task == "embedding":
        name = embedding_output(interface, specs)
        return embedding_answer(rows(by_name[name], outputs), options.normalize)
    if task == "detection":
        layout = detection_layout(interface, specs)
        found = det.candidates(layout, specs, outputs) if layout is not None else None
        if found is None:
            return {}
        layout = layout.with_threshold(options.score_threshold)
        answer = {"detections": det.detections(layout, found, interface.get("class_names")),
                  "score_threshold": layout.score_threshold}
        if layout.iou_threshold is not None and found.boxes is not None:
            answer["iou_threshold"] = layout.iou_threshold
        return answer
    return {}


def rows(spec: TensorSpec, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The output named by `spec` with its samples on axis 0 (one sample when it has no batch axis)."""
    value = np.asarray(outputs[spec.name])
    axis = batch_axis(spec)
    return value[None, ...] if axis is None else np.moveaxis(value, axis, 0) if axis else value


def regression_values(specs: Sequence[TensorSpec], outputs: Mapping[str, np.ndarray]) -> list[dict]:
    """Per sample {output: value} over the outputs with a batch axis (all of them when none has one: a
    fixed-batch model answers one sample); an output without one is in the raw outputs only."""
    batched = [s for s in specs if batch_axis(s) is not None] or list(specs)
    per_output = [rows(s, outputs) for s in batched]
    count = min(len(r) for r in per_output) if batched else 0
    return [{s.name: _value(r[i]) for s, r in zip(batched, per_output, strict=True)} for i in range(count)]


def probabilities(scores: np.ndarray, postprocess: str | None) -> np.ndarray:
    """(N, C) probabilities from a classifier's rows: softmax of logits, or the scores as they are."""
    flat = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    return softmax(flat) if (postprocess or "softmax") == "softmax" else flat


def classification_answer(interface: Mapping, scores: np.ndarray, top_k: int = 1) -> dict:
    probs = probabilities(scores, interface.get("postprocess"))
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: the lower index first, as argmax
    names = interface.get("class_names")
    ranked = [[{"class": _class(names, c), "score": float(p[c])} for c in row] for p, row in zip(probs, order,
                                                                                                  strict=True)]
    return {"top_k": ranked, "predictions": [{"class": r[0]["class"], "confidence": r[0]["score"]} for r in ranked]}


def embedding_output(interface: Mapping, specs: Sequence[TensorSpec]) -> str:
    """The output telemetry summarises as the embedding (core/output_summary.py), else the first output."""
    spec = summarised_embedding(specs)
    return specs[0].name if spec is None else spec.name


def embedding_answer(vectors: np.ndarray, normalize: bool = False) -> dict:
    flat = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    norms = np.linalg.norm(flat, axis=1)
    if normalize:
        flat = flat / np.where(norms > 0, norms, 1.0)[:, None]  # a zero vector stays zero
    return {"embeddings": [{"vector": v.tolist(), "norm": float(n)} for v, n in zip(flat, norms, strict=True)],
            "normalized": bool(normalize)}


def detection_layout(interface: Mapping, specs: Sequence[TensorSpec]) -> det.DetectionLayout | None:
    """The detector's layout as telemetry reads it (core/detection.py), or None for raw outputs only."""
    return det.read(interface, specs) if (interface.get("task") or "other") == "detection" else None


def _class(names: Sequence[str] | None, index: int) -> str | int:
    return names[index] if names and 0 <= index < len(names) else index


def _value(row: np.ndarray) -> float | list:
    return float(row.reshape(-1)[0]) if row.size == 1 else row.tolist()


def _shown(value: object) -> str:
    """repr(value), a long string cut to its first MAX_OPTION_CHARS characters."""
    if isinstance(value, str) and len(value) > MAX_OPTION_CHARS:
        return repr(value[:MAX_OPTION_CHARS])[:-1] + "...'"
    return repr(value)


def _listed(options: Sequence[str]) -> str:
    return "no query parameters" if not options else " and ".join(f"?{o}=" for o in options)
