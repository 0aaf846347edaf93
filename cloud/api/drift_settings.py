"""The drift monitor's settings per fleet, per model, or per model in one fleet (cloud/drift_settings.py),
in the shape every monitor's settings share (cloud/api/scoped_settings.py):

    GET    /drift/settings                                  the global values and every override
    GET    /drift/settings/effective?fleet=F&model=M        what the monitor uses for that fleet and model
    PUT    /drift/settings/fleets/{fleet}                   set an override (body: any of the six fields;
    PUT    /drift/settings/models/{model}                     a field left out inherits the less specific
    PUT    /drift/settings/fleets/{fleet}/models/{model}      value; PUT replaces the whole override)
    DELETE (the same three paths)                           remove it (404 if there is none)

An out-of-range value is a 422 naming the field (a fleet or model that is not an id: 400), and nothing
is stored. The monitor reads the table at the start of every run.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.cloud.api.scoped_settings import SettingsKind, scoped_settings_router
from edgefleet.cloud.db import DriftSettingsRecord
from edgefleet.cloud.drift_settings import FIELDS, SettingsResolver, record_values


class DriftSettingsIn(BaseModel):
    """One override; every field optional (None: inherit)."""

    model_config = ConfigDict(extra="forbid")

    min_samples: int | None = Field(default=None, ge=1, le=10**9)
    alpha: float | None = Field(default=None, gt=0, lt=1)
    psi_floor: float | None = Field(default=None, ge=0, le=1e6)
    noise_multiplier: float | None = Field(default=None, ge=0, le=1e6)
    lookback_seconds: float | None = Field(default=None, gt=0, le=366 * 86400)
    interval_seconds: float | None = Field(default=None, ge=0.05, le=86400)


def _write(row: DriftSettingsRecord, values: dict) -> None:
    for name in FIELDS:
        setattr(row, name, values[name])


DRIFT = SettingsKind(
    what="drift settings", record=DriftSettingsRecord, body=DriftSettingsIn,
    global_values=lambda settings: settings.drift_monitor_settings().to_dict(),
    resolver=lambda session, settings: SettingsResolver.load(session, settings.drift_monitor_settings()),
    read=record_values, write=_write,
    check=lambda settings, values: settings.drift_monitor_settings().with_values(values))
router = scoped_settings_router("/drift/settings", DRIFT, ["drift"])
