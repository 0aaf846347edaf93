"""Broker-independent MQTT scenarios: who may log in, publish, read, and whose session nobody else can take.

tests/cloud/test_mosquitto_acl.py runs them on a real Mosquitto configured by the generated files,
tests/cloud/test_embedded_broker.py on the embedded amqtt broker. Mosquitto drops an unauthorised QoS 0/1
PUBLISH from an MQTT 3.1.1 client silently (it still acknowledges it), so "refused" is asserted as "never
delivered": the offender then sends a control message that must arrive, and anything forged would have
come before it. A client-id takeover is "refused" either at CONNECT (the embedded broker) or by Mosquitto
giving the connection the attacker's own username as client id (`use_username_as_clientid`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, INGEST, ROLLOUTS, CloudClient, cloud_credentials, cloud_password
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from edgefleet.core.topics import DEVICE_KINDS, subscription, topic

WAIT = 10.0  # seconds for anything that should happen
GRACE = 0.5  # extra seconds for anything that should not


@dataclass
class Fleet:
    """A running broker and who may log in to it: devices dev-a and dev-b in fleet "lab" (also rows in the
    cloud database `sessions`), and the cloud's clients with passwords derived from `cloud_secret`."""

    port: int
    cloud_secret: str
    passwords: dict[str, str] = field(default_factory=dict)
    sessions: sessionmaker | None = None
    fleet: str = "lab"
    broker: Any = None  # the Mosquitto process, for restarts

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


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
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda client, userdata, mid, reasons, props: self.subacks.put((mid, reasons))
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason, props) -> None:  # noqa: ANN001 - paho's callback
        if reason.is_failure:
            client.disconnect()  # no reconnect attempts: close() then returns at once
        self.connacks.put(reason)

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

    def cloud(self, client: CloudClient = INGEST, **options) -> Peer:
        """One of the cloud's clients (username = client id); the ingest reads, the rollout engine writes."""
        password = cloud_password(self.fleet.cloud_secret, client)
        return self._keep(connect(self.fleet.port, client.username, password, **options))

    def observer(self) -> Peer:
        """The ingest's rights, subscribed to every kind a device publishes."""
        peer = self.cloud(INGEST)
        for kind in DEVICE_KINDS:
            assert peer.subscribe(subscription(kind)) == 1
        return peer

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
        cloud = peers.cloud(INGEST)
        assert cloud.subscribe("edgefleet/v1/+/+/telemetry") == 1
        dev_a = peers.device("dev-a")
        dev_a.publish(t(fleet, "dev-a", "telemetry"), b"window-1", qos=1)
        assert cloud.expect(t(fleet, "dev-a", "telemetry"), b"window-1").qos == 1
    finally:
        peers.close()


def check_device_cannot_publish_as_another(fleet: Fleet) -> None:
    peers = Peers(fleet)
    try:
        cloud = peers.observer()
        dev_a = peers.device("dev-a")
        assert dev_a.subscribe(t(fleet, "dev-a", "cmd")) == 1  # a forged command would come back here
        forged = [
            (t(fleet, "dev-b", "telemetry"), 1), (t(fleet, "dev-b", "birth"), 0),
            (topic("other", "dev-a", "telemetry"), 1), (t(fleet, "dev-a", "cmd"), 1), ("elsewhere/x", 1),
        ]
        for name, qos in forged:
            dev_a.publish(name, b"forged", qos=qos)
        dev_a.publish(t(fleet, "dev-a", "status"), b"control", qos=1)
        cloud.expect(t(fleet, "dev-a", "status"), b"control")
        time.sleep(GRACE)
        assert [m for m in cloud.received() + dev_a.received() if m[1] == b"forged"] == []
    finally:
        peers.close()


def check_device_cannot_read_another_devices_commands(fleet: Fleet) -> None:
    peers = Peers(fleet)
    try:
        cloud = peers.cloud(ROLLOUTS)
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
    assert refused(port, "dev-a", "", client_id="dev-a")
    for client in CLOUD_CLIENTS.values():
        assert refused(port, client.username, "wrong-password")
        assert refused(port, client.username, fleet.passwords["dev-a"])
        assert refused(port, client.username, cloud_password(fleet.cloud_secret + "x", client))
        assert refused(port, "dev-a", cloud_password(fleet.cloud_secret, client), client_id=client.username)
    assert refused(port, "edgefleet-cloud", fleet.cloud_secret)  # the retired all-powerful user
    assert refused(port, INGEST.username, cloud_password(fleet.cloud_secret, ROLLOUTS))


def check_retained_qos1_messages_work(fleet: Fleet) -> None:
    peers = Peers(fleet)
    try:
        cloud = peers.cloud(ROLLOUTS)
        cloud.publish(t(fleet, "dev-a", "cmd"), b"update-to-v2", qos=1, retain=True)
        dev_a = peers.device("dev-a")
        dev_a.publish(t(fleet, "dev-a", "birth"), b"hello", qos=1, retain=True)
        assert dev_a.subscribe(t(fleet, "dev-a", "cmd")) == 1
        message = dev_a.expect(t(fleet, "dev-a", "cmd"), b"update-to-v2")
        assert message.retain and message.qos == 1
        late = peers.cloud(INGEST)
        assert late.subscribe("edgefleet/v1/+/+/birth") == 1
        assert late.expect(t(fleet, "dev-a", "birth"), b"hello").retain
    finally:
        peers.close()


def check_last_will_only_on_own_topics(fleet: Fleet) -> None:
    """A device cannot plant a last will on another device's topics (refused at CONNECT or never sent)."""
    peers = Peers(fleet)
    try:
        cloud = peers.observer()
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


