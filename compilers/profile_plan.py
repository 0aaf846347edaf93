"""What a bundle's reference profile covers, decided from the schema before any data is run: the task,
the profiled inputs, the names of tabular columns, and the outputs each task summarises.

    plan = plan_profile(inputs, outputs, task, profiled_inputs=None, feature_names=["age", "income"])
    plan.profiled             # ["features"]: the manifest's interface `profiled_inputs`
    plan.output_names         # the outputs to run on the reference data (core/output_summary.py)
    profile = plan.build(reference, scores, output_chunks, ...)

Task (`infer_task`): given, else inferred only when unambiguous: "detection" when a detection layout is
given; "classification" when class names are given (their count must match the first output's [batch,
classes]); "detection" when one output is named like *box* and one like *score*; else "other" (a 2-D
output alone says nothing: an embedding is 2-D, nor a 3-D one: a YOLO output must be declared). A
detector's layout (boxes+scores, yolov5, yolov8) is declared or inferred by core/detection.py `resolve`.

Profiled inputs: given (each must be profilable), else every input that has a batch axis, is not a
recurrent state (its name pairs with an output's of the same rank, h0/hn, state/next_state, or its
shape equals an output's with the batch off axis 0, [layers, batch, hidden]) and whose features are a fixed set
(`unprofilable`). Every other input is listed under the profile's "unprofiled" with the reason, and the
device's telemetry profiles exactly the declared ones. Every refusal is an ExportError.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgefleet.core import detection as det
from edgefleet.core.errors import ExportError
from edgefleet.core.magnitude import TAIL_EDGES
from edgefleet.core.output_summary import OutputSummary, plan_summaries
from edgefleet.core.profile import build_profile, feature_kind, samples_first_spec
from edgefleet.core.schema import TensorSpec, batch_axis, sample_count

log = logging.getLogger(__name__)

TASKS = ("classification", "regression", "embedding", "detection", "other")
FeatureNames = Sequence[str] | Mapping[str, Sequence[str]]
MAX_BINS = 1024 - TAIL_EDGES  # a feature row is bins + 1 + TAIL_EDGES counts; telemetry refuses rows over 1,026
_STATE_AFFIXES = re.compile(r"^(next|new|prev|previous|past|present|last|initial|init)[_.]|"
                            r"[_.](next|new|prev|previous|past|present|last)$|(0|n)$")


def infer_task(outputs: Sequence[TensorSpec], class_names: Sequence[str] | None,
               detection: Mapping | None = None) -> str:
    """The task when none is given (module docstring)."""
    if detection is not None:
        return "detection"
    if class_names is not None:
        check_classes(outputs[0], class_names)
        return "classification"
    names = [s.name.lower() for s in outputs]
    if sum("box" in n for n in names) == 1 and sum("score" in n for n in names) == 1:
        return "detection"
    return "other"


def check_classes(first: TensorSpec, class_names: Sequence[str] | None, value: np.ndarray | None = None) -> None:
    """A classifier's first output is [batch, classes], with one class per name when names are given."""
    count = len(class_names) if class_names is not None else None
    classes = value.shape[1] if value is not None and value.ndim == 2 else None
    if len(first.shape) == 2 and isinstance(first.shape[1], int):
        classes = first.shape[1]
    if len(first.shape) != 2 or (count is not None and classes is not None and classes != count):
        wanted = f"[batch, {count}] for {count} class names" if count is not None else "[batch, classes]"
        raise ExportError(f"a classifier's first output must be {wanted}; {first.name!r} is {first.describe()}")


def unprofilable(spec: TensorSpec) -> str | None:
    """Why an input's features cannot be binned on fixed edges (core/profile.py), or None: it needs a
    batch axis, and a fixed number of features per sample (fixed dims besides the batch for a tabular
    input, a fixed channel axis after the batch for taps), at most ELEMENT_LIMIT columns."""
    if batch_axis(spec) is None:
        return "no batch axis: one value serves every sample"
    first = samples_first_spec(spec)
    try:
        kind = feature_kind(first)
    except ValueError as err:
        return str(err)
    symbolic = [str(d) for d in first.shape[1:] if isinstance(d, str)]
    if kind == "elements" and symbolic:
        return f"its columns vary with {', '.join(symbolic)} from request to request"
    if kind == "channel_stats" and isinstance(first.shape[1], str):
        return f"its channel axis (the axis after the batch) is symbolic ({first.shape[1]})"
    return None


def state_output(spec: TensorSpec, outputs: Sequence[TensorSpec]) -> str | None:
    """The output a recurrent state input pairs with (h0/hn, state/next_state, or the same shape with the
    batch off axis 0), or None."""
    stem = _stem(spec.name)
    for out in outputs:
        if out.name != spec.name and _stem(out.name) == stem and len(out.shape) == len(spec.shape):
            return out.name
        if out.shape == spec.shape and batch_axis(spec) not in (0, None):
            return out.name
    return None


