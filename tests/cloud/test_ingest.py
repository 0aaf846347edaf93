"""The MQTT ingest against a real Mosquitto and a real SQLite file."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from edgefleet.cloud.db import Device, IngestCounter, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ingest import Ingest
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from edgefleet.core.topics import topic
from tests.waiting import until


def window(device: str, seq: int, fleet: str = "lab", requests: int = 10) -> TelemetryWindow:
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[3] = requests
    return TelemetryWindow(fleet, device, seq, "digits-cnn", 1, 1000.0 + seq, 1060.0 + seq, requests, requests, 0,
                           tuple(latency), (FeatureCounts("pixels", ((requests, 0, 0), (0, requests, 0))),),
                           (requests, 0), (0, requests, 0))


@pytest.fixture
def sessions(tmp_path):
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d1", "d2")])
    return sessions


@pytest.fixture
def ingest(sessions, mosquitto):
    service = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    service.start()
    assert service.wait_connected(10)
    yield service
    service.stop()


@pytest.fixture
def publisher(mosquitto):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-device", protocol=mqtt.MQTTv311)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def publish(client: mqtt.Client, name: str, payload: bytes) -> None:
    client.publish(name, payload, qos=1).wait_for_publish(5)


def counters(sessions) -> dict[str, int]:
    with sessions() as session:
        return {row.reason: row.count for row in session.scalars(select(IngestCounter))}


def wait_for(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001 - any callable
    until(predicate, "the condition", timeout)


def test_windows_are_stored_once_and_bad_messages_counted(sessions, ingest, publisher):
    time.sleep(0.3)  # let the ingest's subscription settle
    for seq in (1, 2, 3):
        publish(publisher, topic("lab", "d1", "telemetry"), window("d1", seq).to_payload())
    publish(publisher, topic("lab", "d1", "telemetry"), window("d1", 2).to_payload())  # duplicate
    publish(publisher, topic("lab", "d1", "telemetry"), b"{not json")
    publish(publisher, topic("lab", "d1", "telemetry"), b"x" * (300 * 1024))  # over the 256 KiB limit
    publish(publisher, topic("lab", "d1", "telemetry"), json.dumps({"schema": "other"}).encode())
    publish(publisher, topic("lab", "d2", "telemetry"), window("d1", 9).to_payload())  # says d1, sent as d2
    publish(publisher, topic("lab", "ghost", "telemetry"), window("ghost", 1).to_payload())
    publish(publisher, topic("lab", "d2", "telemetry"), window("d2", 1).to_payload())  # still serving

    wait_for(lambda: sum(counters(sessions).values()) >= 10)
    assert counters(sessions) == {"accepted": 4, "duplicate": 1, "not_json": 1, "too_large": 1,
                                  "wrong_schema": 1, "topic_mismatch": 1, "unknown_device": 1}
    with sessions() as session:
        stored = session.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)
                                 .order_by(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
        assert stored == [("d1", 1), ("d1", 2), ("d1", 3), ("d2", 1)]
        assert session.get(Device, "d1").last_seen == pytest.approx(1063.0)


def test_birth_and_last_will_keep_presence(sessions, ingest, publisher):
    time.sleep(0.3)
    birth = {"schema": "edgefleet.birth", "v": 1, "model": {"name": "digits-cnn", "version": 4},
             "agent_version": "t", "backend": "openvino",
             "runtime": {"backend": "openvino", "target": "openvino-cpu", "precision": "int8",
                         "fallbacks": [{"entry": "native", "reason": "not compiled for this CPU"}]}}
    publish(publisher, topic("lab", "d1", "birth"), json.dumps(birth).encode())

    def online() -> bool:
        with sessions() as session:
            return session.get(Device, "d1").online

    wait_for(online)
    with sessions() as session:
        device = session.get(Device, "d1")
        assert (device.model_name, device.model_version, device.agent_version) == ("digits-cnn", 4, "t")
        assert device.backend == "openvino"  # what the device's /healthz says, for the dashboard
        assert device.runtime == {"target": "openvino-cpu", "precision": "int8",
                                  "fallbacks": [{"entry": "native", "reason": "not compiled for this CPU"}]}
    publish(publisher, topic("lab", "d1", "death"), json.dumps({"online": False}).encode())
    wait_for(lambda: not online())


def test_messages_sent_while_the_ingest_was_down_arrive(sessions, mosquitto, publisher):
    first = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    first.start()
    assert first.wait_connected(10)
    time.sleep(0.3)
    first.stop()  # the persistent session keeps its subscription at the broker
    for seq in range(1, 21):
        publish(publisher, topic("lab", "d1", "telemetry"), window("d1", seq).to_payload())
    second = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    second.start()
    try:
        def stored() -> int:
            with sessions() as session:
                return session.scalar(select(func.count()).select_from(TelemetryRecord))

        wait_for(lambda: stored() == 20)
    finally:
        second.stop()


def presence(kind: str, stamp: int) -> bytes:
    return json.dumps({"schema": f"edgefleet.{kind}", "v": 1, "online": kind == "birth", "connection": stamp,
                       "model": {"name": "digits-cnn", "version": 1}}).encode()


@pytest.mark.parametrize(
    ("sequence", "online"),
    [
        ([("death", 1), ("birth", 2)], True),  # died, came back
        ([("birth", 2), ("death", 1)], True),  # the same, delivered in the other order (retained, on restart)
        ([("birth", 1), ("death", 1)], False),  # the will of the current connection
        ([("death", 1), ("birth", 1)], False),  # the same, other order
        ([("birth", 3), ("death", 1), ("birth", 2)], True),
    ],
)
@pytest.mark.parametrize("via", ["presence", "old_topics"])
def test_presence_is_ordered_by_connection_stamp_not_arrival(sessions, ingest, publisher, sequence, online, via):
    time.sleep(0.3)
    for kind, stamp in sequence:
        publish(publisher, topic("lab", "d1", "presence" if via == "presence" else kind), presence(kind, stamp))
    wait_for(lambda: sum(v for k, v in counters(sessions).items() if k.startswith(("birth", "death")))
             >= len(sequence))
    with sessions() as session:
        assert session.get(Device, "d1").online is online
