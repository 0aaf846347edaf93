"""Slices: a name a request is tagged with (a site, a camera, a customer), so performance is seen per slice.

A device request carries its slice (`?slice=NAME`, the `X-Edgefleet-Slice` header, or the device's default
from device.toml); the device keeps it with the request id, so a label that arrives later is counted under
the slice its prediction was made in. A telemetry window then carries, beside its totals:

    "slices": [{"slice": "cam-a", "samples": 120, "confidence": [..E + 2..],      # confidence: classifiers
                "labels": {"count": 40, "confusion": [[3, 3, 37], [3, 5, 3]]}}]  # optional, core/labels.py

Names are 1 to MAX_SLICE_CHARS of letters, digits and `._:-`, starting with a letter or digit (`check_name`),
so a name is safe in a URL, a log line and a table. A window holds at most MAX_SLICES distinct names: a
request with a new name beyond them is counted under OTHER, a name no client can give (it starts with
`_`), so a client sending random names costs at most MAX_SLICES + 1 entries per window. Each slice's
confusion holds at most MAX_SLICE_CELLS cells (MAX_SLICES of them fit the window's own bound); a label
for a new cell beyond it is left out of its slice (still counted in the totals) and logged.

The field is optional: windows from agents before slices have none, and a cloud before slices reads a
window with them as before (parse_telemetry reads only the fields it knows). `parse_slices` is part of
the cloud's telemetry gate: bounded before anything is built, refusals with reason `bad_field` or
`number_out_of_range`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.core.bounded_json import SQL_INTEGER_MAX
from edgefleet.core.labels import MAX_CONFUSION_CELLS, LabelCounts, parse_labels

MAX_SLICE_CHARS = 64
MAX_SLICES = 32  # distinct slice names per window; further names count under OTHER
OTHER = "_other"
MAX_SLICE_CELLS = MAX_CONFUSION_CELLS // MAX_SLICES  # confusion cells per slice and window
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_SLICE_CHARS - 1}}}")
NAME_RULE = f"1 to {MAX_SLICE_CHARS} letters, digits, '.', '_', ':' or '-', starting with a letter or digit"


def check_name(value: object) -> str | None:
    """The slice name `value` if it follows NAME_RULE, else None (the caller words the refusal)."""
    return value if isinstance(value, str) and NAME.fullmatch(value) else None


@dataclass(frozen=True)
class SliceCounts:
    slice: str
    samples: int
    confidence: tuple[int, ...] = ()  # a classifier's confidence histogram on the profile's edges
    labels: LabelCounts | None = None  # labels that arrived in the window for this slice's predictions

    def to_dict(self) -> dict:
        return {"slice": self.slice, "samples": self.samples, "confidence": list(self.confidence)} | (
            {"labels": self.labels.to_dict()} if self.labels is not None else {})


def parse_slices(data: object, error) -> tuple[SliceCounts, ...]:  # noqa: ANN001 - error(reason, message)
    """A window's `slices` (() when absent or null); `error` makes the exception to raise."""
    if data is None:
        return ()
    if not isinstance(data, list) or len(data) > MAX_SLICES + 1:
        raise error("bad_field", f"slices must be a list of at most {MAX_SLICES + 1} entries")
    parsed, seen = [], set()
    for index, item in enumerate(data):
        label = f"slices[{index}]"
        if not isinstance(item, Mapping) or set(item) - {"slice", "samples", "confidence", "labels"}:
            raise error("bad_field", f"{label} must be an object with slice, samples, confidence and labels")
        name = item.get("slice")
        if name != OTHER and check_name(name) is None:
            raise error("bad_field", f"{label}.slice must be {NAME_RULE} (or {OTHER!r})")
        if name in seen:
            raise error("bad_field", f"{label}: slice {name!r} is given twice")
        seen.add(name)
        samples = item.get("samples")
        if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= SQL_INTEGER_MAX:
            raise error("number_out_of_range" if isinstance(samples, int) and not isinstance(samples, bool)
                        else "bad_field", f"{label}.samples must be an integer from 0 to {SQL_INTEGER_MAX}")
        confidence = item.get("confidence", [])
        if not isinstance(confidence, list) or len(confidence) > 1026 or not all(
                type(n) is int and 0 <= n <= SQL_INTEGER_MAX for n in confidence):
            raise error("bad_field", f"{label}.confidence must be a list of at most 1026 counts from 0 to "
                                     f"{SQL_INTEGER_MAX}")
        labels = parse_labels(item.get("labels"), error)
        if labels is not None and len(labels.confusion) > MAX_SLICE_CELLS:
            raise error("bad_field", f"{label}.labels.confusion holds {len(labels.confusion)} cells, more than "
                                     f"{MAX_SLICE_CELLS}")
        parsed.append(SliceCounts(name, samples, tuple(confidence), labels))
    return tuple(parsed)
