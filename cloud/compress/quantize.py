"""Post-training quantization of a bundle's ONNX model with onnxruntime's own tools.

    result = quantize_static_int8(bundle, "out/digits-int8", calibration=x_train[:512],
                                  eval_data=(x_test, y_test), max_drop=0.01, signing_key=key)
    result.bundle, result.accuracy_drop, result.excluded_nodes, result.size_ratio

Three stages, each `bundle in -> new bundle directory out` (STYLE point 4): the input bundle is only
read; the output holds the new model as its one artifact (format "onnx", precision "int8" or "fp16",
the quantization options, the float model's FLOP count, and the numeric error against the float model
on the golden inputs), the input's other files (golden examples, reference profile), and the lineage
with one more step {"stage": "quantize", ...}.

- `quantize_dynamic_int8`: int8 weights, activations quantized at run time (no calibration data).
- `quantize_static_int8`: int8 weights and activations, ranges calibrated on the caller's data; QDQ or
  QOperator format; optional accuracy gate (below).
- `convert_fp16`: float16 weights and arithmetic, float32 inputs and outputs by default.

Golden examples: the expected outputs stay the float model's, so the device self-test compares the
quantized model against the model it replaces. The golden atol is widened to `tolerance_margin` times
the error measured on the golden inputs, and that error is recorded as the golden `noise`, which sets
the tie margin of the decision check (a classifier's top-1 must survive; see golden.py and
core/decision.py); the lineage step records the tolerance before and after, the artifact's
numeric_error how many golden decisions were compared and agreed.

Accuracy gate (`eval_data=(x, y), max_drop=...`, static int8 only): quantize everything; if the
accuracy drop against the float model exceeds max_drop, rank the candidate nodes (those with a weight
initializer: Conv, Gemm, MatMul, ...) by the accuracy of the model quantized with that one node kept in
float (ties: smaller mean abs error of the first output against the float model), then keep nodes in
float in that order, one more at a time, until the drop is within max_drop. Calibration runs once and
its ranges are reused for every trial. The lineage step lists the ranking and every step's drop; if no
prefix of the ranking meets the gate, QuantizationError carries the numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as ortq

from edgefleet.cloud.compress.evaluate import onnx_outputs, session
from edgefleet.cloud.compress.gate import Evaluate, QuantizationError, accuracy_gate, weighted_nodes
from edgefleet.cloud.compress.golden import check_decisions, golden_error, lowered_golden
from edgefleet.compilers.flops import count_flops
from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.canonical import format_time, utc_now
from edgefleet.core.errors import BundleError
from edgefleet.core.metrics import classification_metrics
from edgefleet.core.schema import TensorSpec
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

__all__ = ["QuantizationError", "QuantizeResult", "convert_fp16", "quantize_dynamic_int8",
           "quantize_static_int8"]

log = logging.getLogger(__name__)

Data = np.ndarray | Mapping[str, np.ndarray]
TOLERANCE_MARGIN = 3.0
CALIBRATION_BATCH = 64
METHODS = ("MinMax", "Entropy", "Percentile")


@dataclass(frozen=True)
class QuantizeResult:
    """What a quantization stage made and measured.

    bundle: the new bundle, opened from out_dir. precision: "int8" or "fp16".
    float_bytes, quantized_bytes: the model file before and after (size_ratio = float / quantized).
    numeric_error: {"reference": "float", "samples", "max_abs", "max_rel"} of the new model against the
        float model on the golden inputs.
    float_accuracy, quantized_accuracy, accuracy_drop: on eval_data (fractions; drop = float minus
        quantized, negative if quantization helped); None without eval_data.
    excluded_nodes: the nodes kept in float (the caller's nodes_to_exclude plus the gate's choice).
    gate: the accuracy gate's record (max_drop, ranking, steps), or None when no gate was asked.
    """

    bundle: Bundle
    precision: str
    float_bytes: int
    quantized_bytes: int
    numeric_error: dict
    float_accuracy: float | None = None
    quantized_accuracy: float | None = None
    accuracy_drop: float | None = None
    excluded_nodes: tuple[str, ...] = ()
    gate: dict | None = field(default=None, compare=False)

    @property
    def size_ratio(self) -> float:
        return self.float_bytes / self.quantized_bytes


@dataclass(frozen=True)
class _Output:
    """Where and how a stage writes its bundle (the arguments every stage shares)."""

    out_dir: Path
    signing_key: SigningKey | None
    validity: timedelta
    version: int | None
    tolerance_margin: float
    eval_data: tuple[Data, np.ndarray] | None


# stages ------------------------------------------------------------------------------------------------
def quantize_dynamic_int8(
    bundle: Bundle | str | Path, out_dir: str | Path, *, per_channel: bool = False, reduce_range: bool = False,
    weight_type: str = "QInt8", op_types_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (), extra_options: Mapping[str, Any] | None = None, preprocess: bool = True,
    eval_data: tuple[Data, np.ndarray] | None = None, signing_key: SigningKey | None = None,
    validity: timedelta = DEFAULT_VALIDITY, version: int | None = None, tolerance_margin: float = TOLERANCE_MARGIN,
) -> QuantizeResult:
    """int8 weights; activations quantized per call from their observed range (no calibration data)."""
    source, artifact, float_model = _source(bundle)
    options = {"mode": "dynamic", "per_channel": per_channel, "reduce_range": reduce_range,
               "weight_type": weight_type, "op_types_to_quantize": _list(op_types_to_quantize),
               "nodes_to_exclude": list(nodes_to_exclude), "extra_options": dict(extra_options or {})}
    with tempfile.TemporaryDirectory(prefix="edgefleet-quantize-") as tmp:
        prepared, options["preprocess"] = _prepare(float_model, Path(tmp), preprocess)
        _check_nodes(prepared, nodes_to_exclude)
        out = Path(tmp) / "dynamic.onnx"
        with _ort_chatter():
            ortq.quantize_dynamic(prepared, out, per_channel=per_channel, reduce_range=reduce_range,
                                  weight_type=_quant_type(weight_type), nodes_to_exclude=list(nodes_to_exclude),
                                  op_types_to_quantize=_list(op_types_to_quantize),
                                  extra_options=dict(extra_options or {}))
        model = out.read_bytes()
    output = _Output(Path(out_dir), signing_key, validity, version, tolerance_margin, eval_data)
    return _write_stage(source, artifact, float_model, model, "int8", "onnxruntime.quantization.quantize_dynamic",
                        options, output, excluded=tuple(nodes_to_exclude))


def quantize_static_int8(
    bundle: Bundle | str | Path, out_dir: str | Path, calibration: Data, *, quant_format: str = "QDQ",
    per_channel: bool = True, method: str = "MinMax", activation_type: str = "QUInt8", weight_type: str = "QInt8",
    reduce_range: bool = False, nodes_to_exclude: Sequence[str] = (), op_types_to_quantize: Sequence[str] | None = None,
    extra_options: Mapping[str, Any] | None = None, preprocess: bool = True,
    calibration_batch: int = CALIBRATION_BATCH, eval_data: tuple[Data, np.ndarray] | None = None,
    max_drop: float | None = None, gate_candidates: Sequence[str] | None = None,
    signing_key: SigningKey | None = None, validity: timedelta = DEFAULT_VALIDITY, version: int | None = None,
    tolerance_margin: float = TOLERANCE_MARGIN,
) -> QuantizeResult:
    """int8 weights and activations, activation ranges calibrated on `calibration` (the model's input
    rows: an array for a one-input model, else name -> array), fed in batches of calibration_batch.

    quant_format: "QDQ" (QuantizeLinear/DequantizeLinear around float ops; onnxruntime fuses them into
    integer kernels) or "QOperator" (QLinearConv, ...). method: "MinMax", "Entropy" or "Percentile".
    With eval_data=(x, y) the accuracy of both models is measured; with max_drop too, the accuracy gate
    (see the module docstring) keeps the most harmful nodes in float until the drop is within max_drop;
    gate_candidates overrides which nodes it may keep in float.
    """
    if method not in METHODS:
        raise QuantizationError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if quant_format not in ("QDQ", "QOperator"):
        raise QuantizationError(f"quant_format must be 'QDQ' or 'QOperator', got {quant_format!r}")
    if max_drop is not None and eval_data is None:
        raise QuantizationError("the accuracy gate (max_drop) needs eval_data=(inputs, labels)")
    source, artifact, float_model = _source(bundle)
    feed = _as_feed(calibration, source.inputs, "calibration")
    options = {"mode": "static", "quant_format": quant_format, "per_channel": per_channel, "method": method,
               "activation_type": activation_type, "weight_type": weight_type, "reduce_range": reduce_range,
               "op_types_to_quantize": _list(op_types_to_quantize), "nodes_to_exclude": list(nodes_to_exclude),
               "extra_options": dict(extra_options or {}), "calibration_batch": calibration_batch,
               "calibration_rows": _rows(feed)}
    with tempfile.TemporaryDirectory(prefix="edgefleet-quantize-") as tmp:
        prepared, options["preprocess"] = _prepare(float_model, Path(tmp), preprocess)
        _check_nodes(prepared, nodes_to_exclude)
        cache, out = Path(tmp) / "calibration.json", Path(tmp) / "static.onnx"

        def quantize(excluded: Sequence[str]) -> bytes:
            with _ort_chatter():
                ortq.quantize_static(
                    prepared, out, _CalibrationReader(feed, calibration_batch),
                    quant_format=ortq.QuantFormat[quant_format], per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=_quant_type(activation_type), weight_type=_quant_type(weight_type),
                    nodes_to_exclude=list(excluded), op_types_to_quantize=_list(op_types_to_quantize),
                    calibrate_method=ortq.CalibrationMethod[method], extra_options=dict(extra_options or {}),
                    calibration_cache_path=cache,  # calibrate once; every gate trial reuses the ranges
                )
            return out.read_bytes()

        gate = None
        if max_drop is None:
            model = quantize(nodes_to_exclude)
            excluded = tuple(nodes_to_exclude)
        else:
            candidates = list(gate_candidates) if gate_candidates is not None else weighted_nodes(prepared)
            _check_nodes(prepared, candidates)
            evaluate = _evaluator(source, eval_data)
            model, excluded, gate = accuracy_gate(quantize, evaluate, float_model, max_drop,
                                                   tuple(nodes_to_exclude), candidates, prepared)
    output = _Output(Path(out_dir), signing_key, validity, version, tolerance_margin, eval_data)
    return _write_stage(source, artifact, float_model, model, "int8", "onnxruntime.quantization.quantize_static",
                        options, output, excluded=excluded, gate=gate)


def convert_fp16(
    bundle: Bundle | str | Path, out_dir: str | Path, keep_io_types: bool = True, *,
    op_block_list: Sequence[str] | None = None, node_block_list: Sequence[str] | None = None,
    eval_data: tuple[Data, np.ndarray] | None = None, signing_key: SigningKey | None = None,
    validity: timedelta = DEFAULT_VALIDITY, version: int | None = None, tolerance_margin: float = TOLERANCE_MARGIN,
) -> QuantizeResult:
    """float16 weights and arithmetic; inputs and outputs stay float32 unless keep_io_types=False (then
    the interface and the golden inputs become float16 too)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source, artifact, float_model = _source(bundle)
    options = {"mode": "fp16", "keep_io_types": keep_io_types, "op_block_list": _list(op_block_list),
               "node_block_list": _list(node_block_list)}
    with _ort_chatter():
        converted = convert_float_to_float16(onnx.load_from_string(float_model), keep_io_types=keep_io_types,
                                             op_block_list=_list(op_block_list),
                                             node_block_list=_list(node_block_list))
    output = _Output(Path(out_dir), signing_key, validity, version, tolerance_margin, eval_data)
    return _write_stage(source, artifact, float_model, converted.SerializeToString(), "fp16",
                        "onnxruntime.transformers.float16.convert_float_to_float16", options, output,
                        excluded=tuple(node_block_list or ()))


