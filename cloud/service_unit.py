"""systemd template units for the cloud's scale-out roles: `edgefleet cloud service --role ROLE`.

The roles (cloud/roles.py) run as many processes against one PostgreSQL; each role gets one template unit,
`edgefleet-<role>@.service`, and each process is an instance of it, named after what tells the processes
apart: `edgefleet-ingest@w1` runs `cloud up --role ingest --worker w1` (rollouts likewise), `edgefleet-api@8081`
runs `cloud up --role api --port 8081`, and `edgefleet-monitor@1`'s instance name only tells the monitors
apart (they lease device shards, cloud/leases.py, and take no --worker). `--role all` gets no unit: it is one
process, not a role to scale out.

- **Restart always, after 1 s**: an ingest worker killed with -9 must come back under the same name, since
  Mosquitto keeps routing its share of the device stream to its persistent session (`edgefleet-ingest-NAME`)
  and queues it there until that session reconnects (cloud/ingest.py). The instance name is the worker name,
  so a restart is the same worker. Exit code 2 (a settings error: a missing PostgreSQL URL, an older schema)
  is not restarted (`RestartPreventExitStatus=2`): the journal shows its one line and the unit stays failed.
- **A start limit** (50 starts in 60 s, so one start every 1.2 s on average): a start that fails on an
  unreachable database took 1.6-1.8 s here (the imports, then the refused connection), 2.6 s and more with
  the 1 s between starts, so an outage never reaches the limit and the worker comes back whenever the
  database does; a unit that dies at once (its interpreter or its user missing: exit 203, 217) stops.
- **A graceful stop** (`TimeoutStopSec=60`): on SIGTERM an ingest worker first leaves its share group and
  stores what is still on its way (up to 10 s), then its writer's last batch (up to 10 s more); the API
  gives open requests 5 s.
- **Secrets stay out of the unit**: the settings come from `EnvironmentFile=` (default /etc/edgefleet/cloud.env,
  read by systemd before it drops to the user, so it can be root's, mode 0600): `EDGEFLEET_DB_URL`,
  `EDGEFLEET_MQTT_URL`, `EDGEFLEET_MQTT_PASSWORD` and the other `EDGEFLEET_<FIELD>` names of cloud/settings.py.
- **The data directory** is systemd's `StateDirectory=edgefleet-cloud` (/var/lib/edgefleet-cloud, made and
  owned for the user, shared by every instance), the one writable path under `ProtectSystem=strict`;
  `EDGEFLEET_DATA_DIR` points there (the environment file overrides `Environment=`: leave it out there).
- **The device unit's sandbox** (core/service_units.py), home directories hidden and no capabilities: files
  the settings name (trusted keys, certificates) must live outside /home, for example in /etc/edgefleet, and
  an API instance's port must be 1024 or above.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from edgefleet.cloud.roles import SCALE_OUT_ROLES, WORKER_ROLES, RoleError
from edgefleet.core.service_units import HARDENING, add_user_command, check_user, escape, install_command, interpreter

DEFAULT_ENV_FILE = Path("/etc/edgefleet/cloud.env")
STATE_DIRECTORY = "edgefleet-cloud"
DATA_DIR = Path("/var/lib") / STATE_DIRECTORY
_INSTANCES = {"api": ("8080", "8081"), "monitor": ("1", "2")}  # what the install hint starts; workers: w1 w2
# What the environment file holds, per role: (key, example value, what it is). One file can serve every role.
_SETTINGS = (
    ("EDGEFLEET_DB_URL", "postgresql+psycopg://edgefleet:PASSWORD@db.example:5432/edgefleet",
     "the PostgreSQL every role shares", SCALE_OUT_ROLES),
    ("EDGEFLEET_MQTT_URL", "mqtt://broker.example:1883", "the broker devices use (ingest: also nats://host:4222)",
     ("api", "ingest", "rollouts")),
    ("EDGEFLEET_MQTT_PASSWORD", "CLOUD-SECRET", "the cloud secret `edgefleet cloud mosquitto-config` printed",
     ("api", "ingest", "rollouts")),
    ("EDGEFLEET_PUBLIC_URL", "https://cloud.example", "the API's URL as devices reach it", ("api", "rollouts")),
    ("EDGEFLEET_TRUSTED_KEYS", "/etc/edgefleet/release.pub", "the keys the registry accepts bundles from",
     ("api",)),
    ("EDGEFLEET_HOST", "0.0.0.0", "listen beyond localhost, for the load balancer", ("api",)),
)


def unit_name(role: str) -> str:
    """The template unit's file name: edgefleet-<role>@.service."""
    return f"edgefleet-{role}@.service"


