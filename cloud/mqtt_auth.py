"""Who may do what on MQTT: passwords, the topic rules, and the same rules as a Mosquitto configuration.

Both brokers enforce one policy. The embedded amqtt broker (`edgefleet.cloud.broker`) calls `login_allowed`,
`may_publish` and `may_subscribe` from its plugins; for Mosquitto, `write_mosquitto_config` writes a
password file, an ACL file and a mosquitto.conf that say the same thing.

- A device (username = its id) publishes only `edgefleet/v1/<its fleet>/<its id>/{birth,death,telemetry,status}`
  and subscribes only to `edgefleet/v1/<its fleet>/<its id>/cmd`, never through a wildcard.
- The cloud's own clients (`CLOUD_CLIENTS`) each have their own username, which is also their client id, and
  only the rights they need: `edgefleet-ingest` reads the device kinds, `edgefleet-rollouts` and
  `edgefleet-labels` (labels forwarded to the device that predicted) write `cmd`.
  Their passwords are derived from one cloud secret (`cloud_password`), so the operator keeps one value.
- Everyone else, anonymous included, may do nothing.
- Every client's MQTT client id is its username (the embedded broker refuses any other; Mosquitto replaces
  it, `use_username_as_clientid`), and no device id starts with `RESERVED_PREFIX`: so no credentials can
  open, take over or wipe the session of another client (another device's queued commands, the ingest's
  persistent session).

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import CLOUD_KINDS, DEVICE_KINDS, TopicError, check_id, subscription, topic

log = logging.getLogger(__name__)

# Names starting with this belong to the cloud (its clients' usernames and client ids such as
# "edgefleet-ingest"); no device may have one, or it could log in under a cloud client's id.
RESERVED_PREFIX = "edgefleet-"
DEFAULT_ITERATIONS = 101  # mosquitto_passwd's default
SALT_BYTES = 12  # as mosquitto_passwd
MAX_INFLIGHT = 1000  # max_inflight_messages of the generated mosquitto.conf (see _conf_lines)
HASH_PATTERN = re.compile(r"^\$7\$(\d{1,9})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$")


class MqttAuthError(EdgefleetError):
    """A device record or password hash that cannot go into a broker's configuration."""


@dataclass(frozen=True)
class CloudClient:
    """One of the cloud's own MQTT connections: its username (also its client id) and the topic filters it
    may subscribe to (`reads`) and publish to (`writes`)."""

    username: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


INGEST = CloudClient("edgefleet-ingest", reads=tuple(subscription(kind) for kind in DEVICE_KINDS))
ROLLOUTS = CloudClient("edgefleet-rollouts", writes=tuple(subscription(kind) for kind in CLOUD_KINDS))
# forwards labels the cloud received to the device that made the prediction (cloud/label_forwarder.py)
LABELS = CloudClient("edgefleet-labels", writes=(subscription("cmd"),))
CLOUD_CLIENTS: dict[str, CloudClient] = {client.username: client for client in (INGEST, ROLLOUTS, LABELS)}


def ingest_worker(name: str) -> CloudClient:
    """An ingest worker of `cloud up --role ingest --worker NAME` (cloud/roles.py): the ingest's rights under
    its own username and client id, so that each worker keeps its own broker session."""
    return CloudClient(f"{INGEST.username}-{name}", INGEST.reads)


def rollouts_worker(name: str) -> tuple[CloudClient, CloudClient]:
    """The rollout engine's and the label forwarder's clients of `cloud up --role rollouts --worker NAME`:
    their rights under usernames of their own, so that on a broker binding client ids to usernames
    (`use_username_as_clientid`) two rollouts workers do not take each other's connection."""
    return (CloudClient(f"{ROLLOUTS.username}-{name}", writes=ROLLOUTS.writes),
            CloudClient(f"{LABELS.username}-{name}", writes=LABELS.writes))


def worker_clients(ingest_workers: Iterable[str] = (), rollouts_workers: Iterable[str] = ()) -> dict[str, CloudClient]:
    """By username: the clients of the named ingest and rollouts workers, beside CLOUD_CLIENTS."""
    clients = [ingest_worker(name) for name in ingest_workers]
    clients += [client for name in rollouts_workers for client in rollouts_worker(name)]
    return {client.username: client for client in clients}


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


