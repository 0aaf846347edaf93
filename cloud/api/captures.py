"""Data capture over HTTP (cloud/capture_store.py holds the rules).

Admin (the admin token):
- `GET /api/v1/fleets/{fleet}/capture`, `PUT /api/v1/fleets/{fleet}/capture`: the fleet's capture settings
  (fields left out of a PUT keep their value). `never_capture` is the fleet's privacy switch: it wins over
  `enabled`, the devices delete what they hold, and the upload route refuses the fleet's samples (403).
- `GET /api/v1/captures?device=&fleet=&model=&version=&since=&after_id=&limit=&arrays=`: samples in id
  order, each joined with the label the feedback API received for its request id; `arrays=true` adds the
  inputs and outputs as the device sent them ({"dtype", "shape", "data": base64}).

Device (its own credentials, HTTP Basic: cloud/device_auth.py; checked before the body is read):
- `GET /api/v1/device/capture`: the policy the device puts in force (its fleet's settings, whether a
  drift alert is open for it or its fleet, the largest upload taken).
- `POST /api/v1/device/captures`: a batch of samples, at most `max_capture_upload_bytes` (413 beyond, one
  400 for a malformed envelope, 403 for a fleet that never captures); the answer acknowledges every
  sample stored now or before, so the device deletes exactly those.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from edgefleet.cloud.api.deps import SessionDep, SessionsDep, SettingsDep
from edgefleet.cloud.capture_store import (
    CaptureDefaults,
    CaptureUploadError,
    decode_arrays,
    device_policy,
    fleet_settings,
    list_captures,
    parse_upload,
    put_fleet_settings,
    store_samples,
)
from edgefleet.cloud.device_auth import DeviceAuth
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.topics import check_id

router = APIRouter(tags=["captures"])
device_router = APIRouter(tags=["captures"])


class CaptureSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    never_capture: bool | None = None
    sample_rate: float | None = Field(default=None, ge=0, le=1)
    max_per_second: float | None = Field(default=None, ge=0, le=10_000)
    max_sample_bytes: int | None = Field(default=None, ge=64, le=2**30)
    max_spool_bytes: int | None = Field(default=None, ge=1024, le=2**31 - 1)
    low_confidence_below: float | None = Field(default=None, ge=0, le=1)
    only_during_drift: bool | None = None
    retention_days: float | None = Field(default=None, gt=0, le=36_500)


def defaults_of(settings: CloudSettings) -> CaptureDefaults:
    return CaptureDefaults(retention_days=settings.capture_retention_days)


@router.get("/fleets/{fleet}/capture")
def get_capture_settings(fleet: str, session: SessionDep, settings: SettingsDep) -> dict:
    return fleet_settings(session, check_id(fleet, "fleet"), defaults_of(settings))


@router.put("/fleets/{fleet}/capture")
def put_capture_settings(fleet: str, body: CaptureSettingsIn, session: SessionDep, settings: SettingsDep) -> dict:
    """Sets the fields given; the others keep their value. An explicit `"low_confidence_below": null` turns
    that filter off; a null for any other field keeps it."""
    given = body.model_dump(exclude_unset=True)
    changes = {k: v for k, v in given.items() if v is not None or k == "low_confidence_below"}
    return put_fleet_settings(session, check_id(fleet, "fleet"), changes, defaults_of(settings))


@router.get("/captures")
def get_captures(
    session: SessionDep,
    device: str | None = None,
    fleet: str | None = None,
    model: str | None = None,
    version: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    after_id: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    arrays: bool = False,
) -> list[dict]:
    found = list_captures(session, device=device, fleet=fleet, model=model, version=version, since=since,
                          after_id=after_id, limit=limit)
    return [_capture_out(row, label, arrays) for row, label in found]


def _capture_out(row, label: dict | None, with_arrays: bool) -> dict:  # noqa: ANN001 - a CaptureSample
    shapes = {kind: {name: {"dtype": spec["dtype"], "shape": spec["shape"]} for name, spec in arrays.items()}
              for kind, arrays in row.layout.items()}
    out = {"id": row.id, "device": row.device_id, "fleet": row.fleet, "sample_id": row.sample_id,
           "request_id": row.request_id, "model": {"name": row.model_name, "version": row.model_version},
           "captured_at": row.captured_at, "received_at": row.received_at, "reason": row.reason,
           "confidence": row.confidence, "slice": row.slice, "task": row.task, "bytes": row.size, **shapes,
           "label": label}
    if with_arrays:
        for kind, arrays in decode_arrays(row).items():
            for name, array in arrays.items():
                out[kind][name]["data"] = base64.b64encode(array.tobytes()).decode()
    return out


@device_router.get("/device/capture")
def device_capture_policy(device: DeviceAuth, session: SessionDep, settings: SettingsDep) -> dict:
    return device_policy(session, device, defaults_of(settings), settings.max_capture_upload_bytes)


@device_router.post("/device/captures")
async def device_upload(request: Request, device: DeviceAuth, sessions: SessionsDep,
                        settings: SettingsDep) -> JSONResponse:
    def privacy() -> bool:
        with sessions() as session:
            return fleet_settings(session, device.fleet, defaults_of(settings))["never_capture"]

    if await run_in_threadpool(privacy):
        return JSONResponse({"detail": f"fleet {device.fleet} never captures data (never_capture): no sample is "
                                       f"taken", "reason": "never_capture"}, status_code=403)
    try:  # the guard read a body within limits and parsed it once; a request without one comes here as is
        data = json.loads(await request.body())
    except ValueError as err:
        raise CaptureUploadError('send the samples as JSON: {"samples": [...]}') from err
    samples = parse_upload(data)

    def store() -> dict:
        with sessions() as session:
            return store_samples(session, device, samples)

    return JSONResponse(await run_in_threadpool(store))
