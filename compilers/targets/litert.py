"""LiteRT target: a `.tflite` converted from the torch model with litert-torch (no TensorFlow).

Why from torch, not from the bundle's ONNX: there is no maintained ONNX -> TFLite converter that does
not need TensorFlow; litert-torch lowers a `torch.export` program straight to a LiteRT flatbuffer. The
torch model comes in CompileSource.torch_model (`edgefleet compile --torch-model module:function`).
litert-torch is heavy (~2 GB: jax, transformers, torchao) and pins pydantic below what the cloud side
uses, so it is the optional extra `edgefleet[litert-convert]`, installed in its own environment
(scripts/check-litert). The device needs only `ai-edge-litert` (`edgefleet[litert]`).

Interface. The model is wrapped so that its signature takes the bundle's input names as keyword
arguments and returns a dict keyed by the bundle's output names: the `.tflite`'s signature
"serving_default" then carries exactly the bundle's names and the backend maps tensors by name. The
layout stays the bundle's (NCHW for the digits CNN; litert-torch inserts the transposes itself). After
conversion the file is opened with ai-edge-litert and its names and non-batch dimensions are checked
against the bundle's interface; a mismatch is a CompileError.

Batch. litert-torch 0.10.0 cannot lower a dynamic batch dimension (`dynamic_shapes` fails in its jax
bridge even for a Linear layer), and a static-batch `.tflite` cannot be resized afterwards (the
flattening Reshape has the batch baked in). So the file has a static batch, `batch` (default 1),
recorded as artifact["batch"]; the backend runs a larger request in chunks of that size (padding the
last chunk) and a batch-1 model one row at a time.

Precision. fp32: float weights and arithmetic; max abs error on the digits CNN's golden examples
~1.5e-6, within the bundle's own tolerance. int8: litert-torch's PT2E quantizer (torchao's
prepare_pt2e / convert_pt2e with litert-torch's symmetric int8 config: int8 weights, per-channel by
default, int8 activations calibrated with histogram observers), then the same conversion with that
quantizer as quant_config. The model's inputs and outputs become int8 tensors; the backend quantizes
and dequantizes them with the scales stored in the file, so the interface stays float32.

Calibration. The bundle does not carry raw training data (its reference profile holds histograms
only), so int8 calibrates on `calibration`, a .npy (one input) or .npz (arrays keyed by input name;
"x_train" accepted for a single input, as `edgefleet compress --data` files have) of representative
inputs, up to `calibration_samples` rows; int8 without it is refused. (Calibrating on the bundle's 8
golden rows gave poor ranges, max abs logit error 3.3 against 0.2 with 256 training rows, and the golden
check, which runs on those same rows, would not have caught it.)

int8 tolerance. Measured on the digits CNN (256 calibration rows, 450 test rows): max abs logit error
0.17-0.21 at logits up to 17 (1.3% of the range), prediction agreement with fp32 99.3-99.8%, accuracy
unchanged (97.3-97.6%). The golden check allows INT8_ATOL_FRACTION (5%) of the largest golden |output|:
room for other models, while a badly calibrated artifact (20% here) is refused.

Options (edgefleet compile --option litert.precision=int8):
    precision            "fp32" (default) | "int8"
    batch                static batch size of the .tflite (int >= 1), default 1
    threads              CPU threads for the interpreter on the device (int), default: LiteRT's own
    calibration          int8: path to a .npy/.npz of representative inputs (see above)
    calibration_samples  int8: rows used from it, default 256
    per_channel          int8: per-channel weight scales (default true) or per-tensor
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.compilers.targets import CompileSource, TargetResult
from edgefleet.core.errors import CompileError
from edgefleet.core.schema import TensorSpec, batch_axis

INT8_ATOL_FRACTION = 0.05  # see the module docstring: ~4x the worst int8 error measured on the digits CNN
INSTALL_HINT = "pip install 'edgefleet[litert-convert]'"
SIGNATURE = "serving_default"
REL_PATH = "litert/model.tflite"


@dataclass(frozen=True)
class LiteRtOptions:
    precision: str = "fp32"
    batch: int = 1
    threads: int | None = None
    calibration: str | None = None
    calibration_samples: int = 256
    per_channel: bool = True

    @classmethod
    def parse(cls, options: dict) -> LiteRtOptions:
        options = dict(options)
        known = set(cls.__dataclass_fields__)
        unknown = set(options) - known
        if unknown:
            raise CompileError(f"litert: unknown option(s) {', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(known))}")
        try:
            opts = cls(
                precision=str(options.get("precision", "fp32")),
                batch=int(options.get("batch", 1)),
                threads=int(options["threads"]) if options.get("threads") not in (None, "", 0) else None,
                calibration=str(options["calibration"]) if options.get("calibration") else None,
                calibration_samples=int(options.get("calibration_samples", 256)),
                per_channel=_as_bool(options.get("per_channel", True)),
            )
        except (TypeError, ValueError) as err:
            raise CompileError(f"litert: bad option value: {err}") from err
        if opts.precision not in ("fp32", "int8"):
            raise CompileError(f"litert: precision must be fp32 or int8, got {opts.precision!r}")
        if opts.batch < 1 or opts.calibration_samples < 1 or (opts.threads is not None and opts.threads < 1):
            raise CompileError("litert: batch, calibration_samples and threads must be >= 1")
        return opts


def compile(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    """Converts source.torch_model to out_dir/litert/model.tflite (fp32 or int8) for the "litert" backend."""
    opts = LiteRtOptions.parse(options)
    if source.format == "tflite" and source.torch_model is None:
        raise CompileError(f"litert: this bundle's model is a TFLite file already ({source.artifact.get('path')}), "
                           "served as it is by the litert backend: nothing to compile (--torch-model converts a "
                           "torch model anew)")
    if source.torch_model is None:
        raise CompileError("the litert target converts from the torch model: pass --torch-model module:function")
    _check_batch_axes(source.bundle)
    litert_torch = _import_converter()
    import torch

    inputs, outputs = source.bundle.inputs, source.bundle.outputs
    golden_in, golden_out, _ = source.bundle.golden()
    module = named_io(source.torch_model, [s.name for s in inputs], [s.name for s in outputs]).eval()
    sample = {s.name: torch.from_numpy(_rows(golden_in[s.name], opts.batch)) for s in inputs}
    compile_info: dict[str, Any] = {
        "litert_torch": litert_torch.__version__, "torch": torch.__version__, "precision": opts.precision,
        "batch": opts.batch, "threads": opts.threads,
    }
    with _quiet(litert_torch):
        if opts.precision == "int8":
            calibration, compile_info["calibration"] = _calibration_data(source, opts)
            edge_model = _convert_int8(litert_torch, module, sample, calibration, opts)
            compile_info["quantizer"] = {"kind": "pt2e static int8 (litert_torch PT2EQuantizer)",
                                         "per_channel": opts.per_channel, "io": "int8, (de)quantized by the backend"}
        else:
            with torch.no_grad():
                edge_model = litert_torch.convert(module, sample_kwargs=sample)
        path = out_dir / REL_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        edge_model.export(str(path))
    batch = check_interface(path, inputs, outputs)
    compile_info["ai_edge_litert"] = _litert_version()
    artifact = {
        "backend": "litert", "format": "tflite", "path": REL_PATH, "precision": opts.precision, "device": "cpu",
        "batch": batch, "options": {"threads": opts.threads}, "compile": compile_info,
    }
    atol = None
    if opts.precision == "int8":
        scale = max((float(np.abs(v).max()) for v in golden_out.values() if v.size), default=1.0)
        atol = INT8_ATOL_FRACTION * scale
    return TargetResult(artifact, check_backend="litert", atol=atol)


def named_io(model: Any, input_names: Sequence[str], output_names: Sequence[str]) -> Any:
    """The model as a module taking the bundle's input names as keywords and returning its output names.

    Built inside a function so that importing this module does not import torch.
    """
    import torch

    class _NamedIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.input_names = list(input_names)
            self.output_names = list(output_names)

        def forward(self, **feed: torch.Tensor) -> dict[str, torch.Tensor]:
            result = self.model(*(feed[name] for name in self.input_names))
            if isinstance(result, dict):
                values = [result[name] for name in self.output_names]
            elif isinstance(result, (tuple, list)):
                values = list(result)
            else:
                values = [result]
            if len(values) != len(self.output_names):
                raise CompileError(f"litert: the torch model returns {len(values)} outputs; the bundle declares "
                                   f"{len(self.output_names)} ({', '.join(self.output_names)})")
            return dict(zip(self.output_names, values, strict=True))

    return _NamedIO()


def _convert_int8(litert_torch: Any, module: Any, sample: dict, calibration: dict[str, np.ndarray],
                  opts: LiteRtOptions) -> Any:
    """PT2E static int8: export, insert observers, calibrate in chunks of the static batch, convert."""
    import torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=opts.per_channel)
    )
    exported = torch.export.export(module, (), sample).module()
    # an exported graph forgets .eval(): without this, batch norm and dropout would calibrate in training mode
    prepared = move_exported_model_to_eval(quantize_pt2e.prepare_pt2e(exported, quantizer))
    rows = len(next(iter(calibration.values())))
    with torch.no_grad():
        for start in range(0, rows - opts.batch + 1, opts.batch):
            prepared(**{k: torch.from_numpy(v[start:start + opts.batch]) for k, v in calibration.items()})
    converted = move_exported_model_to_eval(quantize_pt2e.convert_pt2e(prepared, fold_quantize=False))
    return litert_torch.convert(converted, sample_kwargs=sample,
                                quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))


def _calibration_data(source: CompileSource, opts: LiteRtOptions) -> tuple[dict[str, np.ndarray], dict]:
    """The int8 calibration inputs (whole multiples of the batch) and how they were chosen, for the lineage."""
    specs = source.bundle.inputs
    if opts.calibration is None:  # the golden rows are too few, and the check runs on them: it would pass
        raise CompileError("litert: int8 needs calibration=PATH, a .npy/.npz of representative inputs (a few "
                           "hundred training rows); the bundle carries none")
    data, origin = _load_calibration(Path(opts.calibration), specs), opts.calibration
    count = min(len(next(iter(data.values()))), opts.calibration_samples)
    chosen = {}
    for spec in specs:
        rows = np.ascontiguousarray(data[spec.name][:count], dtype=np.dtype(spec.dtype))
        chosen[spec.name] = _rows(rows, max(opts.batch, count - count % opts.batch))
    return chosen, {"source": origin, "rows": len(next(iter(chosen.values())))}


def _load_calibration(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CompileError(f"litert: calibration file {path} does not exist")
    if path.suffix == ".npy":
        if len(specs) != 1:
            raise CompileError(f"litert: a .npy calibration file fits a one-input model; this one has {len(specs)} "
                               "inputs: use an .npz keyed by input name")
        return {specs[0].name: np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as archive:
        names = set(archive.files)
        if len(specs) == 1 and specs[0].name not in names and "x_train" in names:
            return {specs[0].name: archive["x_train"]}
        missing = [s.name for s in specs if s.name not in names]
        if missing:
            raise CompileError(f"litert: calibration file {path} lacks array(s) {', '.join(missing)} "
                               f"(it has {', '.join(sorted(names))})")
        return {s.name: archive[s.name] for s in specs}


def check_interface(path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> int | None:
    """Checks the .tflite's signature against the bundle's interface; returns its static batch (None: dynamic)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    if SIGNATURE not in signatures:
        raise CompileError(f"litert: the converted model has no {SIGNATURE!r} signature ({', '.join(signatures)})")
    runner = interpreter.get_signature_runner(SIGNATURE)
    batches = set()
    for kind, specs, details in (("input", inputs, runner.get_input_details()),
                                 ("output", outputs, runner.get_output_details())):
        if sorted(details) != sorted(s.name for s in specs):
            raise CompileError(f"litert: the converted model's {kind}s are {sorted(details)}; the bundle declares "
                               f"{sorted(s.name for s in specs)}")
        for spec in specs:
            shape = [int(d) for d in details[spec.name]["shape_signature"]]
            want = list(spec.shape)
            fixed_ok = len(shape) == len(want) and all(
                isinstance(w, str) or w == g for w, g in zip(want[1:], shape[1:], strict=True))
            if not fixed_ok:
                raise CompileError(f"litert: {kind} {spec.name!r} has shape {shape} in the .tflite; the bundle "
                                   f"declares {want}")
            batches.add(shape[0])
    if len(batches) != 1:
        raise CompileError(f"litert: inputs and outputs disagree on the batch dimension ({sorted(batches)})")
    batch = batches.pop()
    return None if batch < 0 else batch