# --- the cloud's clients ----------------------------------------------------------------------------
def new_cloud_secret() -> str:
    """A fresh cloud MQTT secret (what `EDGEFLEET_MQTT_PASSWORD` holds)."""
    return new_password()


def cloud_password(secret: str, client: CloudClient | str) -> str:
    """The password of one cloud client, derived from the cloud's secret: HMAC-SHA256(secret, username),
    URL-safe base64. One secret gives every client its own password; knowing one password reveals nothing
    about the others or the secret."""
    username = client.username if isinstance(client, CloudClient) else client
    digest = hmac.new(secret.encode("utf-8"), f"edgefleet-mqtt-client:{username}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def cloud_credentials(secret: str | None, client: CloudClient) -> tuple[str | None, str | None]:
    """(username, password) for `client`; (None, None) without a secret (a broker that takes anonymous clients)."""
    return (client.username, cloud_password(secret, client)) if secret else (None, None)


# --- topic rules ------------------------------------------------------------------------------------
def _device_topic(device: str, fleet: str | None, kind: str) -> str | None:
    if not fleet:
        return None
    try:
        return topic(fleet, device, kind)
    except TopicError:
        return None


def _within(name: str, allowed: str) -> bool:
    """Is every topic that `name` (a topic name or filter) can match also matched by `allowed`? As Mosquitto's
    ACL check: a '+' in `allowed` covers one level (a '+' too, never '#'); a '#' covers the rest."""
    levels, rule = name.split("/"), allowed.split("/")
    for index, want in enumerate(rule):
        if want == "#":
            return True
        if index >= len(levels) or levels[index] == "#" or (want != "+" and want != levels[index]):
            return False
    return len(levels) == len(rule)


def may_publish(username: str | None, topic_name: str, device_fleet: str | None) -> bool:
    """May `username` publish to `topic_name`? `device_fleet` is the device's fleet from the database,
    None if the username is not a registered device."""
    if not username or not topic_name or "+" in topic_name or "#" in topic_name:
        return False
    if username in CLOUD_CLIENTS:
        return any(_within(topic_name, allowed) for allowed in CLOUD_CLIENTS[username].writes)
    return any(topic_name == _device_topic(username, device_fleet, kind) for kind in DEVICE_KINDS)


def may_subscribe(username: str | None, topic_filter: str, device_fleet: str | None) -> bool:
    """May `username` subscribe to `topic_filter`? A device only to its own cmd topic, spelled out (no
    wildcards); a cloud client to filters inside its `reads`. Also used for "may receive"."""
    if not username or not topic_filter:
        return False
    if username in CLOUD_CLIENTS:
        return any(_within(topic_filter, allowed) for allowed in CLOUD_CLIENTS[username].reads)
    return any(topic_filter == _device_topic(username, device_fleet, kind) for kind in CLOUD_KINDS)


def is_reserved_id(device_id: str) -> bool:
    """True for ids a device must not have (the device registry should refuse them)."""
    return device_id.startswith(RESERVED_PREFIX)


def client_id_allowed(username: str | None, client_id: str | None) -> bool:
    """Every client, device or cloud, connects with its username as MQTT client id, so that no credentials
    can take over another client's session."""
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


@dataclass(frozen=True)
class Listener:
    """Where the generated Mosquitto listens (`bind` None: every interface) and keeps its persistence file."""

    port: int = 1883
    bind: str | None = "127.0.0.1"
    persistence_dir: Path | None = None  # None: <directory>/persistence
    autosave_seconds: int = 30
    tls_cert: Path | None = None  # with tls_key: the listener speaks TLS only (devices use mqtts://)
    tls_key: Path | None = None


def _cloud_lines(cloud_hashes: Mapping[str, str], workers: Mapping[str, CloudClient]) -> tuple[list[str], list[str]]:
    clients = {**CLOUD_CLIENTS, **workers}
    if set(cloud_hashes) != set(clients):
        raise MqttAuthError(f"need password hashes of exactly the cloud's clients {sorted(clients)}, "
                            f"got {sorted(cloud_hashes)}")
    passwd, acl = [], []
    for name, client in clients.items():
        passwd.append(f"{name}:{_checked_hash(name, cloud_hashes[name])}")
        acl += ["", f"user {name}"]
        acl += [f"topic read {allowed}" for allowed in client.reads]
        acl += [f"topic write {allowed}" for allowed in client.writes]
    return passwd, acl


def _conf_lines(paths: dict[str, Path], listener: Listener) -> list[str]:
    address = f" {listener.bind}" if listener.bind else ""
    return [
        "# edgefleet: a complete Mosquitto 2.x configuration, generated by `edgefleet cloud mosquitto-config`.",
        f"# Run it as is: mosquitto -c {paths['conf'].resolve()}",
        "# The broker's user must read passwd (mode 0600) and write the persistence directory: chown both to it.",
        "# After re-running the command (new devices), reload with: kill -HUP <mosquitto pid>",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {paths['passwd'].resolve()}",
        f"acl_file {paths['acl'].resolve()}",
        "# Persistent sessions and the QoS 1 messages queued for them (an install command for an offline",
        "# device, telemetry for the ingest) survive a restart: saved at shutdown and every autosave_interval.",
        "persistence true",
        f"persistence_location {paths['persistence'].resolve()}/",
        f"autosave_interval {listener.autosave_seconds}",
        "# The ingest's queue while it restarts: dropping from it would lose windows devices already deleted.",
        "max_queued_messages 100000",
        "# QoS 1 messages sent to one client and not yet acknowledged (Mosquitto's default is 20): the ingest",
        "# acknowledges after its commit, a batch at a time, so 20 in flight capped its rate (bench_ingest).",
        f"max_inflight_messages {MAX_INFLIGHT}",
        f"listener {listener.port}{address}",
        *([f"certfile {Path(listener.tls_cert).resolve()}", f"keyfile {Path(listener.tls_key).resolve()}",
           "# the oldest TLS version accepted (Mosquitto 2.x: a minimum)", "tls_version tlsv1.2"]
          if listener.tls_cert is not None and listener.tls_key is not None else []),
        "# A client's id is its username: no credentials can take over another client's session (another",
        "# device's queued commands, the ingest's). Repeat this line after every listener you add.",
        "use_username_as_clientid true",
    ]


def write_mosquitto_config(directory: Path, devices: Iterable[tuple[str, str, str]], cloud_hashes: Mapping[str, str],
                           listener: Listener | None = None, ingest_workers: Iterable[str] = (),
                           rollouts_workers: Iterable[str] = ()) -> dict[str, Path]:
    """Writes `passwd` (mode 0600), `acl` and a complete `mosquitto.conf` into `directory`, and makes the
    persistence directory (mode 0700).

    `devices` are (id, fleet, password_hash); `cloud_hashes` the password hash of every cloud client
    (`CLOUD_CLIENTS`, one `ingest_worker` per name in `ingest_workers` and the two `rollouts_worker` clients per
    name in `rollouts_workers`, by username).
    Returns {"passwd", "acl", "conf", "persistence": Path}. Mosquitto
    re-reads passwd and acl on SIGHUP, so the command can be re-run as devices are added.
    """
    directory = Path(directory)
    listener = listener or Listener()
    directory.mkdir(parents=True, exist_ok=True)
    passwd_lines, cloud_acl = _cloud_lines(cloud_hashes, worker_clients(ingest_workers, rollouts_workers))
    acl_lines = [
        "# edgefleet MQTT access control (generated; edit the cloud database, not this file).",
        "# No lines before the first 'user': anonymous clients get nothing.",
        *cloud_acl,
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

    paths = {"passwd": directory / "passwd", "acl": directory / "acl", "conf": directory / "mosquitto.conf",
             "persistence": Path(listener.persistence_dir or directory / "persistence")}
    paths["persistence"].mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(paths["passwd"], "\n".join(passwd_lines) + "\n", 0o600)
    _write_private(paths["acl"], "\n".join(acl_lines) + "\n", 0o644)
    _write_private(paths["conf"], "\n".join(_conf_lines(paths, listener)) + "\n", 0o644)
    log.info("wrote Mosquitto configuration for %d device(s) to %s", len(seen), directory)
    return paths
