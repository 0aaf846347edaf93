"""Compression recipes: a list of steps, from Python or a TOML file, run in order on a model and its bundle.

    # recipe.toml
    name = "digits-small"          # optional: the name of the bundles it writes (default: the source's)
    [[step]]
    method = "prune_channels"      # prune_unstructured, lowrank, distill | quantize_static, quantize_dynamic, fp16
    amount = 0.5
    fine_tune_epochs = 5
    [[step]]
    method = "quantize_static"
    calibration_samples = 256

    result = run_recipe(load_recipe("recipe.toml"), model=model, bundle=bundle, data=data, out_dir="out",
                        signing_key=key)
    result.bundle, result.steps

Torch steps (pruning, low-rank, distillation) run on the torch model, in recipe order, before any
ONNX step; the model is then exported (export_torch) with the source bundle as lineage parent, the next
version number, and every torch step in the lineage. ONNX steps (quantize_*, fp16) run on a bundle,
each writing a new one. Each step is measured on the test data (accuracy overall, per class and per
slice) and, when cloud/compress/report.py exists, the steps go into its report.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.metrics import classification_metrics
from edgefleet.core.signing import SigningKey

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

log = logging.getLogger(__name__)

from edgefleet.cloud.compress.recipe_format import (  # noqa: E402 - the format, re-exported for callers
    ONNX_METHODS,
    TORCH_METHODS,
    Recipe,
    RecipeError,
    Step,
    load_recipe,
    make_recipe,
)

__all__ = ["ONNX_METHODS", "TORCH_METHODS", "Recipe", "RecipeError", "RecipeResult", "Step", "StepResult",
           "load_recipe", "make_recipe", "run_recipe"]


@dataclass(frozen=True)
class StepResult:
    index: int  # 1-based position in the recipe; 0 for the export that follows the torch steps
    method: str  # the recipe method, or "export"
    options: dict
    metrics_before: dict  # core.metrics.classification_metrics on the test data
    metrics_after: dict
    params_before: int | None = None
    params_after: int | None = None
    flops_before: int | None = None  # ONNX FLOPs per sample
    flops_after: int | None = None
    size_before: int | None = None  # bytes of the ONNX artifact (ONNX steps and export)
    size_after: int | None = None
    bundle: Path | None = None  # the bundle this step wrote, if any
    detail: Any = field(default=None, compare=False)  # the step's own result object

    @property
    def accuracy_before(self) -> float:
        return self.metrics_before["accuracy"]

    @property
    def accuracy_after(self) -> float:
        return self.metrics_after["accuracy"]


@dataclass(frozen=True)
class RecipeResult:
    steps: tuple[StepResult, ...]
    bundle: Bundle  # the final bundle
    report: Any = None  # report.build_report over the source and each new bundle, when report.py exists


def _split(data: Mapping[str, Any]) -> tuple:
    """(x_train, y_train, x_test, y_test, slices, (x_val, y_val)). The test split is only reported on;
    decisions (the low-rank accuracy budget, the quantization gate) use the validation split: x_val and
    y_val if given, else the last 20% of the training rows, so the reported test accuracy is not biased
    by choices made on it. Without y_train and y_test (both absent) every label is None: ONNX steps are
    then measured as top-1 agreement with the source model (run_recipe)."""
    labelled = [k for k in ("y_train", "y_test") if k in data]
    missing = [k for k in ("x_train", "x_test") if k not in data] + (
        [k for k in ("y_train", "y_test") if k not in data] if labelled else [])
    if missing:
        raise RecipeError(f"data lacks {', '.join(missing)} (expected x_train, x_test and, for labels, both y_train "
                          f"and y_test)")
    labels = [np.asarray(data[k]).astype(np.int64).reshape(-1) if labelled else None for k in ("y_train", "y_test")]
    x_train = np.asarray(data["x_train"])
    if "x_val" in data and (labelled and "y_val" in data or not labelled):
        validation = (np.asarray(data["x_val"]),
                      np.asarray(data["y_val"]).astype(np.int64).reshape(-1) if labelled else None)
    else:
        cut = max(1, len(x_train) // 5)
        validation = (x_train[-cut:], labels[0][-cut:] if labelled else None)
    return (x_train, labels[0], np.asarray(data["x_test"]), labels[1],
            dict(data["slices"]) if data.get("slices") else None, validation)


def _unlabelled(split: tuple, source: Bundle | None, recipe: Recipe) -> tuple:
    """No labels: torch steps (fine-tuning, distillation) are refused; the test rows get the source
    model's top-1 classes as labels for the step table (agreement with it), y_train stays None."""
    from edgefleet.cloud.compress.evaluate import onnx_outputs, reference_labels

    if recipe.needs_torch:
        first = next(i for i, s in enumerate(recipe.steps, start=1) if s.on_torch)
        raise RecipeError(f"step {first} ({recipe.steps[first - 1].method}) trains on labels: the data has no "
                          f"y_train/y_test (without labels only ONNX steps run, measured as agreement)", first)
    if source is None:
        raise RecipeError("data without labels needs the source bundle: its model's decisions are the reference")
    postprocess = source.manifest["interface"].get("postprocess", "softmax")
    reference = reference_labels(onnx_outputs(_onnx_path(source), split[2]), postprocess)
    return (split[0], None, split[2], reference, *split[4:])


