"""Import a model file someone else made (`.onnx`, `.tflite`) into a bundle.

    bundle = import_model("encoder.onnx", "encoder-v1/", name="encoder", version=1,
                          reference_data="calibration.npz", dims={"tokens": 128}, signing_key=key)

The file's format module (compilers/formats, chosen by suffix) gives the schema, the artifact entry and
the files to copy; the file's own runtime computes the golden outputs, which every later artifact and
the device's self-test are compared with within `atol`/`rtol`. The model is copied as `model<suffix>`
with its external data beside it under the names the file uses, and the golden runs load that copy, so
the bundle is proven whole. Golden inputs come from `reference_data` (its first `golden_count` samples;
it also gives the reference profile and the dataset fingerprint), or are generated from the schema
(compilers/reference_data.py), recorded `"generated": true` and said in the model card, with no profile.

Task: `task` when given; else inferred only when unambiguous (compilers/profile_plan.py `infer_task`):
"classification" only when `class_names` are given (the first output must then be [batch,
len(class_names)]), "detection" for one *box* and one *score* output, else "other": a 2-D output alone
says nothing. A classifier's `postprocess` is "none" when the first output's golden rows are already
probabilities, else "softmax". The reference profile (with reference data) covers the inputs in
`profiled_inputs` (default: compilers/profile_plan.py), names a tabular input's columns with
`feature_names`, and summarises the task's outputs. A detector's layout, `detection` (core/detection.py:
{"layout": "boxes+scores" | "yolov5" | "yolov8", "scores" or "output": NAME, "score_threshold", ...}; a
given layout makes the task "detection"), is declared or inferred when unambiguous.

The bundle is built in a temporary directory beside out_dir and renamed into place at the end: a
refusal leaves nothing behind, so the same command can be run again. Every refusal is an ExportError.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.compilers.bundle_writer import BundleDraft, write_bundle
from edgefleet.compilers.formats import ModelFile, format_for
from edgefleet.compilers.profile_plan import (
    FeatureNames,
    check_classes,
    check_task_and_bins,
    infer_task,
    plan_profile,
)
from edgefleet.compilers.reference_data import (
    ReferenceData,
    generate_inputs,
    load_reference,
    take,
)
from edgefleet.compilers.staging import staged_directory
from edgefleet.core.bundle import MANIFEST, SIGNATURE, Bundle, file_digest
from edgefleet.core.errors import ExportError, VerificationError
from edgefleet.core.manifest_rules import check_identity
from edgefleet.core.profile import DEFAULT_BINS
from edgefleet.core.schema import TensorSpec, join_samples, sample_count, samples_first
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

log = logging.getLogger(__name__)

CHUNK = 256  # reference samples per run when profiling the outputs
WRITER_FILES = {MANIFEST, SIGNATURE, "golden.npz", "profile.json"}


def import_model(
    path: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: int,
    reference_data: ReferenceData | None = None,
    task: str | None = None,
    class_names: Sequence[str] | None = None,
    postprocess: str | None = None,
    signing_key: SigningKey | None = None,
    validity: timedelta = DEFAULT_VALIDITY,
    dims: Mapping[str, int] | None = None,
    golden_count: int = 8,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    bins: int = DEFAULT_BINS,
    label: str = "",
    preprocessing: str = "",
    model_card: Mapping[str, Any] | None = None,
    seed: int = 0,
    profiled_inputs: Sequence[str] | None = None,
    feature_names: FeatureNames | None = None,
    detection: Mapping[str, Any] | None = None,
) -> Bundle:
    """Writes a bundle for the model file at `path` into out_dir (empty or absent) and returns it
    (module docstring). dims: symbol -> size, fixing a symbolic dimension (`--dim NAME=SIZE`)."""
    path = Path(path)
    _check_arguments(path, name, version, task, postprocess, golden_count, atol, rtol, bins)
    model_format = format_for(path)
    inputs, outputs = model_format.read(path, dims)
    sources = model_format.files(path)
    layout = _layout(path, sources)
    plan_profile(inputs, outputs, task or infer_task(outputs, class_names, detection),
                 profiled_inputs=profiled_inputs, feature_names=feature_names, detection=detection,
                 class_names=class_names)  # every refusal before any work
    reference = load_reference(reference_data, inputs) if reference_data is not None else None
    final = Path(out_dir)
    with staged_directory(final, ExportError, "import") as work:
        for source, rel in layout.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, work / rel)
        options = _Options(name=name, version=version, task=task, class_names=class_names, postprocess=postprocess,
                           dims=dict(dims or {}), golden_count=golden_count, atol=atol, rtol=rtol, bins=bins,
                           label=label, preprocessing=preprocessing, model_card=model_card, seed=seed,
                           profiled_inputs=profiled_inputs, feature_names=feature_names, detection=detection)
        draft = _draft(model_format, path, work, layout[path], inputs, outputs, reference, options)
        write_bundle(work, draft, signing_key=signing_key, validity=validity)
    log.info("imported %s as %s v%s into %s (%s)", path, name, version, final, draft.task)
    return Bundle.open(final)


# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    name: str
    version: int
    task: str | None
    class_names: Sequence[str] | None
    postprocess: str | None
    dims: dict[str, int]
    golden_count: int
    atol: float
    rtol: float
    bins: int
    label: str
    preprocessing: str
    model_card: Mapping[str, Any] | None
    seed: int
    profiled_inputs: Sequence[str] | None
    feature_names: FeatureNames | None
    detection: Mapping[str, Any] | None


def _check_arguments(path: Path, name: str, version: int, task: str | None, postprocess: str | None,
                     golden_count: int, atol: float, rtol: float, bins: int) -> None:
    if not path.exists():
        raise ExportError(f"no model file at {path}")
    if not path.is_file():
        raise ExportError(f"{path} is not a file")
    try:
        check_identity({"name": name, "version": version})
    except VerificationError as err:  # the rule every reader of the manifest applies, said before any work
        raise ExportError(str(err).replace("manifest field ", "")) from err
    check_task_and_bins(task, bins)
    if postprocess not in (None, "softmax", "none"):
        raise ExportError(f"postprocess must be softmax or none, got {postprocess!r}")
    if golden_count < 1:
        raise ExportError(f"golden_count must be at least 1, got {golden_count}")
    if not (math.isfinite(atol) and math.isfinite(rtol) and atol >= 0 and rtol >= 0):
        raise ExportError(f"atol and rtol must be finite numbers >= 0, got atol={atol}, rtol={rtol}")


def _layout(path: Path, sources: list[Path]) -> dict[Path, str]:
    """source file -> its path in the bundle: the model as model<suffix>, its data under its own names."""
    layout = {path: "model" + path.suffix.lower()}
    for source in sources[1:]:
        rel = source.relative_to(path.parent).as_posix()
        if rel in WRITER_FILES or rel == layout[path]:
            raise ExportError(f"{path.name}: its data file {rel} has a name the bundle needs for itself; rename it "
                              f"(onnx.save_model(..., location=...)) before importing")
        layout[source] = rel
    return layout


def _draft(model_format: ModelFile, source: Path, work: Path, model_rel: str, inputs: list[TensorSpec],
           outputs: list[TensorSpec], reference: dict[str, np.ndarray] | None, o: _Options) -> BundleDraft:
    """Runs the copied model on the golden inputs (and on the reference data for the profile's output
    summaries) and describes the bundle to write."""
    model = work / model_rel
    generated = reference is None
    golden_in = generate_inputs(inputs, o.golden_count, o.seed) if generated else take(inputs, reference, 0,
                                                                                          o.golden_count)
    golden_out = _run(model_format, model, golden_in, outputs, generated)
    first = outputs[0]
    task = o.task or infer_task(outputs, o.class_names, o.detection)
    if task == "classification":
        check_classes(first, o.class_names, golden_out[first.name])
    postprocess = o.postprocess or _postprocess(task, golden_out[first.name])
    plan = plan_profile(inputs, outputs, task, profiled_inputs=o.profiled_inputs, feature_names=o.feature_names,
                        detection=o.detection, class_names=o.class_names)
    scores, chunks = None, []
    wanted = set(plan.output_names) | ({first.name} if task == "classification" else set())
    if reference is not None and wanted:
        total = sample_count(inputs, reference)
        chunks = [{n: v for n, v in _run(model_format, model, take(inputs, reference, i, i + CHUNK), outputs,
                                          False).items() if n in wanted} for i in range(0, total, CHUNK)]
        if task == "classification":
            scores = samples_first(first, join_samples([first], chunks)[first.name])
    artifact = {**model_format.artifact(model), "path": model_rel, "numeric_error": {
        "reference": "the golden outputs, computed from this file by its own runtime",
        "samples": sample_count(inputs, golden_in), "max_abs": 0.0, "max_rel": 0.0}}
    step = {
        "stage": "import",
        "tool": f"edgefleet import ({source.suffix.lower().lstrip('.')} file)",
        "source": {"file": source.name, "sha256": file_digest(source), "size": source.stat().st_size},
        "versions": getattr(model_format, "versions", dict)(),
        "options": {"golden_count": o.golden_count, "atol": o.atol, "rtol": o.rtol, "bins": o.bins,
                    "dims": o.dims, "generated_golden": generated},
    }
    return BundleDraft(
        name=o.name, version=int(o.version), label=o.label, inputs=inputs, outputs=outputs, task=task,
        postprocess=postprocess, class_names=list(o.class_names) if o.class_names is not None else None,
        preprocessing=o.preprocessing, artifact=artifact, golden_inputs=golden_in, golden_outputs=golden_out,
        atol=o.atol, rtol=o.rtol, step=step, generated=generated, reference=reference, scores=scores,
        model_card=o.model_card, bins=o.bins, reference_outputs=chunks, profiled_inputs=o.profiled_inputs,
        feature_names=o.feature_names, detection=o.detection,
    )


def _run(model_format: ModelFile, model: Path, feed: dict[str, np.ndarray], outputs: list[TensorSpec],
         generated: bool) -> dict[str, np.ndarray]:
    """Every output on feed, in the schema's order; ExportError on a failed run or a non-finite output."""
    hint = (" (the golden inputs were generated from the schema with every symbolic dimension but the batch "
            "set to 1: pass --dim NAME=SIZE or --reference-data)") if generated else ""
    try:
        got = model_format.run(model, feed)
    except ExportError as err:
        raise ExportError(f"{err}{hint}") from err
    result = {}
    for spec in outputs:
        if spec.name not in got:
            raise ExportError(f"the runtime gave no output {spec.name!r} (it gave {', '.join(got)})")
        value = np.asarray(got[spec.name])
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ExportError(f"output {spec.name!r} is not finite (NaN or inf) on the golden inputs{hint}")
        result[spec.name] = value
    return result


def _postprocess(task: str, first: np.ndarray) -> str:
    """A classifier's first output: "none" when its rows are probabilities already, else "softmax"."""
    if task != "classification":
        return "none"
    rows = first.astype(np.float64)
    is_probability = bool(rows.size) and rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)
    return "none" if is_probability else "softmax"
