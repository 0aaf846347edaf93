"""Test kit for the MQTT transport, against a real Mosquitto.

- `Collector`: a plain paho subscriber with a persistent session (clean_session=False), so a broker
  restart does not lose what was queued for it; it records every message on the device topics.
- `window_payload`: a valid telemetry window for (fleet, device, seq, dropped).
- `DeviceProcess`: a device (Outbox + MqttTransport) in its own Python process, driven line by line over
  stdin/stdout, so a test can kill -9 it. Run as a script, this file is that device:

      python tests/edge_runtime/mqtt_kit.py <url> <fleet> <device> <outbox path>
      stdin:  append <n> | flush <seconds> | connected <seconds> | quit
      stdout: ready | appended <first> <last> | flushed <True|False> | connected <True|False> | bye
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from edgefleet.core.telemetry import LATENCY_EDGES_MS, Dropped, TelemetryWindow, parse_telemetry
from edgefleet.core.topics import parse, subscription

if TYPE_CHECKING:  # this file also runs as a script, where the `tests` package is not importable
    from tests.mosquitto import MosquittoBroker

FLEET = "f1"


def window_payload(fleet: str, device: str, seq: int, dropped: Dropped | None = None, tag: str = "w") -> bytes:
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[5] = 3
    return TelemetryWindow(fleet=fleet, device=device, seq=seq, model_name=f"model-{tag}", model_version=1,
                           start=1000.0 + seq, end=1001.0 + seq, requests=3, samples=3, errors=0,
                           latency_ms=tuple(latency), dropped=dropped or Dropped()).to_payload()


@dataclass(frozen=True)
class Received:
    kind: str
    device: str
    payload: bytes
    retain: bool


class Collector:
    """Subscribes to telemetry and presence (and the old birth and death topics) of every device in FLEET
    and keeps what arrives; a presence message is kept as the kind its schema says, "birth" or "death"."""

    def __init__(self, port: int, client_id: str = "collector", fleet: str = FLEET) -> None:
        self.port, self.fleet = port, fleet
        self.messages: list[Received] = []
        self.subscriptions = 0  # SUBACKs so far: one per (re)connection
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.05, 0.3)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self, timeout: float = 5.0) -> Collector:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(timeout), "the collector's subscription was not acknowledged"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([(subscription(kind, self.fleet), 1) for kind in ("telemetry", "presence", "birth", "death")])

    def _on_subscribe(self, *args: object) -> None:
        with self._cond:
            self.subscriptions += 1
            self._cond.notify_all()
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        where = parse(message.topic)
        kind = presence_kind(message.payload) if where.kind == "presence" else where.kind
        with self._cond:
            self.messages.append(Received(kind, where.device, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def of(self, kind: str, device: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.kind == kind and m.device == device]

    def seqs(self, device: str) -> list[int]:
        """Telemetry seqs of one device in arrival order, duplicates included (each payload is validated)."""
        return [parse_telemetry(m.payload).seq for m in self.of("telemetry", device)]

    def payloads(self, device: str) -> dict[int, set[bytes]]:
        out: dict[int, set[bytes]] = {}
        for m in self.of("telemetry", device):
            out.setdefault(parse_telemetry(m.payload).seq, set()).add(m.payload)
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
        return True

    def wait_for_seqs(self, device: str, expected: set[int], timeout: float) -> bool:
        return self.wait_for(lambda: expected <= {parse_telemetry(m.payload).seq for m in self.messages
                                                  if m.kind == "telemetry" and m.device == device}, timeout)


def presence_kind(payload: bytes) -> str:
    """"birth" or "death", as a presence message's schema says ("presence" if it says neither)."""
    try:
        schema = json.loads(payload).get("schema")
    except (ValueError, AttributeError):
        return "presence"
    return {"edgefleet.birth": "birth", "edgefleet.death": "death"}.get(schema, "presence")


def writable(broker: MosquittoBroker) -> MosquittoBroker:
    """Lets a not yet started broker write its log and persistence file when the tests run as root.

    Started as root, Mosquitto drops to the `mosquitto` user, which cannot enter pytest's 0700 temporary
    directories: no log, no password file, and no persistence file on SIGTERM, so a restart would forget
    the sessions and queued messages that the outage tests rely on. `user root` keeps it as it was started.
    """
    if os.geteuid() != 0:
        return broker
    write_config = broker.write_config

    def write_config_as_root() -> Path:
        config = write_config()
        text = config.read_text()
        if "\nuser " not in "\n" + text:
            config.write_text(text + "user root\n")
        return config

    broker.write_config = write_config_as_root  # type: ignore[method-assign]
    return broker


def first_arrivals(seqs: list[int]) -> list[int]:
    """The order in which each seq arrived for the first time (what a deduplicating reader sees)."""
    seen: set[int] = set()
    return [s for s in seqs if not (s in seen or seen.add(s))]


class DeviceProcess:
    """Drives `main()` below in a child process; every reply is awaited with a timeout."""

    def __init__(self, url: str, device: str, outbox: Path, fleet: str = FLEET) -> None:
        self.stderr_path = outbox.with_suffix(f".{device}.{time.monotonic_ns()}.stderr")
        self._stderr = open(self.stderr_path, "wb")  # closed in kill()
        self.process = subprocess.Popen([sys.executable, __file__, url, fleet, device, str(outbox)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                        text=True, bufsize=1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.reply(15) == "ready"

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def reply(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the device process did not answer within {timeout} s: {self.stderr}") from None
        if line is None:
            raise AssertionError(f"the device process exited ({self.process.poll()}): {self.stderr}")
        return line

    def call(self, command: str, timeout: float = 15.0) -> list[str]:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.reply(timeout).split()

    def append(self, n: int) -> tuple[int, int]:
        _, first, last = self.call(f"append {n}")
        return int(first), int(last)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """kill -9 by PID: no DISCONNECT, no flush, no clean close of the outbox."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._stderr.close()

    def close(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            try:
                self.call("quit", timeout)
                self.process.wait(timeout)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def main(argv: list[str]) -> int:
    import logging

    from edgefleet.core.topics import topic
    from edgefleet.edge_runtime.mqtt import MqttTransport
    from edgefleet.edge_runtime.outbox import Outbox

    url, fleet, device, path = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    outbox = Outbox(Path(path))
    tag = f"pid{os.getpid()}"  # a new process never writes another's payload under a reused seq
    birth = json.dumps({"schema": "edgefleet.birth", "v": 1, "fleet": fleet, "device": device, "online": True,
                        "model": {"name": "m", "version": 1}}).encode()
    transport = MqttTransport(url, fleet=fleet, device=device, outbox=outbox, birth=lambda: birth,
                              reconnect_min=0.05, reconnect_max=0.3).start()
    telemetry = topic(fleet, device, "telemetry")
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "append":
            seqs = [outbox.append(telemetry, lambda seq, dropped: window_payload(fleet, device, seq, dropped, tag))
                    for _ in range(int(args[0]))]
            transport.wake()
            print("appended", seqs[0], seqs[-1], flush=True)
        elif command == "flush":
            print("flushed", transport.flush(float(args[0])), flush=True)
        elif command == "connected":
            deadline = time.monotonic() + float(args[0])
            while not transport.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            print("connected", transport.connected, flush=True)
        elif command == "quit":
            transport.stop(5)
            outbox.close()
            print("bye", flush=True)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
