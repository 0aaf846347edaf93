"""Rollouts against the faults of issue 11, end to end on the real cloud, a real Mosquitto (restarted
without persistence where a lost command is the point) and scripted devices: an abort rolls back only the
devices the deployment moved; lost installs and rollbacks are re-sent with the same id; a timed-out wave
names the devices that never answered; non-finite and absurd numbers are refused over real HTTP and by
the CLI. The same faults with real device agents: test_ota_fleet.py."""

from __future__ import annotations

import signal
import time

from tests.cloud.rollout_kit import (  # noqa: F401 - fixtures, found by pytest under their names
    Cloud,
    ScriptedDevice,
    archive_fixture,
    cloud_fixture,
    devices_to_stop_fixture,
    fleet_fixture,
    no_edgefleet_environment_fixture,
    start_cloud_fixture,
    wait_until,
)


def _row(cloud: Cloud, deployment_id: str, device_id: str) -> dict:
    return next(d for d in cloud.deployment(deployment_id)["devices"] if d["device"] == device_id)


def test_an_abort_rolls_back_only_the_devices_the_deployment_moved(cloud: Cloud, fleet, mosquitto, devices_to_stop):
    """lab-off is offline when its install goes out, and the broker drops it (no session to queue it in);
    it is back before the wave times out. The abort must roll back lab-00, which installed v1, and say
    nothing to lab-off, which never answered: rolling it back would downgrade a model this deployment
    never touched."""
    devices = fleet(1)
    assert cloud.client.post("/api/v1/devices", json={"id": "lab-off", "fleet": "lab"}).status_code == 201
    plan = cloud.deploy(success_threshold=1.0, wave_timeout_seconds=3, max_resends=0)
    wait_until(lambda: _row(cloud, plan["id"], "lab-off")["sent_at"], "the install to lab-off went out")
    late = ScriptedDevice("lab-off", "lab", mosquitto)
    devices_to_stop.append(late)
    late.start()

    aborted = cloud.wait_state(plan["id"], "aborted")
    assert "timed out" in aborted["reason"] and aborted["reason"].endswith("no status from 1 device(s): lab-off")
    wait_until(lambda: devices["lab-00"].ops() == ["install", "rollback"], "lab-00 gets a rollback")
    rollback = devices["lab-00"].commands[1].command
    assert (rollback.bundle.name, rollback.bundle.version) == ("digits-cnn", 1)  # it names what it undoes
    wait_until(lambda: _row(cloud, plan["id"], "lab-00")["state"] == "rolled_back", "lab-00 rolled back")
    time.sleep(1.0)  # ten engine ticks
    assert late.commands == []
    off = _row(cloud, plan["id"], "lab-off")
    assert off["state"] == "pending" and off["rollback_command"] is None and off["rollback_sent_at"] is None

    from typer.testing import CliRunner

    import edgefleet.cli.rollout_commands  # noqa: F401 - registers rollout
    from edgefleet.cli.app import app

    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "250"}
    shown = CliRunner().invoke(app, ["rollout", "status", plan["id"]], env=env)
    assert shown.exit_code == 0, shown.output
    words = " ".join(shown.output.split())  # the caption (the abort reason) wraps at the table's width
    assert "no status from 1 device(s): lab-off" in words
    assert next(line for line in shown.output.splitlines() if "lab-off" in line and "pending" in line).count(
        "silent") == 1


def test_a_device_still_installing_at_the_abort_is_rolled_back_once_it_reports_the_switch(cloud: Cloud, fleet):
    devices = fleet(2)
    slow = devices["lab-01"]
    slow.go.clear()  # it has the install but answers nothing yet
    plan = cloud.deploy()
    wait_until(lambda: devices["lab-00"].states(devices["lab-00"].commands[0].command.id)[-1:] == ["active"]
               if devices["lab-00"].commands else False, "lab-00 active")
    wait_until(lambda: slow.commands, "lab-01 has its install")
    aborted = cloud.client.post(f"/api/v1/deployments/{plan['id']}/abort", json={"reason": "stop"})
    assert aborted.status_code == 200
    wait_until(lambda: devices["lab-00"].ops() == ["install", "rollback"], "lab-00 (moved) gets a rollback")
    time.sleep(0.5)
    assert slow.ops() == ["install"] and _row(cloud, plan["id"], "lab-01")["rollback_command"] is None
    slow.go.set()  # its install goes on after the abort and reaches the switch
    wait_until(lambda: slow.ops() == ["install", "rollback"], "lab-01 rolled back after its switch")
    assert slow.commands[1].command.bundle.version == 1
    wait_until(lambda: {d["state"] for d in cloud.deployment(plan["id"])["devices"]} == {"rolled_back"},
               "both rolled back")


def test_a_lost_install_is_resent_with_the_same_id_until_the_device_answers(cloud: Cloud, fleet, mosquitto,
                                                                            devices_to_stop):
    devices = fleet(1)
    assert cloud.client.post("/api/v1/devices", json={"id": "lab-late", "fleet": "lab"}).status_code == 201
    plan = cloud.deploy(success_threshold=1.0, resend_interval_seconds=0.5, max_resends=20)
    wait_until(lambda: _row(cloud, plan["id"], "lab-late")["resends"] >= 1, "a resend nobody heard")
    late = ScriptedDevice("lab-late", "lab", mosquitto)
    devices_to_stop.append(late)
    late.start()

    done = cloud.wait_state(plan["id"], "completed")
    assert done["counts"] == {"active": 2}
    row = _row(cloud, plan["id"], "lab-late")
    assert row["resends"] >= 1 and late.ops()[:1] == ["install"]
    assert {r.command.id for r in late.commands} == {row["command"]}  # the same command, which devices dedupe
    assert {r.command.id for r in devices["lab-00"].commands} == {_row(cloud, plan["id"], "lab-00")["command"]}