# --- client ids: nobody opens, takes over or wipes another client's session -----------------------------
def check_cloud_clients_have_only_their_rights(fleet: Fleet) -> None:
    """The ingest cannot send commands; the rollout engine cannot read devices' messages."""
    peers = Peers(fleet)
    try:
        dev_a = peers.device("dev-a")
        assert dev_a.subscribe(t(fleet, "dev-a", "cmd")) == 1
        rollouts = peers.cloud(ROLLOUTS)
        codes = [rollouts.subscribe(subscription("telemetry"))]  # Mosquitto grants it, then delivers nothing
        ingest = peers.cloud(INGEST)
        codes.append(ingest.subscribe(t(fleet, "dev-a", "cmd")))
        ingest.publish(t(fleet, "dev-a", "cmd"), b"forged", qos=1)
        dev_a.publish(t(fleet, "dev-a", "telemetry"), b"w", qos=1)
        rollouts.publish(t(fleet, "dev-a", "cmd"), b"control", qos=1)
        dev_a.expect(t(fleet, "dev-a", "cmd"), b"control")
        time.sleep(GRACE)
        assert dev_a.received() == [(t(fleet, "dev-a", "cmd"), b"control")]
        assert rollouts.received() == [], codes
        assert ingest.received() == [], codes
    finally:
        peers.close()


def _impostor_gets_nothing(fleet: Fleet, device: str, client_id: str, clean_session: bool,
                           linger: float = GRACE) -> None:
    """`device`'s own credentials under `client_id`: refused, or connected and given nothing of that id's
    within `linger` seconds."""
    impostor = Peer(fleet.port, device, fleet.passwords[device], client_id, clean_session=clean_session)
    try:
        if not impostor.open().is_failure:
            time.sleep(linger)
            assert impostor.received() == [], f"{device} as client {client_id!r} got {impostor.received()}"
    finally:
        impostor.close()


def check_device_cannot_take_another_devices_queued_command(fleet: Fleet) -> None:
    """Issue 11: with Mosquitto, dev-a's credentials under client id dev-b received dev-b's queued command."""
    peers = Peers(fleet)
    try:
        dev_b = connect(fleet.port, "dev-b", fleet.passwords["dev-b"], clean_session=False)
        assert dev_b.subscribe(t(fleet, "dev-b", "cmd")) == 1
        dev_b.close()  # offline, its persistent session keeps the subscription
        peers.cloud(ROLLOUTS).publish(t(fleet, "dev-b", "cmd"), b"install-v2", qos=1)
        _impostor_gets_nothing(fleet, "dev-a", "dev-b", clean_session=False)  # would resume dev-b's session
        _impostor_gets_nothing(fleet, "dev-a", "dev-b", clean_session=True)  # would wipe it
        back = peers.device("dev-b", clean_session=False)
        assert back.expect(t(fleet, "dev-b", "cmd"), b"install-v2").qos == 1
    finally:
        peers.close()


def window(device: str, seq: int, fleet: str = "lab") -> TelemetryWindow:
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[3] = 10
    return TelemetryWindow(fleet, device, seq, "digits-cnn", 1, 1000.0 + seq, 1060.0 + seq, 10, 10, 0,
                           tuple(latency), (FeatureCounts("pixels", ((10, 0, 0), (0, 10, 0))),), (10, 0), (0, 10, 0))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_device_cannot_disturb_the_ingest(fleet: Fleet, windows: int = 40) -> None:
    """Issue 11: dev-b's credentials under client id edgefleet-ingest, once before every window dev-a sends,
    disconnected the real ingest and wiped its persistent session (14 of 40 acknowledged windows stored).
    Now the ingest stays connected and every window the broker acknowledged to dev-a is stored."""
    username, password = cloud_credentials(fleet.cloud_secret, INGEST)
    ingest = Ingest(fleet.sessions, fleet.url, username=username, password=password, client_id=INGEST.username,
                    flush_seconds=0.02)
    records = _Records()
    logging.getLogger("edgefleet.cloud.ingest").addHandler(records)
    peers = Peers(fleet)
    try:
        ingest.start()
        assert ingest.wait_connected(WAIT)
        dev_a = peers.device("dev-a")
        for seq in range(windows):
            _impostor_gets_nothing(fleet, "dev-b", INGEST.username, clean_session=seq % 2 == 0, linger=0.05)
            dev_a.publish(t(fleet, "dev-a", "telemetry"), window("dev-a", seq).to_payload(), qos=1)
        stored = wait_stored(fleet.sessions, "dev-a", windows)
        disconnects = [m for m in records.messages if "disconnected" in m]
        assert (stored, disconnects) == (windows, []), (
            f"{stored} of {windows} acknowledged windows stored, {len(disconnects)} disconnects")
    finally:
        peers.close()
        ingest.stop()
        logging.getLogger("edgefleet.cloud.ingest").removeHandler(records)


def wait_stored(sessions: sessionmaker, device: str, expected: int, timeout: float = WAIT) -> int:
    """How many windows of `device` are in the database, once there are `expected` or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as db:
            count = db.scalar(select(func.count()).select_from(TelemetryRecord)
                              .where(TelemetryRecord.device_id == device))
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


SCENARIOS = [
    check_cloud_clients_have_only_their_rights,
    check_device_cannot_take_another_devices_queued_command,
    check_device_cannot_disturb_the_ingest,
    check_device_telemetry_reaches_the_cloud,
    check_device_cannot_publish_as_another,
    check_device_cannot_read_another_devices_commands,
    check_bad_logins_are_refused,
    check_retained_qos1_messages_work,
    check_last_will_only_on_own_topics,
]


