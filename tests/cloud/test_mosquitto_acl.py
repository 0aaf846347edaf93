"""The generated Mosquitto configuration (passwd, acl, mosquitto.conf) in a real Mosquitto: each device stays
inside its own topics and its own session, the cloud's clients inside theirs, and queued messages survive a
restart. The scenarios are in tests/cloud/mqtt_scenarios.py (the embedded broker runs them too).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from edgefleet.cloud.db import Device, make_engine, make_sessions
from edgefleet.cloud.mqtt_auth import (
    CLOUD_CLIENTS,
    INGEST,
    ROLLOUTS,
    Listener,
    cloud_password,
    hash_password,
    new_cloud_secret,
    new_password,
    write_mosquitto_config,
)
from tests.cloud.mqtt_scenarios import (
    SCENARIOS,
    WAIT,
    Fleet,
    Peers,
    check_device_telemetry_reaches_the_cloud,
    connect,
    refused,
    t,
    wait_stored,
    window,
)
from tests.mosquitto import MosquittoBroker


# --- Mosquitto --------------------------------------------------------------------------------------
@pytest.fixture
def mqtt_dir():
    """A directory for the generated files that the broker can read. Started as root, Mosquitto drops to
    the `mosquitto` user, which can neither enter pytest's 0700 temp tree nor read a root-owned 0600 file."""
    directory = Path(tempfile.mkdtemp(prefix="edgefleet-mqtt-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def hand_to_broker(paths: dict[str, Path]) -> dict[str, Path]:
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return paths
        for path in paths.values():
            os.chown(path, user.pw_uid, user.pw_gid)
    return paths


class GeneratedMosquitto(MosquittoBroker):
    """Mosquitto run with the generated mosquitto.conf as it is, plus only what this machine needs: a log
    file, and `user root` when started as root (tests/mosquitto.py says why)."""

    def __init__(self, workdir: Path, conf: Path) -> None:
        super().__init__(workdir)
        self.conf = conf

    def write_config(self) -> Path:
        lines = [self.conf.read_text(), f"log_dest file {self.workdir / 'mosquitto.log'}", "log_type all"]
        if os.geteuid() == 0:
            lines.append("user root")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config


@pytest.fixture
def mosquitto_for(tmp_path, mqtt_dir):
    """make(): a not yet started Mosquitto (its `port` is free) that will run mqtt_dir/mosquitto.conf; every
    one is stopped at the end."""
    brokers: list[GeneratedMosquitto] = []

    def make() -> GeneratedMosquitto:
        broker = GeneratedMosquitto(tmp_path / f"mosquitto-{len(brokers)}", mqtt_dir / "mosquitto.conf")
        brokers.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture
def generated_mosquitto(mqtt_dir, mosquitto_for):
    """start(devices, cloud_hashes): writes the files for a free port and starts Mosquitto with them."""

    def start(devices, cloud_hashes) -> GeneratedMosquitto:
        broker = mosquitto_for()
        paths = write_mosquitto_config(mqtt_dir, devices, cloud_hashes, Listener(port=broker.port))
        hand_to_broker({name: paths[name] for name in ("passwd", "acl")})
        return broker.start()

    return start


def cloud_hashes(secret: str, iterations: int = 101) -> dict[str, str]:
    return {name: hash_password(cloud_password(secret, name), iterations) for name in CLOUD_CLIENTS}


def device_rows(db_file: Path, passwords: dict[str, str]):
    """A cloud database with these devices in fleet "lab"."""
    sessions = make_sessions(make_engine(f"sqlite:///{db_file}"))
    with sessions.begin() as db:
        db.add_all([Device(id=d, fleet="lab", password_hash=hash_password(p)) for d, p in passwords.items()])
    return sessions


@pytest.fixture
def mosquitto_fleet(tmp_path, generated_mosquitto) -> Fleet:
    passwords = {"dev-a": new_password(), "dev-b": new_password()}
    secret = new_cloud_secret()
    sessions = device_rows(tmp_path / "cloud.db", passwords)
    broker = generated_mosquitto([(d, "lab", hash_password(p)) for d, p in passwords.items()], cloud_hashes(secret))
    return Fleet(broker.port, secret, passwords, sessions, broker=broker)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_mosquitto_enforces_the_generated_files(mosquitto_fleet, scenario):
    scenario(mosquitto_fleet)


def test_a_queued_command_survives_a_mosquitto_restart(mosquitto_fleet):
    """Issue 11: a device offline during a deployment lost its queued install when Mosquitto restarted
    without persistence. The generated configuration keeps it (and the device's session)."""
    fleet = mosquitto_fleet
    peers = Peers(fleet)
    try:
        dev_b = connect(fleet.port, "dev-b", fleet.passwords["dev-b"], clean_session=False)
        assert dev_b.subscribe(t(fleet, "dev-b", "cmd")) == 1
        dev_b.close()
        rollouts = connect(fleet.port, ROLLOUTS.username, cloud_password(fleet.cloud_secret, ROLLOUTS))
        rollouts.publish(t(fleet, "dev-b", "cmd"), b"install-v37", qos=1)
        rollouts.close()
        fleet.broker.stop()  # SIGTERM, as systemctl restart
        fleet.broker.start()
        back = peers.device("dev-b", clean_session=False)
        assert back.expect(t(fleet, "dev-b", "cmd"), b"install-v37").qos == 1
    finally:
        peers.close()


def test_the_ingest_gets_1000_messages_before_it_acknowledges(mosquitto_fleet):
    """The generated mosquitto.conf sets max_inflight_messages 1000: the ingest, which acknowledges a batch
    after its commit, is sent a whole batch of telemetry before its first PUBACK (Mosquitto's default, 20,
    held the rest back and capped the ingest's rate)."""
    import paho.mqtt.client as mqtt

    fleet, sent = mosquitto_fleet, 200
    arrived: list[int] = []
    ingest = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=INGEST.username, protocol=mqtt.MQTTv311,
                         manual_ack=True)  # acknowledges nothing unless asked
    ingest.username_pw_set(INGEST.username, cloud_password(fleet.cloud_secret, INGEST))
    ingest.on_message = lambda client, userdata, message: arrived.append(message.mid)
    subscribed = threading.Event()
    ingest.on_subscribe = lambda *_: subscribed.set()
    ingest.connect("127.0.0.1", fleet.port)
    ingest.loop_start()
    peers = Peers(fleet)
    try:
        ingest.subscribe(next(f for f in INGEST.reads if f.endswith("/telemetry")), qos=1)
        assert subscribed.wait(WAIT)
        device = peers.device("dev-a")
        for n in range(sent):
            device.client.publish(t(fleet, "dev-a", "telemetry"), f"window {n}".encode(), qos=1)
        deadline = time.monotonic() + WAIT
        while len(arrived) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(arrived) == sent  # none acknowledged, all in flight (20 with Mosquitto's default)
    finally:
        peers.close()
        ingest.disconnect()
        ingest.loop_stop()


def test_mosquitto_reads_hashes_written_here(generated_mosquitto):
    """Our hashes, at other iteration counts too, log users in to real Mosquitto."""
    password, secret = new_password(), new_cloud_secret()
    broker = generated_mosquitto([("dev-a", "lab", hash_password(password, 1000))], cloud_hashes(secret, 7))
    connect(broker.port, "dev-a", password).close()
    connect(broker.port, INGEST.username, cloud_password(secret, INGEST)).close()
    assert refused(broker.port, "dev-a", password + "x")


def test_cli_writes_a_configuration_from_the_cloud_database(tmp_path, mqtt_dir, mosquitto_for, monkeypatch):
    """`edgefleet cloud mosquitto-config DIR --data DATA --port P`: devices from the database, a cloud secret
    that is printed once and kept when the command runs again, a mosquitto.conf that runs as it is."""
    import typer
    from typer.testing import CliRunner

    from edgefleet.cli.mqtt_commands import register

    for name in ("EDGEFLEET_MQTT_PASSWORD", "EDGEFLEET_MQTT_USERNAME", "EDGEFLEET_DB_URL", "EDGEFLEET_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    cloud_app = typer.Typer()
    cloud_app.callback()(lambda: None)  # a group, as `edgefleet cloud`
    register(cloud_app)
    runner = CliRunner()
    data = tmp_path / "data"
    missing = runner.invoke(cloud_app, ["mosquitto-config", str(mqtt_dir), "--data", str(data)])
    assert missing.exit_code != 0 and "no cloud database" in str(missing.exception)

    data.mkdir()
    password = new_password()
    device_rows(data / "edgefleet.db", {"dev-a": password}).kw["bind"].dispose()
    broker = mosquitto_for()
    command = ["mosquitto-config", str(mqtt_dir), "--data", str(data), "--port", str(broker.port)]
    first = runner.invoke(cloud_app, command)
    assert first.exit_code == 0, first.output
    secret = next(line.split(": ", 1)[1] for line in first.output.splitlines()
                  if line.startswith("cloud MQTT secret: "))
    again = runner.invoke(cloud_app, command)
    assert again.exit_code == 0 and "cloud MQTT secret" not in again.output

    hand_to_broker({name: mqtt_dir / name for name in ("passwd", "acl")})
    broker.start()
    fleet = Fleet(broker.port, secret, {"dev-a": password})
    check_device_telemetry_reaches_the_cloud(fleet)


def test_the_cloud_logs_in_to_the_generated_mosquitto_with_its_secret(tmp_path, generated_mosquitto):
    """`EDGEFLEET_MQTT_PASSWORD=<secret>`: the ingest and the rollout engine of a real CloudServer log in as
    their own users, and a device's window reaches the database."""
    from edgefleet.cloud.server import CloudServer
    from edgefleet.cloud.settings import load_settings

    data, password, secret = tmp_path / "cloud", new_password(), new_cloud_secret()
    data.mkdir()
    sessions = device_rows(data / "edgefleet.db", {"dev-a": password})
    broker = generated_mosquitto([("dev-a", "lab", hash_password(password))], cloud_hashes(secret))
    server = CloudServer(load_settings(data_dir=data, port=0, mqtt_url=broker.url, mqtt_password=secret)).start()
    try:
        parts = {part.name: part for part in server.components}
        assert parts["ingest"].wait_connected(WAIT) and parts["rollouts"].connected.wait(WAIT)
        fleet = Fleet(broker.port, secret, {"dev-a": password}, sessions)
        device = connect(fleet.port, "dev-a", password)
        try:
            device.publish(t(fleet, "dev-a", "telemetry"), window("dev-a", 1).to_payload())
            assert wait_stored(sessions, "dev-a", 1) == 1
        finally:
            device.close()
    finally:
        server.stop()
    assert "not authorised" not in broker.log.lower()


def test_the_retired_cloud_username_stops_the_cloud_with_one_line(tmp_path):
    """EDGEFLEET_MQTT_USERNAME named the one all-powerful cloud user; now it says how to migrate."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env |= {"EDGEFLEET_MQTT_USERNAME": "edgefleet-cloud", "EDGEFLEET_MQTT_PASSWORD": "old", "COLUMNS": "1000"}
    done = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--data", str(tmp_path),
                           "--port", "0"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "EDGEFLEET_MQTT_USERNAME is no longer used" in lines[0], done.stderr
    assert "mosquitto-config" in lines[0] and "Traceback" not in done.stderr


def test_cli_migrates_an_old_passwd_and_refuses_a_partial_one(tmp_path, mqtt_dir, monkeypatch):
    """A passwd of the retired single cloud user gets a new secret (printed once); a passwd missing one
    cloud client stops with one line unless EDGEFLEET_MQTT_PASSWORD gives the secret."""
    import typer
    from typer.testing import CliRunner

    from edgefleet.cli.mqtt_commands import register
    from edgefleet.cloud.mqtt_auth import verify_password

    for name in ("EDGEFLEET_MQTT_PASSWORD", "EDGEFLEET_MQTT_USERNAME", "EDGEFLEET_DB_URL", "EDGEFLEET_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    cloud_app = typer.Typer()
    cloud_app.callback()(lambda: None)
    register(cloud_app)
    runner = CliRunner()
    data = tmp_path / "data"
    data.mkdir()
    device_rows(data / "edgefleet.db", {"dev-a": new_password()})
    (mqtt_dir / "passwd").write_text(f"edgefleet-cloud:{hash_password('old')}\n")
    command = ["mosquitto-config", str(mqtt_dir), "--data", str(data)]

    first = runner.invoke(cloud_app, command)
    assert first.exit_code == 0, first.output
    secret = next(line.split(": ", 1)[1] for line in first.output.splitlines() if line.startswith("cloud MQTT secret"))
    users = dict(line.split(":", 1) for line in (mqtt_dir / "passwd").read_text().splitlines())
    assert set(users) == {*CLOUD_CLIENTS, "dev-a"}
    assert all(verify_password(cloud_password(secret, name), users[name]) for name in CLOUD_CLIENTS)

    (mqtt_dir / "passwd").write_text("".join(f"{n}:{h}\n" for n, h in users.items() if n != ROLLOUTS.username))
    partial = runner.invoke(cloud_app, command)
    assert partial.exit_code != 0 and "has no password for edgefleet-rollouts" in str(partial.exception)

    monkeypatch.setenv("EDGEFLEET_MQTT_PASSWORD", secret)
    fixed = runner.invoke(cloud_app, command)
    assert fixed.exit_code == 0 and "cloud MQTT secret" not in fixed.output
    users = dict(line.split(":", 1) for line in (mqtt_dir / "passwd").read_text().splitlines())
    assert all(verify_password(cloud_password(secret, name), users[name]) for name in CLOUD_CLIENTS)
