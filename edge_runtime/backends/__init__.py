"""Backends: one file each, behind a three-method protocol, registered here by import string.

A backend is imported only when a Predictor asks for it, so an edge install without openvino (say)
never pays for it, and a missing runtime is a clear BackendError, not an ImportError at startup.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.core.errors import BackendError

# name -> "module:Class". Order does not matter here; the caller's `backends=[...]` list decides.
REGISTRY: dict[str, str] = {
    "onnxruntime": "edgefleet.edge_runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgefleet.edge_runtime.backends.openvino:OpenVinoBackend",
    "litert": "edgefleet.edge_runtime.backends.litert:LiteRtBackend",
    "native": "edgefleet.edge_runtime.backends.native:NativeBackend",
}


class Backend(Protocol):
    name: str
    formats: tuple[str, ...]  # artifact formats it can run, e.g. ("onnx",)

    def load(self, artifact: Path, options: dict[str, Any]) -> None: ...

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def backend_class(name: str) -> type[Backend]:
    """Imports a backend by name; BackendError if it is unknown or its runtime is not installed."""
    target = REGISTRY.get(name)
    if target is None:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(sorted(REGISTRY))}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackendError(f"backend {name!r} is not installed here ({err})") from err
    return getattr(module, class_name)
