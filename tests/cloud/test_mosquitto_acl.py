"""The generated password and ACL files in a real Mosquitto: each device stays inside its own topics.

The `check_*` scenarios take any broker (`Fleet`); tests/cloud/test_embedded_broker.py runs the same
ones against the embedded amqtt broker. Mosquitto drops an unauthorised QoS 0/1 PUBLISH from an MQTT
3.1.1 client silently (it still acknowledges it), so "refused" is asserted as "never delivered": the
offender then sends a control message that must arrive, and anything forged would have come before it.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet.cloud.mqtt_auth import CLOUD_USERNAME, hash_password, new_password, write_mosquitto_config
from edgefleet.core.topics import topic

WAIT = 10.0  # seconds for anything that should happen
GRACE = 0.5  # extra seconds for anything that should not


@dataclass
class Fleet:
    """A running broker and who may log in to it: devices dev-a and dev-b in fleet "lab"."""

    port: int
    cloud_password: str
    passwords: dict[str, str] = field(default_factory=dict)
    fleet: str = "lab"


class Peer:
    """A paho MQTT 3.1.1 client that records CONNACK, SUBACKs and every message it gets."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str = "",
                 clean_session: bool = True, will: tuple[str, bytes] | None = None) -> None:
        self.port = port
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=clean_session)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.reconnect_delay_set(5, 10)  # keep a refused client from hammering the broker
        self.connacks: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: list[mqtt.MQTTMessage] = []
        self._arrived = threading.Condition()
        self.client.on_connect = lambda client, userdata, flags, reason, props: self.connacks.put(reason)
        self.client.on_subscribe = lambda client, userdata, mid, reasons, props: self.subacks.put((mid, reasons))
        self.client.on_message = self._on_message

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001 - paho's callback
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    def open(self) -> mqtt.ReasonCode:
        """Connects and returns the CONNACK's reason (a failure if the broker refused or hung up)."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        try:
            return self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("no CONNACK") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Hangs up without DISCONNECT, as a device losing power: the broker sends its last will."""
        self.client.loop_stop()
        self.client.socket().close()

    def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribes and returns the SUBACK's return code (0x80 = refused)."""
        _, mid = self.client.subscribe(topic_filter, qos)
        got_mid, reasons = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return reasons[0].value

    def publish(self, name: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(name, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def expect(self, name: str, payload: bytes, timeout: float = WAIT) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for message in self.messages:
                    if message.topic == name and message.payload == payload:
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{name} {payload!r} did not arrive; got {self.received()}")
                self._arrived.wait(left)

    def received(self) -> list[tuple[str, bytes]]:
        with self._arrived:
            return [(m.topic, m.payload) for m in self.messages]


def connect(port: int, username: str | None, password: str | None, client_id: str | None = None,
            **options) -> Peer:
    peer = Peer(port, username, password, client_id if client_id is not None else (username or ""), **options)
    reason = peer.open()
    assert not reason.is_failure, f"{username} was refused: {reason}"
    return peer


def refused(port: int, username: str | None, password: str | None, client_id: str | None = None,
            **options) -> bool:
    peer = Peer(port, username, password, client_id if client_id is not None else (username or ""), **options)
    try:
        return peer.open().is_failure
    finally:
        peer.close()


class Peers:
    """Opens peers and closes all of them at the end."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.peers: list[Peer] = []

    def cloud(self, client_id: str = "edgefleet-test-cloud", **options) -> Peer:
        return self._keep(connect(self.fleet.port, CLOUD_USERNAME, self.fleet.cloud_password, client_id, **options))

    def device(self, device: str, **options) -> Peer:
        return self._keep(connect(self.fleet.port, device, self.fleet.passwords[device], **options))

    def _keep(self, peer: Peer) -> Peer:
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


def t(fleet: Fleet, device: str, kind: str) -> str:
    return topic(fleet.fleet, device, kind)


# --- the scenarios ----------------------------------------------------------------------------------
def check_device_telemetry_reaches_the_cloud(fleet: Fleet) -> None:
    peers = Peers(fleet)
    try:
        cloud = peers.cloud()
        assert cloud.subscribe("edgefleet/v1/+/+/telemetry") == 1
        dev_a = peers.device("dev-a")
        dev_a.publish(t(fleet, "dev-a", "telemetry"), b"window-1", qos=1)
        assert cloud.expect(t(fleet, "dev-a", "telemetry"), b"window-1").qos == 1
    finally:
        peers.close()


def check_device_cannot_publish_as_another(fleet: Fleet) -> None:
    peers = Peers(fleet)
    try:
        cloud = peers.cloud()
        assert cloud.subscribe("edgefleet/v1/#") == 1
        dev_a = peers.device("dev-a")
        forged = [
            (t(fleet, "dev-b", "telemetry"), 1), (t(fleet, "dev-b", "birth"), 0),
            (topic("other", "dev-a", "telemetry"), 1), (t(fleet, "dev-a", "cmd"), 1), ("elsewhere/x", 1),
        ]
        for name, qos in forged:
            dev_a.publish(name, b"forged", qos=qos)
        dev_a.publish(t(fleet, "dev-a", "status"), b"control", qos=1)
        cloud.expect(t(fleet, "dev-a", "status"), b"control")
        time.sleep(GRACE)
        assert [m for m in cloud.received() if m[1] == b"forged"] == []
    finally:
        peers.close()


def check_device_cannot_read_another_devices_commands(fleet: Fleet) -> None:
    peers = Peers(fleet)
    try:
        cloud = peers.cloud()
        dev_a = peers.device("dev-a")
        assert dev_a.subscribe(t(fleet, "dev-a", "cmd")) == 1
        codes = {name: dev_a.subscribe(name) for name in (
            t(fleet, "dev-b", "cmd"), "edgefleet/v1/+/+/cmd", "edgefleet/v1/#", "#", t(fleet, "dev-b", "telemetry"))}
        dev_b = peers.device("dev-b")
        cloud.publish(t(fleet, "dev-b", "cmd"), b"for-b", qos=1)
        dev_b.publish(t(fleet, "dev-b", "telemetry"), b"b-window", qos=1)
        cloud.publish(t(fleet, "dev-a", "cmd"), b"for-a", qos=1)
        dev_a.expect(t(fleet, "dev-a", "cmd"), b"for-a")
        time.sleep(GRACE)
        assert dev_a.received() == [(t(fleet, "dev-a", "cmd"), b"for-a")], codes
    finally:
        peers.close()


def check_bad_logins_are_refused(fleet: Fleet) -> None:
    port = fleet.port
    assert refused(port, "dev-a", "wrong-password")
    assert refused(port, "dev-a", fleet.passwords["dev-b"])  # another device's password
    assert refused(port, "ghost", "whatever")
    assert refused(port, None, None, client_id="anonymous-client")
    assert refused(port, CLOUD_USERNAME, "wrong-password", client_id="edgefleet-test-cloud")
    assert refused(port, "dev-a", "", client_id="dev-a")


def check_retained_qos1_messages_work(fleet: Fleet) -> None:
    peers = Peers(fleet)
    try:
        cloud = peers.cloud()
        cloud.publish(t(fleet, "dev-a", "cmd"), b"update-to-v2", qos=1, retain=True)
        dev_a = peers.device("dev-a")
        dev_a.publish(t(fleet, "dev-a", "birth"), b"hello", qos=1, retain=True)
        assert dev_a.subscribe(t(fleet, "dev-a", "cmd")) == 1
        message = dev_a.expect(t(fleet, "dev-a", "cmd"), b"update-to-v2")
        assert message.retain and message.qos == 1
        late = peers.cloud(client_id="edgefleet-test-late")
        assert late.subscribe("edgefleet/v1/+/+/birth") == 1
        assert late.expect(t(fleet, "dev-a", "birth"), b"hello").retain
    finally:
        peers.close()


def check_last_will_only_on_own_topics(fleet: Fleet) -> None:
    """A device cannot plant a last will on another device's topics (refused at CONNECT or never sent)."""
    peers = Peers(fleet)
    try:
        cloud = peers.cloud()
        assert cloud.subscribe("edgefleet/v1/#") == 1
        forged_will = (t(fleet, "dev-b", "death"), b"forged")
        peer = Peer(fleet.port, "dev-a", fleet.passwords["dev-a"], "dev-a", will=forged_will)
        if peer.open().is_failure:
            peer.close()
        else:
            peer.drop()
        honest = peers.device("dev-a", will=(t(fleet, "dev-a", "death"), b"gone"))
        honest.drop()
        cloud.expect(t(fleet, "dev-a", "death"), b"gone")
        time.sleep(GRACE)
        assert [m for m in cloud.received() if m[1] == b"forged"] == []
    finally:
        peers.close()


SCENARIOS = [
    check_device_telemetry_reaches_the_cloud,
    check_device_cannot_publish_as_another,
    check_device_cannot_read_another_devices_commands,
    check_bad_logins_are_refused,
    check_retained_qos1_messages_work,
    check_last_will_only_on_own_topics,
]


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


@pytest.fixture
def mosquitto_fleet(mqtt_dir, mosquitto_factory) -> Fleet:
    passwords = {"dev-a": new_password(), "dev-b": new_password()}
    cloud_password = new_password()
    paths = hand_to_broker(write_mosquitto_config(
        mqtt_dir, [(d, "lab", hash_password(p)) for d, p in passwords.items()], hash_password(cloud_password)))
    broker = mosquitto_factory(password_file=paths["passwd"], acl_file=paths["acl"]).start()
    return Fleet(broker.port, cloud_password, passwords)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_mosquitto_enforces_the_generated_files(mosquitto_fleet, scenario):
    scenario(mosquitto_fleet)


def test_mosquitto_reads_hashes_written_here(mqtt_dir, mosquitto_factory):
    """Our hashes, at other iteration counts too, log users in to real Mosquitto."""
    password = new_password()
    paths = hand_to_broker(write_mosquitto_config(
        mqtt_dir, [("dev-a", "lab", hash_password(password, 1000))], hash_password("cloud-pw", 7)))
    broker = mosquitto_factory(password_file=paths["passwd"], acl_file=paths["acl"]).start()
    connect(broker.port, "dev-a", password).close()
    connect(broker.port, CLOUD_USERNAME, "cloud-pw", "edgefleet-test-cloud").close()
    assert refused(broker.port, "dev-a", password + "x")


def test_cli_writes_files_from_the_cloud_database(tmp_path, mqtt_dir, mosquitto_factory, monkeypatch):
    """`edgefleet cloud mosquitto-config DIR --data DATA`: devices from the database, a cloud password that
    is printed once and kept when the command runs again."""
    import typer
    from typer.testing import CliRunner

    from edgefleet.cli.mqtt_commands import register
    from edgefleet.cloud.db import Device, make_engine, make_sessions

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
    engine = make_engine(f"sqlite:///{(data / 'edgefleet.db').resolve()}")
    password = new_password()
    with make_sessions(engine).begin() as db:
        db.add(Device(id="dev-a", fleet="lab", password_hash=hash_password(password)))
    engine.dispose()

    first = runner.invoke(cloud_app, ["mosquitto-config", str(mqtt_dir), "--data", str(data)])
    assert first.exit_code == 0, first.output
    cloud_password = next(line.split(": ", 1)[1] for line in first.output.splitlines()
                          if line.startswith("cloud MQTT password: "))
    again = runner.invoke(cloud_app, ["mosquitto-config", str(mqtt_dir), "--data", str(data)])
    assert again.exit_code == 0 and "cloud MQTT password" not in again.output

    paths = hand_to_broker({name: mqtt_dir / name for name in ("passwd", "acl")})
    broker = mosquitto_factory(password_file=paths["passwd"], acl_file=paths["acl"]).start()
    fleet = Fleet(broker.port, cloud_password, {"dev-a": password})
    check_device_telemetry_reaches_the_cloud(fleet)
