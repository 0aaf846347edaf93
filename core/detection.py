"""A detector's declared output layout: where its detections are, how a candidate's score is read, and how
the answer post-processes them. One module, so that the HTTP/CLI answer (core/answers.py), telemetry and
the drift profile (core/output_summary.py) and bench quality (core/task_quality.py) read a detector alike.

The manifest's interface["detection"], written at export/import (compilers/profile_plan.py):

    {"layout": "boxes+scores", "scores": "scores", "boxes": "boxes", "score_threshold": 0.5}
    {"layout": "yolov5", "output": "output0", "score_threshold": 0.25, "iou_threshold": 0.45,
     "max_detections": 100}

Layouts, per sample (the output's batch axis taken off):
- boxes+scores: scores [D] (one per detection) or [D, C] (per class: the best is the score, its index
  the class); boxes [D, 4] and classes [D] optional, read from the outputs named in the entry, else
  from the one other output named like *box*, like *class* or *label*. Boxes are shown as the model
  gives them. An entry without `layout` (bundles made before layouts) is this one.
- yolov5: one output [D, 5 + C]: cx, cy, w, h, objectness, C class scores (the decoded output of a
  YOLOv5/YOLOv7 Detect head); a candidate's score is objectness x its best class score.
- yolov8: one output [4 + C, D]: cx, cy, w, h, then C class scores, no objectness (YOLOv8/YOLO11);
  the score is the best class score.
- yolov8-transposed: one output [D, 4 + C], the same values with D first (YOLOv8 exports that transpose
  the head's output for NMS plugins and hand-written decoders). The yolo layouts answer boxes as x1, y1,
  x2, y2.

Candidates are the detections whose score is at or above score_threshold. Telemetry (rows `count` and
`score`), the drift profile and bench's count agreement count candidates before any suppression: cheap
per request, and identical on the reference data and the device. The answer goes further: when
iou_threshold is set (the yolo layouts: IOU_THRESHOLD unless given, as YOLOv5's detect.py; boxes+scores:
only when given, such outputs usually come after the model's own NMS) it runs greedy non-maximum
suppression per class (a box is dropped when its IoU with a better box of its class exceeds the
threshold), then keeps at most max_detections per sample, best first. NMS looks at the MAX_CANDIDATES best
candidates only, so a threshold of 0 on 25,200 YOLO boxes costs at most max_detections passes over 3,000.

Declared or inferred (`resolve`, at export/import with task "detection"): a given entry is checked and
completed; without one, the one output named like *score* is boxes+scores (the one output like *box*,
if any, its boxes); else one rank-3 output is yolov8 when its last axis holds the D detections
(symbolic, or longer than the other). A [D, K] output is yolov5 when K = 5 + C and yolov8-transposed
when K = 4 + C, C the number of class names given: by shape alone the two cannot be told apart (a
yolov5 head with C classes looks like a transposed YOLOv8 with C + 1), so without class names neither
is guessed and the import is refused with the layouts to declare (`--detection-layout`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgefleet.core.schema import TensorSpec, batch_axis, samples_first

LAYOUTS = ("boxes+scores", "yolov5", "yolov8", "yolov8-transposed")
_FIXED = {"yolov5": 5, "yolov8": 4, "yolov8-transposed": 4}  # values before the class scores
_SHAPES = {"yolov5": "[batch, D, 5 + classes]", "yolov8": "[batch, 4 + classes, D]",
           "yolov8-transposed": "[batch, D, 4 + classes]"}
DEFAULT_SCORE_THRESHOLD = 0.5
IOU_THRESHOLD = 0.45  # YOLOv5 detect.py's default
MAX_DETECTIONS = 100  # per sample in an answer, unless the manifest says otherwise
MAX_DETECTIONS_LIMIT = 10_000
MAX_CANDIDATES = 3_000  # the best candidates NMS looks at, per sample
_KEYS = {"layout", "output", "scores", "boxes", "classes", "score_threshold", "iou_threshold", "max_detections"}


@dataclass(frozen=True)
class DetectionLayout:
    """A detector's outputs as the manifest declares them (module docstring)."""

    layout: str
    output: str  # the output telemetry summarises: the scores (boxes+scores) or the one prediction output
    boxes: str | None = None
    classes: str | None = None
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    iou_threshold: float | None = None
    max_detections: int = MAX_DETECTIONS

    def to_manifest(self) -> dict:
        key = "scores" if self.layout == "boxes+scores" else "output"
        entry: dict = {"layout": self.layout, key: self.output, "score_threshold": self.score_threshold}
        for name in ("boxes", "classes", "iou_threshold"):
            if getattr(self, name) is not None:
                entry[name] = getattr(self, name)
        if self.max_detections != MAX_DETECTIONS:
            entry["max_detections"] = self.max_detections
        return entry

    def with_threshold(self, threshold: float | None) -> DetectionLayout:
        return self if threshold is None else replace(self, score_threshold=float(threshold))


