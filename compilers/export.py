"""Export a PyTorch model into a bundle: ONNX (dynamo exporter, one file), schema, golden examples,
reference profile, metrics, lineage and model card, checked numerically against the torch model.

The exported ONNX model and the torch model run on the same golden inputs (and on up to
NUMERIC_SAMPLES reference rows); the max abs/rel error goes into the manifest, and an error over
tolerance fails the export with the numbers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
from collections.abc import Mapping, Sequence
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
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import ExportError
from edgefleet.core.metrics import classification_metrics
from edgefleet.core.profile import DEFAULT_BINS
from edgefleet.core.schema import TensorSpec
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

log = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray
Inputs = ArrayLike | Sequence[ArrayLike] | Mapping[str, ArrayLike]
NUMERIC_SAMPLES = 512
CHUNK = 256


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
) -> Bundle:
    """Writes a bundle for `model` into out_dir (which must be empty or absent) and returns it.

    reference_data: the training or calibration inputs; they give the golden examples, the reference
    profile for drift, and (with `labels`) the reference accuracy. eval_data=(inputs, labels): held-out
    data for the metrics and the model card. postprocess: "softmax" if the first output holds logits,
    "none" if it holds probabilities or values; default "softmax" for a 2-D output, else "none".
    Signs the bundle when signing_key is given; `edgefleet sign` can sign it later.
    """
    out = _prepare_out_dir(Path(out_dir))
    if int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    model = model.eval()
    examples = _as_tuple(example_inputs, input_names)
    names_in = _input_names(input_names, len(examples))

    onnx_path = out / "model.onnx"
    _export_onnx(model, examples, onnx_path, names_in, output_names)
    onnx_model = onnx.load(str(onnx_path))
    inputs_spec, outputs_spec = _specs(onnx_model.graph.input), _specs(onnx_model.graph.output)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    reference = _as_dict(reference_data, inputs_spec) if reference_data is not None else None
    golden_in = _take(reference if reference is not None else _as_dict(examples, inputs_spec), golden_count)
    golden_out = _run_torch(model, golden_in, outputs_spec)
    golden_onnx = _run_onnx(session, golden_in)
    if not all(np.allclose(golden_onnx[n], want, atol=atol, rtol=rtol) for n, want in golden_out.items()):
        golden_err = _numeric_error(golden_onnx, golden_out)
        raise ExportError(
            f"exported ONNX disagrees with the torch model on the golden examples: max abs error "
            f"{golden_err['max_abs']:.3g}, max rel error {golden_err['max_rel']:.3g} "
            f"(tolerance atol={atol:g}, rtol={rtol:g})"
        )
    check = _take(reference, NUMERIC_SAMPLES) if reference is not None else golden_in
    numeric = _numeric_error(_run_onnx(session, check), _run_torch(model, check, outputs_spec))
    first_out = outputs_spec[0]
    task = "classification" if len(first_out.shape) == 2 else "other"
    postprocess = postprocess or ("softmax" if task == "classification" else "none")
    names = list(class_names) if class_names is not None else None
    scores, metrics = None, {}
    if reference is not None and task == "classification":
        scores = _run_onnx_chunked(session, reference)[first_out.name]
        if labels is not None:
            metrics["reference"] = classification_metrics(scores, _np(labels), postprocess, names)
    if eval_data is not None and task == "classification":
        eval_in = _as_dict(eval_data[0], inputs_spec)
        eval_scores = _run_onnx_chunked(session, eval_in)[first_out.name]
        metrics["eval"] = classification_metrics(eval_scores, _np(eval_data[1]), postprocess, names)

    draft = BundleDraft(
        name=name, version=int(version), label=label, inputs=inputs_spec, outputs=outputs_spec, task=task,
        postprocess=postprocess, class_names=names, preprocessing=preprocessing,
        artifact=_artifact(onnx_model, numeric), golden_inputs=golden_in, golden_outputs=golden_out,
        atol=atol, rtol=rtol, reference=reference, scores=scores, metrics=metrics, parent=parent,
        model_card=model_card, bins=bins,
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


def _input_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names:
        return list(names)
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def _np(value: ArrayLike) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _as_tuple(inputs: Inputs, names: Sequence[str] | None) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, Mapping):
        order = list(names or inputs.keys())
        return tuple(torch.as_tensor(_np(inputs[n])) for n in order)
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        return (torch.as_tensor(_np(inputs)),)
    return tuple(torch.as_tensor(_np(v)) for v in inputs)


def _as_dict(inputs: Inputs, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        values = [inputs[s.name] for s in specs]
    elif isinstance(inputs, (torch.Tensor, np.ndarray)):
        values = [inputs]
    else:
        values = list(inputs)
    if len(values) != len(specs):
        raise ExportError(f"the model takes {len(specs)} inputs, the data has {len(values)}")
    return {s.name: np.ascontiguousarray(_np(v), dtype=np.dtype(s.dtype)) for s, v in zip(specs, values, strict=True)}


def _take(data: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[:count]) for k, v in data.items()}


def _export_onnx(model: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: Path,
                 input_names: list[str], output_names: Sequence[str] | None) -> None:
    # A batch of 1 would be specialised to a constant by torch.export; tile it to 2.
    examples = tuple(e.repeat(2, *([1] * (e.dim() - 1))) if e.shape[0] == 1 else e for e in examples)
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in examples)
    chatter = io.StringIO()
    # The exporter warns about every torchvision op it cannot register when torchvision is absent.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad():
            program = torch.onnx.export(
                model, examples, dynamo=True, external_data=False, input_names=input_names,
                output_names=list(output_names) if output_names else None, dynamic_shapes=dynamic,
            )
        program.save(str(path))
    except Exception as err:  # noqa: BLE001 - the exporter raises many types; report them as one
        raise ExportError(f"torch.onnx.export failed: {type(err).__name__}: {err}") from err
    log.debug("torch.onnx.export said: %s", chatter.getvalue().strip())


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


def _run_onnx_chunked(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    total = len(next(iter(inputs.values())))
    parts = [_run_onnx(session, {k: v[i:i + CHUNK] for k, v in inputs.items()}) for i in range(0, total, CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _numeric_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict:
    max_abs, max_rel = max_errors((got[name] for name in want), want.values())
    return {"max_abs": max_abs, "max_rel": max_rel, "samples": len(next(iter(want.values())))}