# the accuracy gate: see gate.py ------------------------------------------------------------------
def _evaluator(source: Bundle, eval_data: tuple[Data, np.ndarray]) -> Evaluate:
    interface = source.manifest["interface"]
    if interface.get("task") != "classification":
        raise QuantizationError(f"accuracy needs a classification bundle; {source.name} is {interface.get('task')!r}")
    inputs = _as_feed(eval_data[0], source.inputs, "eval_data")
    labels = np.asarray(eval_data[1])
    postprocess = interface.get("postprocess", "softmax")

    def evaluate(model: bytes) -> tuple[float, np.ndarray]:
        scores = onnx_outputs(model, inputs).astype(np.float64)
        return classification_metrics(scores, labels, postprocess)["accuracy"], scores

    return evaluate


# writing the new bundle --------------------------------------------------------------------------------
def _write_stage(source: Bundle, artifact: dict, float_model: bytes, model: bytes, precision: str, tool: str,
                 options: dict, output: _Output, *, excluded: tuple[str, ...] = (),
                 gate: dict | None = None) -> QuantizeResult:
    out = _empty_dir(output.out_dir)
    try:
        float_session, new_session = session(float_model), session(model)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; report them as one
        raise QuantizationError(f"the {precision} model does not load in onnxruntime: {err}") from err
    manifest = copy.deepcopy(source.manifest)
    golden_in, golden_out, _ = source.golden() if manifest.get("golden") else ({}, {}, {})
    new_inputs = _input_dtypes(onnx.load_from_string(model))
    for rel in manifest.get("files", {}):
        if rel not in {a["path"] for a in source.artifacts}:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.path(rel), out / rel)
    path = f"model.{precision}.onnx"
    (out / path).write_bytes(model)

    numeric, runs = golden_error(float_session, new_session, golden_in, new_inputs)
    step: dict[str, Any] = {
        "stage": "quantize", "tool": tool, "precision": precision,
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "python": platform.python_version()},
        "input": {"name": source.name, "version": source.version, "artifact": artifact["path"],
                  "sha256": artifact.get("sha256")},
        "options": options, "numeric_error": numeric, "excluded_nodes": list(excluded),
        "sizes": {"float_bytes": len(float_model), "quantized_bytes": len(model),
                  "ratio": len(float_model) / len(model)},
        "at": format_time(utc_now()),
    }
    decisions = None
    if manifest.get("golden"):
        manifest["golden"], step["golden_tolerance"] = lowered_golden(manifest["golden"], numeric["max_abs"],
                                                                      output.tolerance_margin)
        decisions = check_decisions(manifest["interface"], manifest["golden"], golden_out, runs)
        if any(new_inputs.get(k, v.dtype) != v.dtype for k, v in golden_in.items()):
            # fp16 without keep_io_types: the golden inputs change dtype, the expected outputs stay
            _rewrite_golden(out / manifest["golden"]["path"], golden_in, golden_out, new_inputs)
    accuracy = _accuracy(source, output.eval_data, float_session, new_session, new_inputs)
    if accuracy is not None:
        step["accuracy"] = {k: accuracy[k] for k in ("float", "quantized", "drop")}
    if gate is not None:
        step["gate"] = gate
    float_flops = artifact.get("flops_per_sample")
    if float_flops is None:
        float_flops = count_flops(onnx.load_from_string(float_model), batch=1)["total"]
    new_opset = next((o.version for o in onnx.load_from_string(model).opset_import if o.domain in ("", "ai.onnx")), 0)
    manifest["artifacts"] = [{
        **{k: v for k, v in artifact.items() if k not in ("sha256", "size")},
        "path": path, "format": "onnx", "precision": precision, "opset": new_opset,
        # the arithmetic is the float model's, done at lower precision
        "flops_per_sample": float_flops,
        "quantization": options,
        "numeric_error": {"reference": "float", **numeric, **({"decisions": decisions} if decisions else {})},
    }]
    _retype_interface(manifest["interface"], onnx.load_from_string(model))
    manifest["metrics"] = {"float": source.manifest.get("metrics", {})}  # they measured the parent model
    if accuracy is not None:
        manifest["metrics"]["eval"] = accuracy["metrics"]
    if isinstance(manifest.get("model_card"), dict):
        manifest["model_card"]["evaluation"] = manifest["metrics"]
    if output.version is not None:
        manifest["version"] = int(output.version)
    manifest["created_at"] = format_time(utc_now())
    lineage = manifest.setdefault("lineage", {})
    lineage["steps"] = [*lineage.get("steps", []), step]
    manifest.pop("files", None)

    bundle_io.write_manifest(out, manifest)
    if output.signing_key is not None:
        bundle_io.sign(out, output.signing_key, output.validity)
    log.info("quantized %s v%s to %s in %s: %d -> %d bytes, max abs error %.3g", source.name, source.version,
             precision, out, len(float_model), len(model), numeric["max_abs"])
    return QuantizeResult(
        Bundle.open(out), precision, len(float_model), len(model), {"reference": "float", **numeric},
        accuracy["float"] if accuracy else None, accuracy["quantized"] if accuracy else None,
        accuracy["drop"] if accuracy else None, tuple(excluded), gate,
    )


