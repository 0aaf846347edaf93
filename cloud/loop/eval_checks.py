"""Sanity checks of offline evaluation, and where their limits come from.

- perturbation: Gaussian noise with sd = `noise` x the input's own standard deviation (over the held-out
  data) is added to every floating-point input; the figure is the share of answers that change (the top-1
  class; for regression a value moving by more than `regression_tolerance` x the labels' sd).
- invariance: transformations declared per model that must not change the answer; the figure is the
  share that changes, against the declaration's `max_changed`.
- calibration (classifiers): expected calibration error with its reliability bins (eval_stats.py).

A check fails only when its whole 95% interval lies beyond its limit, so a figure within noise of the
limit passes. The candidate is judged; the serving model's figures are shown beside it.

Declarations. A policy file (`--checks FILE.toml`) sets limits and may list invariances; without
`[[invariance]]` tables there, the candidate bundle's `model_card.invariances` (the same entries, as
JSON; else the serving bundle's) declare them, so they travel with the model:

    [perturbation]
    noise = 0.05            # sd as a fraction of each float input's sd
    max_changed = 0.05
    regression_tolerance = 0.1   # a value "changes" when it moves by more than this x the labels' sd
    seed = 0
    [calibration]
    bins = 10
    max_ece = 0.10
    [[invariance]]
    name = "horizontal flip"
    transform = "flip"      # flip (axis), offset (value), scale (value), roll (value = shift, axis)
    axis = -1               # an axis of the input array; never its batch axis
    input = "pixels"        # default: the first floating-point input
    max_changed = 0.02      # default 0.01

Transformations are a closed set of numpy operations: a declaration names data, never code.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.cloud.loop.eval_stats import proportion
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.schema import TensorSpec, batch_axis

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TRANSFORMS = ("flip", "offset", "scale", "roll")
NEEDS_VALUE = ("offset", "scale", "roll")
NEEDS_AXIS = ("flip", "roll")
INVARIANCE_KEYS = {"name", "transform", "value", "axis", "input", "max_changed"}


@dataclass(frozen=True)
class Invariance:
    name: str
    transform: str
    value: float | None = None
    axis: int | None = None
    input: str | None = None
    max_changed: float = 0.01


@dataclass(frozen=True)
class CheckPolicy:
    noise: float = 0.05
    max_changed_under_noise: float = 0.05
    regression_tolerance: float = 0.1
    bins: int = 10
    max_ece: float = 0.10
    seed: int = 0
    invariances: tuple[Invariance, ...] = field(default_factory=tuple)
    declared_in: str = "nowhere"


def load_policy(path: Path | None, manifests: Sequence[tuple[str, Mapping]]) -> CheckPolicy:
    """The policy file's limits and invariances; invariances from the first manifest that declares some
    when the file lists none. manifests: (which, manifest) pairs, the candidate's first."""
    document: dict = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise EdgefleetError(f"--checks {path}: cannot read it as TOML ({err})") from err
        unknown = set(document) - {"perturbation", "calibration", "invariance"}
        if unknown:
            raise EdgefleetError(f"--checks {path}: unknown table(s) {', '.join(sorted(unknown))} (known: "
                                 f"perturbation, calibration, invariance)")
    where = f"--checks {path}"
    noise = _table(document, "perturbation", where)
    calib = _table(document, "calibration", where)
    limits = {
        "noise": _number(noise, "noise", 0.05, where, low=0.0),
        "max_changed_under_noise": _number(noise, "max_changed", 0.05, where, low=0.0, high=1.0),
        "regression_tolerance": _number(noise, "regression_tolerance", 0.1, where, low=0.0),
        "seed": int(_number(noise, "seed", 0, where, low=0.0)),
        "bins": int(_number(calib, "bins", 10, where, low=1.0, high=1000.0)),
        "max_ece": _number(calib, "max_ece", 0.10, where, low=0.0, high=1.0),
    }
    if document.get("invariance"):
        declared, entries = where, document["invariance"]
    else:
        declared, entries = next(((f"the {which} bundle's model_card.invariances", m["model_card"]["invariances"])
                                  for which, m in manifests
                                  if isinstance(m.get("model_card"), Mapping) and m["model_card"].get("invariances")),
                                 ("nowhere", []))
    if not isinstance(entries, list):
        raise EdgefleetError(f"{declared}: expected a list of invariance entries")
    invariances = tuple(_invariance(entry, index, declared) for index, entry in enumerate(entries))
    return CheckPolicy(**limits, invariances=invariances, declared_in=declared)


def _table(document: Mapping, key: str, where: str) -> Mapping:
    value = document.get(key, {})
    if not isinstance(value, Mapping):
        raise EdgefleetError(f"{where}: [{key}] must be a table")
    return value


def _number(table: Mapping, key: str, default: float, where: str, *, low: float | None = None,
            high: float | None = None) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            low is not None and value < low) or (high is not None and value > high):
        bounds = f" from {low:g}" if low is not None else ""
        bounds += f" to {high:g}" if high is not None else ""
        raise EdgefleetError(f"{where}: {key} must be a number{bounds}, got {value!r}")
    return float(value)