def check_scale_out_role(role: str) -> None:
    """Raises RoleError unless `role` is one that runs as many processes (every role but all)."""
    if role == "all":
        raise RoleError("--role all runs everything in one process: it is not a role to scale out; give it a unit "
                        f"of its own, or choose one of {', '.join(SCALE_OUT_ROLES)}")
    if role not in SCALE_OUT_ROLES:
        raise RoleError(f"--role: expected one of {', '.join(SCALE_OUT_ROLES)}, got {role!r}")


def render_unit(role: str, *, user: str = "edgefleet", env_file: Path = DEFAULT_ENV_FILE,
                python: Path | None = None) -> str:
    """The template unit text for `role`; an instance's name (`%i`) is its worker name, or the API's port."""
    check_scale_out_role(role)
    check_user(user)
    env_file = _env_file(env_file)
    if role in WORKER_ROLES:
        instance_args, described = ["--worker", "%i"], f"{role} worker %i"
    elif role == "api":
        instance_args, described = ["--port", "%i"], "API on port %i"
    else:
        instance_args, described = [], f"{role} %i"
    command = shlex.join([escape(str(interpreter(python))), "-m", "edgefleet.cli.main", "cloud", "up",
                          "--role", role, *instance_args])
    lines = [
        "[Unit]",
        f"Description=edgefleet cloud, {described}",
        "Wants=network-online.target",
        "After=network-online.target postgresql.service mosquitto.service",
        "StartLimitIntervalSec=60",
        "StartLimitBurst=50",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        "# The settings and secrets (EDGEFLEET_DB_URL, EDGEFLEET_MQTT_PASSWORD, ...) live here, not in the unit.",
        f"EnvironmentFile={escape(str(env_file))}",
        f"StateDirectory={STATE_DIRECTORY}",
        "StateDirectoryMode=0700",
        f"Environment=EDGEFLEET_DATA_DIR={DATA_DIR}",
        f"ExecStart={command}",
        f"SyslogIdentifier=edgefleet-{role}-%i",
        "Restart=always",
    ]
    if role == "ingest":
        lines.append("# Back at once: this worker's share of the stream waits in the broker, queued in its "
                     "persistent session, until it reconnects under the same name.")
    lines += [
        "RestartSec=1",
        "# Exit code 2 is a settings error (one line in the journal): restarting would not fix it.",
        "RestartPreventExitStatus=2",
        "# On SIGTERM the ingest leaves its share group and stores what is on its way; the API drains requests.",
        "TimeoutStopSec=60",
        "ProtectHome=yes",
        *HARDENING,
        "CapabilityBoundingSet=",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def example_env(role: str) -> str:
    """The environment file's lines that `role` reads, with example values and a comment line each."""
    check_scale_out_role(role)
    lines = []
    for key, value, what, roles in _SETTINGS:
        if role in roles:
            lines += [f"# {what}", f"{key}={value}"]
    return "\n".join(lines)


def install_hint(unit_path: Path, role: str, user: str) -> str:
    """What a user runs, as root, to install the template unit written to `unit_path` and start two instances."""
    name = unit_name(role)
    instances = [name.replace("@", f"@{i}").removesuffix(".service") for i in _INSTANCES.get(role, ("w1", "w2"))]
    return f"{add_user_command(user)}\n{install_command(unit_path, name, *instances)}"


def _env_file(path: Path) -> Path:
    path = Path(path).absolute()
    if any(c.isspace() or not c.isprintable() for c in str(path)):
        raise RoleError(f"--env-file: a path without spaces or control characters, please, got {str(path)!r}")
    return path
