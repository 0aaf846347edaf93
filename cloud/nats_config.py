"""The MQTT policy of `mqtt_auth` as the configuration of a NATS cluster serving MQTT over JetStream.

A clustered broker that Debian packages (nats-server) and that devices reach over MQTT 3.1.1: every node
serves MQTT, keeps sessions, retained presence and QoS 1 messages in JetStream streams replicated on up
to three nodes (`stream_replicas`), so a device whose node dies reconnects to another and finds its
session, and a node kill loses no acknowledged message while a majority of the replicas lives.

`write_nats_config` writes one `<node>.conf` per node (server name, client, route and MQTT ports, its
JetStream directory, routes to every other node) and one `users.conf` they include (mode 0600). With
`tls=NatsTls(cert, key, ca)` every listener speaks TLS only: devices use `mqtts://node:port` (the agent's
`[mqtt] ca` for a private CA), the ingest workers `tls://node:4222` (`--mqtt-ca`), and the routes between
nodes are TLS too, each node checking its peer's certificate against `ca` (the system's store without one),
so the certificate must name every node's host:

- a device publishes only its own `presence`, `telemetry`, `status` (and legacy birth/death) subjects and
  subscribes only to its own `cmd`; the cloud's clients get the rights of `CLOUD_CLIENTS`; a simulator
  user (`sim_users`) may publish and read the device topics of one fleet, for `edgefleet sim --light`;
- everyone may subscribe to `$MQTT.sub.>`: NATS delivers QoS 1 messages on those internal subjects and
  refuses a QoS 1 subscription without it; an MQTT client cannot subscribe there itself (NATS refuses
  `$MQTT/...` filters), and `allowed_connection_types: ["MQTT"]` keeps devices off the NATS protocol port;
- the ingest user alone (`edgefleet-ingest`) may also use the NATS protocol, for the ingest workers
  (cloud/ingest_nats.py, `cloud up --role ingest --mqtt-url nats://...`): beside its MQTT rights it may
  publish to the JetStream API subjects that create and read the stream `INGEST_STREAM` (the device
  subjects, `edgefleet.v1.*.*.<kind>`) and create, read and pull from its durable consumer
  `INGEST_CONSUMER`, acknowledge that consumer's messages, and receive on `INGEST_INBOX.>`; it can delete
  neither, touch no other stream, nor publish a device subject (tests/cloud/test_nats_ingest.py);
- no anonymous user.

Devices publish over MQTT as before; a device's `edgefleet/v1/<fleet>/<device>/<kind>` is the NATS subject
`edgefleet.v1.<fleet>.<device>.<kind>`, and its QoS 1 publishes land in any stream capturing that
subject (with an `Nmqtt-Pub` header), which is how the ingest workers share the stream on NATS.

What NATS 2.9 does not support of the policy (tests/cloud/test_nats_cluster.py shows the rest):
- passwords: NATS checks bcrypt (`$2a$/$2b$`) or plain text, not the PBKDF2 `$7$` hashes the cloud keeps
  (`Device.password_hash`), so a device's entry needs a bcrypt hash made where its password is known
  (`bcrypt_hash`, at registration); a device given without one is refused here, by name;
- client id = username: NATS does not bind them, so credentials can take over another client's session;
- ids with '.': a '.' separates NATS subject tokens, so a fleet or device id containing one is refused;
- `$share/...` shared subscriptions: NATS 2.9's MQTT layer has none, so the ingest scales out on
  NATS's own work sharing instead (one durable JetStream pull consumer, above); the MQTT ingest on
  NATS (`--mqtt-url mqtt://node:port`) still runs as one worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, INGEST, MqttAuthError, _write_private, is_reserved_id
from edgefleet.core.tls import check_server_files
from edgefleet.core.topics import CLOUD_KINDS, DEVICE_KINDS, TopicError, check_id, subscription, topic

log = logging.getLogger(__name__)
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
# A device's password is 32 random bytes (mqtt_auth.new_password): no work factor makes guessing it harder,
# while each NATS connect checks the hash (a node's devices reconnecting at once) and bulk registration
# makes one per device, so the cheapest cost (about 1 ms, against 60-80 ms at bcrypt's usual 10).
DEVICE_BCRYPT_ROUNDS = 4
MQTT_DELIVERY = "$MQTT.sub.>"  # where NATS delivers QoS 1 messages to MQTT subscribers
CLUSTER_NAME = "edgefleet"
NATS_SCHEMES = ("nats://", "tls://")  # a NATS-protocol URL (the ingest workers'), plain or TLS
# The ingest's native source (cloud/ingest_nats.py): a JetStream stream capturing the device subjects, one
# durable pull consumer every ingest worker shares, replies on the ingest's own inbox prefix.
INGEST_STREAM = "EDGEFLEET_DEVICES"
INGEST_CONSUMER = "edgefleet-ingest"
INGEST_INBOX = "_INBOX_edgefleet_ingest"


def ingest_subjects() -> list[str]:
    """The subjects of the stream: every device kind of every fleet (the MQTT ingest's filters, mapped)."""
    return [subject(f) for f in INGEST.reads]


def ingest_native_rights() -> tuple[list[str], list[str]]:
    """(publish, subscribe) the ingest needs on the NATS protocol: create, read and update its stream (the
    limits of `StreamSettings`), create (or update), read and pull from its consumer, acknowledge its
    messages, receive replies on its inbox. Nothing else: it can delete neither the stream nor the
    consumer, nor publish a device subject."""
    api, stream, consumer = "$JS.API", INGEST_STREAM, INGEST_CONSUMER
    publish = [f"{api}.INFO", f"{api}.STREAM.CREATE.{stream}", f"{api}.STREAM.INFO.{stream}",
               f"{api}.STREAM.UPDATE.{stream}",
               f"{api}.CONSUMER.CREATE.{stream}.{consumer}", f"{api}.CONSUMER.CREATE.{stream}.{consumer}.>",
               f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}", f"{api}.CONSUMER.INFO.{stream}.{consumer}",
               f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}", f"$JS.ACK.{stream}.{consumer}.>"]
    return publish, [f"{INGEST_INBOX}.>"]