@dataclass(frozen=True)
class ProfilePlan:
    task: str
    profiled: list[str]
    unprofiled: list[dict]  # {"input", "reason"}
    names: dict[str, list[str]] = field(default_factory=dict)  # input -> column names
    detection: dict | None = None  # the manifest's interface `detection`
    summaries: list[OutputSummary] = field(default_factory=list)

    @property
    def output_names(self) -> list[str]:
        return [s.output for s in self.summaries]

    def build(self, inputs: Sequence[TensorSpec], reference: dict[str, np.ndarray], scores: np.ndarray | None,
              output_chunks: Sequence[Mapping[str, np.ndarray]], *, postprocess: str,
              class_names: list[str] | None, bins: int) -> dict:
        """The reference profile (core/profile.py) of the planned inputs and outputs."""
        for skipped in self.unprofiled:
            log.info("reference profile: input %s is not profiled: %s", skipped["input"], skipped["reason"])
        specs = [s for s in inputs if s.name in self.profiled]
        profile = build_profile(reference, specs, scores if self.task == "classification" else None,
                                postprocess=postprocess, class_names=class_names, bins=bins,
                                count=sample_count(inputs, reference), names=self.names,
                                summaries=self.summaries, output_chunks=output_chunks)
        if self.unprofiled:
            profile["unprofiled"] = self.unprofiled
        return profile


def plan_profile(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], task: str, *,
                 profiled_inputs: Sequence[str] | None = None, feature_names: FeatureNames | None = None,
                 detection: Mapping | None = None, class_names: Sequence[str] | None = None) -> ProfilePlan:
    """Checks the caller's choices against the schema and decides the rest (module docstring)."""
    if task not in TASKS:
        raise ExportError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    known = [s.name for s in inputs]
    if profiled_inputs is not None:
        unknown = [n for n in profiled_inputs if n not in known]
        if unknown or isinstance(profiled_inputs, str):
            raise ExportError(f"profiled_inputs must list input names ({', '.join(known)}), got {profiled_inputs!r}")
    profiled, unprofiled = [], []
    for spec in inputs:
        why = unprofilable(spec)
        pair = state_output(spec, outputs)
        if profiled_inputs is not None:
            if spec.name in profiled_inputs and why is not None:
                raise ExportError(f"input {spec.name!r} cannot be profiled: {why}")
            why = why or (None if spec.name in profiled_inputs else "not listed in profiled_inputs")
        elif why is None and pair is not None:
            why = f"a recurrent state (it pairs with output {pair!r})"
        if why is None:
            profiled.append(spec.name)
        else:
            unprofiled.append({"input": spec.name, "reason": why})
    names = _feature_names(inputs, profiled, feature_names)
    if task != "detection":
        if detection is not None:
            raise ExportError(f"detection settings are for task detection; this model's task is {task}")
        return ProfilePlan(task, profiled, unprofiled, names, None, plan_summaries(task, outputs))
    try:
        layout = det.resolve(outputs, detection, class_names)
    except ValueError as err:
        raise ExportError(str(err)) from err
    if layout is None:
        shapes = ", ".join(f"{s.name} {det.short_shape(s)}" for s in outputs)
        raise ExportError(f"a detector's layout is not clear from its outputs ({shapes}): declare it with "
                          f"--detection-layout L (detection={{'layout': L}}), L one of {', '.join(det.LAYOUTS)}")
    return ProfilePlan(task, profiled, unprofiled, names, layout.to_manifest(), plan_summaries(task, outputs, layout))


def _feature_names(inputs: Sequence[TensorSpec], profiled: list[str], given: FeatureNames | None) -> dict:
    """{input: column names}, each list as long as the input's columns (a Sequence names the one tabular
    input's)."""
    if given is None:
        return {}
    tabular = [s for s in inputs if s.name in profiled and feature_kind(samples_first_spec(s)) == "elements"]
    if not isinstance(given, Mapping):
        if isinstance(given, str) or len(tabular) != 1:
            raise ExportError(f"feature_names as a list names the columns of the one tabular input; this model "
                              f"has {len(tabular)} ({', '.join(s.name for s in tabular) or 'none'}): pass "
                              f"{{input name: [names]}}")
        given = {tabular[0].name: given}
    columns = {s.name: int(np.prod(samples_first_spec(s).shape[1:], dtype=np.int64)) for s in tabular}
    names = {}
    for name, labels in given.items():
        labels = list(labels) if not isinstance(labels, str) else [labels]
        if name not in columns:
            raise ExportError(f"feature_names: {name!r} is not a profiled tabular input "
                              f"({', '.join(columns) or 'none'})")
        if len(labels) != columns[name] or not all(isinstance(x, str) and x for x in labels):
            raise ExportError(f"feature_names for input {name!r}: expected {columns[name]} non-empty names (one "
                              f"per column), got {len(labels)}")
        if len(set(labels)) != len(labels):
            raise ExportError(f"feature_names for input {name!r}: names repeat")
        names[name] = labels
    return names


def _stem(name: str) -> str:
    """A tensor name without the affixes that mark a state's input or output side."""
    return _STATE_AFFIXES.sub("", name.lower())


def check_task_and_bins(task: str | None, bins: int) -> None:
    """The export/import arguments the profile depends on, refused before any work."""
    if task is not None and task not in TASKS:
        raise ExportError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= MAX_BINS:
        raise ExportError(f"bins must be an integer from 2 to {MAX_BINS}, got {bins!r}")
