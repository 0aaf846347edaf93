"""The default edge backend: ONNX Runtime on the CPU (other execution providers by option)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class OnnxRuntimeBackend:
    name = "onnxruntime"
    formats = ("onnx", "ort")

    def __init__(self) -> None:
        self.session: ort.InferenceSession | None = None
        self._output_names: list[str] = []

    def load(self, artifact: Path, options: dict[str, Any]) -> None:
        self.session = ort.InferenceSession(
            str(artifact),
            session_options(options.get("threads")),
            providers=options.get("providers") or ["CPUExecutionProvider"],
        )
        self._output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, inputs)
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self.session = None


def session_options(threads: int | None) -> ort.SessionOptions:
    """Session options shared by the backend and the benchmark's bare-session baseline."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options
