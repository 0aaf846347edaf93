"""Provisioning at fleet scale: enrollment tokens, a device that enrolls itself and reports with its own
credentials, bulk registration from a CSV. A real cloud with its embedded broker, the real CLI, a real agent."""

from __future__ import annotations

import concurrent.futures
import csv
import os
import stat
import time

import httpx
import paho.mqtt.client as mqtt
import pytest
import tomllib

from edgefleet.cloud.db import Device
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig
from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.mosquitto import free_port
from tests.waiting import until


@pytest.fixture
def cloud(start_cloud, clean_environment):
    return start_cloud(mqtt_url=None, mqtt_port=free_port())  # the embedded broker checks device passwords


@pytest.fixture
def admin_env(cloud) -> dict:
    return {"EDGEFLEET_CLOUD": url(cloud), "EDGEFLEET_TOKEN": cloud.token}


def url(cloud) -> str:
    return str(cloud.client.base_url).rstrip("/")


def make_token(admin_env: dict, *args: str) -> str:
    result = edgefleet("enroll-token", "create", "--fleet", "lab", *args, env=admin_env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("efe_")
    return token


def mqtt_login(cloud, username: str, password: str) -> bool:
    """Whether the cloud's broker accepts these credentials (a fresh connection, as a reconnect would be)."""
    port = int(cloud.server.broker_url.rsplit(":", 1)[1])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username)
    client.username_pw_set(username, password)
    try:
        return client.connect("127.0.0.1", port, keepalive=10) == 0 and _connack(client)
    finally:
        client.disconnect()


def _connack(client) -> bool:
    result: list[bool] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(not reason.is_failure)
    deadline = time.monotonic() + 10
    while not result and time.monotonic() < deadline:
        client.loop(0.1)
    return bool(result and result[0])


def enroll(cloud, token: str, device_id: str | None = None) -> httpx.Response:
    return httpx.post(f"{url(cloud)}/api/v1/enroll", json={"id": device_id},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_device_enrolls_itself_and_reports_with_its_own_credentials(cloud, admin_env, digits_bundle, tmp_path):
    token = make_token(admin_env, "--group", "site-1", "--uses", "2", "--expires", "1h")
    out = tmp_path / "device.toml"
    args = ["device", "enroll", "--token", token, "--bundle", str(digits_bundle.root), "--trusted-key",
            str(digits_bundle.public_key), "--id", "pi-07", "--out", str(out), "--port", str(free_port()),
            "--cloud", admin_env["EDGEFLEET_CLOUD"]]
    result = edgefleet(*args)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the MQTT password
    assert_user_error(edgefleet(*args), "enrolled already")  # a second run keeps the first credentials

    config = DeviceConfig.load(out)
    assert (config.device, config.fleet) == ("pi-07", "lab")
    assert tomllib.loads(out.read_text())["cloud"]["url"] == admin_env["EDGEFLEET_CLOUD"]
    with DeviceAgent(config):
        until(lambda: cloud.client.get("/api/v1/devices/pi-07").json()["online"], "the enrolled device online")
        device = cloud.client.get("/api/v1/devices/pi-07").json()
        assert device["group"] == "site-1" and device["model_name"] == "digits-cnn"

        revoked = edgefleet("device", "revoke", "pi-07", env=admin_env)  # while it is connected
        assert revoked.returncode == 0, revoked.stderr
        until(lambda: not cloud.client.get("/api/v1/devices/pi-07").json()["online"],
              "the revoked device's connection closed (its last will marks it offline)", timeout=15)
        assert not mqtt_login(cloud, config.mqtt.username, config.mqtt.password)
        assert cloud.client.get("/api/v1/devices/pi-07").json()["revoked_at"] is not None

    second = enroll(cloud, token)  # the second use, with an id the cloud picks
    assert second.status_code == 201
    assert mqtt_login(cloud, second.json()["mqtt"]["username"], second.json()["mqtt"]["password"])
    refused = enroll(cloud, token, "pi-09")
    assert refused.status_code == 401 and "used up" in refused.json()["detail"]
    listed = edgefleet("enroll-token", "list", env=admin_env)
    assert "2/2" in listed.stdout and "used up" in listed.stdout


def test_an_enrollment_token_opens_enroll_and_nothing_else(cloud, admin_env):
    token = make_token(admin_env, "--uses", "5")
    assert httpx.get(f"{url(cloud)}/api/v1/devices", headers={"Authorization": f"Bearer {token}"}
                     ).status_code == 401
    assert enroll(cloud, cloud.token).status_code == 401  # the admin token is not an enrollment token
    assert enroll(cloud, "efe_made-up").json()["detail"] == "unknown enrollment token"

    taken = enroll(cloud, token, "pi-01")
    assert taken.status_code == 201
    again = enroll(cloud, token, "pi-01")
    assert again.status_code == 409  # the id is taken: the failed registration gives its use back
    assert cloud.client.get("/api/v1/enrollment-tokens").json()[0]["uses"] == 1
    assert enroll(cloud, token, "bad id!").status_code == 400

    revoked = edgefleet("enroll-token", "revoke", "1", env=admin_env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "revoked" in enroll(cloud, token, "pi-02").json()["detail"]
    assert_user_error(edgefleet("enroll-token", "revoke", "99", env=admin_env), "no enrollment token 99")
    assert_user_error(edgefleet("enroll-token", "create", "--fleet", "lab", "--expires", "soon", env=admin_env),
                      "--expires")

    short = make_token(admin_env, "--expires", "1s")
    time.sleep(1.2)
    assert "expired" in enroll(cloud, short, "pi-03").json()["detail"]
    cloud.assert_serving()


def test_racing_devices_cannot_share_the_last_use(cloud, admin_env):
    token = make_token(admin_env, "--uses", "1")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: enroll(cloud, token, f"racer-{i}").status_code, range(8)))
    assert sorted(codes) == [201] + [401] * 7
    assert len([d for d in cloud.client.get("/api/v1/devices").json() if d["id"].startswith("racer-")]) == 1


