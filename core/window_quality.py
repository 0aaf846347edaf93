"""What one telemetry window says about its inputs' quality and the device's health (issue 14).

    "quality": [{"input": "pixels", "counts": [[nonfinite, below, above, at_probe], ...]}],  # one row per feature
    "health": {"cpu_load": 0.4, "memory_used": 0.61, "disk_free_bytes": 12884901888,
               "temperature_c": null, "uptime_seconds": 3605.2, "restarts": 2}

Quality counts (edge_runtime/data_quality.py counts them in the telemetry sketch): per feature the
samples whose value was non-finite, below or above the reference profile's range, and equal to the last
value of the window before ("at_probe": a feature whose at_probe equals the window's samples has not
moved since the window before: a stuck input). Health is sampled when the window closes
(edge_runtime/device_health.py): the 1-minute load average per core, the share of memory in use, the
free bytes of the device's data directory's disk, the hottest thermal zone (null where the OS exposes
none), seconds since the agent started and how many times it has started before.

Both are optional (agents before them send neither). `parse_quality` and `parse_health` are part of the
cloud's telemetry gate: lists and rows are bounded before they are read, every count is at most the
window's samples, every number is finite and in its range; refusals raise the gate's error with reason
`bad_field` or `number_out_of_range`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from edgefleet.core.bounded_json import SQL_INTEGER_MAX

QUALITY_COLUMNS = ("nonfinite", "below_range", "above_range", "at_probe")
MAX_QUALITY_INPUTS = 64
MAX_QUALITY_ROWS = 4096  # features of one input (channel taps: 2 per channel)
MAX_NAME = 128
HEALTH_RANGES = {  # field -> (smallest, largest) accepted
    "cpu_load": (0.0, 1e6), "memory_used": (0.0, 1.0), "disk_free_bytes": (0.0, 2.0 ** 63),
    "temperature_c": (-273.15, 1000.0), "uptime_seconds": (0.0, 1e11), "restarts": (0.0, SQL_INTEGER_MAX),
}


@dataclass(frozen=True)
class QualityCounts:
    input: str
    counts: tuple[tuple[int, int, int, int], ...]  # per feature, QUALITY_COLUMNS

    def to_dict(self) -> dict:
        return {"input": self.input, "counts": [list(row) for row in self.counts]}


@dataclass(frozen=True)
class DeviceHealth:
    cpu_load: float | None = None
    memory_used: float | None = None
    disk_free_bytes: int | None = None
    temperature_c: float | None = None
    uptime_seconds: float | None = None
    restarts: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_quality(data: object, samples: int, error) -> tuple[QualityCounts, ...]:  # noqa: ANN001
    """A window's `quality` (() when absent), each count at most `samples`; `error(reason, message)` makes
    the exception to raise."""
    if data is None:
        return ()
    if not isinstance(data, list) or len(data) > MAX_QUALITY_INPUTS:
        raise error("bad_field", f"quality must be a list of at most {MAX_QUALITY_INPUTS} inputs")
    parsed, seen = [], set()
    for index, item in enumerate(data):
        label = f"quality[{index}]"
        name = item.get("input") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\0" in name or name in seen:
            raise error("bad_field", f"{label} must be an object whose 'input' is a string of 1 to {MAX_NAME} "
                                     f"characters without NUL, each input once")
        seen.add(name)
        rows = item.get("counts")
        if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_QUALITY_ROWS:
            raise error("bad_field", f"{label}.counts must be a list of 1 to {MAX_QUALITY_ROWS} rows")
        counts = []
        for r, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(QUALITY_COLUMNS):
                raise error("bad_field", f"{label}.counts[{r}] must hold {len(QUALITY_COLUMNS)} counts "
                                         f"({', '.join(QUALITY_COLUMNS)})")
            if not all(type(n) is int and 0 <= n for n in row):
                raise error("bad_field", f"{label}.counts[{r}] must hold non-negative integers")
            if max(row) > samples or row[0] + row[1] + row[2] > samples:
                raise error("number_out_of_range", f"{label}.counts[{r}] counts more values than the window's "
                                                   f"{samples} samples")
            counts.append(tuple(row))
        parsed.append(QualityCounts(name, tuple(counts)))
    return tuple(parsed)


def parse_health(data: object, error) -> DeviceHealth | None:  # noqa: ANN001
    """A window's `health` (None when absent or null): known fields only, each null or a number in its range."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise error("bad_field", "health must be an object")
    unknown = sorted(set(data) - set(HEALTH_RANGES))
    if unknown:
        raise error("bad_field", f"health has unknown fields {unknown[:5]}; expected some of {list(HEALTH_RANGES)}")
    values = {}
    for name, (low, high) in HEALTH_RANGES.items():
        value = data.get(name)
        if value is None:
            continue
        whole = name in ("disk_free_bytes", "restarts")
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise error("bad_field", f"health.{name} must be {'an integer' if whole else 'a number'} or null")
        if not math.isfinite(value) or not low <= value <= high:
            raise error("number_out_of_range", f"health.{name} must be between {low:g} and {high:g}")
        values[name] = value if whole else float(value)
    return DeviceHealth(**values)
