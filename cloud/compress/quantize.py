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
  QOperator format; QDQ biases corrected for the mean shift of the rounded weights (bias_correction.py);
  optional accuracy gate (below).
- `convert_fp16`: float16 weights and arithmetic, float32 inputs and outputs by default.

Golden examples: the expected outputs stay the float model's, so the device self-test compares the
quantized model against the model it replaces. The golden atol is widened to `tolerance_margin` times
the error measured on the golden inputs, and that error is recorded as the golden `noise`, which sets
the tie margin of the decision check (a classifier's top-1 must survive; see golden.py and
core/decision.py); the lineage step records the tolerance before and after, the artifact's
numeric_error how many golden decisions were compared and agreed.

Measuring (static int8): eval_data=(x, y) scores accuracy; eval_data=(x, None) scores top-1 agreement
with the float model (no labels; the lineage step's accuracy.metric and note say so). method="auto"
tries every calibration method and keeps the best on eval_data (calibration.py; the step's
"calibration" record has each score). max_drop adds the accuracy gate (gate.py): groups of nodes kept
in float until the drop is within max_drop; the step's "gate" record has every trial.
"""

from __future__ import annotations

import copy
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

from edgefleet.cloud.compress.adaround import AdaRoundOptions, adaround
from edgefleet.cloud.compress.bias_correction import correct_biases, input_means
from edgefleet.cloud.compress.calibration import METHODS, CalibrationReader, choose_method, method_list
from edgefleet.cloud.compress.empirical_bias import correct_biases_empirically
from edgefleet.cloud.compress.equalize import equalize
from edgefleet.cloud.compress.evaluate import (
    AGREEMENT,
    AGREEMENT_NOTE,
    metric_name,
    onnx_outputs,
    reference_labels,
    session,
)
from edgefleet.cloud.compress.gate import (
    WIDE_ACTIVATIONS,
    Evaluate,
    QuantizationError,
    accuracy_gate,
    node_groups,
)
from edgefleet.cloud.compress.golden import check_decisions, golden_error, lowered_golden
from edgefleet.cloud.compress.onnx_model import (
    check_nodes,
    input_dtypes,
    ort_chatter,
    prepare,
    quant_type,
    retype_interface,
)
from edgefleet.cloud.compress.quantize_inputs import Data, as_feed, empty_dir, feed_rows, source_model
from edgefleet.compilers.flops import count_flops
from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.canonical import format_time, utc_now
from edgefleet.core.metrics import classification_metrics
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey

__all__ = ["METHODS", "QuantizationError", "QuantizeResult", "convert_fp16", "quantize_dynamic_int8",
           "quantize_static_int8"]

log = logging.getLogger(__name__)

EvalData = tuple[Data, np.ndarray | None]  # (inputs, labels); labels None: top-1 agreement with the float model
TOLERANCE_MARGIN = 3.0
CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class QuantizeResult:
    """What a quantization stage made and measured.

    bundle: the new bundle, opened from out_dir. precision: "int8" or "fp16".
    float_bytes, quantized_bytes: the model file before and after (size_ratio = float / quantized).
    numeric_error: {"reference": "float", "samples", "max_abs", "max_rel"} of the new model against the
        float model on the golden inputs.
    float_accuracy, quantized_accuracy, accuracy_drop: on eval_data (fractions; drop = float minus
        quantized, negative if quantization helped); None without eval_data. metric says what they are:
        "accuracy" (eval_data with labels) or "top1_agreement_with_float" (labels None: the float model
        scores 1 and quantized_accuracy is the fraction of rows whose top-1 class did not change).
    calibration: with several calibration methods, each one's score and the one chosen (calibration.py).
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
    metric: str | None = None
    calibration: dict | None = field(default=None, compare=False)

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
    eval_data: EvalData | None


# stages ------------------------------------------------------------------------------------------------
def quantize_dynamic_int8(
    bundle: Bundle | str | Path, out_dir: str | Path, *, per_channel: bool = False, reduce_range: bool = False,
    weight_type: str = "QInt8", op_types_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (), extra_options: Mapping[str, Any] | None = None, preprocess: bool = True,
    eval_data: EvalData | None = None, signing_key: SigningKey | None = None,
    validity: timedelta = DEFAULT_VALIDITY, version: int | None = None, tolerance_margin: float = TOLERANCE_MARGIN,
) -> QuantizeResult:
    """int8 weights; activations quantized per call from their observed range (no calibration data)."""
    source, artifact, float_model = source_model(bundle)
    options = {"mode": "dynamic", "per_channel": per_channel, "reduce_range": reduce_range,
               "weight_type": weight_type, "op_types_to_quantize": _list(op_types_to_quantize),
               "nodes_to_exclude": list(nodes_to_exclude), "extra_options": dict(extra_options or {})}
    with tempfile.TemporaryDirectory(prefix="edgefleet-quantize-") as tmp:
        prepared, options["preprocess"] = prepare(float_model, Path(tmp), preprocess)
        check_nodes(prepared, nodes_to_exclude)
        out = Path(tmp) / "dynamic.onnx"
        with ort_chatter():
            ortq.quantize_dynamic(prepared, out, per_channel=per_channel, reduce_range=reduce_range,
                                  weight_type=quant_type(weight_type), nodes_to_exclude=list(nodes_to_exclude),
                                  op_types_to_quantize=_list(op_types_to_quantize),
                                  extra_options=dict(extra_options or {}))
        model = out.read_bytes()
    output = _Output(Path(out_dir), signing_key, validity, version, tolerance_margin, eval_data)
    return _write_stage(source, artifact, float_model, model, "int8", "onnxruntime.quantization.quantize_dynamic",
                        options, output, excluded=tuple(nodes_to_exclude))


def quantize_static_int8(
    bundle: Bundle | str | Path, out_dir: str | Path, calibration: Data, *, quant_format: str = "QDQ",
    per_channel: bool = True, method: str | Sequence[str] = "MinMax", activation_type: str = "QUInt8",
    weight_type: str = "QInt8", reduce_range: bool = False, nodes_to_exclude: Sequence[str] = (),
    op_types_to_quantize: Sequence[str] | None = None, extra_options: Mapping[str, Any] | None = None,
    preprocess: bool = True, calibration_batch: int = CALIBRATION_BATCH, eval_data: EvalData | None = None,
    max_drop: float | None = None, gate_candidates: Sequence[str | Sequence[str]] | None = None,
    gate_strategy: str = "auto", bias_correction: bool | str = True, equalization: bool = False,
    rounding: str = "nearest", adaround_options: AdaRoundOptions | None = None,
    signing_key: SigningKey | None = None, validity: timedelta = DEFAULT_VALIDITY, version: int | None = None,
    tolerance_margin: float = TOLERANCE_MARGIN,
) -> QuantizeResult:
    """int8 weights and activations, activation ranges calibrated on `calibration` (the model's input
    rows: an array for a one-input model, else name -> array), fed in batches of calibration_batch.

    quant_format: "QDQ" (QuantizeLinear/DequantizeLinear around float ops; onnxruntime fuses them into
    integer kernels) or "QOperator" (QLinearConv, ...). method: "MinMax", "Entropy", "Percentile", or
    "auto" (or a list of them): each is tried and the best on eval_data kept (calibration.py).
    eval_data=(x, y) measures both models' accuracy; (x, None) measures top-1 agreement with the float
    model instead (no labels). With max_drop too, the accuracy gate (gate.py) keeps the most harmful
    nodes in float until the drop (1 - agreement without labels) is within max_drop; gate_candidates
    overrides which nodes (or groups of nodes, kept in float together) it may keep in float;
    gate_strategy: "auto", "rank", "prefix", "sensitivity", "budget" or "prefix16" (QDQ only: int8 weights,
    16-bit activations and a float head when int8 activations miss; gate.py). bias_correction (QDQ only):
    True or "analytic": each quantized Conv/Gemm bias takes back the mean shift its rounded weights add
    (bias_correction.py); "empirical": in graph order, each one takes back the mean shift its output has
    in the quantized model (upstream layers quantized and corrected) against the float model, measured on
    the calibration rows (empirical_bias.py; one pass of the model up to each node); False: none.
    equalization: consecutive convolutions not separated by a clipping activation are rescaled channel
    by channel first (cross-layer equalization, equalize.py; exact in float; the options record which
    pairs and which were skipped). Off by default: on the pretrained EfficientNet-Lite0 it reaches 2 of
    34 pairs (ReLU6 separates the rest) and moved no held-out figure (bench_quantize's ablation), while
    on Relu networks it cuts the int8 error (tests/cloud/compress/test_equalize.py). rounding (QDQ only):
    "nearest", or "adaround": each Conv/Gemm's int8 weights rounded up or down to reproduce its float
    output on the calibration rows (adaround.py, adaround_options), before bias correction; it cuts
    the error of a small EfficientNet-Lite-class CNN but did not raise the pretrained EfficientNet-Lite0's
    held-out agreement (adaround.py has the figures).
    """
    methods = method_list(method)
    if quant_format not in ("QDQ", "QOperator"):
        raise QuantizationError(f"quant_format must be 'QDQ' or 'QOperator', got {quant_format!r}")
    if max_drop is not None and eval_data is None:
        raise QuantizationError("the accuracy gate (max_drop) needs eval_data=(inputs, labels or None)")
    if len(methods) > 1 and eval_data is None:
        raise QuantizationError(f"choosing among {', '.join(methods)} needs eval_data=(inputs, labels or None) "
                                f"to score them on")
    if rounding not in ("nearest", "adaround") or (rounding == "adaround" and quant_format != "QDQ"):
        raise QuantizationError(f"rounding must be 'nearest' or 'adaround' (QDQ only), got {rounding!r} with "
                                f"{quant_format}")
    correction = _correction(bias_correction, quant_format)
    source, artifact, float_model = source_model(bundle)
    feed = as_feed(calibration, source.inputs, "calibration")
    options = {"mode": "static", "quant_format": quant_format, "per_channel": per_channel, "method": methods[0],
               "activation_type": activation_type, "weight_type": weight_type, "reduce_range": reduce_range,
               "op_types_to_quantize": _list(op_types_to_quantize), "nodes_to_exclude": list(nodes_to_exclude),
               "extra_options": dict(extra_options or {}), "calibration_batch": calibration_batch,
               "calibration_rows": feed_rows(feed), "bias_correction": correction,
               "rounding": rounding}
    with tempfile.TemporaryDirectory(prefix="edgefleet-quantize-") as tmp:
        prepared, options["preprocess"] = prepare(float_model, Path(tmp), preprocess)
        check_nodes(prepared, nodes_to_exclude)
        if equalization:
            equalized, options["equalization"] = equalize(onnx.load(str(prepared)))
            prepared = Path(tmp) / "equalized.onnx"
            onnx.save(equalized, str(prepared))
        else:
            options["equalization"] = None
        out = Path(tmp) / "static.onnx"
        means = (input_means(prepared, iter(CalibrationReader(feed, calibration_batch).get_next, None))
                 if correction == "analytic" else None)

        fitted: dict[str, dict] = {}

        def quantize(excluded: Sequence[str], method: str, activations: str = activation_type) -> bytes:
            with ort_chatter():
                ortq.quantize_static(
                    prepared, out, CalibrationReader(feed, calibration_batch),
                    quant_format=ortq.QuantFormat[quant_format], per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=quant_type(activations), weight_type=quant_type(weight_type),
                    nodes_to_exclude=list(excluded), op_types_to_quantize=_list(op_types_to_quantize),
                    calibrate_method=ortq.CalibrationMethod[method],
                    # one batch at a time: the calibrators keep every activation of what they are fed
                    extra_options={"CalibStridedMinMax": 1, **(extra_options or {})},
                    # calibrate once per method; every gate trial reuses the ranges
                    calibration_cache_path=Path(tmp) / f"calibration-{method}.json",
                )
            model = out.read_bytes()
            if rounding == "adaround":  # fitted once per calibration method, reused by the gate's trials
                rows = iter(CalibrationReader(feed, calibration_batch).get_next, None)
                model, record = adaround(model, prepared, rows, adaround_options or AdaRoundOptions(),
                                         fitted.setdefault(method, {}))
                options["adaround"] = _adaround_summary(record)
            if correction == "empirical":
                model, record = correct_biases_empirically(
                    model, prepared, lambda: iter(CalibrationReader(feed, calibration_batch).get_next, None))
                options["empirical_bias"] = {k: v for k, v in record.items() if k != "shift"}
                return model
            return model if means is None else correct_biases(model, prepared, means)

        needed = eval_data is not None and (max_drop is not None or len(methods) > 1)
        evaluate = _evaluator(source, eval_data, float_model) if needed else None
        choice = gate = None
        model = b""
        if len(methods) > 1:
            options["method"], model, choice = choose_method(lambda m: quantize(nodes_to_exclude, m), evaluate[0],
                                                             evaluate[1], methods, evaluate[2])
        chosen = options["method"]
        excluded = tuple(nodes_to_exclude)
        if max_drop is not None:
            groups = node_groups(prepared, gate_candidates)
            check_nodes(prepared, [n for g in groups for n in g])
            model, excluded, gate = accuracy_gate(lambda ex: quantize(ex, chosen), evaluate[0], float_model,
                                                   max_drop, excluded, groups, prepared, first=model or None,
                                                   strategy=gate_strategy, quantize_wide=(
                                                       (lambda ex: quantize(ex, chosen, WIDE_ACTIVATIONS))
                                                       if quant_format == "QDQ" else None))
            gate["metric"] = evaluate[2]
            options["activation_type"] = gate["steps"][-1].get("activations", activation_type)
        elif not model:
            model = quantize(nodes_to_exclude, chosen)
    output = _Output(Path(out_dir), signing_key, validity, version, tolerance_margin, eval_data)
    return _write_stage(source, artifact, float_model, model, "int8", "onnxruntime.quantization.quantize_static",
                        options, output, excluded=excluded, gate=gate, calibration=choice)


def convert_fp16(
    bundle: Bundle | str | Path, out_dir: str | Path, keep_io_types: bool = True, *,
    op_block_list: Sequence[str] | None = None, node_block_list: Sequence[str] | None = None,
    eval_data: EvalData | None = None, signing_key: SigningKey | None = None,
    validity: timedelta = DEFAULT_VALIDITY, version: int | None = None, tolerance_margin: float = TOLERANCE_MARGIN,
) -> QuantizeResult:
    """float16 weights and arithmetic; inputs and outputs stay float32 unless keep_io_types=False (then
    the interface and the golden inputs become float16 too)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source, artifact, float_model = source_model(bundle)
    options = {"mode": "fp16", "keep_io_types": keep_io_types, "op_block_list": _list(op_block_list),
               "node_block_list": _list(node_block_list)}
    with ort_chatter():
        converted = convert_float_to_float16(onnx.load_from_string(float_model), keep_io_types=keep_io_types,
                                             op_block_list=_list(op_block_list),
                                             node_block_list=_list(node_block_list))
    output = _Output(Path(out_dir), signing_key, validity, version, tolerance_margin, eval_data)
    return _write_stage(source, artifact, float_model, converted.SerializeToString(), "fp16",
                        "onnxruntime.transformers.float16.convert_float_to_float16", options, output,
                        excluded=tuple(node_block_list or ()))


# the accuracy gate: see gate.py ------------------------------------------------------------------
def _evaluator(source: Bundle, eval_data: EvalData, float_model: bytes) -> tuple[Evaluate, np.ndarray, str]:
    """(model bytes -> (metric, first output), the float model's first output, the metric's name): accuracy
    on the labels, or top-1 agreement with the float model when the labels are None."""
    interface = source.manifest["interface"]
    if interface.get("task") != "classification":
        raise QuantizationError(f"accuracy needs a classification bundle; {source.name} is {interface.get('task')!r}")
    inputs = as_feed(eval_data[0], source.inputs, "eval_data")
    postprocess = interface.get("postprocess", "softmax")
    float_scores = onnx_outputs(float_model, inputs).astype(np.float64)
    labels = _labels(eval_data, float_scores, postprocess)

    def evaluate(model: bytes, rows: int | None = None) -> tuple[float, np.ndarray]:
        """rows: score only the first rows (the sensitivity ranking's cheaper trials)."""
        feed = inputs if rows is None else {k: v[:rows] for k, v in inputs.items()}
        scores = onnx_outputs(model, feed).astype(np.float64)
        return classification_metrics(scores, labels[:len(scores)], postprocess)["accuracy"], scores

    return evaluate, float_scores, metric_name(eval_data[1])


def _labels(eval_data: EvalData, float_scores: np.ndarray, postprocess: str) -> np.ndarray:
    if eval_data[1] is None:
        return reference_labels(float_scores, postprocess)
    labels = np.asarray(eval_data[1])
    if len(labels) != len(float_scores):
        raise QuantizationError(f"eval_data has {len(float_scores)} input rows but {len(labels)} labels")
    return labels


# writing the new bundle --------------------------------------------------------------------------------
def _write_stage(source: Bundle, artifact: dict, float_model: bytes, model: bytes, precision: str, tool: str,
                 options: dict, output: _Output, *, excluded: tuple[str, ...] = (),
                 gate: dict | None = None, calibration: dict | None = None) -> QuantizeResult:
    out = empty_dir(output.out_dir)
    try:
        float_session, new_session = session(float_model), session(model)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; report them as one
        raise QuantizationError(f"the {precision} model does not load in onnxruntime: {err}") from err
    manifest = copy.deepcopy(source.manifest)
    golden_in, golden_out, _ = source.golden() if manifest.get("golden") else ({}, {}, {})
    new_inputs = input_dtypes(onnx.load_from_string(model))
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
        step["accuracy"] = {k: v for k, v in accuracy.items() if k != "metrics"}
    if calibration is not None:
        step["calibration"] = calibration
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
    retype_interface(manifest["interface"], onnx.load_from_string(model))
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
        accuracy["metric"] if accuracy else None, calibration,
    )


def _accuracy(source: Bundle, eval_data: EvalData | None, float_session: ort.InferenceSession,
              new_session: ort.InferenceSession, dtypes: dict[str, np.dtype]) -> dict | None:
    if eval_data is None:
        return None
    interface = source.manifest["interface"]
    if interface.get("task") != "classification":
        log.warning("bundle %s is not a classifier: eval_data ignored", source.name)
        return None
    inputs = as_feed(eval_data[0], source.inputs, "eval_data")
    post, names = interface.get("postprocess", "softmax"), interface.get("class_names")
    float_scores = onnx_outputs(float_session, inputs).astype(np.float64)
    labels = _labels(eval_data, float_scores, post)
    before = classification_metrics(float_scores, labels, post, names)
    new_inputs = {k: v.astype(dtypes.get(k, v.dtype)) for k, v in inputs.items()}
    after = classification_metrics(onnx_outputs(new_session, new_inputs).astype(np.float64), labels, post, names)
    metric = metric_name(eval_data[1])
    return {"metric": metric, **({"note": AGREEMENT_NOTE} if metric == AGREEMENT else {}),
            "float": before["accuracy"], "quantized": after["accuracy"],
            "drop": before["accuracy"] - after["accuracy"], "metrics": after}


def _rewrite_golden(path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                    dtypes: dict[str, np.dtype]) -> None:
    cast = {k: v.astype(dtypes.get(k, v.dtype)) for k, v in inputs.items()}
    np.savez(path, **{f"inputs/{k}": v for k, v in cast.items()}, **{f"outputs/{k}": v for k, v in outputs.items()})


# small pieces ------------------------------------------------------------------------------------------
def _correction(bias_correction: bool | str, quant_format: str) -> str | bool:
    """The bias correction asked: "analytic", "empirical" or False (QOperator models are not corrected)."""
    mode = "analytic" if bias_correction is True else bias_correction
    if mode not in ("analytic", "empirical", False):
        raise QuantizationError(f"bias_correction must be true, false, 'analytic' or 'empirical', "
                                f"got {bias_correction!r}")
    return mode if quant_format == "QDQ" else False


def _adaround_summary(record: dict) -> dict:
    """The lineage's AdaRound record: its options, layers, weights flipped and the layers' output error ratio."""
    layers = record["layers"].values()
    ratios = [v["mse_adaround"] / v["mse_nearest"] for v in layers if v["mse_nearest"] > 0]
    return {"options": record["options"], "layers": len(record["layers"]),
            "flipped_weights": sum(v["flipped"] for v in layers), "weights": sum(v["weights"] for v in layers),
            "output_mse_ratio_median": float(np.median(ratios)) if ratios else None}


def _list(values: Sequence[str] | None) -> list[str] | None:
    return list(values) if values is not None else None
