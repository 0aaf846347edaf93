"""TFLite files for `import_model` (the format interface is in compilers/formats/__init__.py).

The file is served as it is by the LiteRT backend (edge_runtime/backends/litert.py); this module reads
its interface and computes golden outputs with the LiteRT interpreter, both the way that backend maps
tensors, so a bundle's names are the names a request uses on the device.

Names. With a SignatureDef ("serving_default", or the only one): the signature's input and output names.
Without one (older converters wrote none): the tensors of subgraph 0 by their names in the file, or
`input_<i>` / `output_<i>` by order when a name is empty or repeated (`litert.file_names`). A file with
several signatures and no "serving_default" is refused: the import would have to guess which to serve.

Shapes. A file with a static batch (every input of rank >= 2 with the same fixed first dim b, every output
starting with b; what litert-torch and most published files have) gets the symbol "batch" on axis 0 of
every input and output, and the artifact records "batch": b: the backend runs any number of rows in
chunks of b. A -1 in the file's shape signature becomes a symbol of its own, `<tensor>_d<axis>`; one
exception: -1 on axis 0 of every input and output is the batch and is "batch" everywhere. Other axes are
fixed. `dims` ({symbol: size}) writes a symbol of the inputs as a fixed size, in inputs and outputs.

Quantized inputs and outputs (int8/uint8/int16 with a scale, as a full-int8 file has): the bundle's
interface is float32 and the backend quantizes requests and dequantizes answers with the file's scale
and zero point, the convention the litert target's int8 files already follow; `run` does the same, so
golden examples are float32 too. An integer tensor without a scale (token ids) keeps its dtype. A
quantized input or output with per-channel scales is refused.

Golden outputs (`run`) come from a bare interpreter, not the backend: through the signature runner when
there is a signature, else set_tensor / invoke / get_tensor on the input and output details; a static
batch file runs b rows at a time (the last chunk padded by repeating its last row, as the backend does).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.compilers.formats import unknown_dim
from edgefleet.core.errors import EdgefleetError, ExportError
from edgefleet.core.schema import Dim, TensorSpec
from edgefleet.edge_runtime.backends.static_batch import in_chunks

log = logging.getLogger(__name__)

BATCH = "batch"
_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what a bundle's tensors may hold


def read(path: Path, dims: Mapping[str, int] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The file's inputs and outputs as TensorSpecs (module docstring); ExportError when it cannot."""
    path = Path(path)
    litert, interpreter = _open(path)
    _, _, inputs, outputs = _details(litert, interpreter, path)
    batch = litert.static_batch(inputs, outputs)
    dynamic_batch = batch is None and all(
        len(_signature(d)) and _signature(d)[0] == -1 for d in (*inputs.values(), *outputs.values()))
    in_specs, out_specs = ([_spec(litert, name, detail, batch is not None or dynamic_batch)
                            for name, detail in group.items()] for group in (inputs, outputs))
    dims = dict(dims or {})
    known = sorted({d for s in in_specs for d in s.shape if isinstance(d, str)})
    for name, size in dims.items():
        if name not in known:
            raise ExportError(f"--dim {name}={size}: the inputs of {path.name} have no dimension named {name!r} "
                              f"(they have {', '.join(known) or 'no symbolic dimension'})")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ExportError(f"--dim {name}={size}: a size must be an integer >= 1")
    return _fix_dims(in_specs, dims), _fix_dims(out_specs, dims)


