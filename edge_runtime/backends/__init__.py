"""Backends: one file each, behind a three-method protocol, registered here by import string.

A backend is imported only when a Predictor asks for it, so an edge install without openvino (say)
never pays for it, and a missing runtime is a clear BackendError, not an ImportError at startup.

When the caller names no backend (`edgefleet verify|predict|bench` without --backend, a device.toml
without `backends`), `default_backends(bundle)` gives the order to try, from the bundle's own artifacts:
onnxruntime first when the bundle has a CPU artifact in ONNX format, then the backend each CPU artifact
records, in the manifest's artifact order, each once. A TFLite-only bundle thus runs on litert and an
ONNX bundle on onnxruntime as before. Artifacts for a GPU or NPU are not in it (they run only when their
target is named). A listed backend whose runtime is not installed is skipped by the Predictor, logged and
kept in its `fallbacks`, and the next one is tried.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgefleet.core.errors import BackendError

if TYPE_CHECKING:
    from edgefleet.core.bundle import Bundle

log = logging.getLogger(__name__)

# name -> "module:Class". Order does not matter here: the caller's `backends=[...]` list decides, or, when
# the caller names none, default_backends (module docstring).
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


ONNX_FORMATS = ("onnx", "ort")  # the formats the onnxruntime backend runs (backends/onnxruntime.py)


def default_backends(bundle: Bundle) -> list[str]:
    """The backends to try, in order, when the caller names none (module docstring); BackendError when no
    CPU artifact of the bundle records a backend of this runtime. Reads the manifest defensively: it may
    not be verified yet (the Predictor verifies it before loading anything)."""
    artifacts = bundle.manifest.get("artifacts")
    cpu = [a for a in (artifacts if isinstance(artifacts, list) else [])
           if isinstance(a, dict) and a.get("device", "cpu") == "cpu"]
    order = ["onnxruntime"] if any(a.get("format") in ONNX_FORMATS for a in cpu) else []
    for artifact in cpu:
        name = artifact.get("backend")
        if isinstance(name, str) and name in REGISTRY and name not in order:
            order.append(name)
    if not order:
        listed = ", ".join(f"{a.get('target')} ({a.get('backend')}, {a.get('device', 'cpu')})"
                           for a in (artifacts if isinstance(artifacts, list) else []) if isinstance(a, dict))
        raise BackendError(f"bundle {bundle.name} v{bundle.version} has no CPU artifact that a backend of this "
                           f"runtime runs ({', '.join(sorted(REGISTRY))}); its artifacts: {listed or 'none'}. "
                           "Name a compile target to run an accelerator's artifact")
    log.info("no backend named for bundle %s: trying %s, from its artifacts", bundle.manifest.get("name"),
             ", ".join(order))
    return order
