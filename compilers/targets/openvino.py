"""OpenVINO targets: openvino-cpu, openvino-gpu, openvino-npu.

Each converts the source ONNX with `openvino.convert_model` and saves OpenVINO IR (model.xml + model.bin)
with `openvino.save_model`, under out_dir/<target>/. The edge backend "openvino" runs it. A bundle whose
model is an imported .tflite is read by OpenVINO's TFLite frontend instead (openvino_tflite.py: the
bundle's names, float32 in place of quantized int8 inputs and outputs); the IR keeps the file's static
batch, recorded as artifact["batch"].

Telemetry: `import openvino` (2026.4) imports openvino.tools.ovc, which sends a usage event to Google
Analytics unless the user opted out (`opt_in_out --opt_out` from openvino-telemetry writes
~/intel/openvino_telemetry) or CI=true: without a consent file, openvino-telemetry counts as consent.
Nothing in this module can stop it after the import; build machines and devices should opt out.

Precision. fp32 keeps float32 weights; fp16 saves them as float16 (`compress_to_fp16`, half the .bin)
and asks the device to compute in f16; bf16 (CPU only) keeps float32 weights and asks for bf16 compute.
int8 is not a choice here but a property of the source: a QDQ model from `quantize_static_int8` becomes
FakeQuantize ops that OpenVINO's low-precision transformations turn into u8/i8 kernels. The target proves
that by compiling the IR on the CPU and reading the runtime graph's per-layer execution precision
(recorded under compile.runtime_precision); an int8 artifact whose Convolution/MatMul layers do not run
in u8/i8 is refused.

The precision hint is always pinned in the artifact's options. OpenVINO's default on CPUs with AMX or
avx512_bf16 is bf16, which moves the digits CNN's logits by up to 0.05 and flips one prediction in a
thousand; pinning f32 makes a device run the numbers that were checked here. An int8 artifact pins f32
for its float parts (f16 on the NPU).

What runs is not always what was asked: OpenVINO's CPU plugin executes an `f16` hint in bf16 on a CPU
without AVX512-FP16 (AMD Zen 4 reports capabilities BF16, FP32, INT8), and a `bf16` hint in f32 on a
CPU without bf16. So the target reads back what the compiled model executes on this CPU (the
backend's `executed_precision`: the compiled model's INFERENCE_PRECISION_HINT and every node's
runtimePrecision), records it as artifact["executed_precision"] (with checked_on), and checks the golden
examples with a tolerance derived from that format (core/precision.py: two epsilons of the format times
the largest golden |output|, never below the bundle's tolerance). A device's self-test does the same
with what its own CPU executes.

The NPU computes in fp16 and needs static shapes: openvino-npu defaults to fp16 and batch 1 (reshaped
in the IR, recorded as artifact["batch"]; the backend splits a larger request into static batches).
There is no GPU or NPU on the build machine, so those artifacts are checked on the CPU device with the
same IR and precision hint (artifact["checked_on"] says so); the device's self-test checks the rest.

Tolerance, measured on the digits CNN over all 1797 digits against the fp32 model: f16 compute errs by
at most 1.0e-3 of the largest |logit| (max abs 0.0084 at logits up to 17; 4.3e-4 with f16 weights and
f32 compute), bf16 compute by 3.1e-3 (max abs 0.052 at 16.8, on AMD Zen 4). int8 uses the bundle's own
tolerance, which the quantize stage widened for the int8 model (OpenVINO's int8 kernels agree with
onnxruntime's to 0.10 on the logits).

Compile cache. OpenVINO can store the compiled model (CACHE_DIR) so the next load skips compilation:
seconds on a GPU or NPU; for the digits CNN on this CPU, a new process's first load takes 86 ms instead
of 165 ms, a later load in the same process 3.4 ms instead of 36 ms. The artifact's options carry a
relative directory name that the backend resolves under a writable location on the device (or null:
off). Default: on for gpu and npu, off for cpu (it writes files on the device for tens of ms).

Options (edgefleet compile --option openvino-npu.batch=1):
    precision         "fp32" | "fp16" | "bf16" (cpu only) (a QDQ int8 source: "int8", the default and only
                      choice); default fp32 on cpu and gpu, fp16 on npu
    batch             a static batch size (int >= 1), or null for a dynamic batch; default 1 on npu
                      (which requires it), dynamic on cpu and gpu
    cache_dir         relative directory name for OpenVINO's compile cache on the device, or "off"
    performance_hint  "LATENCY" (default) | "THROUGHPUT" | "CUMULATIVE_THROUGHPUT"
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import openvino as ov

from edgefleet.compilers.targets import CompileSource, TargetResult
from edgefleet.compilers.targets.openvino_tflite import read_tflite
from edgefleet.core.errors import CompileError
from edgefleet.core.precision import widen
from edgefleet.core.schema import batch_axis
from edgefleet.edge_runtime.backends.openvino import executed_precision

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
DEFAULT_CACHE_DIR = "openvino-cache"
OFF = ("off", "none", "false", "")
# layers whose execution precision shows whether a model really runs in int8
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


@dataclass(frozen=True)
class Device:
    target: str  # "openvino-npu"
    name: str  # OpenVINO's device name, "NPU"
    precisions: tuple[str, ...]  # float precisions it may be compiled for; the first is the default
    batch: int | None  # default static batch; None: dynamic
    cache: bool  # compile cache on by default


CPU = Device("openvino-cpu", "CPU", ("fp32", "fp16", "bf16"), None, False)
GPU = Device("openvino-gpu", "GPU", ("fp32", "fp16"), None, True)
NPU = Device("openvino-npu", "NPU", ("fp16",), 1, True)


def compile_cpu(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    return _compile(CPU, source, out_dir, options)


def compile_gpu(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    return _compile(GPU, source, out_dir, options)


def compile_npu(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    return _compile(NPU, source, out_dir, options)


@dataclass(frozen=True)
class Options:
    precision: str
    batch: int | None
    cache_dir: str | None
    performance_hint: str


def parse_options(device: Device, options: dict, source_precision: str) -> Options:
    """The target's options, validated; CompileError names the option, what it takes and what came."""
    options = dict(options)
    known = ("batch", "cache_dir", "performance_hint", "precision")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise CompileError(f"{device.target}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return Options(
        precision=_precision(device, options.get("precision"), source_precision),
        batch=_batch(device, options.get("batch", device.batch)),
        cache_dir=_cache_dir(device, options.get("cache_dir", DEFAULT_CACHE_DIR if device.cache else None)),
        performance_hint=_performance_hint(device, options.get("performance_hint", "LATENCY")),
    )