def _torch_metrics(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, slices: dict | None,
                   class_names: list[str] | None) -> dict:
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()
    return classification_metrics(scores, y, "softmax", class_names, slices)


def _onnx_metrics(bundle: Bundle, x: np.ndarray, y: np.ndarray, slices: dict | None) -> dict:
    from edgefleet.cloud.compress.evaluate import onnx_metrics

    interface = bundle.manifest["interface"]
    return onnx_metrics(_onnx_path(bundle), x, y, postprocess=interface.get("postprocess", "softmax"),
                        class_names=interface.get("class_names"), slices=slices)


def _onnx_path(bundle: Bundle) -> Path:
    onnx_artifacts = [a for a in bundle.artifacts if a.get("format") == "onnx"]
    if not onnx_artifacts:
        raise RecipeError(f"bundle {bundle.name} v{bundle.version} has no ONNX artifact")
    return bundle.path(onnx_artifacts[0]["path"])


def _onnx_facts(bundle: Bundle) -> tuple[int | None, int]:
    path = _onnx_path(bundle)
    artifact = next(a for a in bundle.artifacts if a.get("format") == "onnx")
    return artifact.get("flops_per_sample"), path.stat().st_size


def _load_callable(spec: str, what: str) -> Callable[..., Any]:
    module_name, _, function = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"{what} {spec!r}: cannot import it ({type(err).__name__}: {err})") from err


def _entry(module: str, function: str, step: int, method: str) -> Callable[..., Any]:
    try:
        return getattr(importlib.import_module(f"edgefleet.cloud.compress.{module}"), function)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"step {step} ({method}) not available: edgefleet.cloud.compress.{module}.{function} "
                          f"cannot be loaded ({type(err).__name__}: {err})", step, "method") from err


def _fine_tune(options: Mapping[str, Any], x: np.ndarray, y: np.ndarray):  # noqa: ANN202 - FineTune | None
    from edgefleet.cloud.compress.prune import FineTune
    from edgefleet.cloud.training import FitOptions

    epochs = options.get("fine_tune_epochs", 0)
    if not epochs:
        return None
    fit = FitOptions(epochs=epochs, lr=options.get("fine_tune_lr", FitOptions.lr),
                     batch_size=options.get("fine_tune_batch_size", FitOptions.batch_size))
    return FineTune(x, y, fit)


def _run_torch_step(step: Step, index: int, model: torch.nn.Module, data: tuple, example: np.ndarray) -> Any:
    """Runs one torch step; returns its result object (with .model or .student)."""
    x_train, y_train, x_test, y_test, _, (x_val, y_val) = data
    options = dict(step.options)
    tune = _fine_tune(options, x_train, y_train)
    if step.method == "prune_channels":
        prune_channels = _entry("prune", "prune_channels", index, step.method)
        return prune_channels(model, options["amount"], example, fine_tune=tune,
                              schedule_steps=options.get("schedule_steps", 1), target=options.get("target", "params"),
                              exclude=options.get("exclude", ()))
    if step.method == "prune_unstructured":
        prune_unstructured = _entry("prune", "prune_unstructured", index, step.method)
        return prune_unstructured(model, options["amount"], schedule_steps=options.get("schedule_steps", 1),
                                  fine_tune=tune, example_input=example)
    if step.method == "lowrank":
        factorize = _entry("lowrank", "factorize", index, step.method)
        rule: dict[str, Any] = {k: options[k] for k in ("energy", "rank") if k in options}
        if "max_accuracy_drop" in options:
            from edgefleet.cloud.training import accuracy

            rule["accuracy_budget"] = (lambda m: accuracy(m, x_val, y_val), options["max_accuracy_drop"])
        return factorize(model, **rule, min_reduction=options.get("min_reduction", 0.1),
                         layers=options.get("layers"), fine_tune=tune)
    distill = _entry("distill", "distill", index, step.method)
    student = _load_callable(options.pop("student"), f"step {index} (distill) field 'student'")()
    return distill(model, student, (x_train, y_train), **options)


def _result_model(detail: Any) -> torch.nn.Module:
    return detail.student if hasattr(detail, "student") else detail.model


