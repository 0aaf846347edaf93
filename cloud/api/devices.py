"""Devices: registration (which hands out the device's MQTT credentials once) and the fleet listing."""

from __future__ import annotations

import logging
import secrets
import time

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edgefleet.cloud.api.deps import ConflictError, NotFoundError, SessionDep, SettingsDep
from edgefleet.cloud.auth import AdminAuth
from edgefleet.cloud.db import Device
from edgefleet.cloud.mqtt_auth import RESERVED_PREFIX, hash_password, is_reserved_id, new_password
from edgefleet.cloud.nats_config import DEVICE_BCRYPT_ROUNDS, bcrypt_hash
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import check_id, device_prefix, topic

log = logging.getLogger(__name__)
router = APIRouter(tags=["devices"])


class DeviceIn(BaseModel):
    id: str | None = None  # None: the cloud picks one
    fleet: str
    group: str | None = None  # a label within the fleet that deployments can target


class DeviceTopics(BaseModel):
    publish_prefix: str  # the device may publish only below this
    command: str  # the device subscribes to this


class MqttCredentials(BaseModel):
    username: str
    password: str  # plaintext, in this response only; the cloud keeps a PBKDF2 hash
    topics: DeviceTopics


class DeviceCreated(BaseModel):
    id: str
    fleet: str
    group: str | None
    mqtt: MqttCredentials


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    fleet: str
    group: str | None
    online: bool
    model_name: str | None
    model_version: int | None
    agent_version: str | None
    backend: str | None
    last_seen: float | None
    created_at: float
    revoked_at: float | None = None


def get_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r} is registered")
    return device


@router.post("/devices", status_code=status.HTTP_201_CREATED, response_model=DeviceCreated)
def register_device(body: DeviceIn, session: SessionDep, settings: SettingsDep, admin: AdminAuth) -> DeviceCreated:
    """Registers a device and returns its MQTT credentials; the password is shown only here."""
    created = add_device(session, body, nats_hash=settings.nats_device_hashes)
    commit_devices(session, [created.id])
    log.info("device %s registered in fleet %s%s (by token %r)", created.id, created.fleet,
             f", group {created.group}" if created.group else "", admin)
    return created


def add_device(session: Session, body: DeviceIn, *, nats_hash: bool) -> DeviceCreated:
    """Adds a device to the session (the caller commits) and returns what the device is told, once. nats_hash:
    keep a bcrypt hash of its password too (CloudSettings.nats_device_hashes)."""
    fleet = check_id(body.fleet, "fleet")
    group = check_id(body.group, "group") if body.group is not None else None
    device_id = check_id(body.id, "device id") if body.id is not None else f"dev-{secrets.token_hex(6)}"
    if is_reserved_id(device_id):
        raise EdgefleetError(f"device id {device_id!r}: ids starting with {RESERVED_PREFIX!r} are reserved "
                             f"for the cloud's own MQTT clients")
    if session.get(Device, device_id) is not None:
        raise ConflictError(f"device {device_id!r} is registered already")
    password = new_password()
    session.add(Device(id=device_id, fleet=fleet, group=group, password_hash=hash_password(password),
                       password_bcrypt=bcrypt_hash(password, DEVICE_BCRYPT_ROUNDS) if nats_hash else None))
    topics = DeviceTopics(publish_prefix=device_prefix(fleet, device_id), command=topic(fleet, device_id, "cmd"))
    return DeviceCreated(id=device_id, fleet=fleet, group=group,
                         mqtt=MqttCredentials(username=device_id, password=password, topics=topics))


def commit_devices(session: Session, ids: list[str]) -> None:
    """Commits the added devices, all or none: an id registered concurrently is a 409 naming the ids."""
    try:
        session.commit()
    except IntegrityError as err:  # registered concurrently between the check and the commit
        session.rollback()
        raise ConflictError(f"device {ids[0]!r} is registered already" if len(ids) == 1 else
                            f"one of {len(ids)} devices ({ids[0]!r} ...) was registered concurrently") from err


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(session: SessionDep, fleet: str | None = None, group: str | None = None) -> list[Device]:
    query = select(Device).order_by(Device.fleet, Device.id)
    if fleet is not None:
        query = query.where(Device.fleet == fleet)
    if group is not None:
        query = query.where(Device.group == group)
    return list(session.scalars(query))


@router.delete("/devices/{device_id}", response_model=DeviceOut)
def revoke_device(device_id: str, session: SessionDep, admin: AdminAuth, request: Request) -> Device:
    """Revokes a device: its password stops working on every broker the cloud runs or configures, and an
    open connection to the embedded broker is closed at once. Its history stays (the row is kept)."""
    device = get_device(session, device_id)
    if device.revoked_at is None:
        device.revoked_at = time.time()
        session.commit()
        log.info("device %s revoked by %r", device_id, admin)
    broker = getattr(request.app.state, "broker", None)
    if broker is not None and broker.revoke(device_id):
        log.info("device %s: its open MQTT connection was closed", device_id)
    return device


@router.get("/devices/{device_id}", response_model=DeviceOut)
def read_device(device_id: str, session: SessionDep) -> Device:
    return get_device(session, device_id)