def run(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output for `inputs` (keyed by the names `read` gives), from a bare LiteRT interpreter."""
    path = Path(path)
    litert, interpreter = _open(path)
    signature, _, in_details, out_details = _details(litert, interpreter, path)
    missing = [name for name in in_details if name not in inputs]
    if missing:
        raise ExportError(f"{path.name}: no value for input(s) {', '.join(missing)} (the file takes "
                          f"{', '.join(in_details)})")
    batch = litert.static_batch(in_details, out_details)
    feed = {name: np.asarray(inputs[name]) for name in in_details}
    if signature:
        invoke = _signature_call(interpreter, signature)
    else:
        invoke = _tensor_call(interpreter, in_details, out_details)

    def call(chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = invoke({n: _quantized(litert, n, chunk[n], d) for n, d in in_details.items()})
        return {n: _dequantized(litert, n, raw[n], d) for n, d in out_details.items()}

    try:
        if batch is None:
            return call(feed)
        return in_chunks(call, batch, dict.fromkeys(in_details, 0), dict.fromkeys(out_details, 0))(feed)
    except (ValueError, RuntimeError, IndexError) as err:
        raise ExportError(f"{path.name}: the LiteRT interpreter could not run the inputs given: {err}") from err


def artifact(path: Path) -> dict:
    """The manifest artifact entry (no path, sha256 or size): the file served by the litert backend, its
    static batch when it has one, and under "compile" how tensors are mapped ("signature", "tensor names"
    or "order") and the LiteRT version that read it."""
    path = Path(path)
    litert, interpreter = _open(path)
    signature, _, inputs, outputs = _details(litert, interpreter, path)
    entry: dict[str, Any] = {
        "target": "litert", "backend": "litert", "format": "tflite", "precision": _precision(interpreter),
        "device": "cpu", "options": {"signature": signature} if signature else {},
        "compile": {"ai_edge_litert": _litert_version(),
                    "tensors_by": "signature" if signature else _mapped_by(inputs, outputs)},
    }
    batch = litert.static_batch(inputs, outputs)
    if batch is not None:
        entry["batch"] = batch
    return entry


def files(path: Path) -> list[Path]:
    """A `.tflite` is self-contained: the file alone."""
    return [Path(path)]


def versions() -> dict:
    """The tools that read and ran the file, for the lineage step."""
    return {"ai_edge_litert": _litert_version(), "python": platform.python_version()}


def _open(path: Path) -> tuple[Any, Any]:
    """The backend module (its naming, batch and quantization rules) and an interpreter on `path`."""
    try:
        from edgefleet.edge_runtime.backends import litert
    except ImportError as err:
        raise ExportError(f"importing a .tflite needs ai-edge-litert ({err}): pip install 'edgefleet[litert]'") from err
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        return litert, litert.Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as err:
        raise ExportError(f"{path.name}: not a TFLite model the LiteRT interpreter can load: {err}") from err


def _details(litert: Any, interpreter: Any, path: Path) -> tuple[str, int, dict[str, dict], dict[str, dict]]:
    try:
        return litert.io_details(interpreter)
    except EdgefleetError as err:
        raise ExportError(f"{path.name}: {err}") from err


def _signature(detail: dict) -> list[int]:
    return [int(d) for d in detail.get("shape_signature", detail["shape"])]


def _spec(litert: Any, name: str, detail: dict, batch_first: bool) -> TensorSpec:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in _KINDS:
        raise ExportError(f"tensor {name!r} is {dtype.name}; edgefleet tensors hold bool, integers or floats")
    try:
        scale, _ = litert.quantization(detail, name)
    except EdgefleetError as err:
        raise ExportError(str(err)) from err
    shape: list[Dim] = []
    for axis, size in enumerate(_signature(detail)):
        if axis == 0 and batch_first:
            shape.append(BATCH)
        else:
            shape.append(unknown_dim(name, axis) if size < 0 else size)
    return TensorSpec(name=name, dtype="float32" if scale else dtype.name, shape=tuple(shape))


def _fix_dims(specs: list[TensorSpec], dims: Mapping[str, int]) -> list[TensorSpec]:
    return [TensorSpec(s.name, s.dtype, tuple(int(dims[d]) if isinstance(d, str) and d in dims else d
                                              for d in s.shape)) for s in specs]


def _quantized(litert: Any, name: str, value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = litert.quantization(detail, name)
    dtype = np.dtype(detail["dtype"])
    if scale:
        return litert.quantize(value, dtype, scale, zero_point)
    return value if value.dtype == dtype else value.astype(dtype)


def _dequantized(litert: Any, name: str, value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = litert.quantization(detail, name)
    return litert.dequantize(value, scale, zero_point) if scale else value


def _signature_call(interpreter: Any, signature: str) -> Any:
    runner = interpreter.get_signature_runner(signature)
    return lambda feed: runner(**feed)


def _tensor_call(interpreter: Any, inputs: dict[str, dict], outputs: dict[str, dict]) -> Any:
    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, detail in inputs.items():
            if tuple(feed[name].shape) != tuple(int(d) for d in detail["shape"]):
                interpreter.resize_tensor_input(detail["index"], list(feed[name].shape))
        interpreter.allocate_tensors()
        for name, detail in inputs.items():
            interpreter.set_tensor(detail["index"], feed[name])
        interpreter.invoke()
        return {name: interpreter.get_tensor(detail["index"]) for name, detail in outputs.items()}

    return call


def _precision(interpreter: Any) -> str:
    """int8 when any tensor is quantized to 8 bits, fp16 when a float tensor is float16, else fp32."""
    details = interpreter.get_tensor_details()
    if any(np.dtype(d["dtype"]).itemsize == 1 and len(d["quantization_parameters"]["scales"]) for d in details):
        return "int8"
    if any(np.dtype(d["dtype"]) == np.float16 for d in details):
        return "fp16"
    return "fp32"


def _mapped_by(inputs: dict[str, dict], outputs: dict[str, dict]) -> str:
    by_name = all(name == d.get("name") for name, d in (*inputs.items(), *outputs.items()))
    return "tensor names" if by_name else "order"


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"