def resolve(outputs: Sequence[TensorSpec], given: Mapping | None,
            class_names: Sequence[str] | None = None) -> DetectionLayout | None:
    """The layout of a detector with these outputs: `given` checked and completed, else inferred; None when
    nothing fits (the caller refuses, naming the layouts). ValueError names what is wrong in `given`."""
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(f"detection must be a mapping such as {{'layout': 'yolov5'}}, got {given!r}")
    given = dict(given or {})
    unknown = sorted(set(given) - _KEYS)
    if unknown:
        raise ValueError(f"detection: unknown keys {unknown} (known: {', '.join(sorted(_KEYS))})")
    names = [s.name for s in outputs]
    layout = given.get("layout") or ("boxes+scores" if "scores" in given else _infer(outputs, class_names))
    if layout is None:
        return None
    if layout not in LAYOUTS:
        raise ValueError(f"detection layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    options = _options(given, layout)
    if layout == "boxes+scores":
        scores = given.get("scores") if "scores" in given else _one(names, ("score",))
        if scores is None:
            return None
        if scores not in names:
            raise ValueError(f"detection scores must name an output ({', '.join(names)}), got {scores!r}")
        picked = {key: _pick(given, key, names, scores, words) for key, words in
                  (("boxes", ("box",)), ("classes", ("class", "label")))}
        return DetectionLayout(layout, scores, **picked, **options)
    output = given.get("output")
    if output is None:
        ranked = [s.name for s in outputs if len(s.shape) == 3 and batch_axis(s) is not None]
        output = ranked[0] if len(ranked) == 1 else None
        if output is None:
            raise ValueError(f"detection layout {layout}: name its output ('output': NAME); outputs: "
                             f"{', '.join(names)}")
    spec = next((s for s in outputs if s.name == output), None)
    if spec is None:
        raise ValueError(f"detection output must name an output ({', '.join(names)}), got {output!r}")
    _check_yolo(spec, layout, class_names)
    return DetectionLayout(layout, output, **options)


def read(interface: Mapping, outputs: Sequence[TensorSpec]) -> DetectionLayout | None:
    """The layout of a bundle's manifest (a device reading it: no inference past the name rules of
    boxes+scores), or None when the entry names nothing this runtime reads."""
    entry = interface.get("detection")
    try:
        return resolve(outputs, entry if isinstance(entry, Mapping) else None, interface.get("class_names"))
    except ValueError:
        return None


def scores_of(layout: str, x: np.ndarray, classes: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, D) candidate scores and (n, D) classes (None when the model gives none, or not asked for: telemetry
    needs no argmax) of the summarised output `x` with its samples on axis 0, in x's own dtype (telemetry
    bins them as they come)."""
    n = x.shape[0]
    if layout == "yolov5":
        per_class = x[..., 5:]
        return x[..., 4] * per_class.max(axis=-1), per_class.argmax(axis=-1) if classes else None
    if layout == "yolov8":
        per_class = x[:, 4:, :]
        return per_class.max(axis=1), per_class.argmax(axis=1) if classes else None
    if layout == "yolov8-transposed":
        per_class = x[..., 4:]
        return per_class.max(axis=-1), per_class.argmax(axis=-1) if classes else None
    if x.ndim > 2:  # [D, C] class scores per sample: the best is the score
        per_class = x.reshape(n, x.shape[1], math.prod(x.shape[2:]))
        return per_class.max(axis=2), per_class.argmax(axis=2) if classes else None
    return x.reshape(n, math.prod(x.shape[1:])), None


def boxes_of(layout: str, x: np.ndarray) -> np.ndarray:
    """(n, D, 4) x1, y1, x2, y2 boxes of a yolo layout's output (samples on axis 0)."""
    centre = np.swapaxes(x[:, :4, :], 1, 2) if layout == "yolov8" else x[..., :4]
    centre = centre.astype(np.float64)
    half = centre[..., 2:] / 2
    return np.concatenate([centre[..., :2] - half, centre[..., :2] + half], axis=-1)


