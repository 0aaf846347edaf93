"""The native backend: edgefleet's own C++ graph executor (edgefleet.cpp_ext), for "edgefleet-graph"
artifacts written by the native compile target.

No runtime beyond numpy and the extension: the file is read by edgefleet.cpp_ext.graph_format and run
by edgefleet.cpp_ext._native.GraphExecutor. Hot path: the Predictor has validated the inputs, so `run`
is the executor's own bound method, one native call that reads the inputs in place, reuses the plan
cached for their shapes and returns freshly allocated output arrays. Calls hold the GIL, so they never
overlap. Load option "threads" (default 1) sizes the executor's kernel thread pool, the calling thread
included, so threads=2 starts one worker; results stay bit-identical to one thread. Load option "isa"
("auto" | "portable" | "avx2" | "avxvnni" | "avx512"; the CPU must run it) picks the kernels for the
whole process. A graph with a static batch (compiled from a file fixed to
batch 1) runs other sample counts in chunks on each tensor's batch axis (backends/static_batch.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.core.errors import BackendError
from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphFormatError, read_graph
from edgefleet.edge_runtime.backends.static_batch import in_chunks, static_batch


class NativeBackend:
    name = "native"
    formats = ("edgefleet-graph",)

    def __init__(self) -> None:
        self.executor: graph_native.GraphExecutor | None = None
        self.isa = ""
        self.batch: int | None = None  # the graph's static batch, None when dynamic

    def load(self, artifact: Path, options: dict[str, Any]) -> None:
        try:
            graph = read_graph(Path(artifact))
            if options.get("isa"):
                graph_native.select_isa(str(options["isa"]))
            self.executor = graph_native.load_executor(graph, int(options.get("threads") or 1))
        except OSError as err:
            raise BackendError(f"native: cannot read {artifact}: {err}") from err
        except (GraphFormatError, ValueError, TypeError) as err:
            raise BackendError(f"native: cannot load {Path(artifact).name}: {err}") from err
        self.isa = graph_native.isa()
        shapes = [{v.name: [d if isinstance(d, int) else None for d in v.shape] for v in values}
                  for values in (graph.inputs, graph.outputs)]
        self.batch, in_axes, out_axes = static_batch(*shapes, options)
        self.run = self.executor.run if self.batch is None else in_chunks(self.executor.run, self.batch, in_axes,
                                                                          out_axes)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("load() the backend before run()")

    def close(self) -> None:
        self.executor = None
