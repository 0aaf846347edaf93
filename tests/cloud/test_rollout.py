"""Staged rollouts end to end: the real cloud (CloudServer on a free port, real SQLite, the Mosquitto fixture
as its broker) and scripted devices (tests/cloud/rollout_kit.py). The rules alone: test_rollout_plan.py; lost
commands, orphan rollbacks and refused numbers: test_rollout_faults.py."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from edgefleet.cloud.db import DeploymentDevice, Device, DeviceStatus
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import CloudSettings
from edgefleet.cloud.signed_urls import download_secret, signed_download_url
from edgefleet.core.bundle import Bundle
from edgefleet.core.ota import Command, check_rollback_authorization
from edgefleet.core.signing import TrustStore
from tests.cloud.rollout_kit import (  # noqa: F401 - fixtures, found by pytest under their names
    GZIP,
    Cloud,
    ScriptedDevice,
    archive_fixture,
    cloud_fixture,
    devices_to_stop_fixture,
    fleet_fixture,
    no_edgefleet_environment_fixture,
    planned_waves,
    start_cloud_fixture,
    start_devices,
    wait_until,
)
from tests.mosquitto import free_port


# --- the registry -----------------------------------------------------------------------------------------
def test_bundle_detail_and_download_with_range_and_signed_urls(cloud: Cloud, archive: Path, digits_bundle):
    data, url = archive.read_bytes(), cloud.server.url
    detail = cloud.client.get("/api/v1/bundles/digits-cnn/1")
    assert detail.status_code == 200, detail.text
    body = detail.json()
    manifest = Bundle.open(digits_bundle.root).manifest
    assert (body["name"], body["version"], body["size"]) == ("digits-cnn", 1, len(data))
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["uploaded_at"] > 0
    assert body["label"] == manifest["label"] and body["lineage"] == manifest["lineage"]
    assert body["metrics"]["eval"]["accuracy"] > 0.9 and body["artifacts"][0]["backend"] == "onnxruntime"
    assert cloud.client.get("/api/v1/bundles/digits-cnn/2").status_code == 404

    # With the admin token: the whole file, and a range of it.
    whole = cloud.client.get("/api/v1/bundles/digits-cnn/1/download")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "application/gzip" and whole.headers["accept-ranges"] == "bytes"
    # With a signed URL and no token, as a device downloads; Range resumes a partial download.
    signed = signed_download_url(_secret(cloud), url, "digits-cnn", 1, "pi-7", ttl=60)
    assert httpx.get(signed).content == data
    partial = httpx.get(signed, headers={"Range": "bytes=100-"})
    assert partial.status_code == 206 and partial.content == data[100:]
    assert partial.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"

    tampered = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    other_device = signed.replace("device=pi-7", "device=pi-8")
    other_version = signed.replace("/digits-cnn/1/", "/digits-cnn/2/")
    expired = signed_download_url(_secret(cloud), url, "digits-cnn", 1, "pi-7", ttl=-1)
    for forged in (tampered, other_device, other_version, expired, signed.split("&sig=")[0]):
        refused = httpx.get(forged)
        assert refused.status_code == 403, forged
    assert "expired" in httpx.get(expired).json()["detail"]
    assert "signature is not valid" in httpx.get(tampered).json()["detail"]
    anonymous = httpx.get(f"{url}/api/v1/bundles/digits-cnn/1/download")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"

    assert not cloud.settings.download_secret_path.exists()  # the secret lives in the database, not on disk


def _secret(cloud) -> bytes:  # noqa: ANN001 - either kit's Cloud
    """The download URL signing key, as the cloud keeps it (in its database)."""
    return download_secret(cloud.settings, cloud.server.sessions)


def test_device_groups(cloud: Cloud):
    for device_id, group in (("a", "canary"), ("b", None), ("c", "canary")):
        created = cloud.client.post("/api/v1/devices", json={"id": device_id, "fleet": "lab", "group": group})
        assert created.status_code == 201 and created.json()["group"] == group
    listed = cloud.client.get("/api/v1/devices", params={"group": "canary"}).json()
    assert [(d["id"], d["group"]) for d in listed] == [("a", "canary"), ("c", "canary")]
    bad = cloud.client.post("/api/v1/devices", json={"id": "d", "fleet": "lab", "group": "no/slash"})
    assert bad.status_code == 400 and "group 'no/slash'" in bad.json()["detail"]


# --- rollouts -----------------------------------------------------------------------------------------------
def test_waves_proceed_in_order_with_the_recorded_selection(cloud: Cloud, fleet):
    devices = fleet(10)
    plan = cloud.deploy(kind="waves", waves=[10, 50, 100], success_threshold=1.0)
    order = sorted(devices, key=lambda d: hashlib.sha256((plan["id"] + d).encode()).hexdigest())
    assert planned_waves(plan) == [order[:1], order[1:5], order[5:]]
    assert [(w["wave"], w["size"]) for w in plan["waves"]] == [(1, 1), (2, 4), (3, 5)]
    assert plan["strategy"]["waves"] == [10, 50, 100] and plan["state"] == "pending"
    with cloud.server.sessions() as session:
        rows = session.execute(select(DeploymentDevice.device_id, DeploymentDevice.wave)
                               .where(DeploymentDevice.deployment_id == plan["id"])
                               .order_by(DeploymentDevice.rank)).all()
    assert [device for device, _ in rows] == order and [wave for _, wave in rows] == [1] + [2] * 4 + [3] * 5

    done = cloud.wait_state(plan["id"], "completed")
    assert done["counts"] == {"active": 10} and all(w["status"] == "done" for w in done["waves"])
    assert all(d["state"] == "active" and d["sent_at"] for d in done["devices"])
    for device in devices.values():
        assert device.ops() == ["install"] and device.downloads == [True]
        command = device.commands[0].command
        assert (command.deployment, command.bundle.name, command.bundle.version) == (plan["id"], "digits-cnn", 1)
        assert "sig=" in command.bundle.url and command.bundle.url.startswith(cloud.server.url)
        assert command.health_window_seconds == 1 and command.mode == "switch"
    # Each wave's commands went out only after every device of the wave before reported "active".
    for earlier, later in zip(planned_waves(plan), planned_waves(plan)[1:], strict=False):
        last_active = max(t for d in earlier for _, state, t in devices[d].published if state == "active")
        first_sent = min(devices[d].commands[0].at for d in later)
        assert first_sent > last_active
    with cloud.server.sessions() as session:  # every status stored once, in order
        stored = session.scalars(select(DeviceStatus.state).where(DeviceStatus.device_id == order[0])
                                 .order_by(DeviceStatus.seq)).all()
    assert stored == ["received", "downloading", "verifying", "self_testing", "switching", "health_check", "active"]


def test_a_failing_canary_wave_aborts_rolls_back_and_spares_the_rest(cloud: Cloud, fleet):
    devices = fleet(10)
    for device in devices.values():
        device.go.clear()  # hold every answer until the plan says who is who
    plan = cloud.deploy(kind="waves", waves=[30, 100], success_threshold=0.9, max_failure_rate=0.2)
    canary, rest = planned_waves(plan)
    assert len(canary) == 3 and len(rest) == 7
    broken, healthy = canary[0], canary[1:]
    devices[broken].behaviour = "fail"
    for device in devices.values():
        device.go.set()

    aborted = cloud.wait_state(plan["id"], "aborted")
    assert aborted["reason"].startswith("wave 1: 1 of 3 devices failed or rolled back (0.33 > max_failure_rate 0.20)")
    wait_until(lambda: all(devices[d].ops() == ["install", "rollback"] for d in healthy), "rollbacks arrive")
    for device_id in healthy:
        rollback = devices[device_id].commands[1].command
        assert rollback.deployment == plan["id"] and rollback.reason == aborted["reason"]
    final = cloud.deployment(plan["id"])
    wait_until(lambda: all(d["state"] == "rolled_back" for d in cloud.deployment(plan["id"])["devices"]
                           if d["device"] in healthy), "healthy canaries rolled back")
    states = {d["device"]: d for d in cloud.deployment(plan["id"])["devices"]}
    assert states[broken]["state"] == "failed" and states[broken]["reason"].startswith("self_test_failed")
    assert states[broken]["rollback_command"] is None and devices[broken].ops() == ["install"]
    time.sleep(1.0)  # several engine ticks: the rest of the fleet still hears nothing
    assert all(devices[d].commands == [] for d in rest)
    assert all(states[d]["state"] == "pending" and states[d]["sent_at"] is None for d in rest)
    assert final["waves"][1]["counts"] == {"pending": 7}


def test_pause_for_approval_then_approve(cloud: Cloud, fleet):
    devices = fleet(4)
    plan = cloud.deploy(kind="waves", waves=[25, 100], pause_for_approval=True)
    first, rest = planned_waves(plan)
    paused = cloud.wait_state(plan["id"], "paused")
    assert paused["current_wave"] == 1 and "waiting for approval" in paused["reason"]
    time.sleep(1.0)
    assert all(devices[d].commands == [] for d in rest)
    assert devices[first[0]].ops() == ["install"]

    approved = cloud.client.post(f"/api/v1/deployments/{plan['id']}/approve")
    assert approved.status_code == 200 and approved.json()["state"] == "running"
    done = cloud.wait_state(plan["id"], "completed")
    assert done["counts"] == {"active": 4} and all(devices[d].ops() == ["install"] for d in devices)
    again = cloud.client.post(f"/api/v1/deployments/{plan['id']}/approve")
    assert again.status_code == 409 and "completed" in again.json()["detail"]


def test_abort_endpoint_rolls_back_and_stops(cloud: Cloud, fleet):
    devices = fleet(4)
    plan = cloud.deploy(kind="waves", waves=[25, 100], pause_for_approval=True)
    (first,), rest = planned_waves(plan)
    cloud.wait_state(plan["id"], "paused")
    response = cloud.client.post(f"/api/v1/deployments/{plan['id']}/abort", json={"reason": "wrong model"})
    assert response.status_code == 200 and response.json()["state"] == "aborted"
    assert response.json()["reason"] == "wrong model"
    wait_until(lambda: devices[first].ops() == ["install", "rollback"], "the updated device gets a rollback")
    wait_until(lambda: cloud.deployment(plan["id"])["devices"][0]["state"] == "rolled_back", "rolled back")
    time.sleep(0.5)
    assert all(devices[d].commands == [] for d in rest)
    again = cloud.client.post(f"/api/v1/deployments/{plan['id']}/abort")
    assert again.status_code == 409 and "aborted already" in again.json()["detail"]
    approve = cloud.client.post(f"/api/v1/deployments/{plan['id']}/approve")
    assert approve.status_code == 409
    listed = cloud.client.get("/api/v1/deployments").json()
    assert [(d["id"], d["state"]) for d in listed] == [(plan["id"], "aborted")]
    # The devices are free again: a new deployment may take them.
    assert cloud.deploy().get("id") != plan["id"]


def test_a_device_that_rolls_back_itself_counts_as_failed(cloud: Cloud, fleet):
    devices = fleet(1, behaviours={"lab-00": "roll_back"})
    plan = cloud.deploy(mode="canary", canary_fraction=0.25, latency_budget_ms=50)
    aborted = cloud.wait_state(plan["id"], "aborted")
    assert "rolled back" in aborted["reason"]
    command = devices["lab-00"].commands[0].command
    assert (command.mode, command.canary_fraction, command.latency_budget_ms) == ("canary", 0.25, 50.0)
    time.sleep(0.5)
    assert all(d.ops() == ["install"] for d in devices.values())  # no rollback for who rolled back already
    assert {d["state"] for d in aborted["devices"]} == {"rolled_back"}


def test_deployment_validation_errors(cloud: Cloud, fleet):
    fleet(2)
    client = cloud.client

    def post(body: dict) -> httpx.Response:
        return client.post("/api/v1/deployments", json={"target": {"fleet": "lab"},
                                                        "bundle": {"name": "digits-cnn", "version": 1}, **body})

    cases = [
        ({"bundle": {"name": "digits-cnn", "version": 9}}, 404, "no bundle digits-cnn v9 in the registry"),
        ({"target": {"devices": ["lab-00", "ghost", "nope"]}}, 404, "unknown device(s): ghost, nope"),
        ({"target": {}}, 400, "target needs at least one of fleet, group or devices"),
        ({"target": {"fleet": "elsewhere"}}, 400, "no registered device is in fleet 'elsewhere'"),
        ({"target": {"group": "canary"}}, 400, "no registered device is in group 'canary'"),
        ({"target": {"fleet": "other", "devices": ["lab-00"]}}, 400, "device(s) lab-00 are not in fleet 'other'"),
        ({"strategy": {"kind": "waves", "waves": [50, 20, 100]}}, 400, "strictly increasing"),
        ({"strategy": {"kind": "waves", "waves": [5, 50]}}, 400, "must end at 100"),
        ({"strategy": {"success_threshold": 1.5}}, 400, "strategy.success_threshold must be within (0, 1]"),
    ]
    for body, code, message in cases:
        response = post(body)
        assert response.status_code == code and message in response.json()["detail"], (body, response.text)
    assert post({"strategy": {"kind": "sideways"}}).status_code == 422
    assert post({"strategy": {"sucess_threshold": 0.5}}).status_code == 422  # a typo is not ignored
    assert client.get("/api/v1/deployments/d-unknown").status_code == 404
    for method, path in (("GET", "/api/v1/deployments"), ("POST", "/api/v1/deployments"),
                         ("POST", "/api/v1/deployments/d-x/abort"), ("POST", "/api/v1/deployments/d-x/approve")):
        assert httpx.request(method, cloud.server.url + path).status_code == 401, path

    first = post({"strategy": {"kind": "waves", "waves": [50, 100], "pause_for_approval": True}})
    assert first.status_code == 201
    busy = post({})
    assert busy.status_code == 409 and f"deployment {first.json()['id']}" in busy.json()["detail"]
    client.post(f"/api/v1/deployments/{first.json()['id']}/abort", json={"rollback": False})

    with cloud.server.sessions.begin() as session:  # lab-01 reports a newer version of the model
        device = session.get(Device, "lab-01")
        device.model_name, device.model_version = "digits-cnn", 2
    downgrade = post({})
    assert downgrade.status_code == 409 and "lab-01 (v2)" in downgrade.json()["detail"]
    assert "rollback key" in downgrade.json()["detail"]


def test_a_restarted_cloud_resumes_the_rollout(start_cloud, archive: Path, mosquitto, devices_to_stop):
    cloud = start_cloud()
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    devices = start_devices(cloud, mosquitto, 4, {f"lab-{i:02d}": "hold" for i in range(4)}, running=devices_to_stop)
    plan = cloud.deploy(kind="waves", waves=[50, 100], success_threshold=1.0)
    first, rest = planned_waves(plan)
    wait_until(lambda: all(devices[d].commands and devices[d].states(devices[d].commands[0].command.id)[-1:]
                           == ["health_check"] for d in first), "wave 1 in its health check")
    wait_until(lambda: all(cloud.deployment(plan["id"])["devices"][i]["state"] == "health_check"
                           for i in range(2)), "the cloud saw the health checks")
    cloud.client.close()
    cloud.server.stop()  # mid-wave; the devices finish while the cloud is down
    for device in devices.values():
        device.release.set()
    wait_until(lambda: all(devices[d].states(devices[d].commands[0].command.id)[-1:] == ["active"]
                           for d in first), "wave 1 active while the cloud is down")

    again = start_cloud(token=cloud.token)  # same data directory and database
    assert again.server.new_admin_token is None
    done = again.wait_state(plan["id"], "completed")
    assert done["counts"] == {"active": 4}
    for device in devices.values():
        assert device.ops() == ["install"]  # nobody got a second install after the restart
    later = [devices[d].commands[0].command.bundle.url for d in rest]
    assert all(url.startswith(again.server.url) for url in later)  # the new address


def test_commands_reach_devices_through_the_embedded_broker(start_cloud, archive: Path, devices_to_stop):
    """With the embedded broker (no mqtt_url), the engine logs in as the cloud's user and devices with their
    own credentials, each allowed only its own topics."""
    cloud = start_cloud(mqtt_url=None, mqtt_port=free_port())
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    broker = cloud.server.broker
    for device_id in ("pi-1", "pi-2"):
        created = cloud.client.post("/api/v1/devices", json={"id": device_id, "fleet": "lab"}).json()
        devices_to_stop.append(ScriptedDevice(device_id, "lab", broker, password=created["mqtt"]["password"]))
        devices_to_stop[-1].start()
    plan = cloud.deploy()
    done = cloud.wait_state(plan["id"], "completed")
    assert done["counts"] == {"active": 2}
    assert all(d.ops() == ["install"] and d.downloads == [True] for d in devices_to_stop)


def test_a_downgrade_carries_a_signed_rollback_authorization(start_cloud, archive: Path, digits_bundle, mosquitto,
                                                             devices_to_stop):
    cloud = start_cloud(rollback_key=digits_bundle.private_key)
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    devices = start_devices(cloud, mosquitto, 2, running=devices_to_stop)
    with cloud.server.sessions.begin() as session:  # lab-01 runs v3 already: v1 is a downgrade for it
        device = session.get(Device, "lab-01")
        device.model_name, device.model_version = "digits-cnn", 3
    plan = cloud.deploy()
    cloud.wait_state(plan["id"], "completed")
    upgrade, downgrade = (devices[d].commands[0].command for d in ("lab-00", "lab-01"))
    assert upgrade.rollback_authorization is None
    trust = TrustStore.from_paths([digits_bundle.public_key])
    assert check_rollback_authorization(downgrade.rollback_authorization, trust, "digits-cnn", 1)


def test_public_url_setting():
    assert CloudServer(CloudSettings(public_url="https://fleet.example/")).public_url == "https://fleet.example"
    with pytest.raises(ValueError, match="public_url"):
        CloudSettings(public_url="fleet.example:8080")


def test_the_ingest_ignores_statuses_of_no_command_and_duplicates(cloud: Cloud, fleet, mosquitto):
    devices = fleet(1)
    plan = cloud.deploy()
    cloud.wait_state(plan["id"], "completed")
    device = devices["lab-00"]
    command = device.commands[0].command
    stray = Command("c-stray", "install", plan["id"], command.bundle)
    device._status(stray, "failed", "not ours")  # an unknown command id
    device.seq -= 2
    device._status(command, "failed", "a replay of an old seq")  # seq already used: a duplicate
    wait_until(lambda: cloud.client.get("/api/v1/ingest").json().get("status_duplicate") == 1, "duplicate counted")
    counters = cloud.client.get("/api/v1/ingest").json()
    assert counters["status_unmatched"] == 1 and counters["status"] == 7
    assert cloud.deployment(plan["id"])["devices"][0]["state"] == "active"


def test_cli_deploy_status_approve_abort(cloud: Cloud, fleet):
    from typer.testing import CliRunner

    import edgefleet.cli.rollout_commands  # noqa: F401 - registers deploy and rollout
    from edgefleet.cli.app import app

    fleet(4, group="canary")
    runner = CliRunner()
    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "200"}
    result = runner.invoke(app, ["deploy", "digits-cnn", "1", "--group", "canary", "--waves", "25,100",
                                 "--approve-first-wave", "--health-window", "1"], env=env)
    assert result.exit_code == 0, result.output
    deployment_id = result.output.split()[1].rstrip(":")
    assert "to 4 device(s) in 2 wave(s) of 1, 3" in result.output
    cloud.wait_state(deployment_id, "paused")
    shown = runner.invoke(app, ["rollout", "status", deployment_id], env=env)
    assert shown.exit_code == 0 and "paused" in shown.output and "approve" in shown.output
    assert shown.output.count("lab-0") == 4
    assert runner.invoke(app, ["rollout", "approve", deployment_id], env=env).exit_code == 0
    watched = runner.invoke(app, ["rollout", "status", deployment_id, "--watch", "--interval", "0.2"], env=env)
    assert watched.exit_code == 0 and "completed" in watched.output
    listed = runner.invoke(app, ["rollout", "list"], env=env)
    assert deployment_id in listed.output and "completed" in listed.output
    refused = runner.invoke(app, ["rollout", "abort", deployment_id], env=env)
    assert refused.exit_code != 0 and "409" in str(refused.exception)