def test_a_rollback_the_broker_lost_is_resent_until_the_device_answers(cloud: Cloud, fleet, mosquitto,
                                                                       devices_to_stop):
    devices = fleet(2)
    devices["lab-01"].go.clear()  # keeps the deployment open: it never answers its install
    plan = cloud.deploy(resend_interval_seconds=0.5, max_resends=50)
    wait_until(lambda: _row(cloud, plan["id"], "lab-00")["state"] == "active", "lab-00 active")
    devices["lab-00"].stop()
    mosquitto.stop(signal.SIGKILL)  # no persistence file: lab-00's session, and what it would queue, is gone
    mosquitto.start()
    aborted = cloud.client.post(f"/api/v1/deployments/{plan['id']}/abort", json={"reason": "stop"})
    assert aborted.status_code == 200
    wait_until(lambda: _row(cloud, plan["id"], "lab-00")["rollback_resends"] >= 1, "a rollback nobody heard")
    back = ScriptedDevice("lab-00", "lab", mosquitto)
    devices_to_stop.append(back)
    back.start()
    wait_until(lambda: _row(cloud, plan["id"], "lab-00")["state"] == "rolled_back", "lab-00 rolled back")
    row = _row(cloud, plan["id"], "lab-00")
    assert back.ops()[:1] == ["rollback"] and {r.command.id for r in back.commands} == {row["rollback_command"]}
    assert _row(cloud, plan["id"], "lab-01")["rollback_command"] is None  # it never reported its switch


def test_non_finite_and_absurd_numbers_get_a_4xx_naming_the_field(cloud: Cloud, fleet):
    """Raw JSON over real HTTP, as a client would send it: 1e999 is infinity to a JSON parser."""
    fleet(1)
    head = '{"target": {"fleet": "lab"}, "bundle": {"name": "digits-cnn", "version": %s}, "strategy": {%s}}'

    def post(version: str, strategy: str) -> tuple[int, str]:
        response = cloud.client.post("/api/v1/deployments", content=head % (version, strategy),
                                     headers={"Content-Type": "application/json"})
        return response.status_code, response.json()["detail"]

    # Not finite: refused by the body parser (which names the number) or by the strategy check (the field).
    for field, literal in (("wave_timeout_seconds", "1e999"), ("health_window_seconds", "1e999"),
                           ("latency_budget_ms", "NaN"), ("canary_fraction", "-Infinity"),
                           ("resend_interval_seconds", "Infinity")):
        code, detail = post("1", f'"{field}": {literal}')
        assert code in (400, 422) and (field in detail or literal in detail), (field, code, detail)
    # Finite but absurd: the strategy check names the field and its bounds.
    for field, value, says in (("wave_timeout_seconds", "1e300", "(0, 2592000], got 1e+300"),
                               ("download_timeout_seconds", "604801", "(0, 604800], got 604801"),
                               ("health_window_seconds", "0", "(0, 604800], got 0"),
                               ("max_resends", "101", "[0, 100], got 101")):
        code, detail = post("1", f'"{field}": {value}')
        assert (code, detail) == (400, f"strategy.{field} must be within {says}"), (field, code, detail)
    for version in ("2147483648", "-1", "1.5"):  # the registry's column is 32-bit
        code, detail = post(version, "")
        assert code in (400, 422) and "version" in detail, (version, code, detail)
    assert cloud.client.get("/api/v1/deployments").json() == []  # nothing was stored
    fine = cloud.deploy(wave_timeout_seconds=30 * 86400, resend_interval_seconds=86400, max_resends=100)
    assert fine["strategy"]["wave_timeout_seconds"] == 30 * 86400


def test_cli_deploy_refuses_an_infinite_timeout_in_one_line(cloud: Cloud, fleet):
    from typer.testing import CliRunner

    import edgefleet.cli.rollout_commands  # noqa: F401 - registers deploy
    from edgefleet.cli.app import app

    fleet(1)
    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token}
    for option, value, says in (("--wave-timeout", "inf", "JSON cannot carry"), ("--health-window", "nan", "JSON"),
                                ("--resend-interval", "1e12", "400 strategy.resend_interval_seconds must be within "
                                                              "(0, 86400], got 1000000000000")):
        result = CliRunner().invoke(app, ["deploy", "digits-cnn", "1", "--fleet", "lab", option, value], env=env)
        message = str(result.exception)
        assert result.exit_code != 0 and message.startswith("POST /api/v1/deployments:"), (option, result)
        assert says in message and "\n" not in message, message
    assert cloud.client.get("/api/v1/deployments").json() == []
    done = CliRunner().invoke(app, ["deploy", "digits-cnn", "1", "--fleet", "lab", "--resend-interval", "5",
                                    "--max-resends", "2", "--health-window", "1"], env=env)
    assert done.exit_code == 0, done.output
    strategy = cloud.client.get("/api/v1/deployments").json()[0]
    assert cloud.deployment(strategy["id"])["strategy"]["resend_interval_seconds"] == 5
