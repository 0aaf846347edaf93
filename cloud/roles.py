"""Which parts of the cloud one process runs: `edgefleet cloud up --role api|ingest|monitor|rollouts|all`.

- `all` (the default): everything in one process, as one command on one machine: the embedded broker
  (unless --mqtt-url), the ingest, the monitors, the rollout engine and the API, on SQLite or PostgreSQL.
- `api`: the HTTP API and dashboard only. It keeps no state of its own, so any number of replicas serve
  behind a load balancer against one PostgreSQL; no monitor or rollout engine runs inside.
- `ingest`: the MQTT ingest only. Every ingest process subscribes through the broker's shared
  subscription (`$share/edgefleet-ingest/...`), so the broker splits the device stream between them;
  each acknowledges a message only after its commit, and the (device, seq) key drops redeliveries.
  Its MQTT session is named after `--worker NAME` (`edgefleet-ingest-NAME`), so a restarted worker takes
  back its own persistent session and the messages the broker queued for it. With `--mqtt-url nats://...`
  (a NATS cluster, whose MQTT layer has no `$share`) the workers pull from one JetStream consumer instead
  (cloud/ingest_nats.py); a nats:// URL is for this role only.
- `monitor`: the drift, label-free accuracy and operations monitors, webhooks and retention.
- `rollouts`: the rollout engine and the label forwarder (the two that write commands to devices). With
  `--worker NAME` they log in as `edgefleet-rollouts-NAME` and `edgefleet-labels-NAME` (needed on a broker
  that binds client ids to usernames, as the generated Mosquitto config does); without it, under the shared
  users with a random client id each.

What `check_role` refuses, each with one message (the CLI exits 2):
- a role other than `all` on SQLite: processes on other machines cannot open the file, and those on one
  machine would serialize on its single writer; the roles are for scaling out on one PostgreSQL;
- `api`, `ingest` or `rollouts` without --mqtt-url: the embedded broker lives in the `all` process only
  (amqtt serves no shared subscriptions, and a broker per API replica would split the fleet);
- a `nats://` URL with a role other than `ingest`;
- `rollouts` without --public-url: install commands carry download links to the API, which runs elsewhere;
- `--worker` with a role other than `ingest` or `rollouts`, and `ingest` without it.
"""

from __future__ import annotations

import re

from edgefleet.cloud.nats_config import NATS_SCHEMES
from edgefleet.core.errors import EdgefleetError

ROLES = ("all", "api", "ingest", "monitor", "rollouts")
SCALE_OUT_ROLES = tuple(role for role in ROLES if role != "all")  # many processes on one PostgreSQL
WORKER_ROLES = ("ingest", "rollouts")  # the roles that take --worker NAME (their MQTT users are named after it)
SHARE_GROUP = "edgefleet-ingest"  # the shared-subscription group every ingest worker joins
WORKER_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")  # goes into an MQTT client id and username


class RoleError(EdgefleetError):
    """A role, or a role with settings it cannot run with."""


def runs(role: str, part: str) -> bool:
    """Does a process of `role` run `part` (one of ROLES but `all`)?"""
    return role in ("all", part)


def check_role(role: str, db_url: str, mqtt_url: str | None, worker: str | None,
               public_url: str | None = None) -> None:
    """Raises RoleError, naming the option to change, if a process of `role` cannot run with these settings."""
    if role not in ROLES:
        raise RoleError(f"--role: expected one of {', '.join(ROLES)}, got {role!r}")
    if worker is not None and role not in WORKER_ROLES:
        raise RoleError(f"--worker names an ingest or rollouts worker's MQTT users; --role {role} takes none")
    if mqtt_url is not None and mqtt_url.startswith(NATS_SCHEMES) and role != "ingest":
        raise RoleError(f"--role {role}: a nats:// (or tls://) URL serves the ingest role only (it reads JetStream "
                        f"natively); give the other roles a node's mqtt://host:port")
    if role == "all":
        return
    if not db_url.startswith("postgresql"):
        raise RoleError(f"--role {role} needs a PostgreSQL --db (postgresql+psycopg://...): the roles share one "
                        f"database, and SQLite cannot be shared between processes; use --role all for SQLite")
    if mqtt_url is None and role in ("api", "ingest", "rollouts"):
        raise RoleError(f"--role {role} needs --mqtt-url (the broker devices use): the embedded broker runs only "
                        f"with --role all")
    if role == "rollouts" and public_url is None:
        raise RoleError("--role rollouts needs --public-url (the API's URL devices download updates from): this "
                        "process serves no HTTP")
    if role == "ingest" and worker is None:
        raise RoleError("--role ingest needs --worker NAME (unique among the ingest workers, the same after a "
                        "restart): its MQTT session is edgefleet-ingest-NAME")
    if worker is not None:
        check_worker(worker)


def check_worker(name: str) -> None:
    """Raises RoleError unless `name` can name a worker (it goes into an MQTT username and client id)."""
    if not WORKER_PATTERN.match(name):
        raise RoleError(f"--worker: expected 1-40 letters, digits, '.', '_' or '-', got {name!r}")