def _accuracy(source: Bundle, eval_data: tuple[Data, np.ndarray] | None, float_session: ort.InferenceSession,
              new_session: ort.InferenceSession, dtypes: dict[str, np.dtype]) -> dict | None:
    if eval_data is None:
        return None
    interface = source.manifest["interface"]
    if interface.get("task") != "classification":
        log.warning("bundle %s is not a classifier: eval_data ignored", source.name)
        return None
    inputs = _as_feed(eval_data[0], source.inputs, "eval_data")
    labels, post = np.asarray(eval_data[1]), interface.get("postprocess", "softmax")
    names = interface.get("class_names")
    before = classification_metrics(onnx_outputs(float_session, inputs).astype(np.float64), labels, post, names)
    new_inputs = {k: v.astype(dtypes.get(k, v.dtype)) for k, v in inputs.items()}
    after = classification_metrics(onnx_outputs(new_session, new_inputs).astype(np.float64), labels, post, names)
    return {"float": before["accuracy"], "quantized": after["accuracy"],
            "drop": before["accuracy"] - after["accuracy"], "metrics": after}


def _rewrite_golden(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                    dtypes: dict[str, np.dtype]) -> None:
    cast = {k: v.astype(dtypes.get(k, v.dtype)) for k, v in inputs.items()}
    np.savez(path, **{f"inputs/{k}": v for k, v in cast.items()}, **{f"outputs/{k}": v for k, v in outputs.items()})


