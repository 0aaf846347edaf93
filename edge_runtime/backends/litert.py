"""LiteRT backend: runs `.tflite` files with ai-edge-litert's Interpreter on the CPU (XNNPACK).

ai-edge-litert, not tflite-runtime: the old tflite-runtime wheels break with numpy 2. It is light
(~60 MB, no TensorFlow), so a device installs `edgefleet[edge,litert]`.

Names. Tensors are mapped by the model's signature ("serving_default", or the only one, or
options["signature"]): the litert target names the signature's inputs and outputs after the bundle's,
so a request's dict goes straight in and the outputs come back under the bundle's names. A file with
no SignatureDef at all (older converters wrote none; many published files have none) is mapped by the
interpreter's input and output details of subgraph 0 instead (`file_names`): by tensor name when the
names are non-empty and distinct, else by order (`input_0`, `output_0`, ...). A file with other names
can be mapped with options["inputs"] / options["outputs"] ({bundle name: signature or file name}).

Hot path. The signature runner's `__call__` resizes and re-allocates every input on every call; here
tensors are resized only when a request's shape differs from the last one, and `run` calls the
interpreter wrapper's SetTensor / Invoke / GetTensor directly (the calls the runner itself makes), one
request at a time: an Interpreter must not run two requests at once, and the HTTP API serves from several
threads. The turn is a token in a one-slot queue.SimpleQueue (get blocks while another request holds it,
put hands it on), not a threading.Lock: its C calls cost ~30 ns against ~75 ns for acquire/release, 2%
of a small model's invoke. GetTensor returns a copy, so outputs never alias the interpreter's buffers.

Batch (`static_batch`). A `.tflite` from litert-torch has a static batch (artifact["batch"], usually 1;
its reshapes have the batch baked in, so resizing it fails): every input has rank >= 2 and the same
fixed first dim b, and every output starts with b. A request with another number of rows is run in
chunks of that size, the last chunk padded by repeating its last row and the padding dropped from the
outputs: right for models whose rows are independent (any inference-mode classifier or regressor), and
it costs one invoke per chunk. Chunks are cut on each tensor's batch axis: the load option batch_axes
when the schema's is not axis 0 (a recurrent [steps, batch, features] layout), else axis 0
(backends/static_batch.py, shared with the other backends). Any other file (a -1 first dim, an input
without a batch axis) is run as the request comes, its inputs resized when their shape changes.

Quantized inputs and outputs (an int8 file from the litert target, or an imported int8/uint8 file):
the bundle's interface is float32 for every input and output the file quantizes (a non-zero scale);
inputs are quantized with the scale and zero point stored in the file (`quantize`: round to nearest,
clipped to the type's range) and outputs dequantized (`dequantize`), as the converter's own tests do.
An integer tensor without a scale (token ids, a count) keeps its dtype. A quantized input or output with
per-channel scales is refused at load: one scale per tensor is what the interface can express.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from edgefleet.core.errors import BackendError
from edgefleet.edge_runtime.backends.static_batch import in_chunks
from edgefleet.edge_runtime.backends.static_batch import static_batch as shared_static_batch

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class _Tensor:
    name: str  # the bundle's name
    index: int  # the interpreter's tensor index
    dtype: np.dtype
    shape: tuple[int, ...]  # as allocated at load
    scale: float  # quantization scale (0: not quantized)
    zero_point: int


class LiteRtBackend:
    name = "litert"
    formats = ("tflite",)

    def __init__(self) -> None:
        self.interpreter: Interpreter | None = None
        self.signature = ""
        self.batch: int | None = None  # the file's static batch; None: dynamic
        self._inputs: list[_Tensor] = []
        self._outputs: list[_Tensor] = []
        self._idle: queue.SimpleQueue[bool] = queue.SimpleQueue()  # holds the token while no request runs
        self._idle.put(True)
        self._wrapper: Any = None
        self._subgraph = 0
        self._shapes: dict[int, tuple[int, ...]] = {}

    def load(self, artifact: Path, options: dict[str, Any]) -> None:
        threads = options.get("threads")
        try:
            interpreter = Interpreter(model_path=str(artifact), num_threads=int(threads) if threads else None)
        except ValueError as err:
            raise BackendError(f"litert: cannot load {artifact}: {err}") from err
        self.signature, self._subgraph, in_details, out_details = io_details(interpreter, options.get("signature"))
        self._inputs = _tensors(in_details, options.get("inputs"), "input")
        self._outputs = _tensors(out_details, options.get("outputs"), "output")
        shapes = [dict(zip([t.name for t in tensors], _dims(details, key).values(), strict=True))  # request names
                  for tensors, details, key in ((self._inputs, in_details, "shape_signature"),
                                                (self._outputs, out_details, "shape"))]
        self.batch, *self._batch_axes = shared_static_batch(*shapes, options)
        self._wrapper = interpreter._interpreter  # the C++ binding the signature runner calls
        self._wrapper.AllocateTensors(self._subgraph)
        self._shapes = {t.index: t.shape for t in self._inputs}
        self.interpreter = interpreter
        self.run = self._hot_path()

    def _hot_path(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The function `run` becomes once loaded: for a model with one input and one output, the request
        (quantized first, for an int8 input) goes straight to the wrapper. SetTensor checks the type and
        every dim against the tensor as allocated now and raises ValueError on a mismatch before copying
        anything, so the shape is not checked twice: a refused value (another row count, another type)
        takes `_general_path`, which resizes, chunks or casts it. SetTensor ignores byte order, though
        (it would copy a big-endian float32 as it is): only the tensor's own dtype object goes straight in
        (numpy hands out one object per native dtype), anything else is cast by the general path."""
        general = self._general_path()
        if len(self._inputs) != 1 or len(self._outputs) != 1:
            return general
        (source,), (target,) = self._inputs, self._outputs
        in_name, in_index, in_dtype, out_name, out_index = (source.name, source.index, source.dtype, target.name,
                                                            target.index)
        to_tensor = quantizer(source.dtype, source.scale, source.zero_point) if source.scale else None
        from_tensor = dequantizer(target.scale, target.zero_point) if target.scale else None
        take, give_back, subgraph = self._idle.get, self._idle.put, self._subgraph
        set_tensor, invoke, get_tensor = self._wrapper.SetTensor, self._wrapper.Invoke, self._wrapper.GetTensor

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            value = feed[in_name] if to_tensor is None else to_tensor(feed[in_name])
            if value.dtype is not in_dtype:
                return general(feed)
            token = take()  # the interpreter's turn (module docstring)
            try:
                try:
                    set_tensor(in_index, value, subgraph)
                except ValueError:  # not the shape or type allocated now
                    result = None
                else:
                    invoke(subgraph)
                    result = get_tensor(out_index, subgraph)
            finally:
                give_back(token)
            if result is None:
                return general(feed)
            return {out_name: result if from_tensor is None else from_tensor(result)}

        return run

    def _general_path(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Any request: chunked for a static batch (on each tensor's batch axis), else resized as needed;
        inputs cast or quantized."""
        if self.batch is None:
            return self._invoke_once
        return in_chunks(self._invoke_once, self.batch, *self._batch_axes)

    def _invoke_once(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wrapper, subgraph = self._wrapper, self._subgraph
        with self._turn():
            for tensor in self._inputs:
                value = _to_tensor(feed[tensor.name], tensor)
                if self.batch is None and value.shape != self._shapes[tensor.index]:
                    self._resize(tensor, value.shape)
                wrapper.SetTensor(tensor.index, value, subgraph)
            wrapper.Invoke(subgraph)
            return {t.name: _from_tensor(wrapper.GetTensor(t.index, subgraph), t) for t in self._outputs}

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The interpreter to oneself, for the general path (the hot path takes the token inline)."""
        token = self._idle.get()
        try:
            yield
        finally:
            self._idle.put(token)

    def _resize(self, tensor: _Tensor, shape: tuple[int, ...]) -> None:
        self._wrapper.ResizeInputTensor(tensor.index, np.array(shape, dtype=np.int32), False, self._subgraph)
        self._wrapper.AllocateTensors(self._subgraph)
        self._shapes[tensor.index] = shape

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("load() the backend before run()")

    def close(self) -> None:
        self.interpreter = None
        self._wrapper = None


Details = dict[str, dict]  # the interpreter's tensor details keyed by the name a request uses


def io_details(interpreter: Interpreter, wanted: str | None = None) -> tuple[str, int, Details, Details]:
    """(signature, subgraph, inputs, outputs): the interpreter's details keyed by the names a request uses.

    With a SignatureDef: the signature's names (its runner's details). Without one: subgraph 0's input
    and output details, keyed by `file_names`; the signature is "" then. The details are the
    interpreter's own dicts (index, dtype, shape, shape_signature, quantization, ...), in the file's order.
    """
    signature = _pick_signature(interpreter, wanted)
    if signature:
        runner = interpreter.get_signature_runner(signature)
        return signature, int(runner._subgraph_index), runner.get_input_details(), runner.get_output_details()
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    return ("", 0, dict(zip(file_names(inputs, "input"), inputs, strict=True)),
            dict(zip(file_names(outputs, "output"), outputs, strict=True)))


def file_names(details: list[dict], kind: str) -> list[str]:
    """Names for the tensors of a file without a SignatureDef: the tensors' own names when every one is
    non-empty and distinct, else `<kind>_<position>` for all of them (a partial mix would be a trap)."""
    names = [str(d.get("name") or "") for d in details]
    if all(names) and len(set(names)) == len(names):
        return names
    return [f"{kind}_{i}" for i in range(len(details))]


def static_batch(inputs: Details, outputs: Details) -> int | None:
    """The file's static batch (module docstring), or None: every input of rank >= 2 with the same fixed
    first dim b (no -1 there) and every output starting with b (backends/static_batch.py's rule)."""
    return shared_static_batch(_dims(inputs), _dims(outputs, "shape"), {})[0]


def _dims(details: Details, key: str = "shape_signature") -> dict[str, list[int | None]]:
    """Each tensor's shape (its signature: -1 where the file leaves a dim free), None for a free dim."""
    return {name: [None if int(d) < 0 else int(d) for d in detail.get(key, detail["shape"])]
            for name, detail in details.items()}


def _pick_signature(interpreter: Interpreter, wanted: str | None) -> str:
    """The signature to run; "" for a file that has none (mapped by its tensors' details)."""
    signatures = list(interpreter.get_signature_list())
    if wanted:
        if wanted not in signatures:
            raise BackendError(f"litert: the model has no signature {wanted!r} "
                               f"(it has {', '.join(signatures) or 'none'})")
        return wanted
    if not signatures:
        return ""
    if DEFAULT_SIGNATURE in signatures:
        return DEFAULT_SIGNATURE
    if len(signatures) == 1:
        return signatures[0]
    raise BackendError(f"litert: the model has signatures {signatures}; name one with options['signature']")


def _tensors(details: dict[str, dict], renames: dict[str, str] | None, kind: str) -> list[_Tensor]:
    """The signature's tensors under the bundle's names (renames: {bundle name: signature name})."""
    by_signature = {v: k for k, v in (renames or {}).items()}
    unknown = set(by_signature) - set(details)
    if unknown:
        raise BackendError(f"litert: options name {kind}(s) {sorted(unknown)} that the model's signature lacks "
                           f"(it has {sorted(details)})")
    tensors = []
    for signature_name, detail in details.items():
        scale, zero_point = quantization(detail, signature_name)
        tensors.append(_Tensor(
            name=by_signature.get(signature_name, signature_name), index=int(detail["index"]),
            dtype=np.dtype(detail["dtype"]), shape=tuple(int(d) for d in detail["shape"]),
            scale=float(scale), zero_point=int(zero_point),
        ))
    return tensors


def quantization(detail: dict, name: str) -> tuple[float, int]:
    """(scale, zero point) of an input or output; (0.0, 0) when it is not quantized. BackendError for
    per-channel scales (the float32 interface has one scale per tensor)."""
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    if scales is not None and len(scales) > 1:
        raise BackendError(f"litert: {name!r} is quantized per channel ({len(scales)} scales); "
                           "only per-tensor quantized inputs and outputs can be served")
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)


def quantizer(dtype: np.dtype, scale: float, zero_point: int) -> Callable[[np.ndarray], np.ndarray]:
    """`quantize` for one tensor, its constants computed once (np.iinfo alone costs more than a small
    model's invoke)."""
    info, step = np.iinfo(dtype), np.float32(scale)
    low, high = info.min, info.max

    def to_grid(value: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(value / step) + zero_point, low, high).astype(dtype)

    return to_grid


def dequantizer(scale: float, zero_point: int) -> Callable[[np.ndarray], np.ndarray]:
    """`dequantize` for one tensor, its constants computed once."""
    step, zero = np.float32(scale), np.float32(zero_point)

    def from_grid(value: np.ndarray) -> np.ndarray:
        return (value.astype(np.float32) - zero) * step

    return from_grid


def quantize(value: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """A float array on the file's integer grid: round to nearest (half to even), clipped to the type."""
    return quantizer(dtype, scale, zero_point)(value)


def dequantize(value: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """An integer tensor as the float32 values it stands for."""
    return dequantizer(scale, zero_point)(value)


def _to_tensor(value: np.ndarray, tensor: _Tensor) -> np.ndarray:
    if tensor.scale:
        return quantize(value, tensor.dtype, tensor.scale, tensor.zero_point)
    if value.dtype != tensor.dtype:
        return value.astype(tensor.dtype)
    return value


def _from_tensor(value: np.ndarray, tensor: _Tensor) -> np.ndarray:
    if tensor.scale:
        return dequantize(value, tensor.scale, tensor.zero_point)
    return value
