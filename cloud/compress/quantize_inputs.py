"""What a quantization stage (quantize.py) starts from: the source bundle's float ONNX model, checked
against its manifest; calibration or evaluation data as a feed of the model's inputs; the empty output
directory it writes the new bundle into. Each refusal is one QuantizationError or BundleError line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgefleet.cloud.compress.gate import QuantizationError
from edgefleet.core import bundle as bundle_io
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import BundleError
from edgefleet.core.schema import TensorSpec

Data = np.ndarray | Mapping[str, np.ndarray]  # one input's array, or arrays by input name


def source_model(bundle: Bundle | str | Path) -> tuple[Bundle, dict, bytes]:
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


def as_feed(data: Data, specs: list[TensorSpec], what: str) -> dict[str, np.ndarray]:
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
    if feed_rows(feed) < 1:
        raise QuantizationError(f"{what} has no rows")
    return feed


def feed_rows(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))



def empty_dir(out: Path) -> Path:
    if out.exists() and any(out.iterdir()):
        raise QuantizationError(f"{out} is not empty; a quantization stage writes a new bundle into an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


