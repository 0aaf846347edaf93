"""Over-the-air update messages: the command the cloud sends on a device's `cmd` topic, and the status
the device reports on its `status` topic (through its outbox, with its per-device seq).

    command: {"schema": "edgefleet.cmd", "v": 1, "id": "c-7f3a", "op": "install", "deployment": "d-12",
              "bundle": {"name": "digits-cnn", "version": 3, "url": "http://cloud/...", "sha256": "...",
                         "size": 33060},
              "max_bytes": 33060, "timeout_seconds": 30, "health_window_seconds": 60,
              "latency_budget_ms": 50.0, "mode": "switch", "canary_fraction": 0.0,
              "rollback_authorization": null, "issued_at": 1764230400.0}
             {"schema": "edgefleet.cmd", "v": 1, "id": "c-7f3b", "op": "rollback", "deployment": "d-12",
              "bundle": {"name": "digits-cnn", "version": 3},
              "reason": "wave 1 failure rate 0.50 over 0.20", "issued_at": ...}
    status:  {"schema": "edgefleet.status", "v": 1, "fleet": "lab", "device": "pi-07", "seq": 51,
              "command": "c-7f3a", "deployment": "d-12", "state": "active",
              "bundle": {"name": "digits-cnn", "version": 3}, "reason": null, "detail": {}, "at": ...}

`op: install` downloads, verifies, self-tests and switches; `mode` "shadow" runs the candidate on
mirrored requests without answering with it, "canary" answers a fraction of local requests with it.
`op: rollback` switches back to the previous slot (a bundle this device verified and ran before), and
only away from the bundle it names: the deployment's (name and version). A device whose current slot is
another bundle (it never installed that deployment's, or rolled back already) refuses with "failed",
reason "not_current"; a rollback that names no bundle (a cloud older than this field) is refused with
reason "unnamed_rollback", since rolling back whatever is current is how devices that never installed a
deployment were downgraded by its abort. The archive an install downloads must hold exactly the bundle
the command names: anything else is refused after the signature check ("bundle_mismatch").
Numbers are finite, non-negative and within LIMITS (a device cannot wait for ever); a command that
breaks a rule but carries a readable id and deployment is answered with "failed", reason "bad_command".
Installing a version not newer than the installed one is refused unless `rollback_authorization`
holds a signature by a trusted key over ROLLBACK_PURPOSE, the bundle's name and version, and an expiry.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature

from edgefleet.core import bounded_json
from edgefleet.core.bounded_json import JsonLimitError
from edgefleet.core.canonical import canonical_bytes, format_time, parse_time, utc_now
from edgefleet.core.errors import EdgefleetError, VerificationError
from edgefleet.core.signing import SigningKey, TrustStore

COMMAND_SCHEMA = "edgefleet.cmd"
STATUS_SCHEMA = "edgefleet.status"
VERSION = 1
OPS = ("install", "rollback")
MODES = ("switch", "shadow", "canary")
ROLLBACK_PURPOSE = "edgefleet-rollback-v1"
MAX_COMMAND_BYTES = 64 * 1024
# A device's update goes through these states in order; it ends in one of the last three.
STATES = ("received", "downloading", "verifying", "self_testing", "switching", "health_check",
          "active", "failed", "rolled_back")
FINAL_STATES = ("active", "failed", "rolled_back")
# The most a command may ask of a device (the cloud's deployment API checks the same limits).
LIMITS = {"timeout_seconds": 7 * 86400.0, "health_window_seconds": 7 * 86400.0, "latency_budget_ms": 3_600_000.0}


class OtaError(EdgefleetError):
    """A command or status message that is not well formed; `reason` is a stable code. For a command
    whose id and deployment could be read, `command_id` and `deployment` name it (else None)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.command_id: str | None = None
        self.deployment: str | None = None


@dataclass(frozen=True)
class BundleRef:
    name: str
    version: int
    url: str = ""
    sha256: str = ""
    size: int = 0