# small pieces ------------------------------------------------------------------------------------------
class _CalibrationReader(ortq.CalibrationDataReader):
    """The calibration rows in batches of one size: the last batch wraps around to the first rows, since
    onnxruntime's histogram calibrators (Entropy, Percentile) stack the batches and need equal shapes."""

    def __init__(self, feed: dict[str, np.ndarray], batch: int) -> None:
        self.feed, self.total = feed, _rows(feed)
        self.batch = max(1, min(int(batch), self.total))
        self.starts = list(range(0, self.total, self.batch))
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.starts):
            return None
        start = self.starts[self.position]
        self.position += 1
        rows = np.arange(start, start + self.batch) % self.total
        return {k: np.ascontiguousarray(v[rows]) for k, v in self.feed.items()}

    def rewind(self) -> None:
        self.position = 0


def _source(bundle: Bundle | str | Path) -> tuple[Bundle, dict, bytes]:
    """The bundle, its float ONNX artifact and that file's bytes (checked against the manifest's hash)."""
    source = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    artifact = next((a for a in source.artifacts if a.get("format") == "onnx"), None)
    if artifact is None:
        raise QuantizationError(f"bundle {source.name} v{source.version} has no ONNX artifact to quantize")
    if artifact.get("precision", "fp32") != "fp32":
        raise QuantizationError(f"{artifact['path']} is already {artifact['precision']}; quantize the fp32 model")
    path = source.path(artifact["path"])
    model = path.read_bytes()
    listed = source.manifest["files"][artifact["path"]]["sha256"]
    if bundle_io.file_digest(path) != listed:
        raise BundleError(f"{path} does not match the sha256 in its manifest; refusing to quantize it")
    return source, artifact, model


