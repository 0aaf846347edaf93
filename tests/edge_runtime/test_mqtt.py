"""The MQTT transport against a real Mosquitto: delivery, birth and death, commands, URLs, credentials."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgefleet.core.topics import topic
from edgefleet.edge_runtime.mqtt import MqttTransport, TransportError, parse_url
from edgefleet.edge_runtime.outbox import Outbox
from tests.edge_runtime.mqtt_kit import FLEET, Collector, DeviceProcess, first_arrivals, window_payload, writable

BIRTH = json.dumps({"schema": "edgefleet.birth", "v": 1, "fleet": FLEET, "device": "d1", "online": True}).encode()


def append_windows(outbox: Outbox, device: str, n: int) -> list[int]:
    telemetry = topic(FLEET, device, "telemetry")
    return [outbox.append(telemetry, lambda seq, dropped: window_payload(FLEET, device, seq, dropped))
            for _ in range(n)]


def retained_presence(port: int, device: str, grace: float = 0.5) -> list[dict]:
    """What a new subscriber to all of a device's topics gets: the retained messages, decoded. Only
    retained ones can arrive (nothing else is published meanwhile); each must be presence."""
    got: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fresh-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv311)
    client.on_message = lambda client, userdata, message: got.put(message)
    client.on_subscribe = lambda *args: got.put("subscribed")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(f"edgefleet/v1/{FLEET}/{device}/+", qos=1)
        assert got.get(timeout=5) == "subscribed"
        time.sleep(grace)
    finally:
        client.loop_stop()
        client.disconnect()
    messages = [got.get_nowait() for _ in range(got.qsize())]
    assert all(m.retain and m.topic == topic(FLEET, device, "presence") for m in messages), messages
    return [json.loads(m.payload) for m in messages]


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def collector(mosquitto):
    collector = Collector(mosquitto.port).start()
    yield collector
    collector.stop()


@pytest.mark.parametrize("max_inflight", [20, 1])
def test_windows_arrive_in_order_and_leave_the_outbox_only_when_acknowledged(mosquitto, collector, tmp_path: Path,
                                                                               max_inflight: int):
    outbox = Outbox(tmp_path / "outbox.sqlite")
    transport = MqttTransport(mosquitto.url, fleet=FLEET, device="d1", outbox=outbox, birth=lambda: BIRTH,
                              max_inflight=max_inflight).start()
    try:
        assert wait_until(lambda: transport.connected, 5), transport.last_error
        assert append_windows(outbox, "d1", 30) == list(range(1, 31))
        transport.wake()
        assert transport.flush(10)
        assert len(outbox) == 0 and outbox.pending_bytes == 0
        assert collector.wait_for_seqs("d1", set(range(1, 31)), 5)
        assert first_arrivals(collector.seqs("d1")) == list(range(1, 31))
        (birth,) = [json.loads(m.payload) for m in collector.of("birth", "d1")]
        stamp = birth.pop("connection")  # the transport adds its connection's stamp to the birth
        assert birth == json.loads(BIRTH) and isinstance(stamp, int)
        assert transport.last_error is None and transport.connects == 1
    finally:
        transport.stop()
        outbox.close()
    # A clean stop announces the death itself (the broker sends the will only for an unclean end).
    assert collector.wait_for(lambda: collector.of("death", "d1"), 5)
    death = json.loads(collector.of("death", "d1")[0].payload)
    assert death == {"schema": "edgefleet.death", "v": 1, "fleet": FLEET, "device": "d1", "online": False,
                     "connection": stamp}  # the death of the same connection carries the same stamp
    # One presence message is retained for whoever subscribes later: the death, which replaced the birth.
    assert retained_presence(mosquitto.port, "d1") == [death]


def test_commands_reach_on_command_off_the_network_thread(mosquitto, tmp_path: Path):
    got: queue.Queue = queue.Queue()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    transport = MqttTransport(
        mosquitto.url, fleet=FLEET, device="d2", outbox=outbox,
        on_command=lambda payload: got.put((payload, threading.current_thread().name)),
    ).start()
    cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud", protocol=mqtt.MQTTv311)
    cloud.connect("127.0.0.1", mosquitto.port)
    cloud.loop_start()
    try:
        assert wait_until(lambda: transport.connected, 5), transport.last_error
        payloads = [json.dumps({"op": "ping", "n": i}).encode() for i in range(3)]
        deadline = time.monotonic() + 10
        # The device subscribes right after it connects; until its SUBACK, a command would go nowhere.
        received: list = []
        while not received and time.monotonic() < deadline:
            cloud.publish(topic(FLEET, "d2", "cmd"), payloads[0], qos=1).wait_for_publish(2)
            try:
                received.append(got.get(timeout=0.2))
            except queue.Empty:
                continue
        assert received, "no command reached on_command"
        for payload in payloads[1:]:
            cloud.publish(topic(FLEET, "d2", "cmd"), payload, qos=1).wait_for_publish(2)
        while len(received) < 3 and time.monotonic() < deadline:
            try:
                received.append(got.get(timeout=0.2))
            except queue.Empty:
                continue
        assert [p for p, _ in received][-2:] == payloads[1:]
        assert {name for _, name in received} == {"mqtt-commands-d2"}
    finally:
        cloud.loop_stop()
        cloud.disconnect()
        transport.stop()
        outbox.close()


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:1883", "scheme must be mqtt://"),
    ("ws://127.0.0.1:8080", "scheme must be mqtt:// or mqtts://"),
    ("127.0.0.1:1883", "scheme must be mqtt://"),
    ("mqtt://", "names no host"),
    ("mqtt://127.0.0.1:port", "port must be a number"),
    ("mqtt://127.0.0.1:70000", "port must be a number"),
    ("mqtt://127.0.0.1:0", "port must be a number"),
    ("mqtt://user:secret@127.0.0.1:1883", "username=/password="),
    ("mqtt://127.0.0.1:1883/topic", "no path"),
    ("", "must be a string"),
])
def test_malformed_urls_are_refused_with_the_reason(url: str, message: str, tmp_path: Path):
    with pytest.raises(TransportError, match=message):
        parse_url(url)
    with Outbox(tmp_path / "outbox.sqlite") as outbox, pytest.raises(TransportError, match=message):
        MqttTransport(url, fleet=FLEET, device="d1", outbox=outbox)


def test_url_defaults_to_port_1883():
    assert parse_url("mqtt://127.0.0.1") == ("127.0.0.1", 1883)
    assert parse_url("mqtt://127.0.0.1:18830/") == ("127.0.0.1", 18830)
    assert parse_url("mqtts://127.0.0.1") == ("127.0.0.1", 8883)  # TLS: tests/cloud/test_mqtt_tls.py


def test_refused_credentials_are_visible_and_nothing_leaves_the_outbox(mosquitto_factory, tmp_path: Path, caplog):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "d3", "right"], check=True, timeout=30,
                   capture_output=True)
    broker = writable(mosquitto_factory(password_file=passwords)).start()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    append_windows(outbox, "d3", 3)
    wrong = MqttTransport(broker.url, fleet=FLEET, device="d3", outbox=outbox, username="d3", password="wrong",
                          reconnect_min=0.1, reconnect_max=0.2).start()
    try:
        assert wait_until(lambda: wrong.last_error is not None and "refused" in wrong.last_error, 5)
        assert "Not authorized" in wrong.last_error and "username and password" in wrong.last_error
        assert not wrong.connected and not wrong.flush(0.3) and len(outbox) == 3
        assert "refused the connection" in caplog.text
        time.sleep(0.5)  # several retries, one log line
        assert caplog.text.count("refused the connection") == 1
    finally:
        wrong.stop()
    right = MqttTransport(broker.url, fleet=FLEET, device="d3", outbox=outbox, username="d3",
                          password="right").start()
    try:
        assert right.flush(10), right.last_error
        assert right.last_error is None
    finally:
        right.stop()
        outbox.close()


def test_a_new_subscriber_reads_one_retained_presence_message_and_it_is_the_truth(mosquitto, collector, tmp_path):
    """A device connects, dies without a word (kill -9: the broker sends its will), comes back, stops."""
    outbox = tmp_path / "outbox.sqlite"
    first = DeviceProcess(mosquitto.url, "d7", outbox)
    try:
        assert first.call("connected 10") == ["connected", "True"]
        assert collector.wait_for(lambda: collector.of("birth", "d7"), 5)
        born = json.loads(collector.of("birth", "d7")[0].payload)
        assert retained_presence(mosquitto.port, "d7") == [born]
        first.kill()
        assert collector.wait_for(lambda: collector.of("death", "d7"), 5), mosquitto.log
    finally:
        first.close()
    assert retained_presence(mosquitto.port, "d7") == [
        {"schema": "edgefleet.death", "v": 1, "fleet": FLEET, "device": "d7", "online": False,
         "connection": born["connection"]}]  # offline, and which connection ended
    second = DeviceProcess(mosquitto.url, "d7", outbox)
    try:
        assert second.call("connected 10") == ["connected", "True"]
        assert collector.wait_for(lambda: len(collector.of("birth", "d7")) == 2, 5)
        reborn = json.loads(collector.of("birth", "d7")[1].payload)
        assert reborn["connection"] > born["connection"] and reborn["online"] is True
        assert retained_presence(mosquitto.port, "d7") == [reborn]  # online again; the old will is gone
    finally:
        second.close()  # a clean stop publishes the death itself
    (last,) = retained_presence(mosquitto.port, "d7")
    assert (last["schema"], last["online"], last["connection"]) == ("edgefleet.death", False, reborn["connection"])
