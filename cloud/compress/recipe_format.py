"""The recipe format: which steps exist, which fields each takes, and the checks that give a precise
message naming the step and the field. Running a recipe is recipe.py's job.

quantize_static's fields are quantize_static_int8's keyword arguments (quantize.py), with
max_accuracy_drop for max_drop and calibration_samples for the number of calibration rows;
gate_strategy picks how the accuracy gate orders the groups it keeps in float: "rank", "prefix",
"sensitivity" (each group ranked by the divergence it alone adds, gate.py) or "budget" (the same ranking
per weight, at most a fifth of the weights in float) or "prefix16" (int8 weights; 16-bit activations
and the first groups in float when int8 activations miss), "auto" by default."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.core.errors import EdgefleetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


TORCH_METHODS = ("prune_channels", "prune_unstructured", "lowrank", "distill")
ONNX_METHODS = ("quantize_static", "quantize_dynamic", "fp16")


class RecipeError(EdgefleetError):
    """A recipe is malformed, or one of its steps failed; `step` (1-based) and `field` say where."""

    def __init__(self, message: str, step: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.field = field


# fields: name -> (check, description); a check returns the normalised value or raises ValueError -------
def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError("a number between 0 and 1 (exclusive)")
    return float(value)


def _unit(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("a number between 0 and 1")
    return float(value)


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("a positive number")
    return float(value)


def _count(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of strings")
    return list(value)


def _bias_correction(value: Any) -> bool | str:
    if isinstance(value, bool) or value in ("analytic", "empirical"):
        return value
    raise ValueError("true, false, 'analytic' or 'empirical'")


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError("one of " + ", ".join(repr(o) for o in options))
        return value

    return check


def _factory(value: Any) -> str:
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise ValueError("'module:function', a function returning the student torch model")
    return value


FINE_TUNE = {"fine_tune_epochs": _count(0), "fine_tune_lr": _positive, "fine_tune_batch_size": _count(1)}
FIELDS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "prune_channels": {"amount": _fraction, "schedule_steps": _count(1), "target": _choice("params", "channels"),
                       "exclude": _names, **FINE_TUNE},
    "prune_unstructured": {"amount": _fraction, "schedule_steps": _count(1), **FINE_TUNE},
    "lowrank": {"energy": _unit, "rank": _count(1), "max_accuracy_drop": _unit, "min_reduction": _unit,
                "layers": _names, **FINE_TUNE},
    "distill": {"student": _factory, "epochs": _count(1), "temperature": _positive, "alpha": _unit,
                "lr": _positive, "batch_size": _count(1), "seed": _count(0)},
    "quantize_static": {"calibration_samples": _count(1), "per_channel": _boolean, "reduce_range": _boolean,
                        "quant_format": _choice("QDQ", "QOperator"),
                        "method": _choice("MinMax", "Entropy", "Percentile", "auto"), "activation_type": _text,
                        "weight_type": _text, "nodes_to_exclude": _names, "max_accuracy_drop": _unit,
                        "bias_correction": _bias_correction, "equalization": _boolean,
                        "rounding": _choice("nearest", "adaround"),
                        "gate_strategy": _choice("auto", "rank", "prefix", "sensitivity", "budget", "prefix16")},
    "quantize_dynamic": {"per_channel": _boolean, "reduce_range": _boolean, "weight_type": _text,
                         "nodes_to_exclude": _names},
    "fp16": {"keep_io_types": _boolean, "op_block_list": _names},
}
REQUIRED = {"prune_channels": ("amount",), "prune_unstructured": ("amount",), "distill": ("student",)}
EXCLUSIVE = {"lowrank": ("energy", "rank", "max_accuracy_drop")}


@dataclass(frozen=True)
class Step:
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def on_torch(self) -> bool:
        return self.method in TORCH_METHODS


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...]
    name: str | None = None  # the name of the bundles the recipe writes; default: the source bundle's

    @property
    def needs_torch(self) -> bool:
        return any(s.on_torch for s in self.steps)


def make_recipe(steps: list[Mapping[str, Any]], name: str | None = None) -> Recipe:
    """A validated Recipe from plain dicts ({"method": ..., **options}), as a TOML file gives them."""
    if not isinstance(steps, list) or not steps:
        raise RecipeError("a recipe needs at least one [[step]] table")
    checked = [_check_step(index, raw) for index, raw in enumerate(steps, start=1)]
    first_onnx = next((i for i, s in enumerate(checked, start=1) if not s.on_torch), None)
    for index, step in enumerate(checked, start=1):
        if step.on_torch and first_onnx is not None and index > first_onnx:
            raise RecipeError(f"step {index} ({step.method}): torch steps must come before the ONNX steps "
                              f"(step {first_onnx} is {checked[first_onnx - 1].method})", index, "method")
    if name is not None and (not isinstance(name, str) or not name):
        raise RecipeError("recipe field 'name': expected a non-empty string", None, "name")
    return Recipe(tuple(checked), name)


def _check_step(index: int, raw: Any) -> Step:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"step {index}: expected a table of fields, got {type(raw).__name__}", index)
    method = raw.get("method")
    if method not in FIELDS:
        raise RecipeError(f"step {index} field 'method': expected one of {', '.join(FIELDS)}, got {method!r}",
                          index, "method")
    allowed = FIELDS[method]
    options = {}
    for key, value in raw.items():
        if key == "method":
            continue
        if key not in allowed:
            raise RecipeError(f"step {index} ({method}) field '{key}': unknown field; {method} takes "
                              f"{', '.join(allowed)}", index, key)
        try:
            options[key] = allowed[key](value)
        except ValueError as err:
            raise RecipeError(f"step {index} ({method}) field '{key}': expected {err}, got {value!r}",
                              index, key) from err
    for key in REQUIRED.get(method, ()):
        if key not in options:
            raise RecipeError(f"step {index} ({method}) field '{key}': required", index, key)
    given = [k for k in EXCLUSIVE.get(method, ()) if k in options]
    if len(given) > 1:
        raise RecipeError(f"step {index} ({method}) field '{given[1]}': give only one of "
                          f"{', '.join(EXCLUSIVE[method])}", index, given[1])
    return Step(method, options)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"recipe {path} is not valid TOML: {err}") from err
    unknown = sorted(set(document) - {"name", "step"})
    if unknown:
        raise RecipeError(f"recipe {path}: unknown top-level field '{unknown[0]}' (expected name and [[step]])",
                          None, unknown[0])
    return make_recipe(document.get("step", []), document.get("name"))


# running -----------------------------------------------------------------------------------------------