@dataclass(frozen=True)
class NatsTls:
    """The PEM certificate (chain) and key every node serves on its client, MQTT and route ports, and the CA
    bundle nodes check each other's route certificates with (None: the system's store)."""

    cert: Path
    key: Path
    ca: Path | None = None

    def block(self, *, routes: bool = False) -> str:
        files = {"cert_file": self.cert, "key_file": self.key}
        if routes and self.ca is not None:
            files["ca_file"] = self.ca
        return "tls { " + ", ".join(f"{k}: {json.dumps(str(Path(v).resolve()))}" for k, v in files.items()) + " }"


@dataclass(frozen=True)
class NatsNode:
    """One server of the cluster: its name and loopback (or `host`) ports for NATS clients, routes, MQTT."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    host: str = "127.0.0.1"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"


def bcrypt_hash(password: str, rounds: int = 10) -> str:
    """The password as NATS checks it (bcrypt); made where the plain password is known."""
    import bcrypt

    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode()


def subject(mqtt_filter: str) -> str:
    """An MQTT topic or filter as the NATS subject the MQTT layer maps it to ('/' -> '.', '+' -> '*',
    '#' -> '>')."""
    if "." in mqtt_filter:
        raise MqttAuthError(f"{mqtt_filter!r}: NATS cannot carry a '.' in an MQTT topic level")
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in mqtt_filter.split("/"))


def _user(name: str, hashed: str, publish: Iterable[str], subscribe: Iterable[str], native: bool = False) -> dict:
    """An MQTT-only user; with `native`, the ingest: also on the NATS protocol, with its JetStream rights."""
    if not hashed.startswith(BCRYPT_PREFIXES):
        raise MqttAuthError(f"password hash of {name!r} is not bcrypt ($2a$/$2b$): NATS checks no other "
                            f"hash (the cloud's $7$ hashes cannot be converted); make one with bcrypt_hash")
    publish, subscribe = [subject(f) for f in publish], [*map(subject, subscribe), MQTT_DELIVERY]
    if native:
        extra_publish, extra_subscribe = ingest_native_rights()
        publish, subscribe = publish + extra_publish, subscribe + extra_subscribe
    return {"user": name, "password": hashed, "allowed_connection_types": ["MQTT", "STANDARD"] if native else ["MQTT"],
            "permissions": {"publish": {"allow": publish} if publish else {"deny": [">"]},
                            "subscribe": {"allow": subscribe}}}


def _device_user(device: str, fleet: str, hashed: str) -> dict:
    try:
        check_id(device, "device")
        check_id(fleet, "fleet")
    except TopicError as err:
        raise MqttAuthError(f"cannot write broker configuration: {err}") from err
    if is_reserved_id(device):
        raise MqttAuthError(f"device id {device!r} is reserved for the cloud")
    return _user(device, hashed, [topic(fleet, device, kind) for kind in DEVICE_KINDS],
                 [topic(fleet, device, kind) for kind in CLOUD_KINDS])


def _node_conf(node: NatsNode, nodes: list[NatsNode], store: Path, replicas: int, tls: NatsTls | None) -> str:
    routes = ", ".join(json.dumps(f"nats-route://{other.host}:{other.cluster_port}")
                       for other in nodes if other is not node)
    client_tls, route_tls, mqtt_tls = ("", "", "") if tls is None else (
        tls.block(), f", {tls.block(routes=True)}", f", {tls.block()}")
    return "\n".join([
        f"# edgefleet: node {node.name} of a {len(nodes)}-node NATS cluster (MQTT on JetStream), generated by",
        "# edgefleet; run: nats-server -c <this file>; after new users.conf: nats-server --signal reload=<pid>",
        f"server_name: {json.dumps(node.name)}",
        f"listen: {json.dumps(f'{node.host}:{node.client_port}')}",
        *([f"# TLS only: clients (the ingest workers) connect with tls://{node.host}:{node.client_port}", client_tls]
          if tls else []),
        f"jetstream {{ store_dir: {json.dumps(str(store.resolve()))}, max_memory_store: 64MB, max_file_store: 4GB }}",
        f"cluster {{ name: {CLUSTER_NAME}, listen: {json.dumps(f'{node.host}:{node.cluster_port}')}, "
        f"routes: [{routes}]{route_tls} }}",
        "# Sessions, retained presence and QoS 1 messages replicated on this many nodes: a node may die.",
        f"mqtt {{ listen: {json.dumps(f'{node.host}:{node.mqtt_port}')}, stream_replicas: {replicas}{mqtt_tls} }}",
        'include "users.conf"',
    ]) + "\n"


def write_nats_config(directory: Path, nodes: list[NatsNode], devices: Iterable[tuple[str, str, str]],
                      cloud_hashes: Mapping[str, str], sim_users: Iterable[tuple[str, str, str]] = (),
                      tls: NatsTls | None = None) -> dict[str, Path]:
    """Writes `users.conf` (mode 0600) and `<node>.conf` for each node into `directory`, and a JetStream
    directory per node (`<node>-jetstream`, mode 0700).

    `devices` are (id, fleet, bcrypt hash); `cloud_hashes` the bcrypt hash of every `CLOUD_CLIENTS` user;
    `sim_users` (username, fleet, bcrypt hash) may use every device topic of that fleet (load tests); `tls`:
    every port TLS only (the module's docstring).
    Returns {"users": Path, <node name>: Path of its conf}.
    """
    if not nodes or len({n.name for n in nodes}) != len(nodes):
        raise MqttAuthError("need at least one NATS node, each with its own name")
    if tls is not None:  # a pair nats-server could not load fails here, naming the file, not at the servers' start
        check_server_files(tls.cert, tls.key)
    if set(cloud_hashes) != set(CLOUD_CLIENTS):
        raise MqttAuthError(f"need bcrypt hashes of exactly the cloud's clients {sorted(CLOUD_CLIENTS)}, "
                            f"got {sorted(cloud_hashes)}")
    users = [_user(name, cloud_hashes[name], client.writes, client.reads, native=client is INGEST)
             for name, client in CLOUD_CLIENTS.items()]
    seen = set(CLOUD_CLIENTS)
    for name, fleet, hashed in sim_users:
        users.append(_user(check_id(name, "user"), hashed, [subscription(kind, check_id(fleet, "fleet"))
                                                             for kind in DEVICE_KINDS],
                           [subscription(kind, fleet) for kind in CLOUD_KINDS]))
        seen.add(name)
    for device, fleet, hashed in devices:
        if device in seen:
            raise MqttAuthError(f"user {device!r} is listed twice")
        seen.add(device)
        users.append(_device_user(device, fleet, hashed))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"users": directory / "users.conf"}
    _write_private(paths["users"], "# edgefleet MQTT users (generated; edit the cloud database, not this file)\n"
                   f"authorization {{ users = {json.dumps(users, indent=1)} }}\n", 0o600)
    replicas = min(3, len(nodes))
    for node in nodes:
        store = directory / f"{node.name}-jetstream"
        store.mkdir(mode=0o700, exist_ok=True)
        paths[node.name] = directory / f"{node.name}.conf"
        _write_private(paths[node.name], _node_conf(node, nodes, store, replicas, tls), 0o644)
    log.info("wrote NATS configuration for %d node(s) and %d user(s) to %s", len(nodes), len(users), directory)
    return paths

