"""The evaluation data files: a held-out split and recently captured data, as `.npz` files.

    <input name>   one array per model input, samples on the input's batch axis (for a one-input model
                   the key may also be `x`)
    y              the labels: class indices (classification) or target values (regression), one per
                   sample. Required in the held-out file; a recent file without it is compared by
                   agreement with the serving model only (labels of captured data arrive later).
    slice          optional: one value per sample (a site, a light condition, a sensor); each distinct
                   value is a slice. `slices=("site", "light")` reads other keys instead; with several
                   keys the slices are named `key=value`. A recent file without a slice key is judged
                   on the whole file only.

Everything is checked before a model runs: a missing key, a label or slice count that is not the
sample count, an input the model's schema refuses (core/schema.py's message); each is one EdgefleetError
that names the file. Float inputs stored in another float width are cast to the schema's dtype.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.npz import load_npz
from edgefleet.core.schema import InputValidator, TensorSpec, sample_count

LABELS = "y"
DEFAULT_SLICE_KEY = "slice"
OVERALL = "overall"  # the whole file, reported beside its slices
MAX_SLICES = 256  # distinct values per file: more is a row id, not a slice


@dataclass(frozen=True)
class EvalData:
    name: str  # "heldout" or "recent"
    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    count: int  # samples
    slices: dict[str, np.ndarray] = field(default_factory=dict)  # slice name -> boolean mask over the samples


def read_data(path: Path, name: str, specs: Sequence[TensorSpec], slice_keys: Sequence[str] = ()) -> EvalData:
    """The file's inputs, labels and slices, checked against the model's input specs. name: "heldout" (labels
    and slice keys required) or "recent"."""
    flag = "--data" if name == "heldout" else "--recent"
    required = name == "heldout"
    try:
        arrays = load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise EdgefleetError(f"{flag} {path}: cannot read it as .npz ({err})") from err
    held = ", ".join(sorted(arrays)) or "nothing"
    inputs = {}
    for spec in specs:
        key = spec.name if spec.name in arrays or len(specs) > 1 else "x" if "x" in arrays else spec.name
        if key not in arrays:
            raise EdgefleetError(f"{flag} {path} lacks the model input {spec.name!r} (it holds: {held})")
        inputs[spec.name] = _cast(arrays[key], spec)
    try:
        InputValidator(list(specs)).check(inputs)
    except EdgefleetError as err:
        raise EdgefleetError(f"{flag} {path}: {err}") from err
    count = sample_count(specs, inputs)
    labels = arrays.get(LABELS)
    if labels is None and required:
        raise EdgefleetError(f"{flag} {path} lacks the labels {LABELS!r} (it holds: {held})")
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != count):
        raise EdgefleetError(f"{flag} {path}: {LABELS!r} has shape {labels.shape}; expected one label per sample "
                             f"({count})")
    keys = list(slice_keys) or ([DEFAULT_SLICE_KEY] if DEFAULT_SLICE_KEY in arrays else [])
    slices = {}
    for key in keys:
        if key not in arrays and not required:
            continue  # captured data rarely carries the user's columns: judged on the whole file only
        if key not in arrays:
            raise EdgefleetError(f"{flag} {path} lacks the slice key {key!r} (it holds: {held})")
        values = arrays[key]
        if values.shape != (count,):
            raise EdgefleetError(f"{flag} {path}: slice key {key!r} has shape {values.shape}; expected one value "
                                 f"per sample ({count},)")
        distinct = np.unique(values)
        if distinct.size > MAX_SLICES:
            raise EdgefleetError(f"{flag} {path}: slice key {key!r} has {distinct.size} distinct values (at most "
                                 f"{MAX_SLICES}: a slice is a group of samples)")
        for value in distinct:
            slice_name = str(value) if len(keys) == 1 else f"{key}={value}"
            if slice_name == OVERALL:
                raise EdgefleetError(f"{flag} {path}: slice key {key!r} has the value {OVERALL!r}, the name of the "
                                     f"whole data in the report; rename it")
            slices[slice_name] = values == value
    return EvalData(name, Path(path), inputs, labels, count, slices)


def _cast(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float data in another float width becomes the schema's (an .npz written from float64 arrays)."""
    want = np.dtype(spec.dtype)
    return value.astype(want) if value.dtype.kind == "f" and want.kind == "f" and value.dtype != want else value


def class_labels(data: EvalData, classes: int) -> np.ndarray:
    """The labels as class indices in [0, classes), or one message naming the file and the bad value."""
    flag = "--data" if data.name == "heldout" else "--recent"
    labels = data.labels
    if labels.ndim != 1 or labels.dtype.kind not in "iub":
        raise EdgefleetError(f"{flag} {data.path}: {LABELS!r} must hold one class index per sample (integers); "
                             f"got {labels.dtype}{list(labels.shape)}")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        raise EdgefleetError(f"{flag} {data.path}: label {labels[bad][0]} is not a class index of the model "
                             f"(0..{classes - 1})")
    return labels.astype(np.int64)


def regression_targets(data: EvalData, width: int) -> np.ndarray:
    """The labels as (samples, width) float64 targets, or one message."""
    flag = "--data" if data.name == "heldout" else "--recent"
    labels = np.asarray(data.labels)
    if labels.dtype.kind not in "iuf" or labels.reshape(len(labels), -1).shape[1] != width:
        raise EdgefleetError(f"{flag} {data.path}: {LABELS!r} must hold {width} number(s) per sample, like the "
                             f"model's output; got {labels.dtype}{list(labels.shape)}")
    return labels.reshape(len(labels), -1).astype(np.float64)


def slice_names(datasets: Mapping[str, EvalData]) -> set[str]:
    return {name for data in datasets.values() for name in data.slices}
