"""Who may do what on MQTT: passwords, the topic rules, and the same rules as Mosquitto files.

Both brokers enforce one policy. The embedded amqtt broker (`edgefleet.cloud.broker`) calls
`may_publish` and `may_subscribe` from its plugins; for Mosquitto, `write_mosquitto_config` writes
a password file and an ACL file that say the same thing.

- A device (username = its id) publishes only `edgefleet/v1/<its fleet>/<its id>/{birth,death,telemetry,status}`
  and subscribes only to `edgefleet/v1/<its fleet>/<its id>/cmd`, never through a wildcard.
- The cloud (username `CLOUD_USERNAME`) may do anything under `edgefleet/v1/#`.
- Everyone else, anonymous included, may do nothing.
- On the embedded broker a device must use its id as MQTT client id, and no device id may start with
  `RESERVED_PREFIX` (the cloud's names), so that no device can take over another client's session.

Passwords are stored in Mosquitto 2.x's format, `$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>`,
so the `Device.password_hash` column can be copied into a Mosquitto password file unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import CLOUD_KINDS, DEVICE_KINDS, PREFIX, TopicError, check_id, topic

log = logging.getLogger(__name__)

CLOUD_USERNAME = "edgefleet-cloud"
# Names starting with this belong to the cloud (its username, its client ids such as "edgefleet-ingest");
# no device may have one, or it could log in under the cloud's client id and take over its session.
RESERVED_PREFIX = "edgefleet-"
DEFAULT_ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12  # as mosquitto_passwd
HASH_PATTERN = re.compile(r"^\$7\$(\d{1,9})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$")
_CLOUD_SCOPE = PREFIX + "/"


class MqttAuthError(EdgefleetError):
    """A device record or password hash that cannot go into a broker's configuration."""


# --- passwords --------------------------------------------------------------------------------------
def new_password() -> str:
    """A fresh device or service password: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The password in Mosquitto 2.x's `$7$` format (PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash)."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str | None, hashed: str | None) -> bool:
    """True if `password` matches a `$7$` hash; False for a wrong password or a malformed hash."""
    if password is None or not hashed:
        return False
    match = HASH_PATTERN.match(hashed)
    if not match:
        return False
    iterations = int(match.group(1))
    try:
        salt = base64.b64decode(match.group(2), validate=True)
        expected = base64.b64decode(match.group(3), validate=True)
    except (binascii.Error, ValueError):
        return False
    if iterations < 1 or not salt or not expected:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, dklen=len(expected))
    return hmac.compare_digest(digest, expected)


# --- topic rules ------------------------------------------------------------------------------------
def _device_topic(device: str, fleet: str | None, kind: str) -> str | None:
    if not fleet:
        return None
    try:
        return topic(fleet, device, kind)
    except TopicError:
        return None


def _under_cloud_scope(name: str) -> bool:
    """`name` is matched by the filter `edgefleet/v1/#` (which includes `edgefleet/v1` itself)."""
    return name == PREFIX or name.startswith(_CLOUD_SCOPE)


def may_publish(username: str | None, topic_name: str, device_fleet: str | None) -> bool:
    """May `username` publish to `topic_name`? `device_fleet` is the device's fleet from the database,
    None if the username is not a registered device."""
    if not username or not topic_name or "+" in topic_name or "#" in topic_name:
        return False
    if username == CLOUD_USERNAME:
        return _under_cloud_scope(topic_name)
    return any(topic_name == _device_topic(username, device_fleet, kind) for kind in DEVICE_KINDS)


def may_subscribe(username: str | None, topic_filter: str, device_fleet: str | None) -> bool:
    """May `username` subscribe to `topic_filter`? A device only to its own cmd topic, spelled out
    (no wildcards); the cloud to any filter inside `edgefleet/v1/#`. Also used for "may receive"."""
    if not username or not topic_filter:
        return False
    if username == CLOUD_USERNAME:
        return _under_cloud_scope(topic_filter)
    return any(topic_filter == _device_topic(username, device_fleet, kind) for kind in CLOUD_KINDS)


def is_reserved_id(device_id: str) -> bool:
    """True for ids a device must not have (the device registry should refuse them)."""
    return device_id.startswith(RESERVED_PREFIX)


def client_id_allowed(username: str | None, client_id: str | None) -> bool:
    """A device connects with its own id as MQTT client id, so that it cannot take over another
    client's session (the cloud's or another device's). The cloud may use any client id."""
    if username == CLOUD_USERNAME:
        return True
    return bool(username) and client_id == username


