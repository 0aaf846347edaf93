"""Two rollouts workers each run a label forwarder (cloud/label_forwarder.py) against one PostgreSQL and a real
Mosquitto: one at a time sends, so every label goes out once, and when the sender stops the other takes over
within a lease period."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, insert, select

from edgefleet.cloud.db import Device
from edgefleet.cloud.label_forwarder import LEASE, LabelForwarder
from edgefleet.cloud.labels_store import CloudLabel
from edgefleet.cloud.leases import Leases
from edgefleet.core.topics import PREFIX
from tests.cloud.test_postgres import fresh_sessions
from tests.waiting import until

PERIOD = 1.5


@pytest.fixture
def sessions(postgres):
    sessions = fresh_sessions(postgres, "label_lease")
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": f"d{n}", "fleet": "f", "password_hash": "-"} for n in range(3)])
    return sessions


def add_labels(sessions, first: int, count: int) -> None:
    with sessions.begin() as session:
        session.execute(insert(CloudLabel), [
            {"device_id": f"d{n % 3}", "fleet": "f", "request_id": f"r{n}",
             "item": {"request_id": f"r{n}", "label": n % 10}} for n in range(first, first + count)])


def unsent(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(CloudLabel).where(CloudLabel.sent_at.is_(None)))


class Commands:
    """Every label command the broker delivers on the fleet's cmd topics, by request id."""

    def __init__(self, url: str) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher")
        self.client.on_message = self.on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/f/+/cmd", qos=1)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def on_message(self, client, userdata, message) -> None:  # noqa: ANN001 - paho
        command = json.loads(message.payload)
        with self.lock:
            self.seen += [item["request_id"] for item in command["labels"]]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def forwarder(sessions, url: str, name: str) -> LabelForwarder:
    return LabelForwarder(sessions, url, username=None, password=None, client_id=f"edgefleet-labels-{name}",
                          interval_seconds=0.1, leases=Leases(sessions, name, PERIOD))


def test_one_forwarder_sends_and_the_other_takes_over(sessions, mosquitto):
    commands = Commands(mosquitto.url)
    until(lambda: commands.client.is_connected(), "the watcher to connect", 10)
    time.sleep(0.3)  # its subscription in place
    first, second = forwarder(sessions, mosquitto.url, "w1"), forwarder(sessions, mosquitto.url, "w2")
    try:
        first.start()
        until(lambda: first.connected.is_set() and first.holds_lease(), "the first forwarder to hold the lease", 10)
        second.start()
        until(lambda: second.connected.is_set(), "the second forwarder to connect", 10)
        assert not second.holds_lease()
        add_labels(sessions, 0, 120)
        until(lambda: unsent(sessions) == 0, "every label sent", 20)
        time.sleep(0.5)  # a second sender would have sent by now
        assert Leases(sessions, "reader", PERIOD).live(LEASE) == {LEASE: "w1"}
        first.stop()  # gives the lease back: the second sends from its next request on
        add_labels(sessions, 120, 30)
        until(lambda: unsent(sessions) == 0, "the labels sent after the first forwarder stopped", 20)
        until(lambda: len(commands.seen) >= 150, "every command delivered", 10)
        assert Leases(sessions, "reader", PERIOD).live(LEASE) == {LEASE: "w2"}
    finally:
        first.stop()
        second.stop()
        commands.close()
    assert sorted(commands.seen) == sorted(f"r{n}" for n in range(150))  # each label once, none lost
