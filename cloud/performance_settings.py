"""The label-free accuracy alert's settings (cloud/performance_monitor.py): how far the estimated accuracy
may fall below what the calibration expects before an alert opens.

The global value is `edgefleet cloud up --performance-drop` (EDGEFLEET_PERFORMANCE_DROP); overrides per
fleet, model, or model in one fleet are rows of PerformanceSettingsRecord, set through PUT
/api/v1/performance/settings/... and resolved like every monitor's (cloud/scoped_settings.py). The
monitor's lookback and min_samples are the drift monitor's, resolved for the same fleet and model, so a
slow fleet given a small drift min_samples is judged on as few predictions here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.ops_tables import PerformanceSettingsRecord
from edgefleet.cloud.scoped_settings import ScopedResolver
from edgefleet.core.errors import EdgefleetError


class PerformanceSettingsError(EdgefleetError):
    """A performance setting out of range (the message names it and the range)."""


@dataclass(frozen=True)
class PerformanceSettings:
    drop: float = 0.05  # an alert opens below expected - drop, closes above expected - drop / 2

    def __post_init__(self) -> None:
        if isinstance(self.drop, bool) or not isinstance(self.drop, (int, float)) or not 0 < self.drop < 1:
            raise PerformanceSettingsError(f"drop must be between 0 and 1 (both excluded), got {self.drop!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_values(self, values: Mapping[str, object]) -> PerformanceSettings:
        """These settings with the non-None `values` on top; PerformanceSettingsError if invalid."""
        given = {key: value for key, value in values.items() if value is not None}
        unknown = sorted(set(given) - {f.name for f in fields(self)})
        if unknown:
            raise PerformanceSettingsError(f"unknown performance settings {unknown}; expected some of "
                                           f"{[f.name for f in fields(self)]}")
        return replace(self, **given)


class PerformanceResolver(ScopedResolver[PerformanceSettings]):
    def __init__(self, base: PerformanceSettings, overrides: Iterable[PerformanceSettingsRecord] = ()) -> None:
        super().__init__(base, {(row.fleet, row.model_name): dict(row.values or {}) for row in overrides},
                         PerformanceSettings.with_values)

    @classmethod
    def load(cls, session: Session, base: PerformanceSettings) -> PerformanceResolver:
        return cls(base, session.scalars(select(PerformanceSettingsRecord)).all())
