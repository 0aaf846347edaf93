"""Compile a bundle for one or more targets: each artifact is checked on the golden examples, then enters
a new bundle with its precision, options and numeric error, and a lineage step per target.

    result = compile_bundle("digits-v1/", ["onnxruntime-cpu", "openvino-cpu", "native"], "digits-v1-compiled/",
                            signing_key=key)

The new bundle holds the source bundle's files and artifacts plus one artifact per target (a target
compiled again replaces its old artifact). Name and version stay the source's: compiling changes how the
model runs, not which model it is. A device's Predictor picks among the artifacts by its backend list.

Every target keeps the bundle's interface (input and output names, dtypes, shapes): the golden examples
and the device's input validation are shared by all artifacts.

The check on the golden examples is numeric (every output within the tolerance: the target's own atol
and rtol for a precision it lowers itself, else the bundle's) and, for a classifier, also the decision:
every golden example whose top-1 margin in the source outputs exceeds the tie margin must keep its
top-1, however wide the numeric tolerance (the near-tie rule: core/decision.py). The artifact's
`numeric_error` records both, with `decisions: {compared, agreed, near_ties, tie_margin}`.

Refusals: a target that cannot compile the model, or whose artifact fails the check, is refused. By
default (`strict=False`, also the CLI's) the other targets still compile: the result lists each
refusal (`CompileResult.refused`, target and reason) and the bundle holds only the artifacts that
passed; a refused target leaves no file in it (a target compiled again keeps its old artifact then).
If every target is refused nothing is written and CompileError says why. `strict=True` stops at the
first refusal with its CompileError and writes nothing. Up-front problems (unknown target, options
for a target not asked for, no ONNX or TFLite artifact, out_dir not empty) are errors before any work
either way.

A bundle whose model is an imported .tflite (no ONNX artifact) compiles from that file: openvino-*
read it directly, litert says there is nothing to do (the file is served as it is), and the targets
that need ONNX (onnxruntime-*, native, tensorrt) refuse naming why (CompileSource.onnx_file).
"""

from __future__ import annotations

import copy
import logging
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.compilers.numeric import max_errors
from edgefleet.compilers.staging import staged_directory
from edgefleet.compilers.targets import CompileSource, TargetResult, target_function
from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.canonical import format_time, utc_now
from edgefleet.core.decision import compare_decisions, decision_output, tie_margin
from edgefleet.core.errors import BundleError, CompileError, EdgefleetError
from edgefleet.core.schema import batch_axis, join_samples, sample_count, samples_first, take_samples
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey
from edgefleet.core.task_quality import golden_quality

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompiledArtifact:
    target: str
    artifact: dict  # the manifest entry, with numeric_error
    checked: bool
    seconds: float


@dataclass(frozen=True)
class TargetRefusal:
    target: str
    reason: str  # the CompileError's message, which names the target
    seconds: float


@dataclass(frozen=True)
class CompileResult:
    bundle: Bundle
    compiled: list[CompiledArtifact]
    refused: list[TargetRefusal] = field(default_factory=list)


def compile_bundle(
    source: Bundle | str | Path,
    targets: Sequence[str],
    out_dir: str | Path,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    torch_model: Any | None = None,
    signing_key: SigningKey | None = None,
    validity: timedelta = DEFAULT_VALIDITY,
    strict: bool = False,
) -> CompileResult:
    """Compiles `source` for each target into out_dir (empty or absent). options: {target: {option: value}}.

    A target that cannot compile the model, or whose artifact disagrees with the source on the golden
    examples, is refused: listed in the result's `refused` with the reason, the others go on. Raises
    CompileError (naming the target; out_dir left as it was) when every target is refused, or at the
    first refusal with strict=True.
    """
    bundle = source if isinstance(source, Bundle) else Bundle.open(source)
    if not targets:
        raise CompileError("no target given: name at least one (edgefleet compile BUNDLE --target onnxruntime-cpu)")
    unknown_options = set(options or {}) - set(targets)
    if unknown_options:
        raise CompileError(f"options given for targets not compiled: {', '.join(sorted(unknown_options))}")
    functions = {name: target_function(name) for name in targets}  # unknown targets fail before any work
    artifact = source_artifact(bundle)
    final = Path(out_dir)
    with staged_directory(final, CompileError, "compile") as work:  # a failed target leaves nothing behind
        compiled, refused = _compile_into(work, bundle, artifact, functions, options, torch_model, signing_key,
                                          validity, strict)
    return CompileResult(Bundle.open(final), compiled, refused)


