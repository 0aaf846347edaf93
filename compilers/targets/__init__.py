"""Compile targets: one module per target, registered here by import string, imported on first use.

A target module has one function:

    def compile(source: CompileSource, out_dir: Path, options: dict) -> TargetResult

It writes its files below `out_dir / <target name>/` (never anywhere else, never into the source
bundle) and returns the artifact's manifest entry plus how to check it. compilers/compile.py runs the
check (the artifact on the golden examples through the named edge backend, against the source model's
outputs), records the error and the precision in the entry, and refuses an artifact outside tolerance.

Artifact entry keys a target fills in:
    target      the target name ("openvino-cpu")
    backend     the edge backend that runs it ("openvino"); Predictor prefers an artifact built for it
    format      what the file is ("onnx", "ort", "openvino-ir", "tflite", "edgefleet-graph", "tensorrt-plan")
    path        the main file, relative to the bundle root ("openvino-cpu/model.xml")
    precision   "fp32", "fp16", "int8", or "mixed"
    options     what the backend's load() gets on the device (device, threads, precision hints, ...)
    compile     the compile options and tool versions, for the lineage
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import CompileError

# target name -> "module:function". `edgefleet compile --target NAME`.
TARGETS: dict[str, str] = {
    "onnxruntime-cpu": "edgefleet.compilers.targets.onnxruntime:compile_cpu",
    "onnxruntime-gpu": "edgefleet.compilers.targets.onnxruntime:compile_gpu",
    "openvino-cpu": "edgefleet.compilers.targets.openvino:compile_cpu",
    "openvino-gpu": "edgefleet.compilers.targets.openvino:compile_gpu",
    "openvino-npu": "edgefleet.compilers.targets.openvino:compile_npu",
    "litert": "edgefleet.compilers.targets.litert:compile",
    "tensorrt": "edgefleet.compilers.targets.tensorrt:compile",
    "native": "edgefleet.compilers.targets.native:compile",
}


# what a bundle whose model is a TFLite file (an imported .tflite, no ONNX artifact) compiles for
TFLITE_TARGETS = "openvino-cpu, openvino-gpu and openvino-npu (OpenVINO reads the .tflite); litert serves it as it is"


@dataclass(frozen=True)
class CompileSource:
    """What a target compiles from. Read-only: a target never writes into the source bundle.

    The source is the bundle's ONNX artifact (export, compress, an imported .onnx), or, for a bundle
    whose model is an imported .tflite, that file (`format` "tflite"). Targets that compile from ONNX
    call `onnx_file(target)`, which refuses a TFLite source by name.
    """

    bundle: Bundle
    artifact: dict  # the source artifact's manifest entry
    path: Path  # its file
    torch_model: Any | None = None  # the torch.nn.Module, for targets that convert from torch (litert)

    @property
    def format(self) -> str:
        return str(self.artifact.get("format", "onnx"))

    def onnx_file(self, target: str) -> Path:
        """The source ONNX file; CompileError when the bundle's model is a TFLite file."""
        if self.format != "onnx":
            raise CompileError(
                f"{target}: compiles from an ONNX model, and this bundle's model is a {self.format} file "
                f"({self.artifact.get('path')}); edgefleet has no TFLite-to-ONNX converter (tf2onnx needs "
                f"TensorFlow). A TFLite model compiles for {TFLITE_TARGETS}")
        return self.path


@dataclass(frozen=True)
class TargetResult:
    artifact: dict
    # The edge backend that checks the artifact here on the golden examples, with these load options
    # on top of artifact["options"] (say, OpenVINO's CPU device for an IR built for the NPU).
    check_backend: str | None
    check_options: dict = field(default_factory=dict)
    # Why it cannot be checked on this machine (TensorRT); the device's self-test checks it instead.
    unchecked_reason: str = ""
    # Tolerance on the golden examples when it must differ from the bundle's (fp16, int8 artifacts).
    atol: float | None = None
    rtol: float | None = None


CompileFn = Callable[[CompileSource, Path, dict], TargetResult]


def target_function(name: str) -> CompileFn:
    """Imports a target by name; CompileError if it is unknown or its SDK is not installed."""
    spec = TARGETS.get(name)
    if spec is None:
        raise CompileError(f"unknown target {name!r}; known targets: {', '.join(sorted(TARGETS))}")
    module_name, _, function = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CompileError(f"target {name!r} needs a package that is not installed here ({err})") from err
    return getattr(module, function)
