"""Telemetry history at a resolution (cloud/window_history.py): raw windows, or hourly and daily totals that
add up the roll-ups retention made and the raw windows not rolled up yet.

    GET /devices/{id}/windows?resolution=raw|hour|day&since=&until=&model=&version=&limit=&offset=
    GET /fleets/{fleet}/windows?...                  the same, every device of the fleet added up
    GET /models/{name}/windows?...                   every device serving the model, added up per version

A bad range (backwards, empty, longer than the resolution allows) or resolution is a 400 naming the
limit; an unknown device a 404; a page holds at most 1000 rows and says where the next one starts.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from edgefleet.cloud.api.deps import SessionDep
from edgefleet.cloud.api.devices import get_device
from edgefleet.cloud.window_history import MAX_LIMIT, Scope, check_range, history
from edgefleet.core.topics import check_id

router = APIRouter(tags=["telemetry"])
Resolution = Annotated[str, Query(description="raw, hour or day")]
Since = Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds; default: a span before until "
                                                                 "(raw 1 h, hour 2 days, day 90 days)")]
Until = Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds, excluded; default now")]
Version = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=10**7)]


def _read(session: SessionDep, scope: Scope, resolution: str, since: float | None, until: float | None,
          limit: int, offset: int) -> dict:
    since, until = check_range(resolution, since, until, time.time())
    return history(session, scope, resolution, since, until, limit=limit, offset=offset)


@router.get("/devices/{device_id}/windows")
def device_windows(device_id: str, session: SessionDep, resolution: Resolution = "raw", since: Since = None,
                   until: Until = None, model: str | None = None, version: Version = None, limit: Limit = 100,
                   offset: Offset = 0) -> dict:
    device = get_device(session, device_id)  # 404 for an unknown device
    scope = Scope(device=device.id, model=check_id(model, "model") if model else None, version=version)
    return {"scope": "device", "id": device.id, "fleet": device.fleet,
            **_read(session, scope, resolution, since, until, limit, offset)}


@router.get("/fleets/{fleet}/windows")
def fleet_windows(fleet: str, session: SessionDep, resolution: Resolution = "raw", since: Since = None,
                  until: Until = None, model: str | None = None, version: Version = None, limit: Limit = 100,
                  offset: Offset = 0) -> dict:
    scope = Scope(fleet=check_id(fleet, "fleet"), model=check_id(model, "model") if model else None,
                  version=version)
    return {"scope": "fleet", "id": scope.fleet, **_read(session, scope, resolution, since, until, limit, offset)}


@router.get("/models/{name}/windows")
def model_windows(name: str, session: SessionDep, resolution: Resolution = "raw", since: Since = None,
                  until: Until = None, version: Version = None, limit: Limit = 100, offset: Offset = 0) -> dict:
    scope = Scope(model=check_id(name, "model"), version=version)
    return {"scope": "model", "id": name, **_read(session, scope, resolution, since, until, limit, offset)}