# --- Mosquitto files --------------------------------------------------------------------------------
def _write_private(path: Path, text: str, mode: int) -> None:
    """Writes `text` to `path` atomically, created with `mode` (no moment when it is more readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, mode)  # in case the umask removed bits we want
    os.replace(tmp, path)


def _checked_hash(owner: str, hashed: str) -> str:
    if not HASH_PATTERN.match(hashed or ""):
        raise MqttAuthError(f"password hash of {owner!r} is not in Mosquitto's $7$ format")
    return hashed


def write_mosquitto_config(
    directory: Path, devices: Iterable[tuple[str, str, str]], cloud_password_hash: str
) -> dict[str, Path]:
    """Writes `passwd` (mode 0600), `acl` and a `mosquitto.conf` snippet into `directory`.

    `devices` are (id, fleet, password_hash). Returns {"passwd": ..., "acl": ..., "conf": ...}.
    Mosquitto re-reads both files on SIGHUP, so the command can be re-run as devices are added.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    passwd_lines = [f"{CLOUD_USERNAME}:{_checked_hash(CLOUD_USERNAME, cloud_password_hash)}"]
    acl_lines = [
        "# edgefleet MQTT access control (generated; edit the cloud database, not this file).",
        "# No lines before the first 'user': anonymous clients get nothing.",
        f"user {CLOUD_USERNAME}",
        f"topic readwrite {PREFIX}/#",
    ]
    seen: set[str] = set()
    for device, fleet, hashed in devices:
        try:
            check_id(device, "device")
            check_id(fleet, "fleet")
        except TopicError as err:
            raise MqttAuthError(f"cannot write broker configuration: {err}") from err
        if is_reserved_id(device):
            raise MqttAuthError(f"device id {device!r} is reserved for the cloud ('{RESERVED_PREFIX}...')")
        if device in seen:
            raise MqttAuthError(f"device {device!r} is listed twice")
        seen.add(device)
        passwd_lines.append(f"{device}:{_checked_hash(device, hashed)}")
        acl_lines += ["", f"user {device}"]
        acl_lines += [f"topic write {topic(fleet, device, kind)}" for kind in DEVICE_KINDS]
        acl_lines += [f"topic read {topic(fleet, device, kind)}" for kind in CLOUD_KINDS]

    paths = {"passwd": directory / "passwd", "acl": directory / "acl", "conf": directory / "mosquitto.conf"}
    _write_private(paths["passwd"], "\n".join(passwd_lines) + "\n", 0o600)
    _write_private(paths["acl"], "\n".join(acl_lines) + "\n", 0o644)
    conf = [
        "# edgefleet: add these lines to mosquitto.conf (Mosquitto 2.x), or include this file with",
        f"#   include_dir {directory.resolve()}",
        "# The broker's user must be able to read passwd (mode 0600): chown it to that user.",
        "# After re-running `edgefleet cloud mosquitto-config`, reload with: kill -HUP <mosquitto pid>",
        "# Note: Mosquitto cannot tie a client id to a username per user; 'use_username_as_clientid true'",
        "# would, but then the cloud could hold only one connection.",
        "# Without a 'listener' line Mosquitto 2.x listens on localhost:1883 only.",
        "allow_anonymous false",
        f"password_file {paths['passwd'].resolve()}",
        f"acl_file {paths['acl'].resolve()}",
    ]
    _write_private(paths["conf"], "\n".join(conf) + "\n", 0o644)
    log.info("wrote Mosquitto configuration for %d device(s) to %s", len(seen), directory)
    return paths
