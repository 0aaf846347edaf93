"""Export a PyTorch model into a bundle: ONNX (dynamo exporter, one file), schema, golden examples,
reference profile, metrics, lineage and model card, checked numerically against the torch model.

The exported ONNX model and the torch model run on the same golden inputs (and on up to
NUMERIC_SAMPLES reference rows); the max abs/rel error goes into the manifest, and an error over
tolerance fails the export with the numbers.

The front (compilers/torch_to_onnx.py): example inputs must be tensors (one ExportError naming the one
that is not); `dynamic_axes={"input_ids": {1: "tokens"}}` makes any axis symbolic besides the batch on
axis 0; exporter and load failures are one ExportError naming the cause. The bundle is built in a
directory next to out_dir and renamed onto it at the end, so a failed export leaves nothing behind and
a rerun works.
"""

from __future__ import annotations

import functools
import logging
import platform
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgefleet.compilers.bundle_writer import BundleDraft, write_bundle
from edgefleet.compilers.flops import count_flops
from edgefleet.compilers.numeric import max_errors
from edgefleet.compilers.profile_plan import (
    FeatureNames,
    check_classes,
    check_task_and_bins,
    infer_task,
    plan_profile,
)
from edgefleet.compilers.staging import staged_directory
from edgefleet.compilers.torch_to_onnx import DynamicAxes, example_tensors, export_onnx, input_names_for
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import ExportError
from edgefleet.core.metrics import classification_metrics
from edgefleet.core.profile import DEFAULT_BINS
from edgefleet.core.schema import TensorSpec, join_samples, sample_count, samples_first, take_samples
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

log = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray
Inputs = ArrayLike | Sequence[ArrayLike] | Mapping[str, ArrayLike]
NUMERIC_SAMPLES = 512
CHUNK = 256


def _built_aside(export: Callable[..., Bundle]) -> Callable[..., Bundle]:
    """Runs `export` into a new directory next to out_dir and renames it onto out_dir when it returns; on
    any failure the directory is removed, and out_dir is as it was (absent, or empty)."""

    @functools.wraps(export)
    def staged(model: torch.nn.Module, example_inputs: Inputs, out_dir: str | Path, *args: Any,
               **kwargs: Any) -> Bundle:
        final = Path(out_dir)
        with staged_directory(final, ExportError, "export") as work:
            export(model, example_inputs, work, *args, **kwargs)
        return Bundle.open(final)

    return staged


