"""Labels that arrive later, on the device: recent predictions by request id, and the window's label counts.

    recent = RecentPredictions(capacity=10_000, ttl_seconds=3600)
    recent.record(request_id, model=("digits-cnn", 3), task="classification", classes=[7], values=[])
    entry = recent.take(request_id)          # LabelError "unknown_request" or "expired" (404), once only
    counts = LabelWindow(error_edges=None)   # one per telemetry window, in the TelemetryAggregator
    counts.add_classes(entry.classes, [7])   # or add_values(entry.values, [3.2])
    counts.take()                            # LabelCounts (core/labels.py) or None, and starts anew

The map is bounded twice: at most `capacity` requests (the oldest goes first) and each at most
`ttl_seconds` old. What it keeps per request is what the answer said, never the inputs: the predicted
class index of each sample for a classifier, the first value of the first output for regression. A
label is taken once: a second label for the same request is refused ("labelled"), so a retried
client cannot count one prediction twice. Every refusal is a LabelError with a stable reason; the HTTP
layer answers 404 for unknown, expired or already labelled requests and 400 for a bad body.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.core import bounded_json
from edgefleet.core.bounded_json import JsonLimitError
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.labels import MAX_CONFUSION_CELLS, LabelCounts
from edgefleet.core.slices import SliceCounts

if TYPE_CHECKING:
    from edgefleet.edge_runtime.slices import SliceWindow

log = logging.getLogger(__name__)
DEFAULT_CAPACITY = 10_000
DEFAULT_TTL_SECONDS = 3600.0
MAX_FEEDBACK_BYTES = 64 * 1024
NEAREST_SECONDS = 0.5  # a label by timestamp joins the prediction made closest to it, at most this far
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # a client's X-Request-Id, as it may choose it


class LabelError(EdgefleetError):
    """A label the device cannot join. `reason`: unknown_request, expired, labelled, bad_label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Prediction:
    model: tuple[str, int]
    task: str
    at: float
    wall: float = 0.0  # unix seconds, for a label the cloud forwards by the prediction's time
    classes: tuple[int, ...] = ()  # per sample, a classifier's top-1 class index
    values: tuple[float, ...] = ()  # per sample, regression's first value
    slice: str | None = None  # the request's slice (edge_runtime/slices.py): its label counts there too


class RecentPredictions:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock=time.monotonic) -> None:  # noqa: ANN001
        if capacity < 1 or ttl_seconds <= 0:
            raise ValueError("capacity must be at least 1 and ttl_seconds positive")
        self.capacity, self.ttl_seconds, self._clock = capacity, float(ttl_seconds), clock
        self._entries: OrderedDict[str, Prediction] = OrderedDict()
        self._labelled: OrderedDict[str, None] = OrderedDict()  # ids labelled already, as bounded as the map
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, request_id: str, *, model: tuple[str, int], task: str, classes: Sequence[int] = (),
               values: Sequence[float] = (), slice: str | None = None) -> None:
        with self._lock:
            self._entries.pop(request_id, None)
            self._entries[request_id] = Prediction(model, task, self._clock(), time.time(), tuple(classes),
                                                   tuple(values), slice)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def nearest(self, wall: float, tolerance: float = NEAREST_SECONDS) -> str:
        """The id of the kept prediction made closest to unix time `wall`, within `tolerance` seconds."""
        with self._lock:
            best = min(self._entries.items(), key=lambda item: abs(item[1].wall - wall), default=None)
        if best is None or abs(best[1].wall - wall) > tolerance:
            raise LabelError("unknown_request", f"no recent prediction was made within {tolerance:g} s of {wall}")
        return best[0]

    def take(self, request_id: str, check: Callable[[Prediction], object] = lambda entry: None) -> Prediction:
        """The prediction of a request, removed from the map (a label joins once) if `check(entry)` does not
        raise: a label refused as malformed leaves the prediction for a corrected one."""
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is None:
                if request_id in self._labelled:
                    raise LabelError("labelled", f"request {request_id!r} has its label already")
                raise LabelError("unknown_request", f"no recent prediction has request id {request_id!r} (the "
                                                    f"device keeps the last {self.capacity} for "
                                                    f"{self.ttl_seconds:g} s)")
            age = self._clock() - entry.at
            if age > self.ttl_seconds:
                del self._entries[request_id]
                raise LabelError("expired", f"request {request_id!r} is {age:.0f} s old, more than the "
                                            f"{self.ttl_seconds:g} s its prediction is kept")
            check(entry)
            del self._entries[request_id]
            self._labelled[request_id] = None
            while len(self._labelled) > self.capacity:
                self._labelled.popitem(last=False)
            return entry


