"""Per-task output summaries: what a model's outputs looked like, binned like the input features.

The reference profile's `outputs` section and the device's telemetry windows (TelemetryWindow.outputs)
hold the same rows, computed by the same function (`summarise_outputs`), so both sides bin identically:

    profile["outputs"] = [{"output": "price", "summary": "values", "names": ["price[0]"],
                           "edges": [[..E interior edges..]], "counts": [[..E + 2 counts..]]}]

Summaries per task (core/profile.py builds them from the reference data, the device from live traffic):
  - regression, "values": every output with a batch axis; one row per element when a sample has at most
    ELEMENT_ROWS elements (names `price[0]`, `price[1]`), else the rows mean, std, min, max of a sample's
    elements.
  - embedding, "embedding": the first output with a batch axis and a fixed per-sample size D; row `norm`
    (the L2 norm of each sample) and rows proj0..proj7, the dot products of the L2-normalised embedding
    with PROJECTIONS fixed random unit directions. The directions are drawn once at export with a fixed
    seed and stored in the profile (`"projections": [[..D floats..] x 8]`); the device reads them, never
    draws them again. A zero embedding projects to 0.
  - detection, "detections": the output the manifest's detection layout summarises (core/detection.py:
    the scores of boxes+scores, the one prediction output of yolov5/yolov8) and its candidates' scores
    (a per-class [D, C] row's best; objectness x best class for yolov5). Row `count`: per sample, the
    number of candidates at or above the layout's score_threshold (before any NMS); row `score`: one
    value per such candidate. The rows' totals differ (samples vs. detections): that is expected.
  - classification keeps the profile's `predictions`/`confidence`; other tasks have no output summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgefleet.core import detection as det
from edgefleet.core.profile import bin_counts
from edgefleet.core.schema import TensorSpec, batch_axis

ELEMENT_ROWS = 16
PROJECTIONS = 8
PROJECTION_SEED = 12
DEFAULT_SCORE_THRESHOLD = det.DEFAULT_SCORE_THRESHOLD
STAT_ROWS = ("mean", "std", "min", "max")
_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class OutputSummary:
    """One output's summary, ready to bin: from the plan at export, from the profile on the device."""

    output: str
    summary: str  # "values" | "embedding" | "detections"
    names: tuple[str, ...]
    axis: int | None  # the output's batch axis (core/schema.py batch_axis)
    edges: np.ndarray  # (rows, E) float64; (rows, 0) while the plan has none yet
    projections: np.ndarray | None = None  # (PROJECTIONS, D) unit rows, embedding only
    threshold: float = DEFAULT_SCORE_THRESHOLD  # detections only
    layout: str = "boxes+scores"  # detections only: how a candidate's score is read (core/detection.py)
    _directions: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)  # (D, P)

    def __post_init__(self) -> None:
        if self.projections is not None:  # transposed once, C-contiguous: np.dot's fast path per request
            object.__setattr__(self, "_directions", np.ascontiguousarray(self.projections.T))

    def with_edges(self, edges: np.ndarray) -> OutputSummary:
        return OutputSummary(self.output, self.summary, self.names, self.axis,
                             np.ascontiguousarray(edges, dtype=np.float64), self.projections, self.threshold,
                             self.layout)

    def to_profile(self, counts: np.ndarray) -> dict:
        entry = {"output": self.output, "summary": self.summary, "names": list(self.names),
                 "edges": self.edges.tolist(), "counts": counts.tolist()}
        if self.projections is not None:
            entry["projections"] = self.projections.tolist()
        return entry

    @classmethod
    def from_profile(cls, entry: Mapping, outputs: Sequence[TensorSpec],
                     detection: det.DetectionLayout | None = None) -> OutputSummary:
        """A profile's `outputs` entry, checked against the bundle's outputs and, for detections, read with the
        manifest's detection layout; ValueError names what is wrong."""
        specs = {s.name: s for s in outputs}
        name = entry.get("output") if isinstance(entry, Mapping) else None
        if name not in specs or batch_axis(specs[name]) is None:
            raise ValueError(f"profile output entry {str(name)[:60]!r} is not a batched output of the model")
        kind, names = entry.get("summary"), entry.get("names")
        rows = {"values": None, "embedding": 1 + PROJECTIONS, "detections": 2}
        if kind not in rows or not isinstance(names, list) or not names or rows[kind] not in (None, len(names)):
            raise ValueError(f"profile output {name!r}: summary {str(kind)[:20]!r} with rows {str(names)[:60]} is "
                             f"not one this runtime bins")
        edges = _array(entry.get("edges"), f"profile output {name!r} edges")
        unsorted = edges.ndim == 2 and (edges[:, 1:] < edges[:, :-1]).any()  # no subtraction: edges may be +-inf
        if edges.ndim != 2 or edges.shape[0] != len(names) or edges.shape[1] < 1 or unsorted:
            raise ValueError(f"profile output {name!r}: edges must be {len(names)} sorted rows of at least one "
                             f"finite edge, got shape {edges.shape}")
        size = per_sample(specs[name])
        if kind == "values" and tuple(names) != STAT_ROWS and size != len(names):
            raise ValueError(f"profile output {name!r}: {len(names)} element rows for an output of "
                             f"{size if size is not None else 'a varying number of'} elements per sample")
        projections = None
        if kind == "embedding":
            projections = _array(entry.get("projections"), f"profile output {name!r} projections")
            if projections.shape != (PROJECTIONS, size):
                raise ValueError(f"profile output {name!r}: projections must be {PROJECTIONS} rows of {size}, got "
                                 f"shape {projections.shape}")
        if kind == "detections" and (detection is None or detection.output != name):
            raise ValueError(f"profile output {name!r} summarises detections, but the manifest's detection layout "
                             f"does not name it")
        layout = detection or det.DetectionLayout("boxes+scores", name)
        return cls(name, kind, tuple(map(str, names)), batch_axis(specs[name]), edges, projections,
                   layout.score_threshold, layout.layout)


