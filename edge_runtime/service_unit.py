"""A systemd unit for the device agent: devices run `edgefleet device run` as a service, not in a terminal.

`edgefleet device service --config device.toml` renders the unit from the device's own config, so the
paths the sandbox opens are exactly the ones the agent uses:

- **Restart on failure** (`Restart=on-failure`, 5 s apart, at most 10 starts in 10 minutes before systemd
  gives up and the unit shows failed): a crash or an out-of-memory kill brings the agent back with its
  outbox and model slots intact (they live in `data_dir`).
- **An unprivileged user** (`User=`, default `edgefleet`): the agent needs no root. A port below 1024 gets
  `CAP_NET_BIND_SERVICE` and nothing else.
- **Hardening**: the whole file system read-only (`ProtectSystem=strict`) except `data_dir`
  (`ReadWritePaths`); home directories hidden, or read-only when the config, bundle or keys live there;
  private /tmp; no new privileges; kernel tunables, modules, logs and control groups protected; only IP
  and Unix sockets; the `@system-service` system-call set. `MemoryDenyWriteExecute` is left out on
  purpose: OpenVINO's CPU plugin generates its kernels at run time (JIT), which that option forbids.

The test (`tests/edge_runtime/test_service_unit.py`) checks every rendered unit with
`systemd-analyze verify`, which rejects unknown keys and bad values by printing them.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from edgefleet.core.errors import EdgefleetError
from edgefleet.edge_runtime.device_config import DeviceConfig

UNIT_NAME = "edgefleet-agent.service"
_HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
_HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=no",  # Jetson/NPU runtimes open /dev nodes; the rest of /dev is read-only anyway
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "UMask=0077",
)


def render_unit(config_path: Path, *, user: str = "edgefleet", python: Path | None = None) -> str:
    """The unit text for the agent that `config_path` describes (loaded, so a broken config fails here)."""
    config_path = Path(config_path).resolve()
    config = DeviceConfig.load(config_path)
    _check_name(user)
    python = Path(python or sys.executable)
    if not python.is_absolute():
        raise EdgefleetError(f"the interpreter path must be absolute, got {python}")
    data_dir = config.data_dir.resolve()
    read_paths = [config_path, config.bundle.resolve(), *(key.resolve() for key in config.trusted_keys)]
    home = "read-only" if any(_under_home(p) for p in [*read_paths, data_dir]) else "yes"
    command = shlex.join([str(python), "-m", "edgefleet.cli.main", "device", "run", "--config", str(config_path)])
    lines = [
        "[Unit]",
        f"Description=edgefleet device agent ({config.device}, fleet {config.fleet})",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=600",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        f"ExecStart={command}",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=30",  # the agent flushes its outbox on SIGTERM
        f"ReadWritePaths={data_dir}",
        f"ProtectHome={home}",
        *_HARDENING,
    ]
    if config.http_port < 1024:
        lines += ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    else:
        lines.append("CapabilityBoundingSet=")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def install_hint(unit_path: Path, user: str, data_dir: Path) -> str:
    """What a user runs, as root, to install and start the unit written to `unit_path`."""
    return (f"sudo useradd --system --no-create-home {user} 2>/dev/null; "
            f"sudo install -d -o {user} -g {user} -m 0700 {shlex.quote(str(data_dir))}\n"
            f"sudo cp {shlex.quote(str(unit_path))} /etc/systemd/system/{UNIT_NAME} && "
            f"sudo systemctl daemon-reload && sudo systemctl enable --now {UNIT_NAME.removesuffix('.service')}")


def _check_name(user: str) -> None:
    ok = user and len(user) <= 32 and user[0].isalpha() and all(c.isalnum() or c in "-_" for c in user)
    if not ok or user == "root":
        raise EdgefleetError(f"--user must name an unprivileged system user (letters, digits, - and _), got {user!r}")


def _under_home(path: Path) -> bool:
    return any(path == root or root in path.parents for root in _HOME_ROOTS)