def test_bulk_registration_from_a_csv_is_all_or_none(cloud, admin_env, tmp_path):
    source = tmp_path / "devices.csv"
    source.write_text("id,fleet,group\n" + "".join(f"cam-{i:03d},lab,{'north' if i % 2 else ''}\n" for i in range(30)))
    creds = tmp_path / "creds.csv"
    result = edgefleet("device", "register", "--csv", str(source), "--out", str(creds), env=admin_env)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    with creds.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == [f"cam-{i:03d}" for i in range(30)]
    assert len({r["mqtt_password"] for r in rows}) == 30
    listed = {d["id"]: d["group"] for d in cloud.client.get("/api/v1/devices", params={"fleet": "lab"}).json()}
    assert listed["cam-001"] == "north" and listed["cam-002"] is None and len(listed) == 30

    overlap = tmp_path / "overlap.csv"
    overlap.write_text("id,fleet\nnew-1,lab\ncam-005,lab\n")
    result = edgefleet("device", "register", "--csv", str(overlap), "--out", str(tmp_path / "o.csv"), env=admin_env)
    assert_user_error(result, "cam-005")
    assert cloud.client.get("/api/v1/devices/new-1").status_code == 404  # none of the batch was registered

    for text, expected in (("name,fleet\nx,lab\n", "header must name"), ("id,fleet\n,lab\n", "line 2"),
                           ("id,fleet\na,lab\na,lab\n", "more than once"), ("", "no devices")):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        out = tmp_path / f"bad-{len(os.listdir(tmp_path))}.csv"
        assert_user_error(edgefleet("device", "register", "--csv", str(bad), "--out", str(out), env=admin_env),
                          expected)


@pytest.mark.parametrize("nats_hashes", [True, False])
def test_devices_keep_a_nats_hash_unless_the_cloud_turns_it_off(start_cloud, clean_environment, nats_hashes):
    cloud = start_cloud(mqtt_url=None, mqtt_port=free_port(), nats_device_hashes=nats_hashes)
    answer = cloud.client.post("/api/v1/devices/bulk", json={"devices": [{"id": "cam-1", "fleet": "lab"},
                                                                         {"id": "cam-2", "fleet": "lab"}]})
    assert answer.status_code == 201, answer.text
    single = cloud.client.post("/api/v1/devices", json={"id": "cam-3", "fleet": "lab"})
    assert single.status_code == 201, single.text
    with cloud.server.sessions() as session:
        hashes = [session.get(Device, f"cam-{n}").password_bcrypt for n in (1, 2, 3)]
    assert all(h is not None and h.startswith("$2") for h in hashes) if nats_hashes else hashes == [None] * 3
    created = answer.json()[0]["mqtt"]
    assert mqtt_login(cloud, created["username"], created["password"])  # the broker's own hash works either way
