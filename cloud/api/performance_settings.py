"""The label-free accuracy alert's settings per fleet, model, or model in one fleet
(cloud/performance_settings.py), in the shape every monitor's settings share (cloud/api/scoped_settings.py):

    GET    /performance/settings                              the global drop (`cloud up --performance-drop`)
    GET    /performance/settings/effective?fleet=F&model=M    and every override; what the monitor uses
    PUT    /performance/settings/fleets/{fleet}               {"drop": 0.1}
    PUT    /performance/settings/models/{model}
    PUT    /performance/settings/fleets/{fleet}/models/{model}
    DELETE (the same three paths)

A drop outside (0, 1) is a 422 naming the field, and nothing is stored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.cloud.api.scoped_settings import SettingsKind, scoped_settings_router
from edgefleet.cloud.ops_tables import PerformanceSettingsRecord
from edgefleet.cloud.performance_settings import PerformanceResolver


class PerformanceSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop: float | None = Field(default=None, gt=0, lt=1)


def _write(row: PerformanceSettingsRecord, values: dict) -> None:
    row.values = {key: value for key, value in values.items() if value is not None}


PERFORMANCE = SettingsKind(
    what="performance settings", record=PerformanceSettingsRecord, body=PerformanceSettingsIn,
    global_values=lambda settings: settings.performance_settings().to_dict(),
    resolver=lambda session, settings: PerformanceResolver.load(session, settings.performance_settings()),
    read=lambda row: dict(row.values or {}), write=_write,
    check=lambda settings, values: settings.performance_settings().with_values(values))
router = scoped_settings_router("/performance/settings", PERFORMANCE, ["performance"])
