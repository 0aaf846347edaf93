"""Hostile devices against the ingest, through a real Mosquitto with the generated password and ACL files.

A device may publish anything on its own topics. Every poisoned message must be counted by its reason
and acknowledged, and never keep other devices' windows from being stored: not in its batch, not after
a flood, not after the ingest restarts (nothing unacknowledged is redelivered). The broker runs with
Mosquitto's default inflight window (20), so an ingest that stops acknowledging stops receiving.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select, text

from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.mqtt_auth import (
    CLOUD_CLIENTS,
    INGEST,
    cloud_password,
    hash_password,
    new_password,
    write_mosquitto_config,
)
from edgefleet.core.ota import Status
from edgefleet.core.topics import topic
from tests.cloud.test_ingest import counters, wait_for, window
from tests.cloud.test_mosquitto_acl import hand_to_broker, mqtt_dir  # noqa: F401 - mqtt_dir is a fixture
from tests.mosquitto import MosquittoBroker

DEVICES = ("evil", "good-1", "good-2")
BIG = "__BIG__"


def telemetry(seq: int = 1, device: str = "evil", **changes) -> dict:
    data = window(device, seq).to_dict()
    data.update(changes)
    return data


def encoded(data: dict, big: str = "") -> bytes:
    """JSON bytes; the string "__BIG__" becomes the literal `big` (json.dumps cannot write 5,000 digits)."""
    return json.dumps(data).replace(json.dumps(BIG), big).encode()


def birth(version: object, **extra) -> dict:
    return {"schema": "edgefleet.birth", "v": 1, "fleet": "lab", "device": "evil", "online": True,
            "connection": 7, "model": {"name": "digits-cnn", "version": version}, **extra}


def status(seq: int) -> bytes:
    return Status("lab", "evil", "c-1", "d-1", "active", seq=seq).to_payload()


# (topic kind, payload, the reason it is counted under)
POISON = {
    "nested_5000_deep": ("telemetry", b'{"schema": "edgefleet.telemetry", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                         "too_deep"),
    "integer_of_5000_digits": ("telemetry", encoded(telemetry(requests=BIG), "9" * 5000), "number_out_of_range"),
    "dropped_windows_x": ("telemetry", encoded(telemetry(dropped={"windows": "x"})), "bad_field"),
    "dropped_seqs_not_integers": ("telemetry", encoded(telemetry(dropped={"windows": 1, "first_seq": [1],
                                                                          "last_seq": "2"})), "bad_field"),
    "seq_2_63": ("telemetry", encoded(telemetry(seq=2**63)), "number_out_of_range"),
    "seq_over_the_integer_column": ("telemetry", encoded(telemetry(seq=2**31)), "number_out_of_range"),
    "window_start_of_400_digits": ("telemetry", encoded(telemetry(window={"start": BIG, "end": 5.0}), "1" * 400),
                                   "number_out_of_range"),
    "window_start_1e999": ("telemetry", encoded(telemetry(window={"start": BIG, "end": 5.0}), "1e999"),
                           "not_finite"),
    "model_name_with_nul": ("telemetry", encoded(telemetry(model={"name": "a\0b", "version": 1})), "bad_field"),
    "not_utf8": ("telemetry", b'{"schema": "\xff"}', "not_utf8"),
    "output_name_with_nul": ("telemetry", encoded(telemetry(outputs=[{"output": "a\0b", "counts": [[1, 2]]}])),
                             "bad_field"),
    "65_outputs": ("telemetry", encoded(telemetry(outputs=[{"output": f"o{i}", "counts": [[1, 2]]}
                                                           for i in range(65)])), "bad_field"),
    "output_row_of_5000_counts": ("telemetry", encoded(telemetry(outputs=[{"output": "o", "counts": [[0] * 5000]}])),
                                  "bad_field"),
    "output_count_over_the_integer_column": ("telemetry", encoded(telemetry(outputs=[{"output": "o",
                                                                                      "counts": [[1, 2**31]]}])),
                                             "number_out_of_range"),
    "birth_version_x": ("presence", encoded(birth("x")), "presence_bad_field"),
    "birth_version_x_on_the_old_topic": ("birth", encoded(birth("x")), "presence_bad_field"),
    "birth_version_2_40": ("presence", encoded(birth(2**40)), "presence_number_out_of_range"),
    "birth_agent_version_object": ("presence", encoded(birth(1, agent_version={"a": 1})), "presence_bad_field"),
    "death_nested_deep": ("death", b"[" * 3000 + b"]" * 3000, "presence_too_deep"),
    "status_seq_2_63": ("status", status(2**63), "status_number_out_of_range"),
    "status_seq_over_the_integer_column": ("status", status(2**40), "status_number_out_of_range"),
}


@dataclass
class Fleet:
    broker: MosquittoBroker
    sessions: object
    cloud_secret: str
    passwords: dict[str, str]

    def ingest(self) -> Ingest:
        service = Ingest(self.sessions, self.broker.url, username=INGEST.username,
                         password=cloud_password(self.cloud_secret, INGEST), client_id=INGEST.username,
                         flush_seconds=0.02)
        service.start()
        assert service.wait_connected(10)
        return service

    def device(self, device: str) -> mqtt.Client:
        """A device logged in with its own credentials and client id."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
        client.username_pw_set(device, self.passwords[device])
        client.max_inflight_messages_set(100)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        return client

    def stored(self) -> list[tuple[str, int]]:
        with self.sessions() as session:
            return session.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)
                                   .order_by(TelemetryRecord.device_id, TelemetryRecord.seq)).all()


