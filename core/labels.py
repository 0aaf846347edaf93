"""Labels that arrive later ("natural labels"): what one telemetry window says about them.

A device keeps its recent predictions by request id (edge_runtime/feedback.py). When a label comes for
one of them, the device adds the pair to the open window's LabelCounts, so a window counts the labels
that *arrived* in it (for predictions made up to the device's retention earlier), never raw inputs:

    "labels": {"count": 40, "confusion": [[3, 3, 37], [3, 5, 3]]}             # a classifier: [true, predicted, n]
    "labels": {"count": 12, "errors": [..len(ERROR_STEPS) + 2..],              # regression: prediction - label,
               "abs_error_sum": 3.5, "squared_error_sum": 1.7}                 #  binned on error_edges(profile)

The confusion is sparse (only cells that occurred), so its size is bounded by the labels, not by the
class count squared: at most MAX_CONFUSION_CELLS cells. A regression error histogram is binned on edges
both sides derive from the reference profile (`error_edges`: ERROR_STEPS times the spread of the first
output row's reference quantiles), with the NaN column last like every histogram of the telemetry.

Labels may reach the cloud instead (POST /api/v1/feedback, by request id or by the prediction's time): the
cloud keeps no per-request predictions, so it forwards them to the device on its cmd topic (op "labels",
`label_command`), and the device joins them exactly as its own POST /v1/feedback does.

`parse_labels` is part of the cloud's telemetry gate: every refusal is a TelemetryError with reason
`bad_field` or `number_out_of_range` and a message naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgefleet.core.bounded_json import SQL_INTEGER_MAX

MAX_CONFUSION_CELLS = 4096  # distinct (true, predicted) cells per window
MAX_CLASS_INDEX = 1_000_000  # a class index beyond any classifier's head
MAX_LABEL_SUM = 1e300  # error sums must stay finite when windows are added
# Signed error bins in units of the reference spread: fine near zero, open-ended at both sides.
ERROR_STEPS = (-2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class LabelCounts:
    count: int
    confusion: tuple[tuple[int, int, int], ...] = ()  # (true class, predicted class, n), classifiers
    errors: tuple[int, ...] = ()  # regression: prediction - label on error_edges, NaN column last
    abs_error_sum: float = 0.0
    squared_error_sum: float = 0.0

    @property
    def correct(self) -> int:
        return sum(n for true, predicted, n in self.confusion if true == predicted)

    def to_dict(self) -> dict:
        if self.errors:
            return {"count": self.count, "errors": list(self.errors), "abs_error_sum": self.abs_error_sum,
                    "squared_error_sum": self.squared_error_sum}
        return {"count": self.count, "confusion": [list(cell) for cell in self.confusion]}


def error_edges(profile: Mapping) -> np.ndarray | None:
    """The regression error edges of a reference profile: ERROR_STEPS times the spread between the first
    and last reference quantile edge of its first output row (1.0 when that spread is zero); None for a
    profile without output summaries."""
    outputs = profile.get("outputs") or []
    if not outputs:
        return None
    row = np.asarray(outputs[0]["edges"], np.float64)[0]
    spread = float(row[-1] - row[0]) if row.size > 1 and np.isfinite(row).all() else 0.0
    return np.asarray(ERROR_STEPS, np.float64) * (spread if spread > 0 else 1.0)


def parse_labels(data: object, error) -> LabelCounts | None:  # noqa: ANN001 - error(reason, message) -> Exception
    """A window's `labels` (None when absent or null), bounded before anything is built; `error` makes the
    exception to raise (core/telemetry.py passes TelemetryError)."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise error("bad_field", "labels must be an object")
    count = _int(data.get("count"), "labels.count", error)
    if "errors" in data:
        errors = data["errors"]
        if not isinstance(errors, list) or len(errors) != len(ERROR_STEPS) + 2:
            raise error("bad_field", f"labels.errors must be a list of {len(ERROR_STEPS) + 2} counts")
        counts = tuple(_int(n, f"labels.errors[{i}]", error) for i, n in enumerate(errors))
        sums = [data.get(key) for key in ("abs_error_sum", "squared_error_sum")]
        for key, value in zip(("abs_error_sum", "squared_error_sum"), sums, strict=True):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_LABEL_SUM:
                raise error("bad_field", f"labels.{key} must be a number from 0 to {MAX_LABEL_SUM:g}")
        if sum(counts) != count:
            raise error("bad_field", f"labels.errors add up to {sum(counts)}, not labels.count ({count})")
        return LabelCounts(count, errors=counts, abs_error_sum=float(sums[0]), squared_error_sum=float(sums[1]))
    cells = data.get("confusion")
    if not isinstance(cells, list):
        raise error("bad_field", "labels must hold a list 'confusion' (a classifier) or 'errors' (regression)")
    if len(cells) > MAX_CONFUSION_CELLS:
        raise error("bad_field", f"labels.confusion holds {len(cells)} cells, more than {MAX_CONFUSION_CELLS}")
    parsed, seen = [], set()
    for index, cell in enumerate(cells):
        if not isinstance(cell, list) or len(cell) != 3:
            raise error("bad_field", f"labels.confusion[{index}] must be [true class, predicted class, count]")
        true, predicted = (_int(v, f"labels.confusion[{index}]", error, MAX_CLASS_INDEX) for v in cell[:2])
        n = _int(cell[2], f"labels.confusion[{index}]", error)
        if (true, predicted) in seen:
            raise error("bad_field", f"labels.confusion[{index}]: cell ({true}, {predicted}) is given twice")
        seen.add((true, predicted))
        parsed.append((true, predicted, n))
    if sum(n for *_, n in parsed) != count:
        raise error("bad_field", f"labels.confusion adds up to {sum(n for *_, n in parsed)}, not labels.count "
                                 f"({count})")
    return LabelCounts(count, confusion=tuple(parsed))


