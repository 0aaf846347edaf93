"""Provisioning at fleet scale: enrollment tokens, self-enrollment of devices, bulk registration.

- `POST/GET /api/v1/enrollment-tokens`, `DELETE /api/v1/enrollment-tokens/{id}` (admin): make, list and
  revoke tokens (edgefleet.cloud.enrollment). The token is in the creation answer only.
- `POST /api/v1/enroll` (the enrollment token as bearer, checked by the request guard before the body is
  read): the device registers itself in the token's fleet and group and gets its MQTT credentials and
  the broker's URL, everything its device.toml needs.
- `POST /api/v1/devices/bulk` (admin): up to MAX_BULK devices in one transaction, all or none (the CLI
  reads them from a CSV). Each password hash costs PBKDF2's iterations (tens of ms): the cap keeps one
  request under a minute.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from edgefleet.cloud import enrollment
from edgefleet.cloud.api.deps import NotFoundError, SessionDep, SettingsDep
from edgefleet.cloud.api.devices import DeviceCreated, DeviceIn, add_device, commit_devices
from edgefleet.cloud.auth import AdminAuth, bearer_token
from edgefleet.cloud.db import now
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import check_id

log = logging.getLogger(__name__)
router = APIRouter(tags=["enrollment"])  # admin routes
enroll_router = APIRouter(tags=["enrollment"])  # the device's own route, behind its enrollment token
MAX_BULK = 1000


class TokenIn(BaseModel):
    fleet: str
    group: str | None = None
    max_uses: int = Field(default=1, ge=1, le=enrollment.MAX_USES)
    expires_in_seconds: float = Field(default=7 * 86400, gt=0, le=enrollment.MAX_SECONDS)


class TokenOut(BaseModel):
    id: int
    fleet: str
    group: str | None
    max_uses: int
    uses: int
    expires_at: float
    state: str  # active, expired, revoked, used up
    created_at: float


class TokenCreated(TokenOut):
    token: str  # shown only here


class EnrollIn(BaseModel):
    id: str | None = None  # the id the device asks for (its hostname, a serial number); None: the cloud picks


class Enrolled(DeviceCreated):
    mqtt_url: str  # the broker the device connects to


class BulkIn(BaseModel):
    devices: list[DeviceIn] = Field(min_length=1, max_length=MAX_BULK)


def _out(row: enrollment.EnrollmentToken) -> dict:
    return {"id": row.id, "fleet": row.fleet, "group": row.group, "max_uses": row.max_uses, "uses": row.uses,
            "expires_at": row.expires_at, "state": row.state(now()), "created_at": row.created_at}


@router.post("/enrollment-tokens", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(body: TokenIn, session: SessionDep, admin: AdminAuth) -> dict:
    group = check_id(body.group, "group") if body.group is not None else None
    row, token = enrollment.create(session, fleet=check_id(body.fleet, "fleet"), group=group,
                                   max_uses=body.max_uses, expires_in=body.expires_in_seconds, created_by=admin)
    session.commit()
    log.info("enrollment token %d for fleet %s (%d uses) made by %r", row.id, row.fleet, row.max_uses, admin)
    return {**_out(row), "token": token}


@router.get("/enrollment-tokens", response_model=list[TokenOut])
def list_tokens(session: SessionDep) -> list[dict]:
    rows = session.scalars(select(enrollment.EnrollmentToken).order_by(enrollment.EnrollmentToken.id))
    return [_out(row) for row in rows]


@router.delete("/enrollment-tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: int, session: SessionDep, admin: AdminAuth) -> dict:
    row = session.get(enrollment.EnrollmentToken, token_id)
    if row is None:
        raise NotFoundError(f"no enrollment token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = now()
        session.commit()
        log.info("enrollment token %d revoked by %r", token_id, admin)
    return _out(row)


@router.post("/devices/bulk", status_code=status.HTTP_201_CREATED, response_model=list[DeviceCreated])
def register_bulk(body: BulkIn, session: SessionDep, settings: SettingsDep, admin: AdminAuth) -> list[DeviceCreated]:
    ids = [device.id for device in body.devices if device.id is not None]
    if len(ids) != len(set(ids)):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise EdgefleetError(f"device id {duplicate!r} appears more than once in the request")
    created = [add_device(session, device, nats_hash=settings.nats_device_hashes) for device in body.devices]
    commit_devices(session, [device.id for device in created])
    log.info("%d devices registered in bulk by %r", len(created), admin)
    return created


def _enrollment_token(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization"))


@enroll_router.post("/enroll", status_code=status.HTTP_201_CREATED, response_model=Enrolled)
def enroll(body: EnrollIn, session: SessionDep, settings: SettingsDep, request: Request,
           token: Annotated[str | None, Depends(_enrollment_token)]) -> Enrolled:
    row = enrollment.use(session, token)
    created = add_device(session, DeviceIn(id=body.id, fleet=row.fleet, group=row.group),
                         nats_hash=settings.nats_device_hashes)
    commit_devices(session, [created.id])  # the use and the device, together
    log.info("device %s enrolled in fleet %s with enrollment token %d", created.id, row.fleet, row.id)
    broker = getattr(request.app.state, "broker_url", None) or settings.broker_url
    return Enrolled(**created.model_dump(), mqtt_url=broker)