@dataclass(frozen=True)
class Command:
    id: str
    op: str
    deployment: str
    bundle: BundleRef | None = None
    max_bytes: int = 0
    timeout_seconds: float = 30.0
    health_window_seconds: float = 60.0
    latency_budget_ms: float | None = None
    mode: str = "switch"
    canary_fraction: float = 0.0
    rollback_authorization: dict | None = None
    reason: str = ""
    issued_at: float = 0.0

    def to_payload(self) -> bytes:
        data = {"schema": COMMAND_SCHEMA, "v": VERSION, **asdict(self)}
        if self.op == "rollback" and self.bundle is not None:
            data["bundle"] = {"name": self.bundle.name, "version": self.bundle.version}
        return json.dumps(data, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Status:
    fleet: str
    device: str
    command: str
    deployment: str
    state: str
    bundle: BundleRef | None = None
    reason: str | None = None
    detail: dict = field(default_factory=dict)
    at: float = 0.0
    seq: int = 0

    def to_payload(self) -> bytes:
        bundle = {"name": self.bundle.name, "version": self.bundle.version} if self.bundle else None
        data = {"schema": STATUS_SCHEMA, "v": VERSION, "fleet": self.fleet, "device": self.device, "seq": self.seq,
                "command": self.command, "deployment": self.deployment, "state": self.state, "bundle": bundle,
                "reason": self.reason, "detail": self.detail, "at": self.at}
        return json.dumps(data, separators=(",", ":")).encode()


def parse_command(payload: bytes | str) -> Command:
    data = _load(payload, COMMAND_SCHEMA)
    command_id, deployment = data.get("id"), data.get("deployment")
    try:
        return _command(data)
    except OtaError as err:
        if isinstance(command_id, str) and command_id and isinstance(deployment, str) and deployment:
            err.command_id, err.deployment = command_id, deployment
        raise


def _command(data: dict) -> Command:
    op = data.get("op")
    if op not in OPS:
        raise OtaError("bad_field", f"op must be one of {', '.join(OPS)}, got {op!r}")
    command_id, deployment = _text(data, "id"), _text(data, "deployment")
    if op == "rollback":
        named = data.get("bundle")
        if named is not None and not isinstance(named, Mapping):
            raise OtaError("bad_field", "a rollback's bundle must be an object {name, version} or absent")
        ref = BundleRef(_text(named, "name"), _count(named, "version")) if named is not None else None
        return Command(command_id, op, deployment, ref, reason=str(data.get("reason") or ""),
                       issued_at=_number(data, "issued_at", 0.0))
    bundle = data.get("bundle")
    if not isinstance(bundle, Mapping):
        raise OtaError("bad_field", "an install command needs a bundle object")
    ref = BundleRef(_text(bundle, "name"), _count(bundle, "version"), _text(bundle, "url"),
                    _text(bundle, "sha256"), _count(bundle, "size"))
    if not ref.url.startswith(("http://", "https://")):
        raise OtaError("bad_field", f"bundle.url must be an http(s) URL, got {ref.url!r}")
    mode = data.get("mode", "switch")
    if mode not in MODES:
        raise OtaError("bad_field", f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    fraction = _number(data, "canary_fraction", 0.0)
    if not 0.0 <= fraction <= 1.0:
        raise OtaError("bad_field", f"canary_fraction must be within [0, 1], got {fraction}")
    budget = data.get("latency_budget_ms")
    authorization = data.get("rollback_authorization")
    if authorization is not None and not isinstance(authorization, Mapping):
        raise OtaError("bad_field", "rollback_authorization must be an object or null")
    return Command(
        command_id, op, deployment, ref, max_bytes=_count(data, "max_bytes"),
        timeout_seconds=_limited(data, "timeout_seconds", 30.0),
        health_window_seconds=_limited(data, "health_window_seconds", 60.0),
        latency_budget_ms=None if budget is None else _limited(data, "latency_budget_ms", 0.0),
        mode=mode, canary_fraction=fraction,
        rollback_authorization=dict(authorization) if authorization is not None else None,
        issued_at=_number(data, "issued_at", 0.0),
    )


def parse_status(payload: bytes | str) -> Status:
    data = _load(payload, STATUS_SCHEMA)
    state = data.get("state")
    if state not in STATES:
        raise OtaError("bad_field", f"state must be one of {', '.join(STATES)}, got {state!r}")
    bundle = data.get("bundle")
    ref = BundleRef(_text(bundle, "name"), _count(bundle, "version")) if isinstance(bundle, Mapping) else None
    detail = data.get("detail") or {}
    if not isinstance(detail, Mapping):
        raise OtaError("bad_field", "detail must be an object")
    reason = data.get("reason")
    return Status(_text(data, "fleet"), _text(data, "device"), _text(data, "command"), _text(data, "deployment"),
                  state, ref, None if reason is None else str(reason), dict(detail), _number(data, "at", 0.0),
                  _count(data, "seq"))


def authorize_rollback(key: SigningKey, name: str, version: int, validity: timedelta = timedelta(days=1)) -> dict:
    """A signed permission to install `name` at `version` even where a newer version is installed."""
    payload = {"purpose": ROLLBACK_PURPOSE, "name": name, "version": int(version), "key_id": key.key_id,
               "expires_at": format_time(utc_now() + validity)}
    signature = key.private_key.sign(canonical_bytes(payload))
    return {**payload, "signature": base64.b64encode(signature).decode()}


def check_rollback_authorization(authorization: Mapping, trust: TrustStore, name: str, version: int,
                                 now: datetime | None = None) -> str:
    """Returns the signing key id, or raises VerificationError("bad_rollback_authorization", ...)."""
    def refuse(message: str) -> VerificationError:
        return VerificationError("bad_rollback_authorization", f"rollback authorization refused: {message}")

    try:
        payload = {"purpose": authorization["purpose"], "name": authorization["name"],
                   "version": authorization["version"], "key_id": authorization["key_id"],
                   "expires_at": authorization["expires_at"]}
        signature = base64.b64decode(authorization["signature"], validate=True)
        expires = parse_time(str(payload["expires_at"]))
    except (KeyError, TypeError, ValueError) as err:
        raise refuse(f"malformed ({err})") from err
    if payload["purpose"] != ROLLBACK_PURPOSE:
        raise refuse(f"purpose is {payload['purpose']!r}")
    if (payload["name"], payload["version"]) != (name, version):
        raise refuse(f"it is for {payload['name']} v{payload['version']}, not {name} v{version}")
    key = trust.public_key(str(payload["key_id"]))
    if key is None:
        raise refuse(f"key {payload['key_id']} is not trusted")
    try:
        key.verify(signature, canonical_bytes(payload))
    except InvalidSignature as err:
        raise refuse("the signature does not verify") from err
    if (now or utc_now()) >= expires:
        raise refuse(f"it expired at {payload['expires_at']}")
    return str(payload["key_id"])


def _load(payload: bytes | str, schema: str) -> dict:
    try:
        data = bounded_json.loads(payload, max_bytes=MAX_COMMAND_BYTES, what="message")
    except JsonLimitError as err:
        raise OtaError(err.reason, str(err)) from err
    if not isinstance(data, dict):
        raise OtaError("not_object", "message must be a JSON object")
    if data.get("schema") != schema:
        raise OtaError("wrong_schema", f"schema must be {schema!r}, got {data.get('schema')!r}")
    if data.get("v") != VERSION:
        raise OtaError("unknown_version", f"version {data.get('v')!r} is not supported (reads {VERSION})")
    return data


def _text(data: Mapping, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise OtaError("bad_field", f"{key} must be a non-empty string, got {value!r}")
    return value


def _count(data: Mapping, key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OtaError("bad_field", f"{key} must be a non-negative integer, got {value!r}")
    return value


def _limited(data: Mapping, key: str, default: float) -> float:
    value = _number(data, key, default)
    if value > LIMITS[key]:
        raise OtaError("bad_field", f"{key} must be at most {LIMITS[key]:g}, got {value:g}")
    return value


def _number(data: Mapping, key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise OtaError("bad_field", f"{key} must be a finite non-negative number, got {value!r}")
    return float(value)