@_built_aside
def export_torch(
    model: torch.nn.Module,
    example_inputs: Inputs,
    out_dir: str | Path,
    *,
    name: str,
    version: int,
    reference_data: Inputs | None = None,
    labels: ArrayLike | None = None,
    eval_data: tuple[Inputs, ArrayLike] | None = None,
    class_names: Sequence[str] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    label: str = "",
    preprocessing: str = "",
    postprocess: str | None = None,
    signing_key: SigningKey | None = None,
    validity: timedelta = DEFAULT_VALIDITY,
    golden_count: int = 8,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    bins: int = DEFAULT_BINS,
    model_card: Mapping[str, Any] | None = None,
    parent: Mapping[str, Any] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    task: str | None = None,
    profiled_inputs: Sequence[str] | None = None,
    feature_names: FeatureNames | None = None,
    detection: Mapping[str, Any] | None = None,
) -> Bundle:
    """Writes a bundle for `model` into out_dir (which must be empty or absent) and returns it.

    example_inputs: a tensor (or numpy array), a sequence of them or a mapping name -> tensor, each with
    a batch axis. dynamic_axes: {input name: {axis: symbol}}, the symbolic axes besides "batch" on axis 0
    ({0: None} makes axis 0 static); the schema records the symbols. task: one of bundle_writer.TASKS;
    default: inferred only when unambiguous, as at import (compilers/profile_plan.py `infer_task`):
    "classification" with class_names, "detection" for one *box* and one *score* output, else "other" (an
    embedding model exported without task= is "other", never a classifier of its dimensions).

    reference_data: the training or calibration inputs; they give the golden examples, the reference
    profile for drift, and (with `labels`) the reference accuracy. The profile covers `profiled_inputs`
    (default: every batched input that is not a recurrent state and has a fixed set of features), names a
    tabular input's columns with `feature_names` (a list for the one tabular input, or {input: names}),
    and summarises the task's outputs; a detector declares its layout with detection= (core/detection.py:
    {"scores": NAME, "score_threshold": 0.5} for boxes+scores, {"layout": "yolov5"} or "yolov8" for one
    YOLO output; default: inferred when unambiguous).
    eval_data=(inputs, labels): held-out data for the metrics and the model card. postprocess: "softmax"
    if the first output holds logits, "none" if it holds probabilities or values; default "softmax" for a
    classifier, else "none".
    Signs the bundle when signing_key is given; `edgefleet sign` can sign it later. Raises ExportError,
    leaving out_dir as it was.
    """
    out = _prepare_out_dir(Path(out_dir))
    if int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    check_task_and_bins(task, bins)
    model = model.eval()
    examples = example_tensors(example_inputs, input_names)
    names_in = input_names_for(input_names, len(examples))

    onnx_path = out / "model.onnx"
    onnx_model, session = export_onnx(model, examples, onnx_path, names_in, output_names, dynamic_axes,
                                      tolerance=(atol, rtol))
    inputs_spec, outputs_spec = _specs(onnx_model.graph.input), _specs(onnx_model.graph.output)

    reference = _as_dict(reference_data, inputs_spec) if reference_data is not None else None
    golden_in = take_samples(inputs_spec, reference if reference is not None else _as_dict(examples, inputs_spec), 0,
                             golden_count)
    golden_out = _run_torch(model, golden_in, outputs_spec)
    golden_onnx = _run_onnx(session, golden_in)
    if not all(np.allclose(golden_onnx[n], want, atol=atol, rtol=rtol) for n, want in golden_out.items()):
        golden_err = _numeric_error(golden_onnx, golden_out)
        raise ExportError(
            f"exported ONNX disagrees with the torch model on the golden examples: max abs error "
            f"{golden_err['max_abs']:.3g}, max rel error {golden_err['max_rel']:.3g} "
            f"(tolerance atol={atol:g}, rtol={rtol:g})"
        )
    check = take_samples(inputs_spec, reference, 0, NUMERIC_SAMPLES) if reference is not None else golden_in
    numeric = _numeric_error(_run_onnx(session, check), _run_torch(model, check, outputs_spec))
    first_out = outputs_spec[0]
    task = task or infer_task(outputs_spec, class_names, detection)
    if task == "classification":
        check_classes(first_out, class_names)
    plan = plan_profile(inputs_spec, outputs_spec, task, profiled_inputs=profiled_inputs,
                        feature_names=feature_names, detection=detection, class_names=class_names)
    postprocess = postprocess or ("softmax" if task == "classification" else "none")
    names = list(class_names) if class_names is not None else None
    scores, metrics, chunks = None, {}, []
    classifier = {first_out.name} if task == "classification" else set()
    if reference is not None and (classifier or plan.output_names):
        chunks = _run_onnx_chunks(session, reference, inputs_spec, classifier | set(plan.output_names))
    if reference is not None and task == "classification":
        scores = samples_first(first_out, join_samples([first_out], chunks)[first_out.name])
        if labels is not None:
            metrics["reference"] = classification_metrics(scores, _np(labels), postprocess, names)
    if eval_data is not None and task == "classification":
        eval_in = _as_dict(eval_data[0], inputs_spec)
        eval_chunks = _run_onnx_chunks(session, eval_in, inputs_spec, classifier)
        eval_scores = samples_first(first_out, join_samples([first_out], eval_chunks)[first_out.name])
        metrics["eval"] = classification_metrics(eval_scores, _np(eval_data[1]), postprocess, names)
    calibration = None  # held-out data when there is some: the model has fitted its training labels
    if eval_data is not None and task == "classification":
        calibration = (eval_scores, _np(eval_data[1]), "eval")
    elif scores is not None and labels is not None:
        calibration = (scores, _np(labels), "reference")

    draft = BundleDraft(
        name=name, version=int(version), label=label, inputs=inputs_spec, outputs=outputs_spec, task=task,
        postprocess=postprocess, class_names=names, preprocessing=preprocessing,
        artifact=_artifact(onnx_model, numeric), golden_inputs=golden_in, golden_outputs=golden_out,
        atol=atol, rtol=rtol, reference=reference, scores=scores, metrics=metrics, parent=parent,
        calibration=calibration, model_card=model_card, bins=bins, reference_outputs=chunks,
        profiled_inputs=profiled_inputs, feature_names=feature_names, detection=detection,
        step={
            "stage": "export",
            "tool": "torch.onnx.export(dynamo=True)",
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__, "python": platform.python_version()},
            "options": {"golden_count": golden_count, "atol": atol, "rtol": rtol, "bins": bins},
            "numeric_error": {"max_abs": numeric["max_abs"], "max_rel": numeric["max_rel"]},
        },
    )
    bundle = write_bundle(out, draft, signing_key=signing_key, validity=validity)
    log.info("exported %s v%s to %s (max abs error %.3g)", name, version, out, numeric["max_abs"])
    return bundle