class LabelWindow:
    """The labels that arrived in one telemetry window, added up; thread-safe. With `slices`, a label of a
    prediction made in a slice counts there too, under the same lock, so `take_with_slices` reads both."""

    def __init__(self, error_edges: np.ndarray | None = None, *, max_cells: int = MAX_CONFUSION_CELLS,
                 slices: SliceWindow | None = None) -> None:
        self.error_edges, self.max_cells, self.slices = error_edges, max_cells, slices
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._cells: dict[tuple[int, int], int] = {}
        self._errors = np.zeros(0 if self.error_edges is None else len(self.error_edges) + 2, np.int64)
        self._abs = self._squared = 0.0
        self._count = 0

    def add_classes(self, predicted: Sequence[int], true: Sequence[int], slice_name: str | None = None) -> None:
        with self._lock:
            for p, t in zip(predicted, true, strict=True):
                cell = (int(t), int(p))
                if cell in self._cells or len(self._cells) < self.max_cells:
                    self._cells[cell] = self._cells.get(cell, 0) + 1
                    self._count += 1
                else:  # the telemetry bound: a window holds at most that many distinct cells
                    log.warning("labels: a new confusion cell beyond the window's %d is not counted",
                                self.max_cells)
            if slice_name is not None and self.slices is not None:
                self.slices.add_classes(slice_name, predicted, true)

    def add_values(self, predicted: Sequence[float], true: Sequence[float], slice_name: str | None = None) -> None:
        if self.error_edges is None:
            raise LabelError("bad_label", "this model's telemetry has no error bins (no output profile)")
        error = np.asarray(predicted, np.float64) - np.asarray(true, np.float64)
        with self._lock:
            finite = np.isfinite(error)
            bins = np.searchsorted(self.error_edges, error[finite], side="right")
            np.add.at(self._errors, bins, 1)
            self._errors[-1] += int((~finite).sum())
            self._abs += float(np.abs(error[finite]).sum())
            self._squared += float((error[finite] ** 2).sum())
            self._count += len(error)
            if slice_name is not None and self.slices is not None:
                self.slices.add_values(slice_name, predicted, true)

    def take_with_slices(self) -> tuple[LabelCounts | None, tuple[SliceCounts, ...]]:
        """The totals and the slices' counts (core/slices.py) of one window, taken together."""
        with self._lock:
            return self._take(), self.slices.take() if self.slices is not None else ()

    def take(self) -> LabelCounts | None:
        with self._lock:
            return self._take()

    def _take(self) -> LabelCounts | None:
        if not self._count:
            return None
        if self.error_edges is not None:
            counts = LabelCounts(self._count, errors=tuple(int(n) for n in self._errors),
                                 abs_error_sum=self._abs, squared_error_sum=self._squared)
        else:
            cells = tuple((t, p, n) for (t, p), n in sorted(self._cells.items()))
            counts = LabelCounts(self._count, confusion=cells)
        self._reset()
        return counts


def request_id(header: str | None) -> str:
    """The client's X-Request-Id when it sent one (1-64 of letters, digits, `._:-`), else a new uuid4."""
    if header is None:
        return uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(header):
        raise LabelError("bad_request_id", "X-Request-Id must be 1-64 letters, digits, '.', '_', ':' or '-', "
                                           "starting with a letter or digit")
    return header


def join_feedback(body: bytes, recent: RecentPredictions, window_for: Callable[[tuple[str, int]], LabelWindow | None],
                  class_names: Sequence[str] | None) -> dict:
    """POST /v1/feedback: {"request_id", "label"} (a classifier: class index or name, one per sample or one
    for a one-sample request) or {"request_id", "value"} (regression: a number per sample). Adds the pair to
    the open window of the model that made the prediction; `window_for(model)` is None once that model no
    longer serves (reason `model_retired`). Returns what was counted."""
    try:
        data = bounded_json.loads(body, max_bytes=MAX_FEEDBACK_BYTES, what="feedback body")
    except JsonLimitError as err:
        raise LabelError("bad_label", str(err)) from err
    if not isinstance(data, dict) or set(data) - {"request_id", "label", "value"} or len(data) != 2:
        raise LabelError("bad_label", 'the body must be {"request_id": ..., "label": ...} (a classifier) or '
                                      '{"request_id": ..., "value": ...} (regression)')
    rid = data.get("request_id")
    if not isinstance(rid, str) or not REQUEST_ID.fullmatch(rid):
        raise LabelError("bad_label", "request_id must be the string the predict answer carried")
    kind = "label" if "label" in data else "value"
    given = data[kind]
    window: list[LabelWindow | None] = []
    truth: list = []

    def check(entry: Prediction) -> None:
        samples = len(entry.classes) if entry.task == "classification" else len(entry.values)
        want = "label" if entry.task == "classification" else "value"
        if kind != want:
            raise LabelError("bad_label", f"request {rid!r} was a {entry.task} prediction: send '{want}'")
        items = given if isinstance(given, list) else [given]
        if len(items) != samples:
            raise LabelError("bad_label", f"request {rid!r} predicted {samples} samples: send {samples} "
                                          f"{want}s, got {len(items)}")
        truth.extend(_class_index(v, class_names) if want == "label" else _number(v) for v in items)
        target = window_for(entry.model)
        if target is None:
            raise LabelError("model_retired", f"the model that made request {rid!r} ({entry.model[0]} "
                                              f"v{entry.model[1]}) no longer serves; its windows are closed")
        window.append(target)

    entry = recent.take(rid, check)
    if entry.task == "classification":
        window[0].add_classes(entry.classes, truth, entry.slice)
        return {"request_id": rid, "labelled": len(truth),
                "correct": sum(int(p == t) for p, t in zip(entry.classes, truth, strict=True))}
    window[0].add_values(entry.values, truth, entry.slice)
    return {"request_id": rid, "labelled": len(truth),
            "abs_error": [abs(p - t) for p, t in zip(entry.values, truth, strict=True)]}