def _step_record(step: Step, detail: Any) -> dict:
    if hasattr(detail, "lineage_step"):
        record = detail.lineage_step()
    else:
        record = {"stage": step.method, "options": dict(getattr(detail, "options", None) or step.options)}
    record["recipe_options"] = dict(step.options)
    return record


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_recipe(
    recipe: Recipe,
    *,
    model: torch.nn.Module | None = None,
    bundle: Bundle | str | Path | None = None,
    data: Mapping[str, Any],
    out_dir: str | Path,
    signing_key: SigningKey | None = None,
    name: str | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    class_names: list[str] | None = None,
) -> RecipeResult:
    """Runs every step; writes the exported bundle into out_dir/export/ and one per ONNX step into
    out_dir/NN-<method>/ (NN: the step's position in the recipe).

    model: the trained torch model (needed by torch steps; never modified). bundle: the model's bundle
    (the lineage parent; input for ONNX-only recipes). data: x_train, y_train, x_test, y_test and
    optionally slices={name: boolean mask over the test rows}. name/input_names/output_names/class_names
    default to the source bundle's.
    """
    source = Bundle.open(bundle) if isinstance(bundle, (str, Path)) else bundle
    if recipe.needs_torch and model is None:
        first = next(i for i, s in enumerate(recipe.steps, start=1) if s.on_torch)
        raise RecipeError(f"step {first} ({recipe.steps[first - 1].method}) works on a torch model: pass model= "
                          f"(CLI: --torch-model module:function)", first)
    if model is None and source is None:
        raise RecipeError("run_recipe needs a model, a bundle, or both")
    split = _split(data)
    if split[1] is None:
        split = _unlabelled(split, source, recipe)
    x_train, y_train, x_test, y_test, slices, _ = split
    out = Path(out_dir)
    interface = source.manifest["interface"] if source is not None else {}
    names = class_names or interface.get("class_names")
    results: list[StepResult] = []
    current_model, current_bundle = model, source
    torch_records: list[dict] = []
    exported = False

    def export_if_needed() -> None:
        nonlocal current_bundle, exported
        if not exported and current_model is not None and (torch_records or current_bundle is None):
            target = out / "export"
            current_bundle = _export(current_model, source, torch_records, split, target, signing_key,
                                     recipe.name or name, (input_names, output_names, names), results)
        exported = True

    for index, step in enumerate(recipe.steps, start=1):
        if not step.on_torch:
            export_if_needed()
            current_bundle = _run_onnx_step(step, index, current_bundle, split, out / f"{index:02d}-{step.method}",
                                            signing_key, results)
            continue
        before = _torch_metrics(current_model, x_test, y_test, slices, names)
        log.info("recipe step %d: %s %s", index, step.method, dict(step.options))
        try:
            detail = _run_torch_step(step, index, current_model, split, x_train[:8])
        except RecipeError:
            raise
        except EdgefleetError as err:
            raise RecipeError(f"step {index} ({step.method}): {err}", index) from err
        new_model = _result_model(detail)
        after = _torch_metrics(new_model, x_test, y_test, slices, names)
        results.append(StepResult(index, step.method, dict(step.options), before, after,
                                  _count_params(current_model), _count_params(new_model),
                                  getattr(detail, "flops_before", None), getattr(detail, "flops_after", None),
                                  detail=detail))
        torch_records.append(_step_record(step, detail))
        current_model = new_model
    export_if_needed()
    report = _report(source, results, split)
    if report is not None and signing_key is not None and current_bundle is not None:
        # The final bundle carries the whole report in its manifest and model card, signed again.
        from edgefleet.cloud.compress.report import attach_to_bundle

        current_bundle = attach_to_bundle(report, current_bundle.root, signing_key)
    return RecipeResult(tuple(results), current_bundle, report)