def plan_summaries(task: str, outputs: Sequence[TensorSpec],
                   detection: det.DetectionLayout | Mapping | None = None) -> list[OutputSummary]:
    """The outputs a task summarises and their rows, without edges (module docstring). `detection`: the
    layout, or a manifest entry (core/detection.py)."""
    batched = [s for s in outputs if batch_axis(s) is not None]
    if task == "regression":
        plans = []
        for spec in batched:
            size = per_sample(spec)
            names = ([f"{spec.name}[{i}]" for i in range(size)] if size is not None and size <= ELEMENT_ROWS
                     else list(STAT_ROWS))
            plans.append(_plan(spec, "values", names))
        return plans
    if task == "embedding":
        spec = embedding_output(outputs)
        if spec is None:
            return []
        directions = np.random.default_rng(PROJECTION_SEED).standard_normal((PROJECTIONS, per_sample(spec)))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        names = ["norm"] + [f"proj{i}" for i in range(PROJECTIONS)]
        return [OutputSummary(spec.name, "embedding", tuple(names), batch_axis(spec), np.zeros((len(names), 0)),
                              directions)]
    if task == "detection" and detection is not None:
        if not isinstance(detection, det.DetectionLayout):
            detection = det.resolve(outputs, detection)
        spec = next((s for s in batched if detection is not None and s.name == detection.output), None)
        if spec is None:
            return []
        return [OutputSummary(spec.name, "detections", ("count", "score"), batch_axis(spec), np.zeros((2, 0)),
                              None, detection.score_threshold, detection.layout)]
    return []


def summary_columns(summary: OutputSummary, value: np.ndarray) -> list[np.ndarray]:
    """One output's rows as (n, r) float blocks whose widths add up to the rows, in row order (a
    detection's `score` block has one line per detection, the others one per sample). Elements are kept
    float32 when they are (binning them is exact); statistics are computed in float64."""
    x = np.asarray(value)
    if summary.axis:
        x = np.moveaxis(x, summary.axis, 0)
    n = x.shape[0]
    flat = x.reshape(n, math.prod(x.shape[1:]))  # not -1: a request of 0 samples has 0 rows
    if summary.summary == "values":
        if summary.names != STAT_ROWS:  # one row per element
            return [flat]
        flat = flat.astype(np.float64)
        if not flat.shape[1]:
            return [np.full((n, len(STAT_ROWS)), np.nan)]
        return [np.stack([flat.mean(axis=1), flat.std(axis=1), flat.min(axis=1), flat.max(axis=1)], axis=1)]
    if summary.summary == "embedding":
        flat = flat.astype(np.float64)
        rows = np.empty((n, 1 + PROJECTIONS))
        norm = rows[:, :1]
        np.sqrt(np.square(flat).sum(axis=1, keepdims=True), out=norm)
        # cosines with the directions; a zero embedding projects to 0 (0 / tiny), a NaN one to NaN
        np.divide(np.dot(flat, summary._directions), np.maximum(norm, _TINY), out=rows[:, 1:])
        return [rows]
    if summary.summary == "detections":
        scores = det.scores_of(summary.layout, x, classes=False)[0]
        kept = scores >= summary.threshold
        return [kept.sum(axis=1, dtype=np.float64)[:, None], scores[kept][:, None]]
    raise ValueError(f"unknown output summary {summary.summary!r}")


def summarise_outputs(summaries: Sequence[OutputSummary], outputs: Mapping[str, np.ndarray],
                      into: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """The counts of each summary's rows on its edges, (rows, E + 2) each: the one binning function of the
    profile (core/profile.py) and the device (edge_runtime/telemetry.py). `into`: arrays of those shapes
    the counts are added to in place (the device's window), returned."""
    counts = list(into) if into is not None else [np.zeros((s.edges.shape[0], s.edges.shape[1] + 2), np.int64)
                                                  for s in summaries]
    for summary, total in zip(summaries, counts, strict=True):
        blocks = summary_columns(summary, outputs[summary.output])
        if len(blocks) == 1:  # every row in one block (values, embedding): no slicing per request
            bin_counts(blocks[0], summary.edges, out=total)
            continue
        start = 0
        for block in blocks:
            width = block.shape[1]
            bin_counts(block, summary.edges[start:start + width], out=total[start:start + width])
            start += width
    return counts


def _array(value: object, label: str) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{label} must be numbers in rows of equal length") from err
    if not np.isfinite(array).all():
        raise ValueError(f"{label} must be finite")
    return np.ascontiguousarray(array)


def embedding_output(outputs: Sequence[TensorSpec]) -> TensorSpec | None:
    """An embedding model's vector: its first output with a batch axis and a fixed size per sample (the one
    telemetry summarises and the HTTP answer shows), or None."""
    return next((s for s in outputs if batch_axis(s) is not None and per_sample(s)), None)


def per_sample(spec: TensorSpec) -> int | None:
    """Elements per sample of an output, or None when a dim besides the batch axis is symbolic."""
    axis = batch_axis(spec)
    rest = [d for i, d in enumerate(spec.shape) if i != axis]
    return int(np.prod(rest)) if all(isinstance(d, int) for d in rest) else None


def _plan(spec: TensorSpec, summary: str, names: list[str]) -> OutputSummary:
    return OutputSummary(spec.name, summary, tuple(names), batch_axis(spec), np.zeros((len(names), 0)))
