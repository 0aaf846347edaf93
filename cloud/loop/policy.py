"""The retraining policy: one TOML file that says when a model is retrained, on what, how, how the result is
judged and how it reaches the fleet. `edgefleet loop run --policy FILE` runs it once (cloud/loop/runner.py);
`cloud up --loop` runs it when its trigger fires. Relative paths are read from the policy file's directory.

    name = "digits-night"            # required: the runs are recorded under this name (an id: [A-Za-z0-9_.-])
    model = "digits-cnn"             # required: the model's name in the registry
    fleet = "lab"                    # required: whose captures train it and where it is deployed

    [trigger]
    kind = "drift"                   # drift (an open data or prediction drift alert for model and fleet),
                                     # performance (an open performance alert), schedule, manual (default)
    every = "7d"                     # schedule only: 30m, 6h, 1d, 2w

    [training]
    function = "mytrain:fit"         # required: module:function called as f(old_model, reference, dataset, mode)
    mode = "finetune"                # finetune (also spelt "stateful": the serving model on the new data) or
                                     # scratch (old_model is None)
    torch_model = "mymodels:serving" # finetune: module:function returning the serving model in torch
    reference_data = "ref.npz"       # optional: the serving model's training data (inputs, optional y)

    [dataset]
    name = "digits-night"            # default: the policy's name; each run freezes its next version
    window = "7d"                    # captures of the last window (or since = Unix seconds / ISO 8601)
    labelled_only = true             # default true: training needs labels
    min_samples = 50                 # fewer captured rows stop the run before training (default 1)
    holdout_fraction = 0.3           # share of the captured rows kept out of training and evaluated on as
                                     # "recent" data (default 0.3; 0 evaluates on the held-out file alone)
    seed = 0                         # the split's seed

    [recipe]
    file = "recipe.toml"             # a compress recipe (cloud/compress/recipe_format.py), or inline:
    # [[recipe.step]]  method = "quantize_dynamic"
    targets = ["onnxruntime-cpu"]    # compile targets (edgefleet compile --list); default none

    [evaluation]
    heldout = "heldout.npz"          # required: labelled held-out split (cloud/loop/eval_data.py's layout)
    critical_slices = ["clean"]      # slices on which the candidate may not be worse (overall always is)
    max_drop = 0.02                  # the loss accepted on a group before it counts as worse (default 0)
    slices = ["slice"]               # keys of the .npz that name slices (default: slice)
    checks = "checks.toml"           # optional sanity-check limits and invariances (eval_checks.py)
    min_rows = 20                    # groups with fewer rows are not judged

    [deployment]                     # optional: without it the run stops after pushing the bundle
    waves = [50, 100]                # cumulative percent per wave (default: everyone at once)
    wave_timeout = 600               # seconds a wave may take
    health_window = 30               # seconds a device watches the new model
    timeout = 1800                   # seconds the run waits for the rollout to finish
    measure_seconds = 10             # then waits this long before it records each device's measured accuracy
                                     # on the new model (labels that arrived) beside the old one's before the run
    [deployment.gates]               # quality gates on the first wave (cloud/quality_gates.py's fields)
    max_accuracy_drop = 0.05
    observation_seconds = 60

    [signing]
    key = "keys/release.key"         # required: signs the retrained bundle and its reports
    trust = ["keys/release.pub"]     # default: the configured trusted keys

Every refusal is a PolicyError naming the file and the key, so the CLI exits 2 with one line.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import ID_PATTERN

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TRIGGERS = ("drift", "performance", "schedule", "manual")
MODES = {"finetune": "finetune", "stateful": "finetune", "scratch": "scratch"}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_POLICY_BYTES = 256 * 1024
SECTIONS = {"name", "model", "fleet", "trigger", "training", "dataset", "recipe", "evaluation", "deployment",
            "signing"}
GATE_KEYS = {"observation_seconds", "min_samples", "min_labels", "on_insufficient", "max_prediction_psi",
             "max_accuracy_drop", "max_p99_ratio", "max_error_rate_increase"}


class PolicyError(EdgefleetError):
    """A policy file that cannot be run as written."""


@dataclass(frozen=True)
class Training:
    function: str
    mode: str = "finetune"
    torch_model: str | None = None
    reference_data: Path | None = None


@dataclass(frozen=True)
class DatasetSelection:
    name: str
    window_s: float | None = None
    since: float | None = None
    labelled_only: bool = True
    min_samples: int = 1
    holdout_fraction: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class RecipeSpec:
    recipe: Any = None  # cloud.compress.recipe_format.Recipe (ONNX steps only), or None: no compression
    source: str = "none"  # the file, "inline" or "none"
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    heldout: Path
    critical_slices: tuple[str, ...] = ()
    slices: tuple[str, ...] = ()
    checks: Path | None = None
    min_rows: int = 20
    max_drop: float = 0.0


@dataclass(frozen=True)
class Deployment:
    waves: tuple[int, ...] = ()
    wave_timeout: float = 600.0
    health_window: float = 30.0
    timeout: float = 1800.0
    gates: dict = field(default_factory=dict)
    measure_seconds: float = 10.0


@dataclass(frozen=True)
class Policy:
    path: Path
    name: str
    model: str
    fleet: str
    trigger: str
    every_s: float | None
    training: Training
    dataset: DatasetSelection
    recipe: RecipeSpec
    evaluation: Evaluation
    deployment: Deployment | None
    key: Path
    trust: tuple[Path, ...]


def parse_duration(text: object, where: str) -> float:
    match = DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise PolicyError(f"{where}: expected a duration like 30m, 6h, 1d or 2w, got {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


class _Reader:
    """Reads one table of the file, naming `path [section] key` in every message."""

    def __init__(self, path: Path, section: str, table: object) -> None:
        self.path, self.section = path, section
        if not isinstance(table, dict):
            raise PolicyError(f"{path}: [{section}] must be a table")
        self.table = table

    def where(self, key: str) -> str:
        return f"{self.path}: {key}" if not self.section else f"{self.path}: [{self.section}] {key}"

    def known(self, keys: set[str]) -> None:
        unknown = sorted(set(self.table) - keys)
        if unknown:
            raise PolicyError(f"{self.where(unknown[0])}: unknown key (known: {', '.join(sorted(keys))})")

    def get(self, key: str, kind: type | tuple, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                raise PolicyError(f"{self.where(key)}: required")
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise PolicyError(f"{self.where(key)}: expected {_kind(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise PolicyError(f"{self.where(key)}: expected {_kind(kind)}, got {value!r}")
        return value

    def ident(self, key: str, default: str | None = None) -> str:
        value = self.get(key, str, default, required=default is None)
        if not ID_PATTERN.fullmatch(value):
            raise PolicyError(f"{self.where(key)}: {value!r} is not an id ({ID_PATTERN.pattern})")
        return value

    def callable_ref(self, key: str, *, required: bool = False) -> str | None:
        value = self.get(key, str, required=required)
        if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
            raise PolicyError(f"{self.where(key)}: expected module:function, got {value!r}")
        return value

    def file(self, key: str, *, required: bool = False) -> Path | None:
        value = self.get(key, str, required=required)
        if value is None:
            return None
        found = (self.path.parent / value).resolve()
        if not found.is_file():
            raise PolicyError(f"{self.where(key)}: no file {found}")
        return found

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key, (int, float), default)
        if not low <= value <= high:
            raise PolicyError(f"{self.where(key)}: {value!r} is outside [{low:g}, {high:g}]")
        return float(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, list, [])
        if not all(isinstance(v, str) and v for v in value):
            raise PolicyError(f"{self.where(key)}: expected a list of non-empty strings, got {value!r}")
        return tuple(value)


def _kind(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_policy(path: Path) -> Policy:
    """The policy in `path`, checked whole (module docstring), or PolicyError with one line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PolicyError(f"--policy {path}: cannot read it ({err.strerror or err})") from err
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"--policy {path}: {len(raw)} bytes; a policy has at most {MAX_POLICY_BYTES}")
    try:
        document = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise PolicyError(f"--policy {path}: not valid TOML ({err})") from err
    top = _Reader(path, "", document)
    top.known(SECTIONS)
    name = top.ident("name")
    trigger = _Reader(path, "trigger", top.get("trigger", dict, {}))
    trigger.known({"kind", "every"})
    kind = trigger.get("kind", str, "manual")
    if kind not in TRIGGERS:
        raise PolicyError(f"{trigger.where('kind')}: {kind!r} is not one of {', '.join(TRIGGERS)}")
    every = trigger.get("every", str)
    if (kind == "schedule") != (every is not None):
        raise PolicyError(f"{trigger.where('every')}: " + ("required by kind = 'schedule'" if every is None else
                                                            f"only for kind = 'schedule' (kind is {kind!r})"))
    signing = _Reader(path, "signing", top.get("signing", dict, required=True))
    signing.known({"key", "trust"})
    trust = tuple(_existing(path, signing, "trust", value) for value in signing.strings("trust"))
    return Policy(path=path, name=name, model=top.get("model", str, required=True), fleet=top.ident("fleet"),
                  trigger=kind, every_s=parse_duration(every, trigger.where("every")) if every else None,
                  training=_training(path, top), dataset=_dataset(path, top, name), recipe=_recipe(path, top),
                  evaluation=_evaluation(path, top), deployment=_deployment(path, top),
                  key=signing.file("key", required=True), trust=trust)


