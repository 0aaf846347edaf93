"""One telemetry window's output summaries (regression values, embedding norm and projections, detection
count and scores): the counts the device adds up between two `take()`s.

    window = OutputWindow(summaries, bundle.outputs)      # summaries: OutputSummary.from_profile(...)
    window.observe(outputs)                               # per request
    counts = window.take()                                # per window: (rows, E + 2) int64 per summary

Binning is core/output_summary.py `summarise_outputs`, the function that built the reference profile's
counts. A numpy call costs about a microsecond whatever its size, so outputs with a fixed size per sample
(values, embeddings) are not binned request by request: their rows are copied into a buffer of BUFFER
samples (samples first, float64, exact for float32 outputs) that is binned in one call when it is full
and at `take()`. Detections (a varying number per sample) are binned per request. A lock guards the
buffer and the counts, so requests from several threads and the window timer lose nothing; each window
holds exactly the requests observed before its `take()`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from edgefleet.core.output_summary import OutputSummary, per_sample, summarise_outputs
from edgefleet.core.schema import TensorSpec, batch_axis

BUFFER = 256


class OutputWindow:
    def __init__(self, summaries: Sequence[OutputSummary], outputs: Sequence[TensorSpec]) -> None:
        specs = {s.name: s for s in outputs}
        self.summaries = list(summaries)
        sizes = {s.output: per_sample(specs[s.output]) for s in self.summaries}
        buffered = [i for i, s in enumerate(self.summaries) if s.summary != "detections" and sizes[s.output]]
        self._direct = [i for i in range(len(self.summaries)) if i not in buffered]
        # a buffer holds samples first: the buffered summaries read it with their batch axis on axis 0
        self._buffered = [(i, dataclasses.replace(self.summaries[i], axis=0)) for i in buffered]
        names = dict.fromkeys(self.summaries[i].output for i in buffered)  # an output once, in order
        self._slots = [(name, batch_axis(specs[name]), np.empty((BUFFER, sizes[name]), np.float64)) for name in names]
        self._pending = 0
        self._lock = threading.Lock()
        self._counts = self._zeros()

    def observe(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Adds one request's outputs (any number of samples) to the window."""
        with self._lock:
            if self._direct:
                summarise_outputs([self.summaries[i] for i in self._direct], outputs,
                                  [self._counts[i] for i in self._direct])
            if not self._slots:
                return
            name, axis, _ = self._slots[0]
            n = outputs[name].shape[axis]
            if self._pending + n > BUFFER:
                self._flush()
            if n > BUFFER:  # a large batch is binned as it is
                self._bin({name: _rows(outputs[name], axis, n, buffer.shape[1]) for name, axis, buffer in self._slots})
                return
            start, self._pending = self._pending, self._pending + n
            for name, axis, buffer in self._slots:
                buffer[start:start + n] = _rows(outputs[name], axis, n, buffer.shape[1])

    def take(self) -> list[np.ndarray]:
        """The counts since the last take, (rows, E + 2) per summary in the profile's order; starts anew."""
        with self._lock:
            self._flush()
            counts, self._counts = self._counts, self._zeros()
        return counts

    def _flush(self) -> None:
        if self._pending:
            self._bin({name: buffer[:self._pending] for name, _, buffer in self._slots})
            self._pending = 0

    def _bin(self, rows: Mapping[str, np.ndarray]) -> None:
        summarise_outputs([s for _, s in self._buffered], rows, [self._counts[i] for i, _ in self._buffered])

    def _zeros(self) -> list[np.ndarray]:
        return [np.zeros((s.edges.shape[0], s.edges.shape[1] + 2), np.int64) for s in self.summaries]


def _rows(value: np.ndarray, axis: int, n: int, width: int) -> np.ndarray:
    """An output as (samples, elements)."""
    return (np.moveaxis(value, axis, 0) if axis else value).reshape(n, width)