def _compile_into(out: Path, bundle: Bundle, artifact: dict, functions: dict, options: Mapping | None,
                  torch_model: Any, signing_key: SigningKey | None, validity: timedelta,
                  strict: bool) -> tuple[list[CompiledArtifact], list[TargetRefusal]]:
    _copy_bundle(bundle, out)
    compile_source = CompileSource(bundle, artifact, bundle.path(artifact["path"]), torch_model)

    manifest = copy.deepcopy(bundle.manifest)
    manifest.pop("files", None)
    steps = manifest.setdefault("lineage", {}).setdefault("steps", [])
    compiled: list[CompiledArtifact] = []
    refused: list[TargetRefusal] = []
    for name, function in functions.items():
        started = time.perf_counter()
        target_options = dict((options or {}).get(name, {}))
        log.info("compiling %s v%s for %s %s", bundle.name, bundle.version, name, target_options or "")
        try:
            entry = _build_target(out, bundle, compile_source, name, function, target_options)
        except EdgefleetError as err:  # a target's own refusal (CompileError) or a runtime's (BackendError)
            if strict or len(functions) == 1:
                raise
            refused.append(TargetRefusal(name, str(err), time.perf_counter() - started))
            log.info("target %s refused: %s", name, err)  # the result lists it; the CLI prints it in its table
            continue
        seconds = time.perf_counter() - started
        manifest["artifacts"] = [a for a in manifest.get("artifacts", []) if a.get("target") != name] + [entry]
        steps.append({
            "stage": "compile", "target": name, "backend": entry["backend"], "precision": entry["precision"],
            "input": {"artifact": artifact["path"], "sha256": artifact.get("sha256")},
            "options": target_options, "compile": entry.get("compile", {}),
            "numeric_error": entry["numeric_error"], "seconds": round(seconds, 3),
            "versions": {"python": platform.python_version()}, "at": format_time(utc_now()),
        })
        compiled.append(CompiledArtifact(name, entry, entry["numeric_error"].get("checked", False), seconds))
        log.info("compiled %s: %s (%s), max abs error %s", name, entry["path"], entry["precision"],
                 entry["numeric_error"].get("max_abs", "unchecked"))
    if not compiled:
        raise CompileError("no target compiled: " + "; ".join(r.reason for r in refused))
    bundle_io.write_manifest(out, manifest)
    if signing_key is not None:
        bundle_io.sign(out, signing_key, validity)
    return compiled, refused


def _build_target(out: Path, bundle: Bundle, compile_source: CompileSource, name: str, function: Any,
                  target_options: dict) -> dict:
    """One target's artifact, checked; its manifest entry. On any failure (CompileError, naming the target)
    the target's folder is as before: a refusal leaves no partial artifact, and an artifact the source
    bundle already had for this target stays whole."""
    folder, kept = out / name, out / f".{name}.previous"
    if folder.exists():
        folder.rename(kept)  # a target compiled again: its old files go once the new artifact passes
    try:
        try:
            result = function(compile_source, out, target_options)
            return _check(bundle, out, name, result, compile_source.artifact.get("batch"))
        except EdgefleetError:
            raise
        except Exception as err:  # noqa: BLE001 - SDKs raise their own types; name the target in one message
            raise CompileError(f"target {name}: {type(err).__name__}: {err}") from err
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        if kept.exists():
            kept.rename(folder)
        raise
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def source_artifact(bundle: Bundle) -> dict:
    """The artifact targets compile from: the ONNX one export, compression or an .onnx import wrote
    (target "onnx"), else an imported .tflite (format "tflite"; targets that need ONNX refuse it by name)."""
    onnx_artifacts = [a for a in bundle.artifacts if a.get("format") == "onnx"]
    if onnx_artifacts:
        return next((a for a in onnx_artifacts if a.get("target") == "onnx"), onnx_artifacts[0])
    tflite = [a for a in bundle.artifacts if a.get("format") == "tflite"]
    if tflite:
        return tflite[0]
    raise CompileError(f"bundle {bundle.name} v{bundle.version} has no ONNX or TFLite artifact to compile from")