def _export(model: torch.nn.Module, source: Bundle | None, records: list[dict], data: tuple, out: Path,
            signing_key: SigningKey | None, name: str | None, names: tuple, results: list[StepResult]) -> Bundle:
    """Exports the compressed model as the next version of the source, with the torch steps in its lineage."""
    from edgefleet.compilers import export_torch

    x_train, y_train, x_test, y_test, slices, _ = data
    input_names, output_names, class_names = names
    interface = source.manifest["interface"] if source is not None else {}
    parent = None
    if source is not None:
        parent = {"name": source.name, "version": source.version,
                  "manifest_sha256": bundle_io.file_digest(source.root / bundle_io.MANIFEST)}
    version = source.version + 1 if source is not None else 1
    bundle_name = name or (source.name if source is not None else "model")
    exported = export_torch(
        model, x_train[:4], out, name=bundle_name, version=version, reference_data=x_train, labels=y_train,
        eval_data=(x_test, y_test), class_names=class_names, task="classification",
        input_names=input_names or [s["name"] for s in interface.get("inputs", [])] or None,
        output_names=output_names or [s["name"] for s in interface.get("outputs", [])] or None,
        preprocessing=interface.get("preprocessing", ""), parent=parent,
        label=f"{bundle_name} v{version} (" + " + ".join(r["stage"] for r in records) + ")" if records else "",
    )
    manifest = dict(exported.manifest)
    manifest["lineage"] = {**manifest["lineage"], "steps": [*records, *manifest["lineage"]["steps"]]}
    bundle_io.write_manifest(out, manifest)
    if signing_key is not None:
        bundle_io.sign(out, signing_key)
    exported = Bundle.open(out)
    flops, size = _onnx_facts(exported)
    before = results[-1].metrics_after if results else _onnx_metrics(exported, x_test, y_test, slices)
    results.append(StepResult(0, "export", {"version": version}, before,
                              _onnx_metrics(exported, x_test, y_test, slices), flops_after=flops, size_after=size,
                              bundle=exported.root, detail=exported))
    log.info("recipe: exported %s v%d to %s", exported.name, exported.version, out)
    return exported


def _run_onnx_step(step: Step, index: int, bundle: Bundle, data: tuple, out: Path,
                   signing_key: SigningKey | None, results: list[StepResult]) -> Bundle:
    x_train, y_train, x_test, y_test, slices, validation = data
    options = dict(step.options)
    # no labels (y_train None): y_test holds the source model's classes; the stage measures agreement itself
    common = {"eval_data": (x_test, y_test if y_train is not None else None), "signing_key": signing_key}
    before = _onnx_metrics(bundle, x_test, y_test, slices)
    flops_before, size_before = _onnx_facts(bundle)
    log.info("recipe step %d: %s %s", index, step.method, options)
    args: tuple = (bundle, out)
    if step.method == "quantize_static":
        run = _entry("quantize", "quantize_static_int8", index, step.method)
        args = (bundle, out, x_train[:options.pop("calibration_samples", 256)])
        if "max_accuracy_drop" in options:
            options["max_drop"] = options.pop("max_accuracy_drop")
        if "max_drop" in options or options.get("method") == "auto":
            options["eval_data"] = validation  # the gate and the method choice decide on validation, not test
    elif step.method == "quantize_dynamic":
        run = _entry("quantize", "quantize_dynamic_int8", index, step.method)
    else:
        run = _entry("quantize", "convert_fp16", index, step.method)
    try:
        detail = run(*args, **{**common, **options})  # a gate's validation data overrides the test split
    except EdgefleetError as err:
        raise RecipeError(f"step {index} ({step.method}): {err}", index) from err
    except (TypeError, ValueError) as err:
        raise RecipeError(f"step {index} ({step.method}) failed: {type(err).__name__}: {err}", index) from err
    new = detail.bundle if isinstance(detail.bundle, Bundle) else Bundle.open(detail.bundle)
    flops_after, size_after = _onnx_facts(new)
    results.append(StepResult(index, step.method, dict(step.options), before,
                              _onnx_metrics(new, x_test, y_test, slices), flops_before=flops_before,
                              flops_after=flops_after, size_before=size_before, size_after=size_after,
                              bundle=new.root, detail=detail))
    return new


def _report(source: Bundle | None, results: list[StepResult], data: tuple) -> Any:
    """report.build_report over the source bundle (the baseline) and every bundle the recipe wrote."""
    try:
        from edgefleet.cloud.compress.evaluate import onnx_outputs
        from edgefleet.cloud.compress.report import build_report, measure
    except ImportError as err:
        log.info("recipe: no report (edgefleet.cloud.compress.report not available: %s)", err)
        return None
    _, y_train, x_test, y_test, slices, _ = data
    y_test = y_test if y_train is not None else None  # no labels: the report measures agreement with the source
    models = [(f"{source.name} v{source.version}", source)] if source is not None else []
    models += [(f"{r.index or ''} {r.method}".strip(), Bundle.open(r.bundle)) for r in results if r.bundle]
    try:
        reference = onnx_outputs(_onnx_path(models[0][1]), x_test)
        measured = [measure(label, _onnx_path(b), x_test, y_test, slices=slices, reference_outputs=reference,
                            class_names=b.manifest["interface"].get("class_names"),
                            postprocess=b.manifest["interface"].get("postprocess", "softmax"))
                    for label, b in models]
        return build_report(measured)
    except Exception as err:  # noqa: BLE001 - a report failure must not lose the bundles already written
        log.warning("recipe: the report failed (%s: %s); the steps and bundles are still returned",
                    type(err).__name__, err)
        return None
