"""A light simulator for large fleets: many device ids per process over a few real MQTT connections.

    fleet = LightFleet(["mqtt://127.0.0.1:1883"], fleet="big", devices=100_000, connections=8, rate=5000,
                       windows=record_windows(bundle, keys, data)).start()

What a device costs here is a counter and a version, not an agent: no model runs per device. The
telemetry windows are recorded once by the real model (`record_windows`: the bundle's Predictor with its
telemetry aggregator on real rows) and replayed, each rendered from a byte template with the device id,
seq, window times and model version put in, so a message costs a few joins and one paho publish.

Device i sends on connection i mod `connections`, in its own topics (`edgefleet/v1/<fleet>/<id>/...`), so the
broker must grant those connections every device topic of the fleet: a sim-only credential (the NATS
`sim_users` of cloud/nats_config.py) or an anonymous local broker. Connection 0 also subscribes to the fleet's
`cmd` topics and answers OTA commands as a device that installs at once: "active" with the new version
(an install) or "rolled_back" to its previous one, sent on the device's own connection; its later windows
carry that version. Like the agent (edge_runtime/agent.py), a device ignores a command id it has handled
(the cloud's re-send of a command it saw no status for); `commands` counts every command received,
`repeated` those ignored, so commands received per device is what the cloud sent. Seqs start at 1 per
process, so ids carry a run token (`run`) unless told otherwise: the cloud dedupes on (device, seq).
QoS 1; at most `max_inflight` unacknowledged messages per connection, beyond which the sender waits (the
rate it reports is what the broker acknowledged, not what was offered).
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.ota import BundleRef, OtaError, Status, parse_command
from edgefleet.core.telemetry import TelemetryWindow
from edgefleet.core.topics import TopicError, check_id, parse, subscription, topic
from edgefleet.edge_runtime.mqtt import parse_url, uses_tls

log = logging.getLogger(__name__)
# Markers put into a recorded window where each message has its own value; each must occur once.
MARKS = {b"LightSimDeviceMark": "device", b"987654321": "seq", b"111111111.25": "start", b"111111112.25": "end",
         b"7777777": "version"}
_SPLIT = re.compile(b"(" + b"|".join(re.escape(mark) for mark in MARKS) + b")")


def record_windows(bundle: Path, trusted_keys: Sequence[Path], data: np.ndarray, count: int = 8,
                   rows: int = 64, seed: int = 0) -> list[TelemetryWindow]:
    """`count` telemetry windows of the bundle's real model on `rows` random rows of `data` each."""
    from edgefleet.edge_runtime.predictor import Predictor
    from edgefleet.edge_runtime.telemetry import TelemetryAggregator

    predictor = Predictor(bundle, threads=1, trusted_keys=list(trusted_keys))
    predictor.enable_telemetry(TelemetryAggregator(predictor.bundle, fleet="sim", device="light"))
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        for row in rng.integers(0, len(data), size=rows):
            predictor.predict(data[row][None, ...])
        windows.append(predictor.telemetry.close_window())
    predictor.close()
    return windows


class Template:
    """A window's payload as bytes with holes for the device, seq, times and model version."""

    def __init__(self, window: TelemetryWindow, fleet: str) -> None:
        marked = replace(window, fleet=fleet, device="LightSimDeviceMark", seq=987654321, start=111111111.25,
                         end=111111112.25, model_version=7777777)
        parts = _SPLIT.split(marked.to_payload())
        holes = [MARKS[part] for part in parts[1::2]]
        if sorted(holes) != sorted(MARKS.values()):
            raise EdgefleetError(f"a recorded window cannot be a template: holes {holes}")
        self.parts, self.holes = parts, holes
        self.span = window.end - window.start
        self.model_name = window.model_name

    def render(self, device: str, seq: int, version: int, end: float) -> bytes:
        values = {"device": device.encode(), "seq": str(seq).encode(), "version": str(version).encode(),
                  "start": repr(end - self.span).encode(), "end": repr(end).encode()}
        parts = self.parts.copy()
        for index, hole in enumerate(self.holes):
            parts[2 * index + 1] = values[hole]
        return b"".join(parts)


@dataclass
class Link:
    """One real MQTT connection and its unacknowledged publishes."""

    client: mqtt.Client
    inflight: threading.Semaphore
    up: threading.Event


