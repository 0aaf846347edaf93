"""The drift monitor's settings per fleet and model: the decision rule (DriftThresholds), the lookback and
the interval, each settable globally and overridden per fleet, per model, or per model in one fleet.

Global values come from CloudSettings (`edgefleet cloud up --drift-*`, EDGEFLEET_DRIFT_*). Overrides are
rows of DriftSettingsRecord (set through PUT /api/v1/drift/settings/...). The monitor resolves each
(fleet, model name) field by field, the most specific non-empty value winning (cloud/scoped_settings.py:
fleet + model > fleet > model > global). Every resolved set is validated as a whole (DriftThresholds'
own checks), so an override can never make the monitor fail at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import DriftSettingsRecord
from edgefleet.cloud.drift import DriftThresholds
from edgefleet.cloud.scoped_settings import ScopedResolver
from edgefleet.core.errors import EdgefleetError

THRESHOLD_FIELDS = ("min_samples", "alpha", "psi_floor", "noise_multiplier")
FIELDS = (*THRESHOLD_FIELDS, "lookback_seconds", "interval_seconds")


class DriftSettingsError(EdgefleetError):
    """A drift setting out of range (the message names it and the range)."""


@dataclass(frozen=True)
class MonitorSettings:
    """What the monitor uses for one (fleet, model): the decision rule, the lookback and the interval."""

    thresholds: DriftThresholds = DriftThresholds()  # noqa: RUF009 - frozen, so one shared default is safe
    lookback_seconds: float = 300.0
    interval_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not self.lookback_seconds > 0 or not self.interval_seconds > 0:
            raise DriftSettingsError(f"lookback_seconds and interval_seconds must be positive, got "
                                     f"{self.lookback_seconds} and {self.interval_seconds}")

    def to_dict(self) -> dict:
        return {**self.thresholds.to_dict(), "lookback_seconds": self.lookback_seconds,
                "interval_seconds": self.interval_seconds}

    def with_values(self, values: Mapping[str, object]) -> MonitorSettings:
        """These settings with the non-None `values` on top; DriftSettingsError if the result is invalid."""
        given = {key: value for key, value in values.items() if value is not None}
        unknown = sorted(set(given) - set(FIELDS))
        if unknown:
            raise DriftSettingsError(f"unknown drift settings {unknown}; expected some of {list(FIELDS)}")
        thresholds = {**asdict(self.thresholds), **{k: v for k, v in given.items() if k in THRESHOLD_FIELDS}}
        try:
            return replace(self, thresholds=DriftThresholds(**thresholds),
                           **{k: float(v) for k, v in given.items() if k not in THRESHOLD_FIELDS})
        except ValueError as err:
            raise DriftSettingsError(f"invalid drift settings: {err}") from err


def record_values(record: DriftSettingsRecord) -> dict:
    return {name: getattr(record, name) for name in FIELDS}


class SettingsResolver(ScopedResolver[MonitorSettings]):
    """The global settings and one snapshot of the overrides; `for_scope` resolves a (fleet, model)."""

    def __init__(self, base: MonitorSettings, overrides: Iterable[DriftSettingsRecord] = ()) -> None:
        super().__init__(base, {(row.fleet, row.model_name): record_values(row) for row in overrides},
                         MonitorSettings.with_values)

    @classmethod
    def load(cls, session: Session, base: MonitorSettings) -> SettingsResolver:
        return cls(base, session.scalars(select(DriftSettingsRecord)).all())

    def longest_lookback(self) -> float:
        return max([self.base.lookback_seconds, *(v or 0.0 for v in self.override_values("lookback_seconds"))])

    def shortest_interval(self) -> float:
        return min([self.base.interval_seconds, *(v for v in self.override_values("interval_seconds") if v)])