def _check_batch_axes(bundle: Any) -> None:
    """The conversion traces, calibrates and checks the static batch on axis 0 of every tensor; a tensor
    whose batch axis is elsewhere (a state [layers, batch, hidden]) or absent (a 0-d sample rate) is refused
    by name rather than traced with the wrong samples."""
    odd = [f"{spec.name} ({'no batch axis' if axis is None else f'batch on axis {axis}'})"
           for spec in (*bundle.inputs, *bundle.outputs) if (axis := batch_axis(spec)) != 0]
    if odd:
        raise CompileError(f"litert: the converter fixes the batch on axis 0 of every tensor, and this model has "
                           f"{', '.join(odd)}; serve it with onnxruntime-cpu or openvino-cpu")


def _rows(array: np.ndarray, count: int) -> np.ndarray:
    """Exactly `count` rows of array, repeating it when it has fewer."""
    if len(array) == 0:
        raise CompileError("litert: no example rows to trace or calibrate the model with")
    reps = -(-count // len(array))
    return np.ascontiguousarray(np.concatenate([array] * reps)[:count])


def _import_converter() -> Any:
    try:
        import litert_torch
    except ImportError as err:
        raise CompileError(f"the litert target needs litert-torch, which is not installed here ({err}): "
                           f"{INSTALL_HINT}, in its own environment (scripts/check-litert)") from err
    return litert_torch


@contextlib.contextmanager
def _quiet(litert_torch: Any) -> Iterator[None]:
    """litert-torch prints a progress tree to the terminal by default; library code logs instead."""
    config = litert_torch.config
    before = config.show_progress
    config.show_progress = False
    try:
        yield
    finally:
        config.show_progress = before


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)
