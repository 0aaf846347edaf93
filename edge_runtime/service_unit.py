"""A systemd unit for the device agent: devices run `edgefleet device run` as a service, not in a terminal.

`edgefleet device service --config device.toml` renders the unit from the device's own config, so the
paths the sandbox opens are exactly the ones the agent uses:

- **Restart on failure** (`Restart=on-failure`, 5 s apart, at most 10 starts in 10 minutes before systemd
  gives up and the unit shows failed): a crash or an out-of-memory kill brings the agent back with its
  outbox and model slots intact (they live in `data_dir`).
- **An unprivileged user** (`User=`, default `edgefleet`): the agent needs no root. A port below 1024 gets
  `CAP_NET_BIND_SERVICE` and nothing else.
- **Hardening** (core/service_units.py, shared with the cloud's units): the whole file system read-only
  (`ProtectSystem=strict`) except `data_dir` (`ReadWritePaths`); home directories hidden, or read-only when
  the config, bundle or keys live there; private /tmp; no new privileges; kernel tunables, modules, logs
  and control groups protected; only IP and Unix sockets; the `@system-service` system-call set.
  `MemoryDenyWriteExecute` is left out on purpose: OpenVINO's CPU plugin generates its kernels at run time
  (JIT), which that option forbids.

The test (`tests/cli/test_device_service.py`) checks every rendered unit with
`systemd-analyze verify`, which rejects unknown keys and bad values by printing them.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from edgefleet.core.service_units import HARDENING, add_user_command, check_user, install_command, interpreter
from edgefleet.edge_runtime.device_config import DeviceConfig

UNIT_NAME = "edgefleet-agent.service"
_HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))


def render_unit(config_path: Path, *, user: str = "edgefleet", python: Path | None = None) -> str:
    """The unit text for the agent that `config_path` describes (loaded, so a broken config fails here)."""
    config_path = Path(config_path).resolve()
    config = DeviceConfig.load(config_path)
    check_user(user)
    python = interpreter(python)
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
        *HARDENING,
    ]
    if config.http_port < 1024:
        lines += ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    else:
        lines.append("CapabilityBoundingSet=")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def install_hint(unit_path: Path, user: str, data_dir: Path) -> str:
    """What a user runs, as root, to install and start the unit written to `unit_path`."""
    return (f"{add_user_command(user)}; "
            f"sudo install -d -o {user} -g {user} -m 0700 {shlex.quote(str(data_dir))}\n"
            f"{install_command(unit_path, UNIT_NAME)}")


def _under_home(path: Path) -> bool:
    return any(path == root or root in path.parents for root in _HOME_ROOTS)
