"""ONNX Runtime targets.

onnxruntime-cpu: the graph optimised offline (constant folding, node fusions) and saved, so a device
skips that work at load; as ONNX, or in ORT format (`format: "ort"`), the one minimal ORT builds
read. The optimisation level is "extended" by default, the highest ORT documents as safe to save: "all"
adds layout changes tied to the compiling machine's CPU. Thread settings go into the artifact's options.

onnxruntime-gpu: the model with CUDA and TensorRT execution-provider options for the device (Jetson,
a CUDA GPU): providers are tried in order and ONNX Runtime falls back to the next. It is checked here on
the CPU provider; numbers on the GPU are for the device's self-test.

Options (edgefleet compile --option onnxruntime-cpu.format=ort):
    onnxruntime-cpu: format ("onnx" | "ort"), level ("basic" | "extended"), threads (int)
    onnxruntime-gpu: fp16 (bool, TensorRT), device_id (int), tensorrt (bool), workspace_mb (int)
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from edgefleet.compilers.targets import CompileSource, TargetResult
from edgefleet.core.errors import CompileError

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def compile_cpu(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    options = dict(options)
    fmt = str(options.pop("format", "onnx"))
    level = str(options.pop("level", "extended"))
    threads = options.pop("threads", None)
    _refuse_unknown("onnxruntime-cpu", options)
    if fmt not in ("onnx", "ort"):
        raise CompileError(f"onnxruntime-cpu: format must be onnx or ort, got {fmt!r}")
    if level not in LEVELS:
        raise CompileError(f"onnxruntime-cpu: level must be one of {', '.join(LEVELS)}, got {level!r}")
    rel = f"onnxruntime-cpu/model.{'ort' if fmt == 'ort' else 'onnx'}"
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    _optimise(source.onnx_file("onnxruntime-cpu"), out_dir / rel, level, fmt)
    runtime = {"threads": int(threads)} if threads else {}
    artifact = {
        "backend": "onnxruntime", "format": fmt, "path": rel, "device": "cpu",
        "precision": source.artifact.get("precision", "fp32"), "options": runtime,
        "compile": {"level": level, "format": fmt, "threads": threads, "onnxruntime": ort.__version__},
    }
    return TargetResult(artifact, check_backend="onnxruntime")


def compile_gpu(source: CompileSource, out_dir: Path, options: dict) -> TargetResult:
    options = dict(options)
    fp16 = bool(options.pop("fp16", True))
    device_id = int(options.pop("device_id", 0))
    tensorrt = bool(options.pop("tensorrt", True))
    workspace_mb = int(options.pop("workspace_mb", 1024))
    _refuse_unknown("onnxruntime-gpu", options)
    rel = "onnxruntime-gpu/model.onnx"
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    # basic-level rewrites are provider-independent; the GPU providers do their own fusions at load
    _optimise(source.onnx_file("onnxruntime-gpu"), out_dir / rel, "basic", "onnx")
    providers: list = []
    if tensorrt:
        providers.append(["TensorrtExecutionProvider", {
            "device_id": device_id, "trt_fp16_enable": fp16, "trt_max_workspace_size": workspace_mb << 20,
            "trt_engine_cache_enable": True, "trt_engine_cache_path": "trt-cache",
        }])
    providers.append(["CUDAExecutionProvider", {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"}])
    providers.append("CPUExecutionProvider")
    artifact = {
        "backend": "onnxruntime", "format": "onnx", "path": rel, "device": "gpu",
        "precision": "fp16" if (fp16 and tensorrt) else source.artifact.get("precision", "fp32"),
        "options": {"providers": providers},
        "compile": {"fp16": fp16, "device_id": device_id, "tensorrt": tensorrt, "workspace_mb": workspace_mb,
                    "onnxruntime": ort.__version__},
    }
    return TargetResult(artifact, check_backend="onnxruntime", check_options={"providers": ["CPUExecutionProvider"]})


def _optimise(src: Path, dst: Path, level: str, fmt: str) -> None:
    """Lets ONNX Runtime optimise src at `level` and save the result to dst (ONNX or ORT format)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(dst)
    if fmt == "onnx" and _has_external_data(src):  # else the saved model names data only src's folder holds
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         dst.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    if fmt == "ort":
        options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    if not dst.is_file():
        raise CompileError(f"onnxruntime did not write the optimised model {dst.name}")


def _has_external_data(src: Path) -> bool:
    from edgefleet.compilers.formats.onnx_file import external_locations, load_structure

    return bool(external_locations(load_structure(src)))


def _refuse_unknown(target: str, options: dict) -> None:
    if options:
        raise CompileError(f"{target}: unknown option(s) {', '.join(sorted(options))}")