def _invariance(entry: object, index: int, where: str) -> Invariance:
    place = f"{where}: invariance {index + 1}"
    if not isinstance(entry, Mapping):
        raise EdgefleetError(f"{place} must be a table (name, transform, ...)")
    unknown = set(entry) - INVARIANCE_KEYS
    if unknown:
        raise EdgefleetError(f"{place}: unknown key(s) {', '.join(sorted(unknown))} (known: "
                             f"{', '.join(sorted(INVARIANCE_KEYS))})")
    transform = entry.get("transform")
    if transform not in TRANSFORMS:
        raise EdgefleetError(f"{place}: transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    if transform in NEEDS_VALUE and "value" not in entry:
        raise EdgefleetError(f"{place}: transform {transform} needs a value")
    value = _number(entry, "value", 0.0, place) if transform in NEEDS_VALUE else None
    if transform == "roll" and value != int(value):
        raise EdgefleetError(f"{place}: roll needs a whole number of positions as its value, got {value:g}")
    axis = entry.get("axis", -1 if transform in NEEDS_AXIS else None)
    if transform in NEEDS_AXIS and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise EdgefleetError(f"{place}: axis must be an integer, got {axis!r}")
    name_in = entry.get("input")
    if name_in is not None and not isinstance(name_in, str):
        raise EdgefleetError(f"{place}: input must be an input name, got {name_in!r}")
    name = entry.get("name", f"{transform} {value if value is not None else ''}".strip())
    return Invariance(str(name), transform, value, axis if transform in NEEDS_AXIS else None, name_in,
                      _number(entry, "max_changed", 0.01, place, low=0.0, high=1.0))


# running the checks -----------------------------------------------------------------------------------------
Answers = Callable[[dict[str, np.ndarray]], np.ndarray]  # inputs -> top-1 classes (N,) or values (N, k)


def changed(before: np.ndarray, after: np.ndarray, tolerance: float | None) -> np.ndarray:
    """Per sample: did the answer change (another class; a value moving by more than tolerance)?"""
    if tolerance is None:
        return before != after
    return np.abs(np.asarray(after, np.float64) - before).reshape(len(before), -1).max(axis=1) > tolerance


def perturbation(answers: Answers, inputs: dict[str, np.ndarray], specs: Sequence[TensorSpec], clean: np.ndarray,
                 policy: CheckPolicy, tolerance: float | None) -> dict | None:
    """The share of answers that change under noise; None when the model has no float input."""
    rng = np.random.default_rng(policy.seed)
    noisy, touched = dict(inputs), []
    for spec in specs:
        value = inputs[spec.name]
        if value.dtype.kind == "f":
            sd = float(np.std(value, dtype=np.float64))
            noisy[spec.name] = (value + rng.normal(0.0, policy.noise * sd, value.shape)).astype(value.dtype)
            touched.append(spec.name)
    if not touched:
        return None
    moved = changed(clean, answers(noisy), tolerance)
    return {"inputs": touched, "noise": policy.noise, **proportion(int(moved.sum()), moved.size)}


def transformed(inputs: dict[str, np.ndarray], specs: Sequence[TensorSpec], invariance: Invariance) -> dict:
    """The inputs with the declared transformation applied to its input (EdgefleetError if it cannot be)."""
    floats = [s for s in specs if np.dtype(s.dtype).kind == "f"]
    spec = next((s for s in specs if s.name == invariance.input), None) if invariance.input else \
        (floats[0] if floats else None)
    if spec is None:
        raise EdgefleetError(f"invariance {invariance.name!r}: the model has no "
                             f"{'input ' + repr(invariance.input) if invariance.input else 'floating-point input'} "
                             f"(inputs: {', '.join(s.name for s in specs)})")
    value = inputs[spec.name]
    out = dict(inputs)
    if invariance.axis is not None:
        axis = invariance.axis
        if not -value.ndim <= axis < value.ndim or axis % value.ndim == batch_axis(spec):
            raise EdgefleetError(f"invariance {invariance.name!r}: axis {axis} is not a sample axis of input "
                                 f"{spec.name!r} {spec.describe()}")
    if invariance.transform == "flip":
        out[spec.name] = np.ascontiguousarray(np.flip(value, invariance.axis))
    elif invariance.transform == "roll":
        out[spec.name] = np.roll(value, int(invariance.value), invariance.axis)
    elif invariance.transform == "offset":
        out[spec.name] = (value + invariance.value).astype(value.dtype)
    else:
        out[spec.name] = (value * invariance.value).astype(value.dtype)
    return out


def invariance_check(answers: Answers, inputs: dict[str, np.ndarray], specs: Sequence[TensorSpec],
                     clean: np.ndarray, invariance: Invariance, tolerance: float | None) -> dict:
    moved = changed(clean, answers(transformed(inputs, specs, invariance)), tolerance)
    return proportion(int(moved.sum()), moved.size)


def beyond(figure: dict | None, limit: float, key: str = "ci95") -> bool:
    """True when the figure's whole interval lies above the limit: the check fails."""
    return figure is not None and figure.get(key) is not None and figure[key][0] > limit