class LightFleet:
    def __init__(self, mqtt_urls: Sequence[str], *, fleet: str, devices: int, windows: Sequence[TelemetryWindow],
                 rate: float = 1000.0, connections: int = 4, username: str | None = None,
                 password: str | None = None, run: str | None = None, max_inflight: int = 500) -> None:
        if devices < 1 or connections < 1 or rate <= 0 or not windows:
            raise EdgefleetError("a light fleet needs devices >= 1, connections >= 1, rate > 0 and recorded windows")
        self.addresses = [parse_url(url) for url in mqtt_urls]
        if any(uses_tls(url) for url in mqtt_urls):
            raise EdgefleetError("the light simulator speaks plain MQTT only: give it mqtt:// URLs (a loopback "
                                 "listener without TLS)")
        self.fleet = check_id(fleet, "fleet")
        self.run = run if run is not None else secrets.token_hex(2)
        self.ids = [f"{self.fleet}-{self.run}-{i:06d}" for i in range(devices)]
        check_id(self.ids[-1], "device")
        self.templates = [Template(window, self.fleet) for window in windows]
        self.versions = [windows[0].model_version] * devices
        self.previous: dict[int, int] = {}
        self.seqs = [0] * devices
        self.index = {device: i for i, device in enumerate(self.ids)}
        self.rate, self.connections, self.max_inflight = rate, connections, max_inflight
        self.username, self.password = username, password
        self.sent = self.acked = self.commands = self.repeated = 0
        self.handled: dict[int, set[str]] = {}  # device -> the command ids it answered
        self._links: list[Link] = []
        self._counter = threading.Lock()
        self._commands: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> LightFleet:
        for k in range(self.connections):
            self._links.append(self._connect(k))
        deadline = time.monotonic() + timeout
        for link in self._links:
            if not link.up.wait(max(0.0, deadline - time.monotonic())):
                self.stop()
                raise EdgefleetError(f"light sim: the broker did not accept {self.connections} connections "
                                     f"within {timeout} s")
        self._threads = [threading.Thread(target=self._traffic, name="light-traffic", daemon=True),
                         threading.Thread(target=self._answer, name="light-commands", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(None)
        for thread in self._threads:
            thread.join(10)
        for link in self._links:
            link.client.disconnect()
            link.client.loop_stop()

    def __enter__(self) -> LightFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _connect(self, k: int) -> Link:
        host, port = self.addresses[k % len(self.addresses)]
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"light-{self.fleet}-{self.run}-{k}",
                             clean_session=False, protocol=mqtt.MQTTv311)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        client.max_inflight_messages_set(self.max_inflight)
        client.reconnect_delay_set(0.5, 5)
        link = Link(client, threading.Semaphore(self.max_inflight), threading.Event())

        def on_connect(client, userdata, flags, reason, properties) -> None:  # noqa: ANN001 - paho's callback
            if reason.is_failure:
                log.error("light sim: connection %d refused: %s", k, reason)
                return
            if k == 0:
                client.subscribe(subscription("cmd", self.fleet), qos=1)
            link.up.set()

        def on_publish(client, userdata, mid, reason, properties) -> None:  # noqa: ANN001 - paho's callback
            link.inflight.release()
            with self._counter:
                self.acked += 1

        client.on_connect = on_connect
        client.on_disconnect = lambda *args: link.up.clear()
        client.on_publish = on_publish
        client.on_message = lambda client, userdata, msg: self._commands.put((msg.topic, bytes(msg.payload)))
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        return link

    # sending -------------------------------------------------------------------------------------------
    def _publish(self, device: int, kind: str, payload: bytes) -> None:
        link = self._links[device % self.connections]
        while not link.inflight.acquire(timeout=0.5):
            if self._stop.is_set():
                return
        link.client.publish(topic(self.fleet, self.ids[device], kind), payload, qos=1)
        with self._counter:
            self.sent += 1

    def _next_seq(self, device: int) -> int:
        with self._counter:
            self.seqs[device] += 1
            return self.seqs[device]

    def _traffic(self) -> None:
        period, turn = 1.0 / self.rate, 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            device = turn % len(self.ids)
            template = self.templates[turn % len(self.templates)]
            turn += 1
            payload = template.render(self.ids[device], self._next_seq(device), self.versions[device], time.time())
            self._publish(device, "telemetry", payload)
            next_at += period
            ahead = next_at - time.monotonic()
            if ahead > 0.002:
                self._stop.wait(ahead)
            elif ahead < -1.0:  # behind by a second (the broker or this process is the limit): do not burst
                next_at = time.monotonic()

    # commands ------------------------------------------------------------------------------------------
    def _answer(self) -> None:
        while (item := self._commands.get()) is not None:
            name, payload = item
            try:
                command = parse_command(payload)
                device = self.index[parse(name).device]
            except (OtaError, TopicError, KeyError):
                log.warning("light sim: a command for no device of this process, or unreadable: %.200r", payload)
                continue
            self.commands += 1
            if command.id in self.handled.setdefault(device, set()):
                self.repeated += 1
                continue
            self.handled[device].add(command.id)
            if command.op == "install" and command.bundle is not None:
                self.previous[device] = self.versions[device]
                self.versions[device] = command.bundle.version
                state, bundle = "active", BundleRef(command.bundle.name, command.bundle.version)
            else:
                self.versions[device] = self.previous.pop(device, self.versions[device])
                state, bundle = "rolled_back", BundleRef(self.templates[0].model_name, self.versions[device])
            status = Status(self.fleet, self.ids[device], command.id, command.deployment, state, bundle,
                            at=time.time(), seq=self._next_seq(device))
            self._publish(device, "status", status.to_payload())

    def status(self) -> dict:
        with self._counter:
            return {"devices": len(self.ids), "connections": self.connections, "sent": self.sent,
                    "acked": self.acked, "commands": self.commands, "repeated": self.repeated,
                    "connected": sum(link.up.is_set() for link in self._links)}

