"""How a device authenticates to the cloud's HTTP API: HTTP Basic with its id and the password the cloud gave it
at registration (the one it logs into the broker with; the database keeps only its PBKDF2 hash). Devices
never hold an admin token. The request guard (cloud/request_guard.py) runs this before a byte of a device's
request body is read; the routes under /api/v1/device/ get the Device through `DeviceAuth`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.db import Device
from edgefleet.cloud.mqtt_auth import verify_password

DEVICE_PREFIX = "/api/v1/device/"
_UNKNOWN = "$7$101$AAAAAAAAAAAAAAAA$" + "A" * 86 + "=="  # a well-formed hash nobody's password matches


def authenticate_device(sessions: sessionmaker, authorization: str | None) -> Device:
    """The device the `Authorization: Basic` header names, if its password matches; else the 401."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        raise _unauthorized("send the device's credentials: 'Authorization: Basic <id:password>'")
    try:
        username, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, ValueError) as err:
        raise _unauthorized("the Basic credentials are not base64 of 'id:password'") from err
    if not colon or not 0 < len(username) <= 64:
        raise _unauthorized("the Basic credentials are not base64 of 'id:password'")
    with sessions() as session:
        device = session.get(Device, username)
    # An unknown id costs the same hash as a known one: the answer's time does not tell which ids exist.
    if not verify_password(password, device.password_hash if device is not None else _UNKNOWN) or device is None:
        raise _unauthorized("unknown device or wrong password")
    return device


def require_device(request: Request) -> Device:
    return authenticate_device(request.app.state.sessions, request.headers.get("authorization"))


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Basic"})


DeviceAuth = Annotated[Device, Depends(require_device)]