def _precision(device: Device, value: object, source_precision: str) -> str:
    if source_precision == "int8":
        if value not in (None, "int8"):
            raise CompileError(f"{device.target}: the source is an int8 (QDQ) model; precision must be int8 "
                               f"or left out, got {value!r}")
        return "int8"
    if source_precision != "fp32":
        raise CompileError(f"{device.target}: compiles from an fp32 or int8 (QDQ) ONNX model; the source "
                           f"artifact's precision is {source_precision!r}")
    if value is None:
        return device.precisions[0]
    if value == "int8":
        raise CompileError(f"{device.target}: int8 needs an int8 (QDQ) source bundle: quantize it first "
                           "(edgefleet compress, quantize_static_int8), then compile that bundle")
    if value not in device.precisions:
        why = " (the NPU computes in fp16)" if device is NPU else ""
        *rest, last = device.precisions
        choices = f"{', '.join(rest)} or {last}" if rest else last
        raise CompileError(f"{device.target}: precision must be {choices}{why}, got {value!r}")
    return str(value)


def _batch(device: Device, value: object) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "dynamic")):
        if device is NPU:
            raise CompileError(f"{device.target}: the NPU needs static shapes; batch must be an integer >= 1")
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise CompileError(f"{device.target}: batch must be an integer >= 1 or null (dynamic), got {value!r}")
    try:
        batch = int(value)
    except ValueError as err:
        raise CompileError(f"{device.target}: batch must be an integer >= 1 or null (dynamic), got {value!r}") from err
    if batch < 1:
        raise CompileError(f"{device.target}: batch must be an integer >= 1 or null (dynamic), got {value!r}")
    return batch


