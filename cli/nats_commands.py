"""`edgefleet cloud nats-config DIR --node NAME=HOST:CLIENT:CLUSTER:MQTT ...`: the cloud's devices and its own
clients as the configuration of a NATS cluster serving MQTT (cloud/nats_config.py), one `<node>.conf` per
node and a shared `users.conf`.

NATS checks bcrypt hashes only: devices registered since migration 0007 carry one; older ones are left out
and named (they keep working on Mosquitto and the embedded broker). Revoked devices are left out, so after
`edgefleet device revoke` a re-run and a reload (`nats-server --signal reload=<pid>`, or SIGHUP) on every node
closes the device's connection. The cloud's clients log in with passwords derived from one secret, as for
Mosquitto: `EDGEFLEET_MQTT_PASSWORD` if set, else the hashes already in DIR/users.conf, else a new secret,
printed once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.mqtt_commands import registered_devices, report_written
from edgefleet.core.errors import EdgefleetError

NODE_PATTERN = re.compile(r"^([A-Za-z0-9_-]{1,64})=([^:=\s]+):(\d{1,5}):(\d{1,5}):(\d{1,5})$")


def parse_node(text: str):  # noqa: ANN201 - NatsNode, imported inside
    """`NAME=HOST:CLIENT_PORT:CLUSTER_PORT:MQTT_PORT` as a NatsNode, or one line naming what is wrong."""
    from edgefleet.cloud.nats_config import NatsNode

    match = NODE_PATTERN.match(text.strip())
    ports = [int(p) for p in match.groups()[2:]] if match else []
    if not match or not all(1 <= p <= 65535 for p in ports) or len(set(ports)) != 3:
        raise EdgefleetError(f"--node {text!r}: expected NAME=HOST:CLIENT_PORT:CLUSTER_PORT:MQTT_PORT, three "
                             f"different ports in 1-65535 (e.g. n1=10.0.0.1:4222:6222:1883)")
    return NatsNode(match.group(1), *ports, host=match.group(2))


def _existing_hashes(users: Path, names: list[str]) -> dict[str, str]:
    """The cloud clients' bcrypt hashes from a users.conf this command wrote, so a re-run keeps their passwords."""
    if not users.is_file():
        return {}
    text = users.read_text(encoding="utf-8")
    start, end = text.find("users = "), text.rfind("}")
    try:
        entries = json.loads(text[start + len("users = "):end]) if start >= 0 else []
    except json.JSONDecodeError as err:
        raise EdgefleetError(f"{users} is not a users.conf this command wrote ({err}); move it away") from err
    return {e["user"]: e["password"] for e in entries if isinstance(e, dict) and e.get("user") in names}


def nats_config(
    directory: Annotated[Path, typer.Argument(help="Where to write users.conf and one <node>.conf per node")],
    node: Annotated[list[str], typer.Option("--node", help="A node of the cluster, NAME=HOST:CLIENT_PORT:"
                                                          "CLUSTER_PORT:MQTT_PORT; repeat for each")],
    data: Annotated[Path | None, typer.Option("--data", help="Data directory of the cloud service (default "
                                                              "./edgefleet-data, or $EDGEFLEET_DATA_DIR)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy database URL (default: SQLite in --data)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS only on every port with this PEM certificate chain (with "
                                                       "--tls-key): devices use mqtts://, workers tls://")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The private key of --tls-cert (PEM)")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="The CA bundle nodes check each other's route certificates "
                                                     "with (default: the system's store)")] = None,
) -> None:
    """Write a NATS cluster's configuration (MQTT on JetStream) for every registered device with a bcrypt hash
    and the cloud's own clients; ingest workers read the cluster with `cloud up --role ingest --mqtt-url
    nats://NODE:CLIENT_PORT`."""
    from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, cloud_password, new_cloud_secret
    from edgefleet.cloud.nats_config import NatsTls, bcrypt_hash, write_nats_config
    from edgefleet.cloud.settings import load_settings

    nodes = [parse_node(text) for text in node]
    if (tls_cert is None) != (tls_key is None):
        raise EdgefleetError("--tls-cert and --tls-key go together")
    if tls_ca is not None and tls_cert is None:
        raise EdgefleetError("--tls-ca needs --tls-cert and --tls-key")
    settings = load_settings(db_url=db, data_dir=data)
    rows = registered_devices(settings.db_url or "", lambda d: (d.id, d.fleet, d.password_bcrypt))
    devices = [row for row in rows if row[2]]
    without = [row[0] for row in rows if not row[2]]
    names = list(CLOUD_CLIENTS)
    secret, new_secret = settings.mqtt_password, None
    cloud_hashes = {} if secret else _existing_hashes(Path(directory) / "users.conf", names)
    if len(cloud_hashes) != len(names):
        if not secret:
            secret = new_secret = new_cloud_secret()
        cloud_hashes = {name: bcrypt_hash(cloud_password(secret, name)) for name in names}
    tls = NatsTls(tls_cert, tls_key, tls_ca) if tls_cert is not None and tls_key is not None else None
    paths = write_nats_config(directory, nodes, devices, cloud_hashes, tls=tls)
    warning = None
    if without:
        shown = ", ".join(without[:5]) + (f" and {len(without) - 5} more" if len(without) > 5 else "")
        warning = (f"left out {len(without)} device(s) registered before bcrypt hashes were kept ({shown}): NATS "
                   f"checks bcrypt only; they can still use Mosquitto or the embedded broker")
    report_written(f"NATS files for {len(nodes)} node(s), {len(devices)} device(s)", paths,
                   "run on each node: nats-server -c <node>.conf (after a re-run: nats-server --signal reload=<pid>)",
                   new_secret, warning)


def register(cloud_app: typer.Typer) -> None:
    """Adds `nats-config` to the `cloud` command group."""
    cloud_app.command("nats-config")(nats_config)
