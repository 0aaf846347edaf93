"""An `.onnx` file as edgefleet imports it (the interface: compilers/formats/__init__.py).

Schema: every graph input that is not also an initializer (older exporters list weights as inputs), and
every graph output, in the file's order. A dim with a `dim_param` keeps its name unless the name is
`?`, `-1` or empty; a dim with neither a name nor a size, or a negative size, is unknown: each unknown
dim becomes its own symbol `<tensor>_d<axis>`. A tensor of unknown rank, a non-tensor value (sequence,
map, optional) or an element type numpy cannot hold (string, bfloat16, float8, int4) is refused.

External data: every tensor stored outside the file names a `location` relative to the file's folder;
`files` returns those files after the model, and refuses a location that leaves that folder, is
missing, or is not a regular file. The model's structure is read without its external data, so
reading the schema of a model with gigabytes of weights costs only its graph.

Static batch: a file whose inputs (rank >= 2) all start with the same fixed size b and whose outputs
start with b too (an export at batch 1) gets the symbol "batch" on axis 0 of every tensor, and the
artifact records "batch": b; golden outputs are computed b samples at a time, and the backends chunk
requests the same way (edge_runtime/backends/static_batch.py), as for a static-batch .tflite.

Golden outputs come from onnxruntime on the CPU (`run`); one session is kept for the last file run, so
an import's several runs load the model once.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from edgefleet.compilers.flops import count_flops
from edgefleet.compilers.formats import unknown_dim
from edgefleet.core.archive import unsafe_path_reason
from edgefleet.core.errors import ExportError
from edgefleet.core.schema import BATCH, TensorSpec
from edgefleet.edge_runtime.backends.onnxruntime import io_shapes
from edgefleet.edge_runtime.backends.static_batch import in_chunks, static_batch

log = logging.getLogger(__name__)

DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")
UNKNOWN_NAMES = ("", "?", "-1")
INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}
_session: tuple[tuple, ort.InferenceSession] | None = None


def read(path: Path, dims: Mapping[str, int] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the ONNX file, `dims` fixing symbols to sizes (module docstring)."""
    model = load_structure(path)
    weights = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in weights]
    if not values:
        raise ExportError(f"{path}: the model has no inputs (every graph input is an initializer)")
    named = {d.dim_param for v in [*values, *model.graph.output] for d in _dims(v)} - set(UNKNOWN_NAMES)
    inputs = [_spec(path, v, "input", named) for v in values]
    outputs = [_spec(path, v, "output", named) for v in model.graph.output]
    if _static_batch(inputs, outputs) is not None:  # the file's fixed batch becomes "batch": run in chunks
        inputs, outputs = ([TensorSpec(s.name, s.dtype, (BATCH, *s.shape[1:])) for s in specs]
                           for specs in (inputs, outputs))
    return fix_dims(inputs, dims), fix_dims(outputs, dims, check=False)


def fix_dims(specs: list[TensorSpec], dims: Mapping[str, int] | None, *, check: bool = True) -> list[TensorSpec]:
    """specs with each symbol in `dims` replaced by its size; with check, ExportError for a name no spec
    has (listing the symbols there are) or a size below 1."""
    dims = dict(dims or {})
    symbols = sorted({d for s in specs for d in s.shape if isinstance(d, str)})
    for name, size in dims.items():
        if check and name not in symbols:
            raise ExportError(f"--dim {name}={size}: the model's inputs have no dimension named {name!r} "
                              f"(they have {', '.join(symbols) or 'no symbolic dimension'})")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ExportError(f"--dim {name}={size}: a size must be an integer >= 1")
    return [TensorSpec(s.name, s.dtype, tuple(dims.get(d, d) if isinstance(d, str) else d for d in s.shape))
            for s in specs]


