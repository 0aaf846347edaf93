"""TensorRT (Jetson, NVIDIA GPUs): the ONNX model plus an engine-build plan, built on the device.

A TensorRT engine is specific to the GPU and the TensorRT version that built it, so the cloud cannot
build one for a fleet of Jetsons from an x86 machine without their GPU. This target writes what the
device (or a build machine of the same kind) needs: `tensorrt/model.onnx`, `tensorrt/build.json` with the
builder settings, and `tensorrt/build-engine.sh`, the same settings as a `trtexec` command line.
`build_engine()` builds the engine with TensorRT's Python API from build.json; `trtexec_command()` gives
the command. Neither runs here: TensorRT cannot be installed on this machine, so the artifact is recorded
unchecked and the device's self-test on the golden examples is its check. UNTESTED ON HARDWARE.

Precision (documented TensorRT behaviour): fp16 sets BuilderFlag.FP16; int8 takes the scales from the
model's Q/DQ nodes (explicit quantization; TensorRT 10 deprecates calibrators), so it needs a bundle
quantized by `edgefleet compress` (quantize_static); fp32 sets neither flag.

Options: precision (fp32|fp16|int8, default fp16), workspace_mb (1024), min_batch (1), opt_batch (1),
max_batch (32), dla_core (none; a Jetson's DLA core index, with GPU fallback), timing_cache (true).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from edgefleet.compilers.targets import CompileSource, TargetResult
from edgefleet.core.errors import CompileError

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULTS: dict[str, Any] = {"precision": "fp16", "workspace_mb": 1024, "min_batch": 1, "opt_batch": 1,
                            "max_batch": 32, "dla_core": None, "timing_cache": True}
UNCHECKED = "TensorRT needs an NVIDIA GPU and cannot be installed on the compiling machine; the engine is " \
            "built on the device, whose self-test checks it on the golden examples"


def compile(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:  # noqa: A001 - the target protocol
    plan = build_plan(source, options)
    folder = out_dir / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.onnx_file("tensorrt"), folder / "model.onnx")
    (folder / "build.json").write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
    script = "#!/bin/sh\n# Builds the TensorRT engine on the device (edgefleet compile --target tensorrt)\nset -e\n" \
             'cd "$(dirname "$0")"\n' + shlex.join(trtexec_command(plan)) + "\n"
    (folder / "build-engine.sh").write_text(script)
    artifact = {
        "backend": "tensorrt", "format": "onnx+tensorrt-build", "path": "tensorrt/model.onnx", "device": "gpu",
        "precision": plan["precision"], "batch": None,
        "options": {"build": "tensorrt/build.json", "engine": "tensorrt/model.plan"},
        "compile": {**plan, "tested_on_hardware": False},
    }
    return TargetResult(artifact, check_backend=None, unchecked_reason=UNCHECKED)


def build_plan(source: CompileSource, options: dict) -> dict:
    """The builder settings, checked: a bad option or an int8 request on a float model is a CompileError."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise CompileError(f"tensorrt: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    plan = {**DEFAULTS, **options}
    if plan["precision"] not in PRECISIONS:
        raise CompileError(f"tensorrt: precision must be one of {', '.join(PRECISIONS)}, got {plan['precision']!r}")
    if plan["precision"] == "int8" and source.artifact.get("precision") != "int8":
        raise CompileError("tensorrt: int8 takes its scales from Q/DQ nodes; this bundle's model is "
                           f"{source.artifact.get('precision', 'fp32')}: quantize it first (edgefleet compress, "
                           "quantize_static), then compile")
    batches = [int(plan[k]) for k in ("min_batch", "opt_batch", "max_batch")]
    if not 1 <= batches[0] <= batches[1] <= batches[2]:
        raise CompileError(f"tensorrt: need 1 <= min_batch <= opt_batch <= max_batch, got {batches}")
    inputs = source.bundle.inputs
    plan["inputs"] = {spec.name: [list(_with_batch(spec.shape, b)) for b in batches] for spec in inputs}
    plan["onnx"] = "model.onnx"
    plan["engine"] = "model.plan"
    return plan


def trtexec_command(plan: dict) -> list[str]:
    """The trtexec command line for the plan (TensorRT's documented flags), run in the artifact's folder."""
    shapes = {kind: ",".join(f"{name}:{'x'.join(map(str, dims[i]))}" for name, dims in plan["inputs"].items())
              for i, kind in enumerate(("min", "opt", "max"))}
    command = ["trtexec", f"--onnx={plan['onnx']}", f"--saveEngine={plan['engine']}",
               f"--minShapes={shapes['min']}", f"--optShapes={shapes['opt']}", f"--maxShapes={shapes['max']}",
               f"--memPoolSize=workspace:{int(plan['workspace_mb'])}M"]
    if plan["precision"] == "fp16":
        command.append("--fp16")
    elif plan["precision"] == "int8":
        command += ["--int8", "--fp16"]  # fp16 for the layers Q/DQ leaves in float
    if plan["dla_core"] is not None:
        command += [f"--useDLACore={int(plan['dla_core'])}", "--allowGPUFallback"]
    if plan["timing_cache"]:
        command.append("--timingCacheFile=timing.cache")
    return command


def build_engine(folder: Path) -> Path:  # pragma: no cover - needs TensorRT and an NVIDIA GPU
    """Builds folder/model.plan from folder/build.json with TensorRT's Python API (on the device)."""
    import tensorrt as trt

    plan = json.loads((folder / "build.json").read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse((folder / plan["onnx"]).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompileError(f"TensorRT cannot parse {plan['onnx']}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan["workspace_mb"]) << 20)
    if plan["precision"] in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if plan["precision"] == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if plan["dla_core"] is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(plan["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in plan["inputs"].items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise CompileError("TensorRT failed to build the engine (see its log above)")
    out = folder / plan["engine"]
    out.write_bytes(bytes(engine))
    return out


def _with_batch(shape: tuple, batch: int) -> tuple[int, ...]:
    dims = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(shape)]
    if not all(isinstance(d, int) for d in dims):
        raise CompileError(f"tensorrt: only the batch axis may be symbolic; input shape is {list(shape)}")
    return tuple(dims)
