"""Slices on the device: which slice a request belongs to, and what one window counts per slice.

    name = request_slice(query_value, header_value, default="site-a")  # SliceError (HTTP 400) if bad
    window = SliceWindow(confidence_edges, error_edges)   # one per telemetry window, in the aggregator
    window.observe(name, confidences)                     # a served request: its samples (and confidence)
    window.add_classes(name, predicted, true)             # a label that arrived for a prediction of `name`
    window.take()                                         # tuple[SliceCounts] (core/slices.py), anew

A request names its slice with `?slice=NAME` or the `X-Edgefleet-Slice` header (both given: they must
agree); without either it takes the device's default (device.toml `[device] slice`), else it has none and
counts in the totals only. The window is bounded as core/slices.py says: at most MAX_SLICES names, then
OTHER, so hostile names cost a fixed amount of memory and telemetry. Traffic and labels share one lock and
one map, so a slice's samples and labels of one window are taken together.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.slices import MAX_SLICE_CELLS, MAX_SLICES, NAME_RULE, OTHER, SliceCounts, check_name

log = logging.getLogger(__name__)
SLICE_HEADER = "x-edgefleet-slice"


class SliceError(EdgefleetError):
    """A slice name a request or a device config may not use."""


def check_slice(value: object, where: str) -> str:
    name = check_name(value)
    if name is None:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise SliceError(f"{where} must be {NAME_RULE}, got {shown}")
    return name


def request_slice(query: Sequence[str], header: str | None, default: str | None = None) -> str | None:
    """A request's slice: `?slice=` (given once) or the X-Edgefleet-Slice header, else `default`."""
    if len(query) > 1:
        raise SliceError("query parameter slice is given more than once")
    named = check_slice(query[0], "query parameter slice") if query else None
    headed = check_slice(header, "header X-Edgefleet-Slice") if header is not None else None
    if named is not None and headed is not None and named != headed:
        raise SliceError(f"query parameter slice ({named!r}) and header X-Edgefleet-Slice ({headed!r}) differ")
    return named or headed or default


class _Slice:
    def __init__(self, bins: int, error_edges: np.ndarray | None) -> None:
        from edgefleet.edge_runtime.feedback import LabelWindow  # feedback imports this module

        self.samples = 0
        self.confidence = np.zeros(bins, np.int64)
        self.labels = LabelWindow(error_edges, max_cells=MAX_SLICE_CELLS)


class SliceWindow:
    """One window's counts per slice; thread-safe (HTTP threads observe, labels add, the timer takes)."""

    def __init__(self, confidence_edges: np.ndarray | None, error_edges: np.ndarray | None) -> None:
        self.confidence_edges, self.error_edges = confidence_edges, error_edges
        self._bins = 0 if confidence_edges is None else len(confidence_edges) + 2
        self._lock = threading.Lock()
        self._slices: dict[str, _Slice] = {}
        self._overflowed = False

    def _slice(self, name: str) -> _Slice:
        """The entry of `name` in this window (the lock held): OTHER once MAX_SLICES names are in."""
        entry = self._slices.get(name)
        if entry is None:
            if len(self._slices) - (OTHER in self._slices) >= MAX_SLICES:
                if not self._overflowed:
                    log.warning("slices: more than %d slice names in one window; %r and later new names count "
                                "as %r", MAX_SLICES, name, OTHER)
                    self._overflowed = True
                name = OTHER
                entry = self._slices.get(name)
            if entry is None:
                entry = self._slices[name] = _Slice(self._bins, self.error_edges)
        return entry

    def observe(self, name: str, samples: int, confidence: Sequence[float] = ()) -> None:
        """A served request of `samples` samples; a classifier's top-1 confidences, binned as the profile's
        histogram (searchsorted side="right", NaN last)."""
        with self._lock:
            entry = self._slice(name)
            entry.samples += samples
            if self._bins and len(confidence):
                values = np.asarray(confidence, np.float64)
                finite = np.isfinite(values)
                np.add.at(entry.confidence, np.searchsorted(self.confidence_edges, values[finite], side="right"), 1)
                entry.confidence[-1] += int((~finite).sum())

    def add_classes(self, name: str, predicted: Sequence[int], true: Sequence[int]) -> None:
        with self._lock:
            self._slice(name).labels.add_classes(predicted, true)

    def add_values(self, name: str, predicted: Sequence[float], true: Sequence[float]) -> None:
        with self._lock:
            self._slice(name).labels.add_values(predicted, true)

    def take(self) -> tuple[SliceCounts, ...]:
        with self._lock:
            slices, self._slices, self._overflowed = self._slices, {}, False
        return tuple(SliceCounts(name, entry.samples, tuple(int(n) for n in entry.confidence), entry.labels.take())
                     for name, entry in sorted(slices.items()))


def observe_request(host, bundle, name: str | None, answer: dict, samples: int) -> None:  # noqa: ANN001
    """Counts a served request in its slice of the open window, when it has a slice and the model that
    answered still serves with telemetry (an update may have swapped it in between)."""
    telemetry = host.current.telemetry
    if name is None or telemetry is None or (telemetry.model_name, telemetry.model_version) != (
            bundle.name, bundle.version):
        return
    confidence = [p["confidence"] for p in answer.get("predictions", ())] if answer.get("task") == \
        "classification" else ()
    telemetry.slices.observe(name, samples, confidence)
