"""The float model on disk and the ONNX facts a quantization stage reads from it: onnxruntime's
pre-processing, node names for the gate, quantization types, and the interface dtypes after a rewrite."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import quantization as ortq

from edgefleet.cloud.compress.gate import QuantizationError

log = logging.getLogger(__name__)


def prepare(model: bytes, tmp: Path, preprocess: bool) -> tuple[Path, bool]:
    """The float model on disk, after onnxruntime's quant_pre_process (shape inference, basic graph
    optimisation) when asked and when it works; returns (path, whether pre-processing was applied)."""
    raw = tmp / "float.onnx"
    raw.write_bytes(model)
    if not preprocess:
        return raw, False
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    try:
        with ort_chatter():
            quant_pre_process(str(raw), str(prepared))
    except Exception as err:  # noqa: BLE001 - optional step: fall back to the model as exported
        log.warning("quant_pre_process failed (%s: %s); quantizing the model as exported", type(err).__name__, err)
        return raw, False
    return prepared, True


def check_nodes(model_path: Path, names: Sequence[str]) -> None:
    known = {n.name for n in onnx.load(str(model_path)).graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise QuantizationError(f"no node named {', '.join(map(repr, unknown))} in the model to quantize "
                                f"(its nodes: {', '.join(sorted(known))}); pre-processing may have fused it "
                                f"(preprocess=False keeps the exported graph)")


def quant_type(name: str) -> ortq.QuantType:
    try:
        return ortq.QuantType[name]
    except KeyError as err:
        raise QuantizationError(f"unknown quantization type {name!r}; use QInt8 or QUInt8 (QInt16 or QUInt16: "
                                f"QDQ only)") from err


def value_dtypes(values: Sequence[onnx.ValueInfoProto]) -> dict[str, np.dtype]:
    return {v.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)) for v in values}


def input_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    initializers = {t.name for t in model.graph.initializer}
    return value_dtypes([v for v in model.graph.input if v.name not in initializers])


def retype_interface(interface: dict, model: onnx.ModelProto) -> None:
    """The interface keeps its names and shapes; a dtype changes only where the new model's does."""
    dtypes = {**input_dtypes(model), **value_dtypes(model.graph.output)}
    for spec in [*interface.get("inputs", []), *interface.get("outputs", [])]:
        if spec["name"] in dtypes:
            spec["dtype"] = dtypes[spec["name"]].name


@contextlib.contextmanager
def ort_chatter():
    """onnxruntime's quantization tools print progress; library code logs it instead."""
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        yield
    if chatter.getvalue().strip():
        log.debug("onnxruntime.quantization said: %s", chatter.getvalue().strip())