def run(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model on `inputs`, by onnxruntime on the CPU."""
    session = _session_for(Path(path))
    names = [o.name for o in session.get_outputs()]

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feed), strict=True))

    batch, in_axes, out_axes = static_batch(io_shapes(session.get_inputs()), io_shapes(session.get_outputs()), {})
    try:
        return (call if batch is None else in_chunks(call, batch, in_axes, out_axes))(dict(inputs))
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; one message
        raise ExportError(f"onnxruntime cannot run {Path(path).name} on the golden inputs: {err}") from err


def artifact(path: Path) -> dict:
    """The manifest entry of the model as imported (target onnx, run by onnxruntime)."""
    model = load_structure(path)
    entry = {"target": "onnx", "backend": "onnxruntime", "format": "onnx", "precision": _precision(model),
             "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
             "options": {}}
    weights = {t.name for t in model.graph.initializer}
    specs = [_spec(path, v, "", set()) for v in model.graph.input if v.name not in weights]
    batch = _static_batch(specs, [_spec(path, v, "", set()) for v in model.graph.output])
    if batch is not None:
        entry["batch"] = batch
    flops_log = logging.getLogger(count_flops.__module__)
    level = flops_log.level
    flops_log.setLevel(logging.ERROR)  # one warning per node whose shape a dynamic axis hides is noise here
    try:
        count = count_flops(model, batch=1)
        entry["flops_per_sample"] = count["total"]
        if count["uncounted"]:
            log.info("%s: FLOPs leave out %s", Path(path).name, ", ".join(count["uncounted"]))
    except Exception as err:  # noqa: BLE001 - a count is a nicety; shape inference fails on some graphs
        log.info("%s: FLOPs not counted: %s", path, err)
    finally:
        flops_log.setLevel(level)
    return entry


def files(path: Path) -> list[Path]:
    """The model file, then every external data file it names (each once, in the order found)."""
    path = Path(path)
    found: list[Path] = [path]
    for location in external_locations(load_structure(path)):
        why = unsafe_path_reason(location)
        if why is not None:
            raise ExportError(f"{path.name}: external data location {location!r} {why}; it must be a file in "
                              f"the model's folder")
        data = path.parent / location
        if not data.exists():
            raise ExportError(f"{path.name}: external data file {location} is missing (looked in {path.parent})")
        if data.is_symlink() or not data.is_file():
            raise ExportError(f"{path.name}: external data {location} is not a regular file")
        if data not in found:
            found.append(data)
    return found


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The `location` of every tensor stored outside the file, in graph order, each once."""
    seen: list[str] = []
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location not in seen:
                seen.append(location)
    return seen


def load_structure(path: Path) -> onnx.ModelProto:
    """The model's protobuf without external data; ExportError when the file is not an ONNX model."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as err:
        log.debug("%s: %s", path, err)
        raise ExportError(f"{path} is not an ONNX model file (it does not parse as an ONNX protobuf)") from err
    except OSError as err:
        raise ExportError(f"{path} cannot be read: {err}") from err
    if model.ir_version < 1 or not model.graph.output:
        raise ExportError(f"{path} is not an ONNX model file (no IR version or no graph outputs)")
    return model


def versions() -> dict:
    """The tools that read and ran the file, for the lineage step."""
    return {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------------
def _dims(value: onnx.ValueInfoProto) -> list:
    tensor = value.type.tensor_type
    return list(tensor.shape.dim) if value.type.HasField("tensor_type") and tensor.HasField("shape") else []


def _spec(path: Path, value: onnx.ValueInfoProto, side: str, named: set[str]) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        kind = value.type.WhichOneof("value") or "untyped"
        raise ExportError(f"{path.name}: {side} {value.name!r} is a {kind}, not a tensor; edgefleet imports "
                          "models whose inputs and outputs are tensors")
    tensor = value.type.tensor_type
    dtype = _dtype(path, value.name, side, tensor.elem_type)
    if not tensor.HasField("shape"):
        raise ExportError(f"{path.name}: {side} {value.name!r} has no shape (unknown rank); fix the rank in the "
                          "file (onnx.tools.update_model_dims) before importing it")
    shape = []
    for axis, dim in enumerate(tensor.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            shape.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param not in UNKNOWN_NAMES:
            shape.append(dim.dim_param)
        else:
            symbol = unknown_dim(value.name, axis)
            while symbol in named:
                symbol += "_"
            shape.append(symbol)
    return TensorSpec(value.name, dtype, tuple(shape))


def _static_batch(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> int | None:
    """The file's fixed batch b (every input of rank >= 2 starts with the same fixed b, every output with
    b: the backends' rule, edge_runtime/backends/static_batch.py), or None."""
    if any(BATCH in s.shape for s in (*inputs, *outputs)):
        return None
    shapes = [{s.name: [d if isinstance(d, int) else None for d in s.shape] for s in specs}
              for specs in (inputs, outputs)]
    return static_batch(*shapes, {})[0]


def _dtype(path: Path, name: str, side: str, elem_type: int) -> str:
    type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() \
        else str(elem_type)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = ""
    if dtype not in DTYPES:
        raise ExportError(f"{path.name}: {side} {name!r} has element type {type_name}; edgefleet carries "
                          f"{', '.join(DTYPES)}")
    return dtype


def _precision(model: onnx.ModelProto) -> str:
    ops = {n.op_type for n in model.graph.node}
    if ops & INT8_OPS:
        return "int8"
    types = {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types:
        return "fp16"
    return "fp32"


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, in subgraphs (If, Loop, Scan) too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _session_for(path: Path) -> ort.InferenceSession:
    global _session
    info = path.stat()
    key = (str(path.resolve()), info.st_mtime_ns, info.st_size)
    if _session is None or _session[0] != key:
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; one message
            raise ExportError(f"onnxruntime cannot load {path.name}: {err}") from err
        _session = (key, session)
    return _session[1]