@dataclass(frozen=True)
class Candidates:
    """A request's detections before the threshold, samples first."""

    scores: np.ndarray  # (N, D) float64
    classes: np.ndarray | None  # (N, D) class indices, None when the model gives none
    boxes: np.ndarray | None  # (N, D, 4), None when the model gives none


def candidates(layout: DetectionLayout, specs: Sequence[TensorSpec],
               outputs: Mapping[str, np.ndarray]) -> Candidates | None:
    """The request's candidates in `layout`; None for outputs of a shape the layout does not read."""
    by_name = {s.name: s for s in specs}
    spec = by_name.get(layout.output)
    if spec is None or batch_axis(spec) is None or layout.output not in outputs:
        return None
    x = samples_first(spec, np.asarray(outputs[layout.output]))
    if layout.layout != "boxes+scores":
        if x.ndim != 3 or x.shape[1 if layout.layout == "yolov8" else 2] <= _FIXED[layout.layout]:
            return None
        scores, classes = scores_of(layout.layout, x)
        return Candidates(scores.astype(np.float64), classes, boxes_of(layout.layout, x))
    if x.ndim not in (2, 3):
        return None
    scores, classes = scores_of(layout.layout, x)
    boxes = _extra(layout.boxes, by_name, outputs)
    if boxes is not None and (boxes.shape[:2] != scores.shape or boxes.ndim != 3 or boxes.shape[-1] != 4):
        boxes = None
    if classes is None and layout.classes:
        classes = _extra(layout.classes, by_name, outputs)
        if classes is not None:
            classes = classes.reshape(*classes.shape[:2], -1)[..., 0] if classes.ndim > 2 else classes
            classes = classes if classes.shape == scores.shape else None
    return Candidates(scores.astype(np.float64), classes, boxes)


def detections(layout: DetectionLayout, found: Candidates, class_names: Sequence[str] | None) -> list[list[dict]]:
    """Per sample, the answer's detections (module docstring): {"score", "box"?, "class"?, "class_id"?},
    best first, at most max_detections, after NMS when the layout sets iou_threshold."""
    answer = []
    for i, sample in enumerate(found.scores):
        index = np.flatnonzero(sample >= layout.score_threshold)
        classes = None if found.classes is None else found.classes[i, index]
        if layout.iou_threshold is not None and found.boxes is not None:
            index = index[suppress(found.boxes[i, index], sample[index], classes, layout.iou_threshold,
                                   layout.max_detections)]
        else:
            index = index[np.argsort(-sample[index], kind="stable")[:layout.max_detections]]
        items = []
        for d in index:
            item: dict = {"score": float(sample[d])}
            if found.boxes is not None:
                item["box"] = [float(v) for v in found.boxes[i, d]]
            if found.classes is not None:
                class_id = int(found.classes[i, d])
                item["class"] = class_names[class_id] if class_names and 0 <= class_id < len(class_names) \
                    else class_id
                item["class_id"] = class_id
            items.append(item)
        answer.append(items)
    return answer


def suppress(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, iou_threshold: float,
             limit: int) -> np.ndarray:
    """Indices of the boxes (m, 4: x1, y1, x2, y2) greedy per-class NMS keeps, best first, at most `limit`,
    among the MAX_CANDIDATES best scores."""
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    b = np.asarray(boxes, dtype=np.float64)[order]
    c = np.zeros(len(order), np.int64) if classes is None else np.asarray(classes)[order]
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    alive = np.ones(len(order), bool)
    kept: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == limit:
            break
        rest = b[i + 1:]
        width = np.clip(np.minimum(rest[:, 2], b[i, 2]) - np.maximum(rest[:, 0], b[i, 0]), 0, None)
        height = np.clip(np.minimum(rest[:, 3], b[i, 3]) - np.maximum(rest[:, 1], b[i, 1]), 0, None)
        inter = width * height
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (area[i] + area[i + 1:] - inter)
        alive[i + 1:] &= ~((c[i + 1:] == c[i]) & (iou > iou_threshold))
    return order[np.asarray(kept, dtype=np.int64)]


