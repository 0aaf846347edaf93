"""MQTT topic names: edgefleet/v1/<fleet>/<device>/<kind>.

Devices publish presence (their birth, and their last will: one retained message, see core/presence.py),
telemetry and status under their own prefix and subscribe only to their own cmd topic; the cloud
subscribes to the wildcards. `birth` and `death` are the presence topics of agents before `presence`
(two retained messages per device); devices may still publish there and the cloud still reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgefleet.core.errors import EdgefleetError

PREFIX = "edgefleet/v1"
LEGACY_PRESENCE_KINDS = ("birth", "death")  # older agents' presence topics, still accepted
DEVICE_KINDS = ("presence", "telemetry", "status", *LEGACY_PRESENCE_KINDS)  # published by a device
CLOUD_KINDS = ("cmd",)  # published by the cloud to one device
KINDS = DEVICE_KINDS + CLOUD_KINDS
# Fleet and device ids are safe in topics, file names and URLs: no '/', '+', '#', spaces.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TopicError(EdgefleetError):
    """A topic or id that edgefleet does not accept."""


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise TopicError(f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '.', '-', "
                         f"starting with a letter or digit")
    return value


def topic(fleet: str, device: str, kind: str) -> str:
    if kind not in KINDS:
        raise TopicError(f"unknown topic kind {kind!r}; expected one of {', '.join(KINDS)}")
    return f"{PREFIX}/{check_id(fleet, 'fleet')}/{check_id(device, 'device')}/{kind}"


def device_prefix(fleet: str, device: str) -> str:
    """Everything a device may publish under."""
    return f"{PREFIX}/{check_id(fleet, 'fleet')}/{check_id(device, 'device')}/"


def subscription(kind: str, fleet: str = "+") -> str:
    """The cloud's subscription for one kind of device message, in one fleet or all."""
    return f"{PREFIX}/{fleet}/+/{kind}"


@dataclass(frozen=True)
class Topic:
    fleet: str
    device: str
    kind: str


def parse(name: str) -> Topic:
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != PREFIX or parts[4] not in KINDS:
        raise TopicError(f"topic {name!r} is not {PREFIX}/<fleet>/<device>/<kind>")
    return Topic(check_id(parts[2], "fleet"), check_id(parts[3], "device"), parts[4])
