"""Faults, counted exactly: a broker restart mid-stream, a device killed with a backlog, its last will.

Every window a device appends must reach the subscriber at least once (duplicates are fine, the cloud
dedupes on seq), and the first arrival of each seq must be in seq order.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from edgefleet.core.topics import topic
from edgefleet.edge_runtime.mqtt import MqttTransport
from edgefleet.edge_runtime.outbox import Outbox
from tests.edge_runtime.mqtt_kit import FLEET, Collector, DeviceProcess, first_arrivals, window_payload, writable


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def assert_exactly_once_in_order(collector: Collector, device: str, n: int) -> None:
    assert collector.wait_for_seqs(device, set(range(1, n + 1)), 15), sorted(set(collector.seqs(device)))
    seqs = collector.seqs(device)
    assert set(seqs) == set(range(1, n + 1))  # nothing missing, nothing invented
    assert first_arrivals(seqs) == list(range(1, n + 1))  # in order, allowing duplicates
    # A seq is never reused for another window: each one carries one payload, however often it came.
    assert all(len(payloads) == 1 for payloads in collector.payloads(device).values())


def test_broker_restart_while_streaming_loses_no_window(mosquitto_factory, tmp_path: Path):
    broker = writable(mosquitto_factory()).start()
    collector = Collector(broker.port, "collector-outage").start()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    transport = MqttTransport(broker.url, fleet=FLEET, device="d1", outbox=outbox, reconnect_min=0.05,
                              reconnect_max=0.3).start()
    total, appended = 150, []
    telemetry = topic(FLEET, "d1", "telemetry")

    def stream() -> None:  # one window every 20 ms, through the outage
        for _ in range(total):
            appended.append(outbox.append(telemetry, lambda seq, dropped: window_payload(FLEET, "d1", seq, dropped)))
            transport.wake()
            time.sleep(0.02)

    streamer = threading.Thread(target=stream)
    try:
        assert wait_until(lambda: transport.connected, 5), transport.last_error
        streamer.start()
        assert wait_until(lambda: len(appended) >= 40, 10)
        # Freeze it first, so that some windows are published but never acknowledged when it goes down.
        os.kill(broker.pid, signal.SIGSTOP)
        time.sleep(0.1)
        os.kill(broker.pid, signal.SIGTERM)  # Mosquitto saves its sessions and queues, then exits
        os.kill(broker.pid, signal.SIGCONT)
        broker.stop()  # waits for the exit
        assert wait_until(lambda: not transport.connected, 5)
        down_at = len(appended)
        assert wait_until(lambda: len(appended) >= down_at + 30, 10)  # at least 30 windows wait in the outbox
        assert not transport.connected and len(outbox) >= 30
        broker.start()
        streamer.join(15)
        assert not streamer.is_alive() and appended == list(range(1, total + 1))
        assert transport.flush(15), (len(outbox), transport.last_error)
        assert transport.connects >= 2
        assert_exactly_once_in_order(collector, "d1", total)
    finally:
        streamer.join(15)
        transport.stop()
        outbox.close()
        collector.stop()


def test_windows_unacknowledged_when_the_broker_dies_are_sent_again(mosquitto_factory, tmp_path: Path):
    broker = writable(mosquitto_factory()).start()
    collector = Collector(broker.port, "collector-inflight").start()
    # Save the collector's session to disk now: the SIGKILLed broker below restarts from this file, so
    # it queues the resent windows for the collector even before the collector is back.
    broker.stop()
    broker.start()
    assert collector.wait_for(lambda: collector.subscriptions >= 2, 5)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    transport = MqttTransport(broker.url, fleet=FLEET, device="d5", outbox=outbox, reconnect_min=0.05,
                              reconnect_max=0.3).start()
    telemetry = topic(FLEET, "d5", "telemetry")

    def append(n: int) -> None:
        for _ in range(n):
            outbox.append(telemetry, lambda seq, dropped: window_payload(FLEET, "d5", seq, dropped))
        transport.wake()

    try:
        assert wait_until(lambda: transport.connected, 5), transport.last_error
        append(10)
        assert transport.flush(5) and collector.wait_for_seqs("d5", set(range(1, 11)), 5)
        os.kill(broker.pid, signal.SIGSTOP)  # it takes the bytes (TCP) but acknowledges nothing
        append(10)
        time.sleep(0.3)  # the sender publishes 11-20 into the frozen broker
        broker.stop(signal.SIGKILL)  # dies holding them: no PUBACK, nothing saved
        assert len(outbox) == 10 and not transport.flush(0.2)
        broker.start()
        assert transport.flush(10), (len(outbox), transport.last_error)  # only a new PUBACK can empty it
        assert transport.connects == 2
        assert_exactly_once_in_order(collector, "d5", 20)
    finally:
        transport.stop()
        outbox.close()
        collector.stop()


def test_device_killed_with_a_backlog_resumes_without_loss_or_seq_reuse(mosquitto_factory, tmp_path: Path):
    broker = writable(mosquitto_factory()).start()
    collector = Collector(broker.port, "collector-kill").start()
    path = tmp_path / "outbox.sqlite"
    first = DeviceProcess(broker.url, "d2", path)
    try:
        assert first.call("connected 10") == ["connected", "True"]
        assert first.append(5) == (1, 5)
        assert first.call("flush 10") == ["flushed", "True"]
        broker.stop()
        assert first.append(20) == (6, 25)  # the backlog: written while the broker is away
        assert first.call("flush 0.2") == ["flushed", "False"]
        first.kill()
    finally:
        first.close()
    with Outbox(path) as outbox:
        assert [e.seq for e in outbox.peek(100)] == list(range(6, 26))
    broker.start()
    second = DeviceProcess(broker.url, "d2", path)
    try:
        assert second.call("connected 10") == ["connected", "True"]
        assert second.append(5) == (26, 30)  # continues after the highest seq ever assigned
        assert second.call("flush 15") == ["flushed", "True"], second.stderr
        assert_exactly_once_in_order(collector, "d2", 30)
    finally:
        second.close()
        collector.stop()


def test_the_broker_sends_the_death_message_when_a_device_is_killed(mosquitto, tmp_path: Path):
    collector = Collector(mosquitto.port, "collector-death").start()
    device = DeviceProcess(mosquitto.url, "d3", tmp_path / "outbox.sqlite")
    try:
        assert device.call("connected 10") == ["connected", "True"]
        assert collector.wait_for(lambda: collector.of("birth", "d3"), 5)
        assert not collector.of("death", "d3")
        device.kill()
        assert collector.wait_for(lambda: collector.of("death", "d3"), 5), mosquitto.log
        death = json.loads(collector.of("death", "d3")[0].payload)
        birth = json.loads(collector.of("birth", "d3")[0].payload)
        assert death == {"schema": "edgefleet.death", "v": 1, "fleet": FLEET, "device": "d3", "online": False,
                         "connection": birth["connection"]}  # the will armed for that very connection
    finally:
        device.close()
        collector.stop()


def test_a_device_that_starts_before_the_broker_sends_once_it_is_up(mosquitto_factory, tmp_path: Path):
    broker = writable(mosquitto_factory())  # its port is chosen, nothing listens yet
    outbox = Outbox(tmp_path / "outbox.sqlite")
    telemetry = topic(FLEET, "d4", "telemetry")
    for _ in range(3):
        outbox.append(telemetry, lambda seq, dropped: window_payload(FLEET, "d4", seq, dropped))
    transport = MqttTransport(broker.url, fleet=FLEET, device="d4", outbox=outbox, reconnect_min=0.05,
                              reconnect_max=0.2).start()
    try:
        assert wait_until(lambda: transport.last_error is not None, 5)
        assert "cannot reach" in transport.last_error and not transport.connected
        broker.start()
        assert transport.flush(10), transport.last_error
        assert transport.connected and transport.last_error is None and len(outbox) == 0
    finally:
        transport.stop()
        outbox.close()