def default_inflight(broker: MosquittoBroker) -> MosquittoBroker:
    """Mosquitto's default inflight window (20) instead of the test broker's 1000."""
    write_config = broker.write_config

    def write_config_default_inflight() -> Path:
        config = write_config()
        config.write_text(config.read_text().replace("max_inflight_messages 1000", "max_inflight_messages 20"))
        return config

    broker.write_config = write_config_default_inflight  # type: ignore[method-assign]
    return broker


@pytest.fixture
def fleet(mqtt_dir, mosquitto_factory, tmp_path) -> Fleet:  # noqa: F811 - the imported fixture
    passwords = {d: new_password() for d in DEVICES}
    secret = new_password()
    cloud_hashes = {name: hash_password(cloud_password(secret, name)) for name in CLOUD_CLIENTS}
    paths = hand_to_broker(write_mosquitto_config(
        mqtt_dir, [(d, "lab", hash_password(p)) for d, p in passwords.items()], cloud_hashes))
    broker = default_inflight(mosquitto_factory(password_file=paths["passwd"], acl_file=paths["acl"])).start()
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in DEVICES])
    return Fleet(broker, sessions, secret, passwords)


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(name, payload, qos=1) for name, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published()


@pytest.mark.parametrize("kind", POISON)
def test_each_poison_is_counted_by_its_reason_and_the_batch_is_stored(fleet, kind):
    where, payload, reason = POISON[kind]
    ingest = fleet.ingest()
    evil, good = fleet.device("evil"), fleet.device("good-1")
    try:
        time.sleep(0.3)  # the ingest's subscription settles
        publish_all(good, [(topic("lab", "good-1", "telemetry"), window("good-1", 1).to_payload())])
        publish_all(evil, [(topic("lab", "evil", where), payload)])
        publish_all(good, [(topic("lab", "good-1", "telemetry"), window("good-1", 2).to_payload())])
        wait_for(lambda: sum(counters(fleet.sessions).values()) >= 3)
        assert counters(fleet.sessions) == {reason: 1, "accepted": 2}
        assert fleet.stored() == [("good-1", 1), ("good-1", 2)]
    finally:
        for client in (evil, good):
            client.loop_stop()
            client.disconnect()
        ingest.stop()