def _int(value: object, label: str, error, top: int | None = None) -> int:  # noqa: ANN001
    top = SQL_INTEGER_MAX if top is None else top
    if isinstance(value, bool) or not isinstance(value, int):
        raise error("bad_field", f"{label} must hold integers")
    if not 0 <= value <= top:
        raise error("number_out_of_range", f"{label}: {value} is outside 0..{top}")
    return value


def merge_labels(items: list[LabelCounts]) -> LabelCounts | None:
    """Several windows' labels added together (a period, a fleet); None when none carried any."""
    items = [item for item in items if item is not None and item.count]
    if not items:
        return None
    if any(item.errors for item in items):
        errors = np.sum([item.errors for item in items if item.errors], axis=0)
        return LabelCounts(sum(i.count for i in items if i.errors), errors=tuple(int(n) for n in errors),
                           abs_error_sum=math.fsum(i.abs_error_sum for i in items),
                           squared_error_sum=math.fsum(i.squared_error_sum for i in items))
    cells: dict[tuple[int, int], int] = {}
    for item in items:
        for true, predicted, n in item.confusion:
            cells[(true, predicted)] = cells.get((true, predicted), 0) + n
    return LabelCounts(sum(i.count for i in items), confusion=tuple((t, p, n) for (t, p), n in sorted(cells.items())))


LABELS_OP = "labels"  # the cmd op that carries labels the cloud received to the device that predicted
MAX_COMMAND_LABELS = 500


def label_command(command_id: str, items: list[dict], issued_at: float) -> bytes:
    """The cmd payload forwarding labels: each item {"request_id" or "timestamp", "label" or "value"}."""
    import json

    return json.dumps({"schema": "edgefleet.cmd", "v": 1, "id": command_id, "op": LABELS_OP, "labels": items,
                       "issued_at": issued_at}, separators=(",", ":")).encode()


def parse_label_command(data: Mapping, error) -> list[dict]:  # noqa: ANN001 - error(reason, message)
    """The items of a labels command (already parsed JSON), each checked for shape; the device then joins
    them one by one as if they came to POST /v1/feedback."""
    items = data.get("labels")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_COMMAND_LABELS:
        raise error("bad_label", f"a labels command holds 1 to {MAX_COMMAND_LABELS} labels")
    for index, item in enumerate(items):
        keys = set(item) if isinstance(item, Mapping) else set()
        if len(keys & {"request_id", "timestamp"}) != 1 or len(keys & {"label", "value"}) != 1 or keys - {
                "request_id", "timestamp", "label", "value"}:
            raise error("bad_label", f"labels[{index}] must hold request_id or timestamp, and label or value")
        stamp = item.get("timestamp")
        if "timestamp" in item and (isinstance(stamp, bool) or not isinstance(stamp, int | float)
                                    or not math.isfinite(stamp)):
            raise error("bad_label", f"labels[{index}].timestamp must be unix seconds")
    return items
