"""`edgefleet device service`: the systemd unit a device runs its agent with, checked by systemd itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli.test_bundle_commands import assert_user_error, edgefleet


def _config(tmp_path: Path, *, port: int = 8000, bundle: str = "model.tar.gz") -> Path:
    path = tmp_path / "device.toml"
    path.write_text(f"""
[device]
id = "pi-07"
fleet = "lab"
data_dir = "{tmp_path / 'data'}"
[model]
bundle = "{bundle}"
trusted_keys = ["release.pub"]
[http]
port = {port}
""")
    return path


def _verify(unit: Path) -> str:
    """systemd-analyze's complaints about `unit` (it exits 0 on unknown keys, so its output is the verdict)."""
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return "\n".join(line for line in (result.stdout + result.stderr).splitlines() if unit.name in line)


def _keys(unit_text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in unit_text.splitlines() if "=" in line)


def test_the_unit_passes_systemd_analyze_and_confines_writes_to_the_data_dir(tmp_path):
    config = _config(tmp_path)
    unit = tmp_path / "edgefleet-agent.service"
    result = edgefleet("device", "service", "--config", str(config), "--out", str(unit))
    assert result.returncode == 0, result.stderr
    assert "systemctl enable --now edgefleet-agent" in result.stdout
    text = unit.read_text()
    assert _verify(unit) == ""
    keys = _keys(text)
    assert keys["User"] == "edgefleet" and keys["Restart"] == "on-failure"
    assert keys["ProtectSystem"] == "strict" and keys["ReadWritePaths"] == str((tmp_path / "data").resolve())
    assert keys["ExecStart"].endswith(f"device run --config {config.resolve()}")
    assert keys["CapabilityBoundingSet"] == "" and keys["ProtectHome"] == "yes"


def test_a_typo_in_a_unit_is_caught_by_the_same_check(tmp_path):
    """The check above can fail: systemd-analyze names a key it does not know."""
    unit = tmp_path / "edgefleet-agent.service"
    result = edgefleet("device", "service", "--config", str(_config(tmp_path)), "--out", str(unit))
    assert result.returncode == 0, result.stderr
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    assert "ProtectSystm" in _verify(unit)


def test_a_low_port_gets_only_the_bind_capability_and_home_paths_stay_readable(tmp_path):
    config = _config(tmp_path, port=80, bundle="/home/pi/models/model.tar.gz")
    result = edgefleet("device", "service", "--config", str(config), "--user", "edge-agent")
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "edgefleet-agent.service"
    unit.write_text(result.stdout)
    assert _verify(unit) == ""
    keys = _keys(result.stdout)
    assert keys["AmbientCapabilities"] == keys["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert keys["ProtectHome"] == "read-only" and keys["User"] == "edge-agent"


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    config = _config(tmp_path)
    assert_user_error(edgefleet("device", "service", "--config", str(config), "--user", "root"), "unprivileged")
    assert_user_error(edgefleet("device", "service", "--config", str(config), "--user", "a b"), "unprivileged")
    assert_user_error(edgefleet("device", "service", "--config", str(tmp_path / "missing.toml")), "does not exist")