def test_a_flood_of_poison_never_stalls_the_ingest_and_nothing_is_redelivered(fleet):
    poison = list(POISON.values())
    flood = 400  # poison messages, interleaved with 2 x 100 valid windows
    evil, good = fleet.device("evil"), {d: fleet.device(d) for d in ("good-1", "good-2")}
    ingest = fleet.ingest()
    try:
        time.sleep(0.3)
        for i in range(flood):
            where, payload, _ = poison[i % len(poison)]
            evil.publish(topic("lab", "evil", where), payload, qos=1)
            if i % 2:
                device = f"good-{1 + i // 2 % 2}"
                good[device].publish(topic("lab", device, "telemetry"), window(device, 1 + i // 4).to_payload(),
                                     qos=1)
        expected = [(d, seq) for d in ("good-1", "good-2") for seq in range(1, 101)]
        wait_for(lambda: len(fleet.stored()) == len(expected), timeout=60)
        wait_for(lambda: sum(counters(fleet.sessions).values()) == flood + len(expected), timeout=30)
        assert fleet.stored() == expected
        refused = counters(fleet.sessions)
        assert refused.pop("accepted") == len(expected)
        assert sum(refused.values()) == flood and set(refused) == {reason for _, _, reason in poison}
        # Still receiving after the flood.
        publish_all(good["good-1"], [(topic("lab", "good-1", "telemetry"), window("good-1", 101).to_payload())])
        wait_for(lambda: ("good-1", 101) in fleet.stored())
    finally:
        ingest.stop()
    # Everything was acknowledged: a new ingest (same persistent session) gets nothing again.
    before = counters(fleet.sessions)
    ingest = fleet.ingest()
    try:
        time.sleep(0.3)
        publish_all(good["good-2"], [(topic("lab", "good-2", "telemetry"), window("good-2", 101).to_payload())])
        wait_for(lambda: ("good-2", 101) in fleet.stored())
        time.sleep(0.5)  # a redelivery would have come before the new window; give stragglers a moment
        assert counters(fleet.sessions) == {**before, "accepted": before["accepted"] + 1}
    finally:
        ingest.stop()
        for client in (evil, *good.values()):
            client.loop_stop()
            client.disconnect()
    assert "Outgoing messages are being dropped" not in fleet.broker.log


def test_a_row_the_database_refuses_is_counted_and_the_rest_of_its_batch_stored(fleet):
    """A window that passes validation but fails the insert (here a real SQLite trigger refuses seq 666)
    costs only itself: counted as store_error, acknowledged, and never redelivered."""
    with fleet.sessions.begin() as session:
        session.execute(text("CREATE TRIGGER refuse_666 BEFORE INSERT ON telemetry WHEN NEW.seq = 666 "
                             "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END"))
    evil, good = fleet.device("evil"), fleet.device("good-1")
    ingest = fleet.ingest()
    try:
        time.sleep(0.3)
        for seq in range(1, 41):
            good.publish(topic("lab", "good-1", "telemetry"), window("good-1", seq).to_payload(), qos=1)
            if seq % 10 == 0:
                evil.publish(topic("lab", "evil", "telemetry"), encoded(telemetry(seq=666)), qos=1)
        wait_for(lambda: sum(counters(fleet.sessions).values()) == 44, timeout=30)
        assert counters(fleet.sessions) == {"accepted": 40, "store_error": 4}  # never stored, so never a duplicate
        assert fleet.stored() == [("good-1", seq) for seq in range(1, 41)]
    finally:
        ingest.stop()
    before = counters(fleet.sessions)
    ingest = fleet.ingest()
    try:
        time.sleep(0.3)
        publish_all(good, [(topic("lab", "good-1", "telemetry"), window("good-1", 41).to_payload())])
        wait_for(lambda: ("good-1", 41) in fleet.stored())
        time.sleep(0.5)
        assert counters(fleet.sessions) == {**before, "accepted": before["accepted"] + 1}
    finally:
        ingest.stop()
        for client in (evil, good):
            client.loop_stop()
            client.disconnect()