def _class_index(value: object, names: Sequence[str] | None) -> int:
    if isinstance(value, str) and names is not None and value in names:
        return list(names).index(value)
    count = len(names) if names is not None else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (count is not None and value >= count):
        known = f"a class index 0..{count - 1} or one of the class names" if count else "a class index"
        raise LabelError("bad_label", f"label {str(value)[:40]!r} is not {known}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LabelError("bad_label", f"value {str(value)[:40]!r} is not a finite number")
    return float(value)


def remember(recent: RecentPredictions, rid: str, bundle, answer: dict,  # noqa: ANN001 - a Bundle
             slice_name: str | None = None) -> None:
    """Keeps what a predict answer said under its request id, with its slice: a classifier's top-1 class
    indices, the first value of the first output for regression; other tasks take no labels."""
    task = answer.get("task")
    if task == "classification":
        names = bundle.manifest["interface"].get("class_names")
        index = {name: i for i, name in enumerate(names)} if names else None
        classes = [index[p["class"]] if index else int(p["class"]) for p in answer["predictions"]]
        recent.record(rid, model=(bundle.name, bundle.version), task=task, classes=classes, slice=slice_name)
    elif task == "regression":
        values = []
        for sample in answer["values"]:
            first = next(iter(sample.values()))
            while isinstance(first, list):
                first = first[0]
            values.append(float(first))
        recent.record(rid, model=(bundle.name, bundle.version), task=task, values=values, slice=slice_name)


def label_window_of(host) -> Callable[[tuple[str, int]], LabelWindow | None]:  # noqa: ANN001 - a ModelHost
    """The open label window of the model that made a prediction, while that model serves."""
    def window_for(model: tuple[str, int]) -> LabelWindow | None:
        telemetry = host.current.telemetry
        if telemetry is None or (telemetry.model_name, telemetry.model_version) != model:
            return None
        return telemetry.labels
    return window_for


def join_forwarded(payload: bytes, recent: RecentPredictions, host) -> tuple[int, list[str]]:  # noqa: ANN001
    """A labels command from the cloud (core/labels.py `label_command`): each label joined as POST /v1/feedback
    joins it, a timestamp first resolved to the nearest kept prediction. Returns (joined, refusals)."""
    from edgefleet.core.labels import parse_label_command

    try:
        data = bounded_json.loads(payload, max_bytes=MAX_FEEDBACK_BYTES * 8, what="labels command")
        items = parse_label_command(data, LabelError)
    except (JsonLimitError, LabelError) as err:
        return 0, [str(err)]
    joined, refused = 0, []
    window_for = label_window_of(host)
    names = host.current.bundle.manifest["interface"].get("class_names")
    for item in items:
        try:
            rid = item["request_id"] if "request_id" in item else recent.nearest(float(item["timestamp"]))
            kind = "label" if "label" in item else "value"
            body = json.dumps({"request_id": rid, kind: item[kind]}).encode()
            join_feedback(body, recent, window_for, names)
            joined += 1
        except LabelError as err:
            refused.append(f"{err.reason}: {err}")
    return joined, refused


def is_label_command(payload: bytes) -> bool:
    """Whether a cmd message carries labels (op "labels") rather than an update; a payload that is not
    such JSON is left to the update commands' parser, which refuses it with its reason."""
    from edgefleet.core.labels import LABELS_OP

    if b'"' + LABELS_OP.encode() + b'"' not in payload:
        return False
    try:
        data = bounded_json.loads(payload, max_bytes=MAX_FEEDBACK_BYTES * 8, what="command")
    except JsonLimitError:
        return False
    return isinstance(data, dict) and data.get("op") == LABELS_OP
