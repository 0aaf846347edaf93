"""The default edge backend: ONNX Runtime on the CPU (other execution providers by option).

Hot path: the Predictor has already checked every input against the schema, so on the CPU provider
`run` calls the session's C++ binding (`InferenceSession._sess.run`) and skips the Python-level
re-check that `InferenceSession.run` does on each call (about 1 µs, an eighth of the digits CNN's
whole inference). With other providers, or an onnxruntime without that attribute, it uses the public
`run`, which also handles provider fallback. benchmarks/bench_predictor_overhead.py measures the
Predictor against the public `InferenceSession.run`, the call a user would otherwise write.

A model with a static batch (an imported file fixed to batch 1) takes any number of samples: they run in
chunks of that batch on each tensor's batch axis (edge_runtime/backends/static_batch.py); a request of
exactly the static batch is one call, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgefleet.core.errors import BackendError
from edgefleet.edge_runtime.backends.static_batch import in_chunks, static_batch

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    formats = ("onnx", "ort")

    def __init__(self) -> None:
        self.session: ort.InferenceSession | None = None
        self.providers: list[str] = []
        self._output_names: list[str] = []
        self.batch: int | None = None  # the model's static batch, None when dynamic

    def load(self, artifact: Path, options: dict[str, Any]) -> None:
        self.session = ort.InferenceSession(
            str(artifact), session_options(options.get("threads")), providers=usable_providers(options.get("providers"))
        )
        self.providers = self.session.get_providers()
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.batch, in_axes, out_axes = static_batch(io_shapes(self.session.get_inputs()),
                                                     io_shapes(self.session.get_outputs()), options)
        self.run = self._hot_path() if self.batch is None else in_chunks(self._hot_path(), self.batch, in_axes,
                                                                          out_axes)

    def _hot_path(self) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """The function `run` becomes once loaded: as few Python steps per call as possible."""
        names = self._output_names
        binding = getattr(self.session, "_sess", None)
        if binding is not None and self.session.get_providers() == ["CPUExecutionProvider"]:
            def call(feed: dict) -> list:
                return binding.run(names, feed, None)
        else:
            def call(feed: dict) -> list:
                return self.session.run(names, feed)
        if len(names) == 1:
            only = names[0]
            return lambda feed: {only: call(feed)[0]}
        return lambda feed: dict(zip(names, call(feed), strict=True))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("load() the backend before run()")

    def close(self) -> None:
        self.session = None


def usable_providers(requested: list | None) -> list:
    """The requested providers this onnxruntime build has, in order; the rest are logged and skipped.

    A provider is a name or, as a compiled artifact stores it in JSON, [name, {option: value}].
    """
    if not requested:
        return ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    chosen: list = []
    for provider in requested:
        name, opts = (provider, None) if isinstance(provider, str) else (provider[0], dict(provider[1]))
        if name not in available:
            log.warning("onnxruntime: provider %s is not in this build (%s); skipped", name,
                        ", ".join(sorted(available)))
            continue
        chosen.append(name if opts is None else (name, opts))
    if not chosen:
        raise BackendError(f"none of the providers {[p if isinstance(p, str) else p[0] for p in requested]} "
                           f"is in this onnxruntime build ({', '.join(sorted(available))})")
    return chosen


def session_options(threads: int | None) -> ort.SessionOptions:
    """Session options shared by the backend and the benchmark's bare-session baseline."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def io_shapes(values: list) -> dict[str, list[int | None]]:
    """Each input's or output's shape, None for a symbolic or unknown dim."""
    return {v.name: [d if isinstance(d, int) else None for d in (v.shape or [])] for v in values}