def _existing(path: Path, reader: _Reader, key: str, value: str) -> Path:
    found = (path.parent / value).resolve()
    if not found.is_file():
        raise PolicyError(f"{reader.where(key)}: no file {found}")
    return found


def _training(path: Path, top: _Reader) -> Training:
    section = _Reader(path, "training", top.get("training", dict, required=True))
    section.known({"function", "mode", "torch_model", "reference_data"})
    mode = section.get("mode", str, "finetune")
    if mode not in MODES:
        raise PolicyError(f"{section.where('mode')}: {mode!r} is not one of {', '.join(MODES)}")
    torch_model = section.callable_ref("torch_model")
    if MODES[mode] == "finetune" and torch_model is None:
        raise PolicyError(f"{section.where('torch_model')}: required by mode = {mode!r} (the bundle holds ONNX "
                          f"only; name a module:function returning the serving model in torch)")
    return Training(section.callable_ref("function", required=True), MODES[mode], torch_model,
                    section.file("reference_data"))


def _dataset(path: Path, top: _Reader, name: str) -> DatasetSelection:
    section = _Reader(path, "dataset", top.get("dataset", dict, {}))
    section.known({"name", "window", "since", "labelled_only", "min_samples", "holdout_fraction", "seed"})
    window, since = section.get("window", str), section.get("since", (int, float, str))
    if window is not None and since is not None:
        raise PolicyError(f"{section.where('since')}: give window or since, not both")
    if isinstance(since, str):
        from datetime import datetime, timezone

        try:
            parsed = datetime.fromisoformat(since)
        except ValueError as err:
            raise PolicyError(f"{section.where('since')}: {since!r} is neither Unix seconds nor ISO 8601") from err
        since = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    labelled = section.get("labelled_only", bool, True)
    if not labelled:
        raise PolicyError(f"{section.where('labelled_only')}: training needs labels; false is not supported")
    return DatasetSelection(
        name=section.ident("name", name),
        window_s=parse_duration(window, section.where("window")) if window else None,
        since=float(since) if since is not None else None, labelled_only=labelled,
        min_samples=int(section.number("min_samples", 1, 1, 1e9)),
        holdout_fraction=section.number("holdout_fraction", 0.3, 0.0, 0.9),
        seed=int(section.number("seed", 0, 0, 2**31)))


