"""LiteRT backend: runs `.tflite` files with ai-edge-litert's Interpreter on the CPU (XNNPACK).

ai-edge-litert, not tflite-runtime: the old tflite-runtime wheels break with numpy 2. It is light
(~60 MB, no TensorFlow), so a device installs `edgefleet[edge,litert]`.

Names. Tensors are mapped by the model's signature ("serving_default", or the only one, or
options["signature"]): the litert target names the signature's inputs and outputs after the bundle's,
so a request's dict goes straight in and the outputs come back under the bundle's names. A file with
other names can be mapped with options["inputs"] / options["outputs"] ({bundle name: signature name}).

Hot path. The signature runner's `__call__` resizes and re-allocates every input on every call; here
tensors are resized only when a request's shape differs from the last one, and `run` calls the
interpreter wrapper's SetTensor / Invoke / GetTensor directly (the calls the runner itself makes), under
a lock: an Interpreter must not run two requests at once, and the HTTP API serves from several threads.
GetTensor returns a copy, so outputs never alias the interpreter's buffers.

Batch. A `.tflite` from litert-torch has a static batch (artifact["batch"], usually 1; its reshapes
have the batch baked in, so resizing it fails). A request with another number of rows is run in
chunks of that size, the last chunk padded by repeating its last row and the padding dropped from the
outputs: right for models whose rows are independent (any inference-mode classifier or regressor), and
it costs one invoke per chunk. A file whose signature has a dynamic batch (-1) is resized instead.

Quantized inputs and outputs (an int8 file from the litert target): the bundle's interface stays
float32; inputs are quantized with the scale and zero point stored in the file (round to nearest,
clipped to the type's range) and outputs dequantized, as the converter's own tests do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from edgefleet.core.errors import BackendError

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
        self._lock = threading.Lock()
        self._wrapper: Any = None
        self._subgraph = 0
        self._shapes: dict[int, tuple[int, ...]] = {}

    def load(self, artifact: Path, options: dict[str, Any]) -> None:
        threads = options.get("threads")
        try:
            interpreter = Interpreter(model_path=str(artifact), num_threads=int(threads) if threads else None)
        except ValueError as err:
            raise BackendError(f"litert: cannot load {artifact}: {err}") from err
        self.signature = _pick_signature(interpreter, options.get("signature"))
        runner = interpreter.get_signature_runner(self.signature)
        self._subgraph = int(runner._subgraph_index)
        self._inputs = _tensors(runner.get_input_details(), options.get("inputs"), "input")
        self._outputs = _tensors(runner.get_output_details(), options.get("outputs"), "output")
        batches = {t.shape[0] if t.shape else None for t in self._inputs}
        signature_batches = {int(d["shape_signature"][0]) for d in runner.get_input_details().values()
                             if len(d["shape_signature"])}
        self.batch = None if -1 in signature_batches or len(batches) != 1 else batches.pop()
        self._wrapper = interpreter._interpreter  # the C++ binding the signature runner calls
        self._wrapper.AllocateTensors(self._subgraph)
        self._shapes = {t.index: t.shape for t in self._inputs}
        self.interpreter = interpreter
        self.run = self._hot_path()

    def _hot_path(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The function `run` becomes once loaded."""
        invoke_once = self._invoke_once
        batch = self.batch
        if batch is None:
            return invoke_once
        first = self._inputs[0].name

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            rows = len(feed[first])
            if rows == batch:
                return invoke_once(feed)
            return self._run_chunks(feed, rows, batch)

        return run

    def _invoke_once(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wrapper, subgraph = self._wrapper, self._subgraph
        with self._lock:
            for tensor in self._inputs:
                value = _to_tensor(feed[tensor.name], tensor)
                if self.batch is None and value.shape != self._shapes[tensor.index]:
                    self._resize(tensor, value.shape)
                wrapper.SetTensor(tensor.index, value, subgraph)
            wrapper.Invoke(subgraph)
            return {t.name: _from_tensor(wrapper.GetTensor(t.index, subgraph), t) for t in self._outputs}

    def _run_chunks(self, feed: dict[str, np.ndarray], rows: int, batch: int) -> dict[str, np.ndarray]:
        """A request whose row count is not the file's static batch: chunks of `batch` rows, the last padded."""
        if rows == 0:
            return {t.name: np.zeros((0, *t.shape[1:]), np.float32 if t.scale else t.dtype) for t in self._outputs}
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, rows, batch):
            chunk = {k: v[start:start + batch] for k, v in feed.items()}
            short = batch - len(next(iter(chunk.values())))
            if short:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in chunk.items()}
            parts.append(self._invoke_once(chunk))
        return {t.name: np.concatenate([p[t.name] for p in parts])[:rows] for t in self._outputs}

    def _resize(self, tensor: _Tensor, shape: tuple[int, ...]) -> None:
        self._wrapper.ResizeInputTensor(tensor.index, np.array(shape, dtype=np.int32), False, self._subgraph)
        self._wrapper.AllocateTensors(self._subgraph)
        self._shapes[tensor.index] = shape

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("load() the backend before run()")

    def close(self) -> None:
        self.interpreter = None
        self._wrapper = None


def _pick_signature(interpreter: Interpreter, wanted: str | None) -> str:
    signatures = list(interpreter.get_signature_list())
    if wanted:
        if wanted not in signatures:
            raise BackendError(f"litert: the model has no signature {wanted!r} (it has {', '.join(signatures)})")
        return wanted
    if DEFAULT_SIGNATURE in signatures:
        return DEFAULT_SIGNATURE
    if len(signatures) == 1:
        return signatures[0]
    raise BackendError(f"litert: the model has signatures {signatures or 'none'}; name one with "
                       "options['signature'] (a .tflite without signatures is not supported)")


def _tensors(details: dict[str, dict], renames: dict[str, str] | None, kind: str) -> list[_Tensor]:
    """The signature's tensors under the bundle's names (renames: {bundle name: signature name})."""
    by_signature = {v: k for k, v in (renames or {}).items()}
    unknown = set(by_signature) - set(details)
    if unknown:
        raise BackendError(f"litert: options name {kind}(s) {sorted(unknown)} that the model's signature lacks "
                           f"(it has {sorted(details)})")
    tensors = []
    for signature_name, detail in details.items():
        scale, zero_point = detail.get("quantization", (0.0, 0))
        tensors.append(_Tensor(
            name=by_signature.get(signature_name, signature_name), index=int(detail["index"]),
            dtype=np.dtype(detail["dtype"]), shape=tuple(int(d) for d in detail["shape"]),
            scale=float(scale), zero_point=int(zero_point),
        ))
    return tensors


def _to_tensor(value: np.ndarray, tensor: _Tensor) -> np.ndarray:
    if tensor.scale:
        info = np.iinfo(tensor.dtype)
        q = np.rint(value / np.float32(tensor.scale)) + tensor.zero_point
        return np.clip(q, info.min, info.max).astype(tensor.dtype)
    if value.dtype != tensor.dtype:
        return value.astype(tensor.dtype)
    return value


def _from_tensor(value: np.ndarray, tensor: _Tensor) -> np.ndarray:
    if tensor.scale:
        return (value.astype(np.float32) - np.float32(tensor.zero_point)) * np.float32(tensor.scale)
    return value