def _infer(outputs: Sequence[TensorSpec], class_names: Sequence[str] | None) -> str | None:
    """The layout of outputs without a declared one (module docstring), or None."""
    if sum("score" in s.name.lower() for s in outputs) == 1:  # its boxes, if any: the one output like *box*
        return "boxes+scores"
    if len(outputs) != 1 or len(outputs[0].shape) != 3 or batch_axis(outputs[0]) is None:
        return None
    first, last = _per_sample(outputs[0])
    if isinstance(first, int) and (isinstance(last, str) or last > first):
        return "yolov8"
    if class_names is not None and last == 5 + len(class_names):
        return "yolov5"
    if class_names is not None and last == 4 + len(class_names):  # D first (yolov8 took D last)
        return "yolov8-transposed"
    return None


def _check_yolo(spec: TensorSpec, layout: str, class_names: Sequence[str] | None) -> None:
    """A yolo output: rank 3 with a batch axis and a fixed channel axis holding at least one class."""
    dims = _per_sample(spec) if len(spec.shape) == 3 and batch_axis(spec) is not None else None
    fixed, wanted = _FIXED[layout], _SHAPES[layout]
    channels = None if dims is None else dims[0] if layout == "yolov8" else dims[1]
    if not isinstance(channels, int) or channels <= fixed:
        raise ValueError(f"detection layout {layout} needs an output {wanted}; {spec.name!r} is {short_shape(spec)}")
    if class_names is not None and channels != fixed + len(class_names):
        raise ValueError(f"detection layout {layout}: {spec.name!r} ({short_shape(spec)}) holds {channels - fixed} "
                         f"class scores, not one per class name ({len(class_names)})")


def short_shape(spec: TensorSpec) -> str:
    """dtype[batch, D, 9]: a long symbolic dim (an exporter's formula of H and W) shown as "D", so a refusal
    stays one line."""
    dims = ("D" if isinstance(d, str) and len(d) > 16 else str(d) for d in spec.shape)
    return f"{spec.dtype}[{', '.join(dims)}]"


def _per_sample(spec: TensorSpec) -> tuple:
    axis = batch_axis(spec)
    return tuple(d for i, d in enumerate(spec.shape) if i != axis)


def _options(given: Mapping, layout: str) -> dict:
    """score_threshold, iou_threshold and max_detections of an entry, checked, with each layout's defaults."""
    threshold = given.get("score_threshold", DEFAULT_SCORE_THRESHOLD)
    if not _number(threshold) or not math.isfinite(threshold):
        raise ValueError(f"detection score_threshold must be a finite number, got {threshold!r}")
    iou = given.get("iou_threshold", None if layout == "boxes+scores" else IOU_THRESHOLD)
    if iou is not None and (not _number(iou) or not 0 < iou <= 1):
        raise ValueError(f"detection iou_threshold must be a number in (0, 1], got {iou!r}")
    limit = given.get("max_detections", MAX_DETECTIONS)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_DETECTIONS_LIMIT:
        raise ValueError(f"detection max_detections must be an integer from 1 to {MAX_DETECTIONS_LIMIT}, "
                         f"got {limit!r}")
    return {"score_threshold": float(threshold), "iou_threshold": None if iou is None else float(iou),
            "max_detections": limit}


def _extra(name: str | None, specs: Mapping[str, TensorSpec], outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """A boxes or classes output, samples first; None when not named or without a batch axis."""
    if name is None or name not in outputs or batch_axis(specs[name]) is None:
        return None
    return samples_first(specs[name], np.asarray(outputs[name]))


def _pick(given: Mapping, key: str, names: list[str], scores: str, words: tuple[str, ...]) -> str | None:
    """The output named for `key` in the entry, else the one other output named like one of `words`."""
    if key in given:
        if given[key] not in names:
            raise ValueError(f"detection {key} must name an output ({', '.join(names)}), got {given[key]!r}")
        return given[key]
    return _one([n for n in names if n != scores], words)


def _one(names: list[str], words: tuple[str, ...]) -> str | None:
    matches = [n for n in names if any(w in n.lower() for w in words)]
    return matches[0] if len(matches) == 1 else None


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))
