"""The telemetry message: one time window of one device, as versioned JSON. Summaries, never raw data.

Every histogram is binned on edges both sides know (the reference profile's for features and
confidence, LATENCY_EDGES_MS for latency), so windows from many devices merge by adding counts and
compare with the reference exactly. A histogram over E edges has E + 2 counts: E + 1 bins
(searchsorted side="right") and a last column for NaN.

    {"schema": "edgefleet.telemetry", "v": 1, "fleet": "f1", "device": "d7", "seq": 42,
     "model": {"name": "digits-cnn", "version": 3},
     "window": {"start": 1764230400.0, "end": 1764230460.0},        # unix seconds
     "requests": 812, "samples": 812, "errors": 3,
     "latency_ms": [..len(LATENCY_EDGES_MS) + 2 counts..],
     "features": [{"input": "pixels", "counts": [[..E + 2..], ...]}],  # one row per feature
     "predictions": [..one count per class..],                         # [] for non-classifiers
     "confidence": [..E + 2 counts..],                                 # [] for non-classifiers
     "outputs": [{"output": "embedding", "counts": [[..E + 2..], ...]}],  # per-task output summaries
     "quality": [{"input": "pixels", "counts": [[..4..], ...]}],      # optional: core/window_quality.py
     "health": {"cpu_load": 0.4, ...},                                  # optional: core/window_quality.py
     "dropped": {"windows": 0, "first_seq": null, "last_seq": null},  # outbox overflow, never silent
     "labels": {"count": 40, "confusion": [[3, 3, 37], [3, 5, 3]]},   # optional: labels that arrived (core/labels.py)
     "slices": [{"slice": "cam-a", "samples": 120, "confidence": [..], "labels": {..}}]}  # optional: core/slices.py

`parse_telemetry` is the gate of the cloud's ingest: anything malformed raises TelemetryError with one
precise message and a reason code, so the ingest can count it and go on. It never raises anything else,
and what it returns fits the cloud's columns: every integer (seq, counts, model version, dropped) is
within 0..MAX_INT (reason `number_out_of_range` beyond), times are finite doubles, the model name and
every output name are at most MAX_NAME characters without NUL. `outputs` is optional (absent means [],
as agents before per-output summaries send it): at most MAX_OUTPUTS outputs, each named once, each with
1..MAX_OUTPUT_ROWS rows of one length between 2 and MAX_ROW_LENGTH counts. The JSON Schema of this message
is docs/schemas/telemetry.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from itertools import chain

from edgefleet.core import bounded_json
from edgefleet.core.bounded_json import JsonLimitError
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.labels import LabelCounts, parse_labels
from edgefleet.core.slices import SliceCounts, parse_slices
from edgefleet.core.topics import TopicError, check_id
from edgefleet.core.window_quality import DeviceHealth, QualityCounts, parse_health, parse_quality

SCHEMA = "edgefleet.telemetry"
VERSION = 1
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_INT = bounded_json.SQL_INTEGER_MAX  # the largest seq or count the cloud stores
MAX_NAME = 128  # the longest model (or output) name the cloud stores
MAX_OUTPUTS = 64  # output summaries per window
MAX_OUTPUT_ROWS = 256  # summary rows per output (regression elements or statistics, embedding norm and projections)
MAX_ROW_LENGTH = 1026  # counts per summary row: 1,024 bins and the NaN column at most
# Log-spaced latency bins from 10 µs to 10 s: fine where edge models live, coarse in the tail.
LATENCY_EDGES_MS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0,
                    500.0, 1000.0, 2000.0, 5000.0, 10000.0)


class TelemetryError(EdgefleetError):
    """A telemetry (or birth/death) payload the cloud refuses. `reason` is a stable code for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FeatureCounts:
    input: str
    counts: tuple[tuple[int, ...], ...]  # (features, edges + 2)


@dataclass(frozen=True)
class OutputCounts:
    """The summary rows of one output (regression values, embedding norm/projections, detection count and
    scores), binned on the reference profile's `outputs` edges, rows in the profile's order."""

    output: str
    counts: tuple[tuple[int, ...], ...]  # (rows, edges + 2)


@dataclass(frozen=True)
class Dropped:
    windows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


