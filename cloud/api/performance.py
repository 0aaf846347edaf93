"""Model performance over time (cloud/performance.py): measured accuracy or MAE from labels that arrived,
and for classifiers the accuracy estimated without labels, per device, fleet or model; `?by=slice` splits
every point by the slice its requests were tagged with (core/slices.py)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from edgefleet.cloud.api.bundles import reference_profile
from edgefleet.cloud.api.deps import SessionDep, SessionsDep, SettingsDep
from edgefleet.cloud.api.devices import get_device
from edgefleet.cloud.performance import performance
from edgefleet.core.topics import check_id

router = APIRouter(tags=["performance"])
DEFAULT_SPAN = 3600.0
Since = Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds; default an hour ago")]
Until = Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds; default now")]
Bucket = Annotated[float, Query(ge=1, le=86400, description="Seconds per point")]
Version = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
By = Annotated[Literal["model", "slice"], Query(description="model: one point per model version and bucket; "
                                                            "slice: per slice as well")]


def _read(session, sessions, settings, **scope) -> dict:  # noqa: ANN001 - the dependencies above
    since, until = scope.pop("since"), scope.pop("until")
    now = time.time()
    since = now - DEFAULT_SPAN if since is None else since
    return performance(session, lambda name, version: reference_profile(sessions, settings, name, version),
                       since=since, until=now if until is None else until, **scope)


@router.get("/devices/{device_id}/performance")
def device_performance(device_id: str, session: SessionDep, sessions: SessionsDep, settings: SettingsDep,
                       since: Since = None, until: Until = None, bucket_seconds: Bucket = 60.0,
                       model: str | None = None, version: Version = None, by: By = "model") -> dict:
    device = get_device(session, device_id)  # 404 for an unknown device
    return {"scope": "device", "id": device.id, "fleet": device.fleet,
            **_read(session, sessions, settings, device=device.id, model=model, version=version, since=since,
                    until=until, bucket_seconds=bucket_seconds, by=by)}


@router.get("/fleets/{fleet}/performance")
def fleet_performance(fleet: str, session: SessionDep, sessions: SessionsDep, settings: SettingsDep,
                      since: Since = None, until: Until = None, bucket_seconds: Bucket = 60.0,
                      model: str | None = None, version: Version = None, by: By = "model") -> dict:
    fleet = check_id(fleet, "fleet")
    return {"scope": "fleet", "id": fleet,
            **_read(session, sessions, settings, fleet=fleet, model=model, version=version, since=since,
                    until=until, bucket_seconds=bucket_seconds, by=by)}


@router.get("/models/{name}/performance")
def model_performance(name: str, session: SessionDep, sessions: SessionsDep, settings: SettingsDep,
                      since: Since = None, until: Until = None, bucket_seconds: Bucket = 60.0,
                      version: Version = None, by: By = "model") -> dict:
    """Every device serving the model, per version."""
    return {"scope": "model", "id": name,
            **_read(session, sessions, settings, model=name, version=version, since=since, until=until,
                    bucket_seconds=bucket_seconds, by=by)}