def golden_error(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """Max abs and max rel error over every output; CompileError if an output is missing or misshapen."""
    for name, expected in want.items():
        if name not in got:
            raise CompileError(f"the artifact has no output {name!r}")
        if np.shape(got[name]) != expected.shape:
            raise CompileError(f"output {name!r} has shape {np.shape(got[name])}; the source model gives "
                               f"{expected.shape}")
    return max_errors((got[name] for name in want), want.values())


def _check(bundle: Bundle, out: Path, name: str, result: TargetResult, source_batch: int | None = None) -> dict:
    """Runs the artifact on the golden examples (as a batch unless its batch is static, and one at a time)."""
    entry = {"options": {}, "device": "cpu", **result.artifact, "target": name}
    for key in ("backend", "format", "path", "precision"):
        if key not in entry:
            raise CompileError(f"target {name} returned an artifact without {key!r} (a bug in the target)")
    _static_batch(bundle, entry, source_batch)
    if not (out / entry["path"]).is_file():
        raise CompileError(f"target {name} did not write its artifact {entry['path']}")
    golden_in, golden_out, tolerance = bundle.golden()
    atol = result.atol if result.atol is not None else tolerance["atol"]
    rtol = result.rtol if result.rtol is not None else tolerance["rtol"]
    if result.check_backend is None:
        entry["numeric_error"] = {"checked": False, "reason": result.unchecked_reason or "no backend here runs it"}
        log.info("target %s: artifact not checked here: %s", name, entry["numeric_error"]["reason"])
        return entry

    from edgefleet.edge_runtime.backends import backend_class

    backend = backend_class(result.check_backend)()
    load_options = {**entry["options"], **result.check_options}
    try:
        backend.load(out / entry["path"], load_options)
    except Exception as err:  # noqa: BLE001 - any runtime's load failure, in one message
        raise CompileError(f"target {name}: backend {result.check_backend} cannot load {entry['path']}: {err}") from err
    try:
        # one at a time and as a batch, on each tensor's batch axis (core/schema.py batch_axis)
        count = sample_count(bundle.inputs, golden_in)
        singles = [backend.run(take_samples(bundle.inputs, golden_in, i, i + 1)) for i in range(count)]
        runs = [join_samples(bundle.outputs, singles)]
        if entry.get("batch") is None:  # a dynamic batch: the whole set at once too
            runs.append(backend.run(dict(golden_in)))
    finally:
        backend.close()
    errors = [golden_error(run, golden_out) for run in runs]
    max_abs, max_rel = max(e[0] for e in errors), max(e[1] for e in errors)
    ok = all(np.allclose(run[k], golden_out[k], atol=atol, rtol=rtol) for run in runs for k in golden_out)
    entry["numeric_error"] = {
        "checked": True, "reference": "the source model's golden outputs", "checked_with": result.check_backend,
        "check_options": result.check_options, "samples": count, "max_abs": max_abs, "max_rel": max_rel,
        "atol": atol, "rtol": rtol,
    }
    if not ok:
        raise CompileError(
            f"target {name}: the artifact disagrees with the source model on the golden examples: max abs error "
            f"{max_abs:.3g}, max rel error {max_rel:.3g} (tolerance atol={atol:g}, rtol={rtol:g})"
        )
    _check_decisions(bundle, name, entry, runs, golden_out, result.atol)
    # the task's own measure (top-1 agreement, min cosine, detection counts...), as bench reports it
    entry["numeric_error"]["quality"] = golden_quality(bundle.manifest["interface"], bundle.outputs, golden_out,
                                                       runs[0])
    return entry


def _static_batch(bundle: Bundle, entry: dict, source_batch: int | None) -> None:
    """A static batch is recorded in the entry: the target's own, else the source file's (an artifact made
    from a batch-1 file keeps batch 1). Its backend chunks requests on the batch axes, which go into the
    load options when any is not axis 0 (edge_runtime/backends/static_batch.py)."""
    if "batch" not in entry and source_batch is not None:
        entry["batch"] = source_batch
    if entry.get("batch") is None:
        return
    axes = {spec.name: batch_axis(spec) for spec in (*bundle.inputs, *bundle.outputs)}
    if any(axis != 0 for axis in axes.values()):
        entry["options"] = {**entry["options"], "batch_axes": axes}


def _check_decisions(bundle: Bundle, name: str, entry: dict, runs: list[dict], golden_out: Mapping,
                     target_atol: float | None) -> None:
    """A classifier's top-1 on the golden examples, by the near-tie rule; recorded, CompileError if changed."""
    interface = bundle.manifest["interface"]
    output = decision_output(interface)
    if output is None:  # no decision to compare: the numeric check is the whole check
        return
    tie = tie_margin(bundle.manifest["golden"], target_atol)
    spec = next(s for s in bundle.outputs if s.name == output)  # one row per example, whatever its batch axis
    want, got = samples_first(spec, golden_out[output]), [samples_first(spec, run[output]) for run in runs]
    check = compare_decisions(want, got, tie, interface.get("class_names"))
    entry["numeric_error"]["decisions"] = check.record()
    if not check.passed:
        error = entry["numeric_error"]
        raise CompileError(
            f"target {name}: the artifact changes the model's decision on the golden examples: {check.problem()} "
            f"(numeric error max abs {error['max_abs']:.3g} within atol={error['atol']:g})"
        )


def _copy_bundle(bundle: Bundle, out: Path) -> None:
    for rel in bundle.manifest.get("files", {}):
        try:
            src = bundle.path(rel)
        except BundleError as err:
            raise CompileError(f"source bundle: {err}") from err
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out / rel)