@dataclass(frozen=True)
class TelemetryWindow:
    fleet: str
    device: str
    seq: int
    model_name: str
    model_version: int
    start: float
    end: float
    requests: int
    samples: int
    errors: int
    latency_ms: tuple[int, ...]
    features: tuple[FeatureCounts, ...] = ()
    predictions: tuple[int, ...] = ()
    confidence: tuple[int, ...] = ()
    outputs: tuple[OutputCounts, ...] = ()
    dropped: Dropped = field(default_factory=Dropped)
    quality: tuple[QualityCounts, ...] = ()  # per-input data quality counts (core/window_quality.py)
    health: DeviceHealth | None = None  # the device's health when the window closed
    labels: LabelCounts | None = None  # labels that arrived in the window (core/labels.py); absent if none
    slices: tuple[SliceCounts, ...] = ()  # per-slice samples, confidence and labels (core/slices.py)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "v": VERSION,
            "fleet": self.fleet,
            "device": self.device,
            "seq": self.seq,
            "model": {"name": self.model_name, "version": self.model_version},
            "window": {"start": self.start, "end": self.end},
            "requests": self.requests,
            "samples": self.samples,
            "errors": self.errors,
            "latency_ms": list(self.latency_ms),
            "features": [{"input": f.input, "counts": [list(row) for row in f.counts]} for f in self.features],
            "predictions": list(self.predictions),
            "confidence": list(self.confidence),
            "outputs": [{"output": o.output, "counts": [list(row) for row in o.counts]} for o in self.outputs],
            "dropped": asdict(self.dropped),
            **({"quality": [q.to_dict() for q in self.quality]} if self.quality else {}),
            **({"health": self.health.to_dict()} if self.health is not None else {}),
        } | ({"labels": self.labels.to_dict()} if self.labels is not None else {}) | (
            {"slices": [s.to_dict() for s in self.slices]} if self.slices else {})

    def to_payload(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def with_seq(self, seq: int) -> TelemetryWindow:
        return replace(self, seq=seq)


def parse_telemetry(payload: bytes | str, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> TelemetryWindow:
    """Validates a payload against the schema; raises TelemetryError(reason, message)."""
    data = _load(payload, max_bytes)
    if data.get("schema") != SCHEMA:
        raise TelemetryError("wrong_schema", f"schema must be {SCHEMA!r}, got {_shown(data.get('schema'))}")
    if data.get("v") != VERSION:
        raise TelemetryError("unknown_version", f"telemetry version {_shown(data.get('v'))} is not supported "
                                                f"(this edgefleet reads {VERSION})")
    model = _mapping(data, "model")
    window = _mapping(data, "window")
    latency = _counts(data, "latency_ms")
    if len(latency) != len(LATENCY_EDGES_MS) + 2:
        raise TelemetryError("bad_field", f"latency_ms must have {len(LATENCY_EDGES_MS) + 2} counts, "
                                          f"got {len(latency)}")
    features = []
    for index, item in enumerate(_list(data, "features")):
        if not isinstance(item, Mapping) or not isinstance(item.get("input"), str):
            raise TelemetryError("bad_field", f"features[{index}] must be an object with a string 'input'")
        features.append(FeatureCounts(item["input"], _rows(item, f"features[{index}]")))
    outputs = _outputs(_list(data, "outputs"))
    dropped = data.get("dropped") or {}
    if not isinstance(dropped, Mapping):
        raise TelemetryError("bad_field", "dropped must be an object")
    start, end = _number(window, "start"), _number(window, "end")
    if end < start:
        raise TelemetryError("bad_field", f"window ends ({end}) before it starts ({start})")
    requests, errors = _int(data, "requests"), _int(data, "errors")
    if errors > requests:
        raise TelemetryError("bad_field", f"errors ({errors}) exceed requests ({requests})")
    try:
        fleet, device = check_id(data.get("fleet"), "fleet"), check_id(data.get("device"), "device")
    except TopicError as err:
        raise TelemetryError("bad_field", str(err)) from err
    name = model.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\0" in name:
        raise TelemetryError("bad_field", f"model.name must be a string of 1 to {MAX_NAME} characters without NUL")
    return TelemetryWindow(
        fleet=fleet, device=device, seq=_int(data, "seq"), model_name=name,
        model_version=_int(model, "version", "model.version"), start=start, end=end,
        requests=requests, samples=_int(data, "samples"), errors=errors, latency_ms=latency,
        features=tuple(features), predictions=_counts(data, "predictions"), confidence=_counts(data, "confidence"),
        quality=parse_quality(data.get("quality"), _int(data, "samples"), TelemetryError),
        health=parse_health(data.get("health"), TelemetryError), outputs=outputs,
        dropped=_dropped(dropped), labels=parse_labels(data.get("labels"), TelemetryError),
        slices=parse_slices(data.get("slices"), TelemetryError),
    )


def _rows(item: Mapping, label: str) -> tuple[tuple[int, ...], ...]:
    """The `counts` of one features or outputs entry: a non-empty list of count rows of one length."""
    rows = item.get("counts")
    if not isinstance(rows, list) or not rows:
        raise TelemetryError("bad_field", f"{label}.counts must be a non-empty list of rows")
    if set(map(type, rows)) == _LIST and len(set(map(len, rows))) == 1:
        # all rows at once, in C (the ingest's hot loop); anything wrong: row by row below, for the message
        counts = list(chain.from_iterable(rows))
        if not counts or (set(map(type, counts)) <= _INT and min(counts) >= 0 and max(counts) <= MAX_INT):
            return tuple(map(tuple, rows))
    parsed = tuple(_count_list(row, f"{label}.counts[{r}]") for r, row in enumerate(rows))
    if len({len(row) for row in parsed}) != 1:
        raise TelemetryError("bad_field", f"{label}.counts rows differ in length")
    return parsed


def _outputs(items: list) -> tuple[OutputCounts, ...]:
    """The per-output summaries: bounded in number, rows and row length before any row is read."""
    if len(items) > MAX_OUTPUTS:
        raise TelemetryError("bad_field", f"outputs holds {len(items)} entries, more than {MAX_OUTPUTS}")
    outputs, seen = [], set()
    for index, item in enumerate(items):
        label = f"outputs[{index}]"
        name = item.get("output") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\0" in name:
            raise TelemetryError("bad_field", f"{label} must be an object whose 'output' is a string of 1 to "
                                              f"{MAX_NAME} characters without NUL")
        if name in seen:
            raise TelemetryError("bad_field", f"{label}: output {_shown(name)} is summarised twice")
        seen.add(name)
        rows = item.get("counts")
        if isinstance(rows, list):
            if len(rows) > MAX_OUTPUT_ROWS:
                raise TelemetryError("bad_field", f"{label}.counts holds {len(rows)} rows, more than "
                                                  f"{MAX_OUTPUT_ROWS}")
            for r, row in enumerate(rows):
                if isinstance(row, list) and not 2 <= len(row) <= MAX_ROW_LENGTH:
                    raise TelemetryError("bad_field", f"{label}.counts[{r}] must hold 2 to {MAX_ROW_LENGTH} counts "
                                                      f"(bins and the NaN column), got {len(row)}")
        outputs.append(OutputCounts(name, _rows(item, label)))
    return tuple(outputs)


def _dropped(data: Mapping) -> Dropped:
    """The outbox-overflow record: a count and the seq range lost (both ends null when nothing was)."""
    windows = _int(data, "windows", "dropped.windows") if data.get("windows") is not None else 0
    first, last = (None if data.get(key) is None else _int(data, key, f"dropped.{key}")
                   for key in ("first_seq", "last_seq"))
    if (first is None) != (last is None) or (first is not None and last < first):
        raise TelemetryError("bad_field", f"dropped.first_seq and dropped.last_seq must both be null or a range, "
                                          f"got {first!r}..{last!r}")
    return Dropped(windows, first, last)


def _load(payload: bytes | str, max_bytes: int) -> dict:
    try:
        data = bounded_json.loads(payload, max_bytes=max_bytes)
    except JsonLimitError as err:
        raise TelemetryError(err.reason, str(err)) from err
    if not isinstance(data, dict):
        raise TelemetryError("not_object", f"payload must be a JSON object, got {type(data).__name__}")
    return data


def _mapping(data: Mapping, key: str) -> Mapping:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise TelemetryError("missing_field" if value is None else "bad_field", f"{key} must be an object")
    return value


def _list(data: Mapping, key: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise TelemetryError("bad_field", f"{key} must be a list")
    return value


def _int(data: Mapping, key: str, label: str | None = None) -> int:
    value = data.get(key)
    if value is None:
        raise TelemetryError("missing_field", f"{label or key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TelemetryError("bad_field", f"{label or key} must be a non-negative integer, got {_shown(value)}")
    if value > MAX_INT:
        raise TelemetryError("number_out_of_range", f"{label or key} is {value}, over the largest stored "
                                                    f"integer {MAX_INT}")
    return value


def _shown(value: object) -> str:
    """A refused value for a message: its repr, cut short (a hostile string may be 250 KB)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(data: Mapping, key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TelemetryError("bad_field", f"window.{key} must be a finite number (unix seconds), "
                                          f"got {_shown(value)}")
    return float(value)


def _counts(data: Mapping, key: str) -> tuple[int, ...]:
    return _count_list(data.get(key, []), key)


_INT = {int}  # exactly int: a JSON true/false is bool, which is refused
_LIST = {list}


def _count_list(value: object, label: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise TelemetryError("bad_field", f"{label} must be a list of counts")
    # set(map(type, ...)) and min() run in C: this is the ingest's per-message hot loop.
    if value and (not set(map(type, value)) <= _INT or min(value) < 0):
        bad = next(v for v in value if type(v) is not int or v < 0)
        raise TelemetryError("bad_field", f"{label} must hold non-negative integers, got {_shown(bad)}")
    if value and max(value) > MAX_INT:
        raise TelemetryError("number_out_of_range", f"{label} holds {max(value)}, over the largest stored "
                                                    f"integer {MAX_INT}")
    return tuple(value)
