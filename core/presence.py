"""Presence: whether a device is online, as ONE retained message per device on its `presence` topic.

    birth: {"schema": "edgefleet.birth", "v": 1, "fleet": "lab", "device": "pi-07", "online": true,
            "connection": 1764230400123456789, "model": {"name": "digits-cnn", "version": 3},
            "agent_version": "0.1.0", "backend": "openvino", "runtime": {"target": "openvino-cpu", ...}, ...}
    death: {"schema": "edgefleet.death", "v": 1, "fleet": "lab", "device": "pi-07", "online": false,
            "connection": 1764230400123456789}

The device publishes its birth (retained, QoS 1) on `edgefleet/v1/<fleet>/<device>/presence` when a
connection comes up, and arms its last will, the death, on the same topic (retained, QoS 1); a clean
stop publishes the death itself. Each replaces the other at the broker, so a new subscriber reads one
message, and it is the latest. Both carry their connection's stamp (nanoseconds, increasing per
connection): the cloud applies a birth only if its connection is newer than the last presence it
applied, and a death if it is at least as new, whatever order they arrive in.

Agents before the `presence` topic published births on `birth` and deaths on `death`; the cloud still
reads both (the topic then says which it is).

`parse_presence` is the cloud's gate: it raises PresenceError(reason, message) for anything else, and
what it returns fits the cloud's columns (the birth's backend is checked like agent_version; of its
free-form runtime only a bounded summary is kept, see runtime_summary). The JSON Schemas are
docs/schemas/birth.json and death.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.core import bounded_json
from edgefleet.core.bounded_json import INT64_MAX, JsonLimitError
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.telemetry import MAX_INT, MAX_NAME
from edgefleet.core.topics import TopicError, check_id

SCHEMAS = {"birth": "edgefleet.birth", "death": "edgefleet.death"}
KIND_OF_SCHEMA = {schema: kind for kind, schema in SCHEMAS.items()}
VERSION = 1
MAX_PRESENCE_BYTES = 64 * 1024
MAX_AGENT_VERSION = 64  # characters the cloud stores
MAX_BACKEND = 64
RUNTIME_TEXTS = ("target", "format", "precision", "path")  # what the cloud keeps of a birth's runtime
MAX_RUNTIME_TEXT = 200
MAX_FALLBACKS = 8


class PresenceError(EdgefleetError):
    """A birth or death payload the cloud refuses; `reason` is a stable code for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Presence:
    kind: str  # "birth" or "death"
    fleet: str | None  # as the payload says (None if it does not); the ingest checks it against the topic
    device: str | None
    connection: int | None  # the connection's stamp; None from a sender that has none
    model_name: str | None = None  # births only
    model_version: int | None = None
    agent_version: str | None = None
    backend: str | None = None  # what runs the model, as the device's /healthz says
    runtime: dict | None = None  # a bounded summary of the birth's runtime (runtime_summary)


def death_payload(fleet: str, device: str, connection: int) -> bytes:
    """The death (last will) of the connection stamped `connection`."""
    return json.dumps({"schema": SCHEMAS["death"], "v": VERSION, "fleet": fleet, "device": device,
                       "online": False, "connection": connection}, separators=(",", ":")).encode()


def stamped(birth: bytes, connection: int) -> bytes:
    """The birth message with its connection's stamp added (left as it is when it is not a JSON object)."""
    try:
        data = json.loads(birth)
    except ValueError:
        return birth
    if not isinstance(data, dict):
        return birth
    return json.dumps({**data, "connection": connection}, separators=(",", ":")).encode()


def parse_presence(payload: bytes | str, topic_kind: str = "presence") -> Presence:
    """Validates a birth or death. On the `presence` topic the schema says which one it is; on the old
    `birth`/`death` topics the topic does, and the schema may be left out."""
    try:
        data = bounded_json.loads(payload, max_bytes=MAX_PRESENCE_BYTES, what="presence message")
    except JsonLimitError as err:
        raise PresenceError(err.reason, str(err)) from err
    if not isinstance(data, dict):
        raise PresenceError("not_object", "a presence message must be a JSON object")
    schema = data.get("schema")
    kind = KIND_OF_SCHEMA.get(schema) if isinstance(schema, str) else None
    if topic_kind in SCHEMAS:  # an old topic: the schema may be missing, but must not say the other kind
        kind = topic_kind if schema is None or kind == topic_kind else None
    if kind is None:
        expected = SCHEMAS.get(topic_kind) or " or ".join(SCHEMAS.values())
        raise PresenceError("wrong_schema", f"schema must be {expected}, got {_shown(schema)}")
    if data.get("v", VERSION) != VERSION:
        raise PresenceError("unknown_version", f"presence version {_shown(data.get('v'))} is not supported "
                                               f"(this edgefleet reads {VERSION})")
    if "online" in data and data["online"] is not (kind == "birth"):
        raise PresenceError("bad_field", f"a {kind} must say online: {str(kind == 'birth').lower()}")
    model_name = model_version = agent_version = backend = runtime = None
    if kind == "birth":
        model = data.get("model")
        if model is not None:
            if not isinstance(model, Mapping):
                raise PresenceError("bad_field", "model must be an object")
            model_name = _text(model, "name", "model.name", MAX_NAME)
            model_version = _int(model, "version", "model.version", MAX_INT)
        if data.get("agent_version") is not None:
            agent_version = _text(data, "agent_version", "agent_version", MAX_AGENT_VERSION)
        if data.get("backend") is not None:
            backend = _text(data, "backend", "backend", MAX_BACKEND)
        runtime = runtime_summary(data.get("runtime"))
    connection = None if data.get("connection") is None else _int(data, "connection", "connection", INT64_MAX)
    return Presence(kind, _id(data, "fleet"), _id(data, "device"), connection, model_name, model_version,
                    agent_version, backend, runtime)


def runtime_summary(runtime: object) -> dict | None:
    """What the cloud keeps of a birth's `runtime` (the agent's Predictor.describe(), informational and not
    checked): its short text fields and up to MAX_FALLBACKS skipped entries with why, each text cut to
    MAX_RUNTIME_TEXT characters. None when nothing of that shape is there."""
    if not isinstance(runtime, Mapping):
        return None

    def cut(value: object) -> str | None:
        return value[:MAX_RUNTIME_TEXT].replace("\0", "") if isinstance(value, str) and value else None

    summary: dict = {key: cut(runtime.get(key)) for key in RUNTIME_TEXTS if cut(runtime.get(key))}
    fallbacks = runtime.get("fallbacks")
    if isinstance(fallbacks, list) and fallbacks:
        summary["fallbacks"] = [{"entry": cut(f.get("entry")) or "?", "reason": cut(f.get("reason")) or ""}
                                for f in fallbacks[:MAX_FALLBACKS] if isinstance(f, Mapping)]
    return summary or None


def _id(data: Mapping, key: str) -> str | None:
    if data.get(key) is None:
        return None
    try:
        return check_id(data[key], key)
    except TopicError as err:
        raise PresenceError("bad_field", str(err)[:200]) from err


def _text(data: Mapping, key: str, label: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or "\0" in value:
        raise PresenceError("bad_field", f"{label} must be a string of 1 to {limit} characters without NUL, "
                                         f"got {_shown(value)}")
    return value


def _int(data: Mapping, key: str, label: str, limit: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PresenceError("bad_field", f"{label} must be a non-negative integer, got {_shown(value)}")
    if value > limit:
        raise PresenceError("number_out_of_range", f"{label} is {value}, over the largest stored integer {limit}")
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