def _recipe(path: Path, top: _Reader) -> RecipeSpec:
    section = _Reader(path, "recipe", top.get("recipe", dict, {}))
    section.known({"file", "step", "targets"})
    steps = section.get("step", list, [])
    file = section.file("file")
    if file is not None and steps:
        raise PolicyError(f"{section.where('step')}: give a recipe file or inline steps, not both")
    recipe = None
    if steps or file is not None:
        from edgefleet.cloud.compress.recipe_format import RecipeError, load_recipe, make_recipe

        key = "step" if steps else "file"
        try:
            recipe = make_recipe(list(steps)) if steps else load_recipe(file)
        except RecipeError as err:
            raise PolicyError(f"{section.where(key)}: {err}") from err
        torch_steps = [s.method for s in recipe.steps if s.on_torch]
        if torch_steps:  # they would export the model again as one more version, outside the trained lineage
            raise PolicyError(f"{section.where(key)}: the loop compresses the retrained bundle, so its recipe takes "
                              f"ONNX steps only (quantize_static, quantize_dynamic, fp16); {torch_steps[0]} works "
                              f"on a torch model: do it inside the training function")
    targets = section.strings("targets")
    if targets:
        from edgefleet.compilers.targets import target_function

        for target in targets:
            try:
                target_function(target)
            except EdgefleetError as err:
                raise PolicyError(f"{section.where('targets')}: {err}") from err
    return RecipeSpec(recipe, str(file) if file else "inline" if steps else "none", targets)


def _evaluation(path: Path, top: _Reader) -> Evaluation:
    section = _Reader(path, "evaluation", top.get("evaluation", dict, required=True))
    section.known({"heldout", "critical_slices", "slices", "checks", "min_rows", "max_drop"})
    return Evaluation(section.file("heldout", required=True), section.strings("critical_slices"),
                      section.strings("slices"), section.file("checks"),
                      int(section.number("min_rows", 20, 1, 1e9)), float(section.number("max_drop", 0.0, 0.0, 1e9)))


def _deployment(path: Path, top: _Reader) -> Deployment | None:
    if "deployment" not in top.table:
        return None
    section = _Reader(path, "deployment", top.get("deployment", dict))
    section.known({"waves", "wave_timeout", "health_window", "timeout", "gates", "measure_seconds"})
    waves = section.get("waves", list, [])
    if not all(isinstance(w, int) and not isinstance(w, bool) and 0 < w <= 100 for w in waves) or \
            waves != sorted(set(waves)) or (waves and waves[-1] != 100):
        raise PolicyError(f"{section.where('waves')}: expected rising whole percentages ending at 100, got {waves!r}")
    gates = section.get("gates", dict, {})
    unknown = sorted(set(gates) - GATE_KEYS)
    if unknown:
        raise PolicyError(f"{section.where('gates')}: unknown gate field {unknown[0]!r} (known: "
                          f"{', '.join(sorted(GATE_KEYS))})")
    if gates:
        from edgefleet.cloud.quality_gates import QualityGates

        try:
            QualityGates(**gates)
        except ValueError as err:  # pydantic's ValidationError: the first problem, by field
            first = err.errors()[0] if hasattr(err, "errors") else None
            text = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(err)
            raise PolicyError(f"{section.where('gates')}: {text}") from err
    return Deployment(tuple(waves), section.number("wave_timeout", 600, 1, 86400),
                      section.number("health_window", 30, 0, 86400), section.number("timeout", 1800, 1, 7 * 86400),
                      dict(gates), section.number("measure_seconds", 10, 0, 3600))