def _artifact(onnx_model: onnx.ModelProto, numeric: dict) -> dict:
    """The exported ONNX model's manifest entry, with its error against the torch model."""
    return {
        "target": "onnx",
        "backend": "onnxruntime",
        "format": "onnx",
        "path": "model.onnx",
        "precision": "fp32",
        "opset": _opset(onnx_model),
        "options": {},
        "flops_per_sample": count_flops(onnx_model, batch=1)["total"],
        "numeric_error": {
            "reference": "torch",
            "samples": numeric["samples"],
            "max_abs": numeric["max_abs"],
            "max_rel": numeric["max_rel"],
        },
    }


# ---------------------------------------------------------------------------------------------------
def _prepare_out_dir(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; export writes a new bundle into an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _np(value: ArrayLike) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _as_dict(inputs: Inputs, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        values = [inputs[s.name] for s in specs]
    elif isinstance(inputs, (torch.Tensor, np.ndarray)):
        values = [inputs]
    else:
        values = list(inputs)
    if len(values) != len(specs):
        raise ExportError(f"the model takes {len(specs)} inputs, the data has {len(values)}")
    arrays = {s.name: np.asarray(_np(v), dtype=np.dtype(s.dtype)) for s, v in zip(specs, values, strict=True)}
    return {k: np.ascontiguousarray(a) if a.ndim else a for k, a in arrays.items()}  # it would make a 0-d array 1-D


def _export_onnx(model: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: Path,
                 input_names: list[str], output_names: Sequence[str] | None) -> None:
    """The exporter alone, batch axis dynamic (cloud/compress/prune.py counts FLOPs on its output; new code
    calls torch_to_onnx.export_onnx)."""
    export_onnx(model, examples, path, input_names, output_names)


def _specs(values: Sequence[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dtype, dims))
    return specs


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _run_torch(model: torch.nn.Module, inputs: dict[str, np.ndarray], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        result = model(*[torch.from_numpy(v) for v in inputs.values()])
    results = result if isinstance(result, (tuple, list)) else (result,)
    return {s.name: _np(r) for s, r in zip(specs, results, strict=False)}


def _run_onnx(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def _run_onnx_chunks(session: ort.InferenceSession, inputs: dict[str, np.ndarray], inputs_spec: list[TensorSpec],
                     wanted: set[str]) -> list[dict[str, np.ndarray]]:
    """The wanted outputs on all the inputs, CHUNK samples at a time, one dict per chunk (a detector's
    number of detections may differ from chunk to chunk, so they are not joined here)."""
    total = sample_count(inputs_spec, inputs)
    runs = (_run_onnx(session, take_samples(inputs_spec, inputs, i, i + CHUNK)) for i in range(0, total, CHUNK))
    return [{n: v for n, v in run.items() if n in wanted} for run in runs]


def _numeric_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict:
    max_abs, max_rel = max_errors((got[name] for name in want), want.values())
    return {"max_abs": max_abs, "max_rel": max_rel, "samples": len(next(iter(want.values())))}
