"""What every edgefleet systemd unit shares: the sandbox, the user check and the install commands.

The device agent's unit (edge_runtime/service_unit.py) and the cloud roles' template units
(cloud/service_unit.py) both run as an unprivileged system user under the same hardening:

- the whole file system read-only (`ProtectSystem=strict`) except what the unit makes writable;
- private /tmp; no new privileges; kernel tunables, modules, logs, clock, hostname and control groups
  protected; no namespaces, realtime scheduling or set-uid files;
- only IP and Unix sockets; the `@system-service` system-call set; files created private (`UMask=0077`).

`MemoryDenyWriteExecute` is left out on purpose: OpenVINO's CPU plugin generates its kernels at run time
(JIT), which that option forbids. `PrivateDevices` is off: Jetson/NPU runtimes open /dev nodes (the rest of
/dev is read-only under `ProtectSystem=strict` anyway).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from edgefleet.core.errors import EdgefleetError

HARDENING = (
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


def check_user(user: str) -> None:
    """Raises EdgefleetError unless `user` can name an unprivileged system user."""
    ok = user and len(user) <= 32 and user[0].isalpha() and all(c.isalnum() or c in "-_" for c in user)
    if not ok or user == "root":
        raise EdgefleetError(f"--user must name an unprivileged system user (letters, digits, - and _), got {user!r}")


def interpreter(python: Path | None) -> Path:
    """The Python a unit's ExecStart runs: `python`, or this one; systemd needs an absolute path."""
    python = Path(python or sys.executable)
    if not python.is_absolute():
        raise EdgefleetError(f"the interpreter path must be absolute, got {python}")
    return python


def escape(text: str) -> str:
    """`text` with systemd's specifier character doubled, so a path holding '%' reaches the process as is."""
    return text.replace("%", "%%")


def add_user_command(user: str) -> str:
    """Creates the unit's system user (quietly does nothing if it exists)."""
    return f"sudo useradd --system --no-create-home {user} 2>/dev/null"


def install_command(unit_path: Path, unit_name: str, *instances: str) -> str:
    """Copies the unit written to `unit_path` into place as `unit_name`, then enables and starts it (or, for
    a template unit, these instances of it)."""
    started = " ".join(instances) if instances else unit_name.removesuffix(".service")
    return (f"sudo cp {shlex.quote(str(unit_path))} /etc/systemd/system/{unit_name} && "
            f"sudo systemctl daemon-reload && sudo systemctl enable --now {started}")
