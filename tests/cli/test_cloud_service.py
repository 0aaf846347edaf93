"""`edgefleet cloud service`: the scale-out roles' systemd template units, checked by systemd itself, and
their instances' command lines run through `cloud up`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from edgefleet.cloud.service_unit import DATA_DIR, example_env
from edgefleet.cloud.settings import CloudSettings
from tests.cli.test_bundle_commands import assert_user_error, edgefleet

ROLES = ("api", "ingest", "monitor", "rollouts")
INSTANCES = {"api": "8081", "ingest": "w1", "monitor": "1", "rollouts": "w1"}


def _verify(unit: Path, role: str) -> str:
    """systemd-analyze's complaints about `unit` (it exits 0 on unknown keys, so its output is the verdict).
    It names a template's problems after an instance it makes up (edgefleet-ingest@i.service), hence the
    role's prefix rather than the file's name."""
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return "\n".join(line for line in (result.stdout + result.stderr).splitlines() if f"edgefleet-{role}@" in line)


def _keys(unit_text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in unit_text.splitlines() if "=" in line and not line.startswith("#"))


def _write(tmp_path: Path, role: str, *args: str) -> tuple[Path, subprocess.CompletedProcess]:
    tmp_path.mkdir(exist_ok=True)
    unit = tmp_path / f"edgefleet-{role}@.service"
    result = edgefleet("cloud", "service", "--role", role, "--out", str(unit), *args)
    assert result.returncode == 0, result.stderr
    return unit, result


def _instance_argv(unit_text: str, instance: str) -> list[str]:
    """The instance's ExecStart as systemd runs it: `%i` is the instance name."""
    return shlex.split(_keys(unit_text)["ExecStart"].replace("%i", instance))


@pytest.mark.parametrize("role", ROLES)
def test_every_role_unit_passes_systemd_analyze_as_a_template_and_as_an_instance(tmp_path, role):
    unit, result = _write(tmp_path, role)
    instance = unit.with_name(f"edgefleet-{role}@{INSTANCES[role]}.service")
    shutil.copy(unit, instance)
    assert _verify(unit, role) == "" and _verify(instance, role) == ""
    assert f"systemctl enable --now edgefleet-{role}@" in result.stdout
    assert "EDGEFLEET_DB_URL=postgresql" in result.stdout  # the environment file's example
    keys = _keys(unit.read_text())
    assert keys["Restart"] == "always" and keys["RestartSec"] == "1" and keys["RestartPreventExitStatus"] == "2"
    assert keys["User"] == keys["Group"] == "edgefleet" and keys["CapabilityBoundingSet"] == ""
    assert keys["EnvironmentFile"] == "/etc/edgefleet/cloud.env" and keys["StateDirectory"] == "edgefleet-cloud"
    assert keys["ProtectSystem"] == "strict" and keys["ProtectHome"] == "yes"
    environment = [line for line in unit.read_text().splitlines() if line.startswith("Environment=")]
    assert environment == [f"Environment=EDGEFLEET_DATA_DIR={DATA_DIR}"]  # the secrets stay in the file
    argv = _instance_argv(unit.read_text(), INSTANCES[role])
    assert argv[1:] == ["-m", "edgefleet.cli.main", "cloud", "up", "--role", role,
                        *{"api": ["--port", "8081"], "monitor": []}.get(role, ["--worker", "w1"])]


def test_printed_without_out_and_with_another_env_file_and_user(tmp_path):
    result = edgefleet("cloud", "service", "--role", "ingest", "--user", "cloud-ingest",
                       "--env-file", str(tmp_path / "secrets.env"))
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "edgefleet-ingest@w7.service"
    unit.write_text(result.stdout)
    assert _verify(unit, "ingest") == ""
    keys = _keys(result.stdout)
    assert keys["EnvironmentFile"] == str(tmp_path / "secrets.env") and keys["User"] == "cloud-ingest"


def test_a_typo_in_a_unit_is_caught_by_the_same_check(tmp_path):
    """The check above can fail: systemd-analyze names a key it does not know, in the template and in an
    instance of it."""
    unit, _ = _write(tmp_path, "ingest")
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    instance = unit.with_name("edgefleet-ingest@w1.service")
    shutil.copy(unit, instance)
    assert "ProtectSystm" in _verify(unit, "ingest") and "ProtectSystm" in _verify(instance, "ingest")


def test_an_instance_command_runs_cloud_up_with_the_instance_name(tmp_path):
    """The ExecStart of an instance, run as systemd would without the environment file: `cloud up` takes
    its options and stops at the first setting that file would give (exit 2, the project's one line)."""
    ingest, _ = _write(tmp_path / "ingest", "ingest")
    api, _ = _write(tmp_path / "api", "api")

    def run(unit: Path, instance: str, **settings: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"COLUMNS": "200"}
        return subprocess.run(_instance_argv(unit.read_text(), instance), capture_output=True, text=True, timeout=60,
                              env={**env, "EDGEFLEET_DATA_DIR": str(tmp_path / "data"), **settings}, check=False)

    assert_user_error(run(ingest, "w1"), "--role ingest needs a PostgreSQL --db")
    assert_user_error(run(api, "8081"), "--role api needs a PostgreSQL --db")
    # With the database and broker settings given, the instance name is what cloud up checks next:
    configured = {"EDGEFLEET_DB_URL": "postgresql+psycopg://edgefleet@127.0.0.1:1/edgefleet",
                  "EDGEFLEET_MQTT_URL": "mqtt://127.0.0.1:1"}
    assert_user_error(run(ingest, "w!1", **configured), "--worker: expected 1-40 letters")
    assert_user_error(run(api, "70000", **configured), "port: Input should be less than or equal to 65535")


def test_the_flags_a_unit_passes_are_cloud_up_options(tmp_path):
    flags = set()
    for role in ROLES:
        unit, _ = _write(tmp_path / role, role)
        flags |= {arg for arg in _instance_argv(unit.read_text(), "x") if arg.startswith("--")}
    assert flags == {"--role", "--worker", "--port"}
    help_text = edgefleet("cloud", "up", "--help").stdout
    assert all(flag in help_text for flag in flags), help_text


@pytest.mark.parametrize("role", ROLES)
def test_the_example_environment_names_real_settings(role):
    fields = {f"EDGEFLEET_{name.upper()}" for name in CloudSettings.model_fields}
    keys = [line.split("=", 1)[0] for line in example_env(role).splitlines() if not line.startswith("#")]
    assert keys and set(keys) <= fields and "EDGEFLEET_DB_URL" in keys
    assert "EDGEFLEET_DATA_DIR" in fields


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    assert_user_error(edgefleet("cloud", "service", "--role", "all"), "not a role to scale out")
    assert_user_error(edgefleet("cloud", "service", "--role", "x"), "expected one of api, ingest, monitor, rollouts")
    assert_user_error(edgefleet("cloud", "service", "--role", "ingest", "--user", "root"), "unprivileged")
    assert_user_error(edgefleet("cloud", "service", "--role", "api", "--env-file", str(tmp_path / "a b.env")),
                      "--env-file")
    assert_user_error(edgefleet("cloud", "service", "--role", "api", "--out", str(tmp_path / "no" / "api.service")),
                      "no directory")
