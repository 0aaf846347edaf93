"""MQTT passwords and topic rules: Mosquitto's hash format both ways, the rule table, the generated files."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess

import pytest

from edgefleet.cloud.mqtt_auth import (
    CLOUD_CLIENTS,
    INGEST,
    ROLLOUTS,
    Listener,
    MqttAuthError,
    client_id_allowed,
    cloud_password,
    hash_password,
    is_reserved_id,
    may_publish,
    may_subscribe,
    new_password,
    verify_password,
    write_mosquitto_config,
)
from edgefleet.core.topics import DEVICE_KINDS

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def mosquitto_passwd(tmp_path, password: str, *options: str) -> str:
    path = tmp_path / "passwd"
    path.unlink(missing_ok=True)
    subprocess.run([MOSQUITTO_PASSWD, *options, "-c", "-b", str(path), "someone", password], check=True,
                   capture_output=True, timeout=30)
    user, hashed = path.read_text().strip().split(":", 1)
    assert user == "someone"
    return hashed


def test_new_passwords_are_long_random_and_url_safe():
    passwords = {new_password() for _ in range(100)}
    assert len(passwords) == 100
    for password in passwords:
        assert len(password) >= 43
        assert set(password) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_hash_has_mosquittos_layout():
    hashed = hash_password("s3cret")
    marker, kind, iterations, salt, digest = hashed.split("$")
    assert (marker, kind, iterations) == ("", "7", "101")
    assert len(base64.b64decode(salt, validate=True)) == 12
    assert len(base64.b64decode(digest, validate=True)) == 64
    assert hash_password("s3cret") != hashed  # fresh salt every time
    assert hash_password("s3cret", iterations=1000).startswith("$7$1000$")


def test_verify_accepts_the_password_and_nothing_else():
    hashed = hash_password("s3cret")
    assert verify_password("s3cret", hashed)
    for wrong in ("s3creT", "", "s3cret ", None):
        assert not verify_password(wrong, hashed)
    for malformed in ("", None, "s3cret", "$6$abc$def", hashed[:-10], hashed.replace("$7$101$", "$7$0$"),
                      hashed.replace("$7$", "$7$x")):
        assert not verify_password("s3cret", malformed)


@pytest.mark.parametrize("password", ["simple", "with:colon and spaces", "ünïcødé-ß", new_password()])
def test_mosquitto_passwd_hashes_verify_here(tmp_path, password):
    hashed = mosquitto_passwd(tmp_path, password)
    assert hashed.startswith("$7$101$")
    assert verify_password(password, hashed)
    assert not verify_password(password + "x", hashed)


def test_mosquitto_passwd_with_other_iterations_verifies_here(tmp_path):
    hashed = mosquitto_passwd(tmp_path, "pw", "-I", "2000")
    assert hashed.startswith("$7$2000$")
    assert verify_password("pw", hashed)


# --- the rule table ---------------------------------------------------------------------------------
A = "edgefleet/v1/lab/dev-a"
B = "edgefleet/v1/lab/dev-b"


@pytest.mark.parametrize("username,topic,fleet,allowed", [
    ("dev-a", f"{A}/birth", "lab", True),
    ("dev-a", f"{A}/death", "lab", True),
    ("dev-a", f"{A}/telemetry", "lab", True),
    ("dev-a", f"{A}/status", "lab", True),
    ("dev-a", f"{A}/cmd", "lab", False),  # commands come from the cloud only
    ("dev-a", f"{B}/telemetry", "lab", False),  # another device
    ("dev-a", "edgefleet/v1/other/dev-a/telemetry", "lab", False),  # another fleet
    ("dev-a", f"{A}/telemetry", "other", False),  # the database says another fleet
    ("dev-a", f"{A}/telemetry", None, False),  # not a registered device
    ("dev-a", f"{A}/telemetry/extra", "lab", False),
    ("dev-a", f"{A}/+", "lab", False),
    ("dev-a", f"{A}/#", "lab", False),
    ("dev-a", "elsewhere/x", "lab", False),
    (None, f"{A}/telemetry", "lab", False),  # anonymous
    ("", f"{A}/telemetry", "lab", False),
    ("edgefleet-rollouts", f"{A}/cmd", None, True),
    ("edgefleet-rollouts", f"{B}/cmd", None, True),
    ("edgefleet-rollouts", f"{B}/telemetry", None, False),  # only commands
    ("edgefleet-rollouts", "edgefleet/v1/lab/dev-a/cmd/x", None, False),
    ("edgefleet-rollouts", "edgefleet/v2/lab/dev-a/cmd", None, False),
    ("edgefleet-rollouts", "$SYS/broker/uptime", None, False),
    ("edgefleet-rollouts", "edgefleet/v1/+/dev-a/cmd", None, False),  # a wildcard is no topic name
    ("edgefleet-ingest", f"{A}/cmd", None, False),  # the ingest only reads
    ("edgefleet-ingest", f"{A}/telemetry", None, False),
    ("edgefleet-cloud", f"{A}/cmd", None, False),  # the retired all-powerful user is nobody now
])
def test_may_publish(username, topic, fleet, allowed):
    assert may_publish(username, topic, fleet) is allowed


@pytest.mark.parametrize("username,topic_filter,fleet,allowed", [
    ("dev-a", f"{A}/cmd", "lab", True),
    ("dev-a", f"{B}/cmd", "lab", False),  # another device's commands
    ("dev-a", "edgefleet/v1/other/dev-a/cmd", "lab", False),
    ("dev-a", f"{A}/cmd", "other", False),
    ("dev-a", f"{A}/cmd", None, False),
    ("dev-a", f"{A}/telemetry", "lab", False),  # not even its own telemetry
    ("dev-a", f"{A}/+", "lab", False),
    ("dev-a", f"{A}/#", "lab", False),
    ("dev-a", "edgefleet/v1/lab/+/cmd", "lab", False),
    ("dev-a", "edgefleet/v1/#", "lab", False),
    ("dev-a", "#", "lab", False),
    ("dev-a", "+/v1/lab/dev-a/cmd", "lab", False),
    (None, f"{A}/cmd", "lab", False),
    ("edgefleet-ingest", "edgefleet/v1/+/+/telemetry", None, True),
    ("edgefleet-ingest", "edgefleet/v1/+/+/status", None, True),
    ("edgefleet-ingest", "edgefleet/v1/lab/+/telemetry", None, True),  # narrower than its rights
    ("edgefleet-ingest", f"{A}/birth", None, True),
    ("edgefleet-ingest", f"{A}/cmd", None, False),
    ("edgefleet-ingest", "edgefleet/v1/+/+/cmd", None, False),
    ("edgefleet-ingest", "edgefleet/v1/+/+/+", None, False),
    ("edgefleet-ingest", "edgefleet/v1/#", None, False),
    ("edgefleet-ingest", "edgefleet/v1/+/#", None, False),
    ("edgefleet-ingest", "#", None, False),
    ("edgefleet-ingest", "$SYS/#", None, False),
    ("edgefleet-rollouts", "edgefleet/v1/+/+/telemetry", None, False),  # the engine only writes
    ("edgefleet-rollouts", f"{A}/cmd", None, False),
    ("edgefleet-cloud", "edgefleet/v1/#", None, False),
])
def test_may_subscribe(username, topic_filter, fleet, allowed):
    assert may_subscribe(username, topic_filter, fleet) is allowed


def test_every_client_uses_its_username_as_client_id():
    assert client_id_allowed("dev-a", "dev-a")
    assert not client_id_allowed("dev-a", "dev-b")
    assert not client_id_allowed("dev-a", "edgefleet-ingest")
    assert not client_id_allowed("dev-a", "")
    assert not client_id_allowed(None, "")
    assert client_id_allowed("edgefleet-ingest", "edgefleet-ingest")
    assert not client_id_allowed("edgefleet-ingest", "edgefleet-rollouts")
    assert not client_id_allowed("edgefleet-rollouts", "dev-a")


def test_cloud_names_are_reserved():
    assert all(is_reserved_id(name) for name in CLOUD_CLIENTS) and is_reserved_id("edgefleet-cloud")
    assert not is_reserved_id("dev-a") and not is_reserved_id("my-edgefleet-1")


def test_cloud_passwords_are_derived_per_client():
    secret = new_password()
    ingest, rollouts = cloud_password(secret, INGEST), cloud_password(secret, ROLLOUTS)
    assert ingest != rollouts and secret not in (ingest, rollouts) and len(ingest) >= 43
    assert cloud_password(secret, INGEST.username) == ingest  # stable: the service and the command agree
    assert cloud_password(secret + "x", INGEST) != ingest


# --- Mosquitto files --------------------------------------------------------------------------------
def cloud_hashes() -> dict[str, str]:
    return {name: hash_password(f"{name}-pw") for name in CLOUD_CLIENTS}


def test_mosquitto_files(tmp_path):
    hashes = cloud_hashes()
    devices = [("dev-a", "lab", hash_password("a-pw")), ("dev-b", "field", hash_password("b-pw"))]
    paths = write_mosquitto_config(tmp_path / "mqtt", devices, hashes)

    assert stat.S_IMODE(paths["passwd"].stat().st_mode) == 0o600
    users = dict(line.split(":", 1) for line in paths["passwd"].read_text().splitlines())
    assert users == {**hashes, "dev-a": devices[0][2], "dev-b": devices[1][2]}

    acl = [line for line in paths["acl"].read_text().splitlines() if line and not line.startswith("#")]
    ingest = acl[acl.index("user edgefleet-ingest") + 1:acl.index("user edgefleet-rollouts")]
    assert ingest == [f"topic read edgefleet/v1/+/+/{kind}" for kind in DEVICE_KINDS]
    assert acl[acl.index("user edgefleet-rollouts") + 1] == "topic write edgefleet/v1/+/+/cmd"
    assert not [line for line in acl if "readwrite" in line or line.endswith("#")]
    block = acl[acl.index("user dev-b") + 1:]
    assert block == [f"topic write edgefleet/v1/field/dev-b/{kind}" for kind in DEVICE_KINDS] + [
        "topic read edgefleet/v1/field/dev-b/cmd"]
    assert not list((tmp_path / "mqtt").glob(".*"))  # no temporary files left behind


def test_mosquitto_conf_binds_client_ids_and_persists(tmp_path):
    paths = write_mosquitto_config(tmp_path / "mqtt", [], cloud_hashes(), Listener(port=11883, bind=None))
    conf = [line for line in paths["conf"].read_text().splitlines() if line and not line.startswith("#")]
    assert conf[0] == "per_listener_settings false"  # must come first, says mosquitto.conf(5)
    for line in ("allow_anonymous false", f"password_file {paths['passwd'].resolve()}",
                 f"acl_file {paths['acl'].resolve()}", "persistence true",
                 f"persistence_location {(tmp_path / 'mqtt' / 'persistence').resolve()}/", "autosave_interval 30",
                 "max_inflight_messages 1000"):
        assert line in conf
    # A listener option: it applies to the listener above it (before any, Mosquitto would open a second one).
    assert conf[-2:] == ["listener 11883", "use_username_as_clientid true"]
    assert paths["persistence"].is_dir() and stat.S_IMODE(paths["persistence"].stat().st_mode) == 0o700


@pytest.mark.parametrize("hashes", [{}, {"edgefleet-ingest": hash_password("x")},
                                    {**{name: hash_password("x") for name in CLOUD_CLIENTS}, "extra": "y"},
                                    {name: "plaintext" for name in CLOUD_CLIENTS}])
def test_mosquitto_files_need_every_cloud_client(tmp_path, hashes):
    with pytest.raises(MqttAuthError):
        write_mosquitto_config(tmp_path, [], hashes)
    assert not (tmp_path / "passwd").exists()


@pytest.mark.parametrize("devices", [
    [("bad id", "lab", hash_password("x"))],  # would break the files
    [("dev-a", "lab\ntopic readwrite #", hash_password("x"))],
    [("dev-a", "lab", "plaintext")],
    [("dev-a", "lab", hash_password("x") + "\nintruder:" + hash_password("y"))],
    [("edgefleet-cloud", "lab", hash_password("x"))],
    [("edgefleet-ingest", "lab", hash_password("x"))],
    [("edgefleet-rollouts", "lab", hash_password("x"))],
    [("dev-a", "lab", hash_password("x")), ("dev-a", "lab", hash_password("y"))],
])
def test_mosquitto_files_refuse_bad_records(tmp_path, devices):
    with pytest.raises(MqttAuthError):
        write_mosquitto_config(tmp_path, devices, cloud_hashes())
    assert not (tmp_path / "passwd").exists()
