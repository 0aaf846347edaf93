"""Operational limits per fleet and model: latency, error rate, device health and data quality.

Global values are the defaults below, replaced by `edgefleet cloud up --ops-*` (EDGEFLEET_OPS_*,
CloudSettings.ops_limits); overrides are rows of OpsSettingsRecord, set through PUT
/api/v1/ops/settings/... (cloud/api/ops.py), resolved field by field (cloud/scoped_settings.py): fleet +
model > fleet > model > global. A resolved set is validated as a whole, so an override can never make the
monitor fail at run time. `interval_seconds` (global: `--ops-interval`) is how often a (fleet, model)'s
devices are judged: the monitor ticks at the shortest interval in use (cloud/ops_monitor.py).

Why these defaults: p99 at 500 ms is far beyond any edge model here (digits CNN: 0.1 ms), so it catches
a stalled device, not a slow model; tighten it per model. An error rate of 5% over at least 20 requests.
Memory 0.95 is where a Pi starts to swap; 100 MB free keeps room for one bundle and the outbox; 80 °C is
where a Raspberry Pi 4 throttles. CPU load has no default limit (None: not checked): the load average
counts every process of the machine, and on a shared host (this project's CI: 2 cores, load 12-14) any
fixed limit pages all day; set max_cpu_load per fleet where the device runs alone. Data quality: any non-finite share
over 1% is a pipeline fault (the reference has none), 5% of values outside everything the reference
ever held is more than drift's tail usually carries, and a feature that has not moved over 20 samples
while its reference varies is a dead sensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.ops_tables import OpsSettingsRecord
from edgefleet.cloud.scoped_settings import ScopedResolver
from edgefleet.core.errors import EdgefleetError

RANGES: dict[str, tuple[float, float]] = {  # field -> (smallest, largest) accepted
    "max_p99_ms": (0.01, 1e7), "max_error_rate": (0.0, 1.0), "min_requests": (1, 1e9),
    "max_cpu_load": (0.0, 1e6), "max_memory_used": (0.0, 1.0), "min_disk_free_bytes": (0, 2.0 ** 62),
    "max_temperature_c": (-273.15, 1000.0), "max_nonfinite_share": (0.0, 1.0),
    "max_out_of_range_share": (0.0, 1.0), "stuck_min_samples": (2, 1e9),
    "lookback_seconds": (0.1, 366 * 86400.0), "interval_seconds": (0.01, 366 * 86400.0),
}
WHOLE = {"min_requests", "min_disk_free_bytes", "stuck_min_samples"}
OPTIONAL = {"max_cpu_load"}  # None: not checked


class OpsSettingsError(EdgefleetError):
    """An operational limit out of range (the message names it and the range)."""


@dataclass(frozen=True)
class OpsLimits:
    max_p99_ms: float = 500.0
    max_error_rate: float = 0.05
    min_requests: int = 20  # fewer requests in the lookback: no latency or error-rate verdict
    max_cpu_load: float | None = None
    max_memory_used: float = 0.95
    min_disk_free_bytes: int = 100 * 1024 * 1024
    max_temperature_c: float = 80.0
    max_nonfinite_share: float = 0.01
    max_out_of_range_share: float = 0.05
    stuck_min_samples: int = 20
    lookback_seconds: float = 300.0
    interval_seconds: float = 10.0  # how often a (fleet, model)'s devices are judged

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise OpsSettingsError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
            if name in WHOLE and int(value) != value:
                raise OpsSettingsError(f"{name} must be a whole number, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_values(self, values: Mapping[str, object]) -> OpsLimits:
        """These limits with the non-None `values` on top; OpsSettingsError if the result is invalid."""
        given = {key: value for key, value in values.items() if value is not None}
        unknown = sorted(set(given) - {f.name for f in fields(self)})
        if unknown:
            raise OpsSettingsError(f"unknown operational limits {unknown}; expected some of {list(RANGES)}")
        return replace(self, **{k: int(v) if k in WHOLE and isinstance(v, (int, float)) and int(v) == v else v
                                for k, v in given.items()})


class LimitsResolver(ScopedResolver[OpsLimits]):
    def __init__(self, base: OpsLimits, overrides: Iterable[OpsSettingsRecord] = ()) -> None:
        super().__init__(base, {(row.fleet, row.model_name): dict(row.limits or {}) for row in overrides},
                         OpsLimits.with_values)

    @classmethod
    def load(cls, session: Session, base: OpsLimits) -> LimitsResolver:
        return cls(base, session.scalars(select(OpsSettingsRecord)).all())

    def shortest_interval(self) -> float:
        return min([self.base.interval_seconds,
                    *(float(value) for value in self.override_values("interval_seconds") if value)])

    def longest_lookback(self) -> float:
        return max([self.base.lookback_seconds,
                    *(float(value or 0.0) for value in self.override_values("lookback_seconds"))])
