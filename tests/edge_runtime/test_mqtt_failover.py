"""Broker failover on the device (device.toml's mqtt.failover): two real Mosquitto processes stand in for
two nodes; a device whose first node is down starts on the next, and one whose node is killed -9 moves
to the other by itself with its outbox intact. (The clustered case, where both nodes serve one ingest, is
tests/cloud/test_nats_cluster.py.)"""

from __future__ import annotations

import signal
import time

import pytest

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import topic
from edgefleet.edge_runtime.device_config import DeviceConfig
from edgefleet.edge_runtime.mqtt import MqttTransport
from edgefleet.edge_runtime.outbox import Outbox
from tests.mosquitto import free_port

BASE = {"device": {"id": "pi-1", "fleet": "lab"}, "model": {"bundle": "b.tar.gz", "trusted_keys": ["k.pub"]},
        "mqtt": {"url": "mqtt://a.example:1883", "failover": ["mqtt://b.example:1883", "mqtt://c.example"]}}


def test_device_toml_takes_a_failover_list_and_names_a_bad_url():
    assert DeviceConfig.from_dict(BASE).mqtt.failover == ("mqtt://b.example:1883", "mqtt://c.example")
    mixed = {**BASE, "mqtt": {**BASE["mqtt"], "failover": ["mqtts://b.example"]}}
    with pytest.raises(EdgefleetError, match=r"mqtt\.failover: .*mix mqtt:// and mqtts://"):
        DeviceConfig.from_dict(mixed)
    bad = {**BASE, "mqtt": {**BASE["mqtt"], "failover": ["ws://b.example"]}}
    with pytest.raises(EdgefleetError, match=r"mqtt\.failover: MQTT URL 'ws://b.example': the scheme"):
        DeviceConfig.from_dict(bad)
    with pytest.raises(EdgefleetError, match="mqtt.failover must be a list"):
        DeviceConfig.from_dict({**BASE, "mqtt": {**BASE["mqtt"], "failover": "mqtt://b.example"}})


def _wait(condition, timeout: float = 30.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_a_dead_first_node_and_a_killed_node_each_move_the_device_on(mosquitto_factory, tmp_path):
    first, second = mosquitto_factory().start(), mosquitto_factory().start()
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    outbox = Outbox(tmp_path / "outbox.sqlite")
    transport = MqttTransport(dead, fleet="lab", device="pi-1", outbox=outbox, reconnect_min=0.1,
                              reconnect_max=0.5, failover=[first.url, second.url]).start()
    try:
        assert _wait(lambda: transport.connected), transport.last_error
        assert transport.port == first.port and transport.connects == 1
        outbox.append(topic("lab", "pi-1", "telemetry"), lambda seq, _drop: b"w%d" % seq)
        transport.wake()
        assert transport.flush(10)
        first.stop(signal.SIGKILL)
        for _ in range(3):  # written while it moves: the outbox keeps them until the next node acknowledges
            outbox.append(topic("lab", "pi-1", "telemetry"), lambda seq, _drop: b"w%d" % seq)
        transport.wake()
        assert _wait(lambda: transport.connected and transport.port == second.port), transport.last_error
        assert transport.flush(10) and len(outbox) == 0 and transport.connects == 2
    finally:
        transport.stop(timeout=1.0)
        outbox.close()