def _prepare(model: bytes, tmp: Path, preprocess: bool) -> tuple[Path, bool]:
    """The float model on disk, after onnxruntime's quant_pre_process (shape inference, basic graph
    optimisation) when asked and when it works; returns (path, whether pre-processing was applied)."""
    raw = tmp / "float.onnx"
    raw.write_bytes(model)
    if not preprocess:
        return raw, False
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    try:
        with _ort_chatter():
            quant_pre_process(str(raw), str(prepared))
    except Exception as err:  # noqa: BLE001 - optional step: fall back to the model as exported
        log.warning("quant_pre_process failed (%s: %s); quantizing the model as exported", type(err).__name__, err)
        return raw, False
    return prepared, True


def _check_nodes(model_path: Path, names: Sequence[str]) -> None:
    known = {n.name for n in onnx.load(str(model_path)).graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise QuantizationError(f"no node named {', '.join(map(repr, unknown))} in the model to quantize "
                                f"(its nodes: {', '.join(sorted(known))}); pre-processing may have fused it "
                                f"(preprocess=False keeps the exported graph)")


def _as_feed(data: Data, specs: list[TensorSpec], what: str) -> dict[str, np.ndarray]:
    if isinstance(data, Mapping):
        missing = [s.name for s in specs if s.name not in data]
        if missing:
            raise QuantizationError(f"{what} lacks the model input(s) {missing}")
        values = {s.name: data[s.name] for s in specs}
    elif len(specs) == 1:
        values = {specs[0].name: data}
    else:
        raise QuantizationError(f"the model takes {len(specs)} inputs: pass {what} as a dict name -> array")
    feed = {s.name: np.ascontiguousarray(values[s.name], dtype=np.dtype(s.dtype)) for s in specs}
    if _rows(feed) < 1:
        raise QuantizationError(f"{what} has no rows")
    return feed


def _rows(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))


