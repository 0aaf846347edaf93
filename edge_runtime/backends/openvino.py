"""OpenVINO backend: OpenVINO IR (model.xml + model.bin) or ONNX, on the CPU, an Intel GPU or NPU.

Load options (an artifact's "options", the Predictor's threads on top):
    device            "CPU" (default), "GPU", "NPU", "GPU.1", or a virtual device ("AUTO:GPU,CPU", ...)
    precision_hint    INFERENCE_PRECISION_HINT ("f32", "f16", "bf16"). Default f32 on CPU and GPU: OpenVINO's
                      own default is bf16 on CPUs with AMX/avx512_bf16 and f16 on GPUs, which moves the digits
                      CNN's logits by up to 0.05 (an fp32 ONNX artifact would fail its self-test). The openvino
                      targets always pin it; pass "bf16"/"f16" to opt in. The NPU (fp16 hardware) gets none.
    performance_hint  PERFORMANCE_HINT ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
    threads           INFERENCE_NUM_THREADS (CPU only; other devices ignore it)
    cache_dir         a relative directory name for OpenVINO's compile cache (CACHE_DIR), resolved under
                      cache_root; null: no cache
    cache_root        the device's writable directory for caches (default ~/.cache/edgefleet); a cache
                      that cannot be created is logged and skipped, never fatal

A device that OpenVINO does not list here (`Core().available_devices`) is a BackendError at load, so the
Predictor falls back to its next backend and records why. A property the device does not support (say
threads on the GPU) is left out, logged, rather than failing the load.

Hot path: one InferRequest made at load; `run` wraps each input in an ov.Tensor over the caller's
memory (no copy), calls infer(), and copies each output out of the request (its buffers are reused by the
next call). p50 on the digits CNN at batch 1: 27 µs, against 31 µs for `compiled_model({...})` and 33 µs
for `request.infer({...}, share_inputs=True)` (which builds an OVDict); OpenVINO's own per-call cost
dominates (onnxruntime runs the same model in 8 µs). The request is not thread-safe: a lock guards it,
and a call that finds it busy (concurrent HTTP requests) takes a request from a small pool instead of
waiting.

`import openvino` sends a usage-telemetry event unless the device opted out (see
compilers/targets/openvino.py); a device image should run openvino-telemetry's `opt_in_out --opt_out`.

A static-batch artifact (the NPU's, batch 1; an IR read from a batch-1 .tflite) still takes any batch:
samples are run in chunks of the static batch on each tensor's batch axis (the load option batch_axes,
else axis 0; edge_runtime/backends/static_batch.py), the last chunk padded and its padding dropped.

Executed precision. A device may execute another float format than the hint asked for (an `f16` hint
runs in bf16 on CPUs without AVX512-FP16; the compiling machine may have had it). After load,
`executed_precision` holds what this device really runs: the coarsest of the compiled model's
INFERENCE_PRECISION_HINT as read back and every runtime-graph node's runtimePrecision ("f32", "f16",
"bf16"; "f16" on an NPU that reports neither). The Predictor's self-test widens its tolerance to that
format (core/precision.py), and the compile target records it in the artifact's manifest entry.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from edgefleet.core.errors import BackendError
from edgefleet.core.precision import coarsest
from edgefleet.edge_runtime.backends.static_batch import in_chunks, static_batch

log = logging.getLogger(__name__)

VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
PROPERTIES = {"precision_hint": "INFERENCE_PRECISION_HINT", "performance_hint": "PERFORMANCE_HINT",
              "threads": "INFERENCE_NUM_THREADS"}


class OpenVinoBackend:
    name = "openvino"
    formats = ("openvino-ir", "onnx")

    def __init__(self) -> None:
        self.compiled: ov.CompiledModel | None = None
        self.device = ""
        self.config: dict[str, Any] = {}
        self.batch: int | None = None  # the static batch, None when dynamic
        self.executed_precision: str | None = None  # the float format this device really runs, after load
        self._inputs: list[tuple[str, ov.ConstOutput]] = []
        self._outputs: list[tuple[str, ov.ConstOutput]] = []
        self._pool: list[ov.InferRequest] = []

    def load(self, artifact: Path, options: dict[str, Any]) -> None:
        artifact = Path(artifact)
        if artifact.suffix == ".xml" and not artifact.with_suffix(".bin").is_file():
            raise BackendError(f"openvino: the weights file {artifact.with_suffix('.bin').name} next to "
                               f"{artifact.name} is missing")
        core = shared_core()
        self.device = str(options.get("device") or "CPU")
        check_device(core, self.device)
        self.config = device_config(core, self.device, options)
        try:
            self.compiled = core.compile_model(str(artifact), self.device, self.config)
        except RuntimeError as err:
            raise BackendError(f"openvino: cannot load {artifact.name} on {self.device}: {reason(err)}") from err
        self._inputs = [(port.get_any_name(), port) for port in self.compiled.inputs]
        self._outputs = [(port.get_any_name(), port) for port in self.compiled.outputs]
        self.batch, *self._batch_axes = static_batch({name: _dims(port) for name, port in self._inputs},
                                                     {name: _dims(port) for name, port in self._outputs}, options)
        self.executed_precision = executed_precision(self.compiled, self.device)
        if self.executed_precision != self.config.get("INFERENCE_PRECISION_HINT", self.executed_precision):
            log.info("openvino: %s executes %s for the precision hint %s", self.device, self.executed_precision,
                     self.config["INFERENCE_PRECISION_HINT"])
        self.run = self._hot_path()

    def _hot_path(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The function `run` becomes once loaded."""
        compiled, inputs, outputs, pool = self.compiled, self._inputs, self._outputs, self._pool
        request, lock, tensor = compiled.create_infer_request(), threading.Lock(), ov.Tensor

        def infer(req: ov.InferRequest, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            for name, port in inputs:  # np.ascontiguousarray would make a scalar input 1-D
                value = feed[name]
                value = value if value.flags.c_contiguous else np.ascontiguousarray(value)
                req.set_tensor(port, tensor(value, shared_memory=True))
            req.infer()
            return {name: req.get_tensor(port).data.copy() for name, port in outputs}

        def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if lock.acquire(blocking=False):
                try:
                    return infer(request, feed)
                finally:
                    lock.release()
            try:  # busy: another thread's call; list.pop and append are atomic
                own = pool.pop()
            except IndexError:
                own = compiled.create_infer_request()
            try:
                return infer(own, feed)
            finally:
                pool.append(own)

        if self.batch is None:
            return call
        return in_chunks(call, self.batch, *self._batch_axes)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("load() the backend before run()")

    def close(self) -> None:
        """Drops the compiled model and its requests (the hot path holds them until then)."""
        self.__dict__.pop("run", None)
        self.compiled = None
        self._pool.clear()


@functools.cache
def shared_core() -> ov.Core:
    """One Core per process: a new Core initialises its device plugins again (~45 ms of a 58 ms load of the
    digits CNN on the CPU); a shared one loads it in ~13 ms. Core is thread-safe."""
    return ov.Core()


def check_device(core: ov.Core, device: str) -> None:
    """BackendError unless OpenVINO lists the device here ("GPU" matches "GPU.0"); virtual devices pass."""
    if device.split(":")[0].split(".")[0].upper() in VIRTUAL_DEVICES:
        return
    available = core.available_devices
    if device in available or any(d.split(".")[0] == device for d in available):
        return
    raise BackendError(f"openvino: device {device} is not available on this machine "
                       f"(OpenVINO lists: {', '.join(available) or 'none'})")


def device_config(core: ov.Core, device: str, options: dict[str, Any]) -> dict[str, Any]:
    """compile_model's config from the load options; properties the device lacks are logged and left out."""
    wanted = {PROPERTIES[k]: v for k, v in options.items() if k in PROPERTIES and v is not None}
    if device.split(".")[0].upper() in ("CPU", "GPU"):
        wanted.setdefault("INFERENCE_PRECISION_HINT", "f32")
    if "INFERENCE_NUM_THREADS" in wanted:
        wanted["INFERENCE_NUM_THREADS"] = int(wanted["INFERENCE_NUM_THREADS"])
    cache = cache_path(options.get("cache_dir"), options.get("cache_root"))
    if cache is not None:
        wanted["CACHE_DIR"] = str(cache)
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except RuntimeError:  # a virtual device may not answer for its members: pass everything through
        return wanted
    config = {}
    for key, value in wanted.items():
        if key in supported or key == "CACHE_DIR":  # CACHE_DIR is the core's, honoured for every device
            config[key] = value
        elif key == "INFERENCE_NUM_THREADS":
            log.debug("openvino: %s has no thread setting; threads=%s ignored", device, value)
        else:
            log.warning("openvino: %s does not support %s; %s=%s ignored", device, key, key, value)
    return config


def cache_path(cache_dir: str | None, cache_root: str | Path | None) -> Path | None:
    """The compile cache directory, created; None when off or when it cannot be created (logged)."""
    if not cache_dir:
        return None
    rel = Path(cache_dir)
    if rel.is_absolute() or ".." in rel.parts:
        raise BackendError(f"openvino: cache_dir must be a relative name without '..', got {cache_dir!r}")
    root = Path(cache_root) if cache_root else Path.home() / ".cache" / "edgefleet"
    path = root / rel
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning("openvino: compile cache %s cannot be created (%s); loading without a cache", path, err)
        return None
    return path


def executed_precision(compiled: ov.CompiledModel, device: str) -> str | None:
    """The coarsest float format the compiled model runs: its INFERENCE_PRECISION_HINT read back (the
    plugin's choice, not the request's) and each runtime-graph node's runtimePrecision (f16 weights count:
    their rounding is in every result). A device that reports neither: "f16" for an NPU, else None."""
    seen = []
    try:
        seen.append(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())
    except (RuntimeError, AttributeError):  # a device (or an older plugin) without the property
        pass
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except RuntimeError:
        ops = []
    for op in ops:
        info = op.get_rt_info()
        if "runtimePrecision" in info:
            seen.append(str(info["runtimePrecision"].astype(str)))
    found = coarsest(seen)
    if found is None and device.split(".")[0].upper() == "NPU":
        return "f16"  # the NPU computes in fp16
    return found


def _dims(port: ov.ConstOutput) -> list[int | None]:
    """A port's shape, None for a dynamic dim (a dynamic rank: no dims)."""
    shape = port.get_partial_shape()
    return [] if shape.rank.is_dynamic else [None if d.is_dynamic else d.get_length() for d in shape]


def reason(err: Exception) -> str:
    """OpenVINO's message without its source-location lines ("Exception from src/...", "Check '...'")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return "; ".join(useful) or (lines[-1] if lines else type(err).__name__)