def _cache_dir(device: Device, value: object) -> str | None:
    if value is None or value is False or (isinstance(value, str) and value.lower() in OFF):
        return None
    if not isinstance(value, str):
        raise CompileError(f"{device.target}: cache_dir must be a relative directory name or 'off', got {value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise CompileError(f"{device.target}: cache_dir must be a relative name without '..' (the device resolves "
                           f"it under its own writable directory), got {value!r}")
    return value


def _performance_hint(device: Device, value: object) -> str:
    hint = str(value).upper()
    if hint not in PERFORMANCE_HINTS:
        raise CompileError(f"{device.target}: performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}, "
                           f"got {value!r}")
    return hint


def _compile(device: Device, source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    opts = parse_options(device, options, source.artifact.get("precision", "fp32"))
    tflite: dict | None = None
    if source.format == "tflite":  # an imported .tflite: OpenVINO reads it directly (openvino_tflite.py)
        model, tflite = read_tflite(source.path, device.target)
    else:
        model = ov.convert_model(str(source.onnx_file(device.target)))
    _check_names(device, model, source)
    if opts.batch is not None:
        _reshape(device, model, opts.batch, source)
    rel = f"{device.target}/model.xml"
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_dir / rel), compress_to_fp16=opts.precision == "fp16")

    # float parts of an int8 model: f32, except on the NPU (its hardware computes in fp16)
    hint = HINTS.get(opts.precision) or ("f16" if device is NPU else "f32")
    runtime = {"device": device.name, "precision_hint": hint, "cache_dir": opts.cache_dir,
               "performance_hint": opts.performance_hint}
    executed = runtime_precision(out_dir / rel, hint)
    if opts.precision == "int8" and not executed["int8_layers"]:
        raise CompileError(f"{device.target}: OpenVINO did not run the QDQ model's compute layers in int8 "
                           f"(runtime precision on CPU: {executed['layers']})")
    artifact = {
        "backend": "openvino", "format": "openvino-ir", "path": rel, "precision": opts.precision,
        "device": device.name.lower(), "checked_on": "CPU", "executed_precision": executed["executed"],
        "options": runtime,
        "compile": {
            "openvino": ov.__version__, "precision": opts.precision, "batch": opts.batch,
            "cache_dir": opts.cache_dir, "performance_hint": opts.performance_hint,
            "compress_to_fp16": opts.precision == "fp16", "runtime_precision": executed,
            "fake_quantize_ops": sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()),
        },
    }
    if tflite is not None:
        artifact["compile"]["from_tflite"] = tflite
    batch = opts.batch if opts.batch is not None else source.artifact.get("batch")  # a .tflite's static batch
    if batch is not None:
        artifact["batch"] = batch
    if device is not CPU:
        artifact["compile"]["check_note"] = (f"no {device.name} on the build machine: checked on the CPU device "
                                             f"with the same IR and precision hint {hint}")
    check_options = {"device": "CPU", "cache_dir": None}  # no compile cache written on the build machine
    _, golden_out, tolerance = source.bundle.golden()
    atol = widen(tolerance, executed["executed"], golden_out.values())["atol"]
    return TargetResult(artifact, check_backend="openvino", check_options=check_options, atol=atol)


def _check_names(device: Device, model: ov.Model, source: CompileSource) -> None:
    """The IR keeps the bundle's input and output names (the Predictor and golden examples use them)."""
    for kind, ports, specs in (("input", model.inputs, source.bundle.inputs),
                               ("output", model.outputs, source.bundle.outputs)):
        names = set().union(*(port.get_names() for port in ports))
        missing = [spec.name for spec in specs if spec.name not in names]
        if missing:
            raise CompileError(f"{device.target}: the converted model lost {kind} name(s) {missing} "
                               f"(it has {sorted(names)})")


def _reshape(device: Device, model: ov.Model, batch: int, source: CompileSource) -> None:
    """Sets every input's batch axis (the bundle's: core/schema.py batch_axis, axis 1 of a recurrent state)
    to `batch`; an input without one stays as it is. The NPU also needs every other axis static."""
    axes = {spec.name: batch_axis(spec) for spec in source.bundle.inputs}
    shapes = {}
    for port in model.inputs:
        shape, name = port.get_partial_shape(), port.get_any_name()
        axis = axes.get(name, 0)
        if shape.rank.is_dynamic or (axis is not None and axis >= len(shape)):
            raise CompileError(f"{device.target}: input {name!r} has no batch axis to fix (shape {shape})")
        if axis is not None:
            shape[axis] = batch
        if device is NPU and shape.is_dynamic:
            raise CompileError(f"{device.target}: the NPU needs static shapes; input {name!r} "
                               f"has shape {shape} with the batch fixed")
        shapes[name] = shape
    if all(axes.get(port.get_any_name(), 0) is None for port in model.inputs):
        raise CompileError(f"{device.target}: no input has a batch axis to fix (batch={batch})")
    model.reshape(shapes)


def runtime_precision(xml: Path, hint: str) -> dict:
    """Compiles the IR on the CPU with `hint` and reads what runs: {"device", "inference_precision" (the
    compiled model's hint, read back), "executed" (the coarsest float format of the whole runtime graph),
    "layers": {compute layer type: {precision: count}}, "int8_layers"}."""
    core = ov.Core()
    compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    layers: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = str(info["layerType"].astype(str))
        if layer in COMPUTE_LAYERS:
            layers.setdefault(layer, Counter())[str(info["runtimePrecision"].astype(str))] += 1
    int8 = sum(n for counts in layers.values() for p, n in counts.items() if p in ("u8", "i8"))
    return {"device": "CPU", "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "executed": executed_precision(compiled, "CPU"),
            "layers": {k: dict(v) for k, v in sorted(layers.items())}, "int8_layers": int8}