def _quant_type(name: str) -> ortq.QuantType:
    try:
        return ortq.QuantType[name]
    except KeyError as err:
        raise QuantizationError(f"unknown quantization type {name!r}; use QInt8 or QUInt8") from err


def _list(values: Sequence[str] | None) -> list[str] | None:
    return list(values) if values is not None else None


def _dtypes(values: Sequence[onnx.ValueInfoProto]) -> dict[str, np.dtype]:
    return {v.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)) for v in values}


def _input_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    initializers = {t.name for t in model.graph.initializer}
    return _dtypes([v for v in model.graph.input if v.name not in initializers])


def _retype_interface(interface: dict, model: onnx.ModelProto) -> None:
    """The interface keeps its names and shapes; a dtype changes only where the new model's does."""
    dtypes = {**_input_dtypes(model), **_dtypes(model.graph.output)}
    for spec in [*interface.get("inputs", []), *interface.get("outputs", [])]:
        if spec["name"] in dtypes:
            spec["dtype"] = dtypes[spec["name"]].name


def _empty_dir(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        raise QuantizationError(f"{out} is not empty; a quantization stage writes a new bundle into an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _ort_chatter():
    """onnxruntime's quantization tools print progress; library code logs it instead."""
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        yield
    if chatter.getvalue().strip():
        log.debug("onnxruntime.quantization said: %s", chatter.getvalue().strip())
