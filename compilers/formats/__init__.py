"""Model files edgefleet imports: one module per format, all with the same four functions.

`compilers/import_model.py` picks the module by the file's suffix (FORMATS) and calls, in order:

- `read(path, dims) -> (inputs, outputs)`: the file's whole interface as TensorSpecs, every input and
  output in the file's order, dtypes as numpy names (float32, float16, int64, int8, uint8, bool, ...).
  A dimension the file names keeps its name; one it leaves unnamed or unknown (`-1`, `?`, empty) becomes
  a symbol of its own, `<tensor>_d<axis>`, so two unknown dims are never forced equal. `dims` maps a
  symbol to a size (`--dim NAME=SIZE`): that axis is written as the fixed size. ExportError names what
  is wrong: not a model file of this format, a tensor type edgefleet cannot hold, a `dims` name the file
  does not have.
- `run(path, inputs) -> outputs`: the file's own runtime (onnxruntime for ONNX, the LiteRT interpreter
  for TFLite) on a dict of numpy arrays keyed by input name, giving every output by name. These are the
  golden outputs, the reference a device's self-test and every compiled target are compared with.
- `artifact(path) -> dict`: the manifest artifact entry without path, sha256 and size: target,
  backend, format, precision, options, and whatever the format adds (opset, flops_per_sample).
- `files(path) -> list[Path]`: every file the model needs, the model file first (ONNX external data
  follows it); the bundle writer copies them side by side under their own names.
- optionally `versions() -> dict`: the tools that read and ran the file, for the lineage step.

Modules are imported on first use (FORMATS holds import strings), so importing this package loads no
runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from edgefleet.core.errors import ExportError
from edgefleet.core.schema import TensorSpec

FORMATS: dict[str, str] = {
    ".onnx": "edgefleet.compilers.formats.onnx_file",
    ".tflite": "edgefleet.compilers.formats.tflite_file",
}


class ModelFile(Protocol):
    """What a format module provides (module docstring)."""

    def read(self, path: Path, dims: Mapping[str, int] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
        ...

    def run(self, path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ...

    def artifact(self, path: Path) -> dict:
        ...

    def files(self, path: Path) -> list[Path]:
        ...


def format_for(path: Path) -> ModelFile:
    """The format module for `path`'s suffix; ExportError naming the suffixes known."""
    module_name = FORMATS.get(Path(path).suffix.lower())
    if module_name is None:
        raise ExportError(f"{path}: cannot import a {Path(path).suffix or 'suffix-less'} file; "
                          f"edgefleet imports {', '.join(FORMATS)} files")
    module: ModuleType = importlib.import_module(module_name)
    return module  # type: ignore[return-value]


def unknown_dim(tensor: str, axis: int) -> str:
    """The symbol for an axis the file leaves unnamed: distinct per tensor and axis."""
    return f"{tensor}_d{axis}"
