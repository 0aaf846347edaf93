"""Devices for the ingest kill tests: QoS 1 telemetry windows from d0..d{N-1}, each (device, seq) sent once,
paced so that the stream outlasts a worker's kill, and the count of rows stored."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from sqlalchemy import func, select

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.core.topics import topic
from tests.cloud.test_ingest import window


class PacedDevices:
    """Sends `windows` rounds of one window per device over the given started clients (device n on client
    n % len(clients)), waiting for every PUBACK of a round and 50 ms between rounds; `sent` counts them."""

    def __init__(self, clients: list[mqtt.Client], fleet: str, devices: int, windows: int) -> None:
        self.clients, self.fleet, self.devices, self.windows = clients, fleet, devices, windows
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for seq in range(1, self.windows + 1):
            infos = [self.clients[n % len(self.clients)].publish(
                topic(self.fleet, f"d{n}", "telemetry"), window(f"d{n}", seq).to_payload(), qos=1)
                for n in range(self.devices)]
            for info in infos:
                info.wait_for_publish(30)
            self.sent += len(infos)
            time.sleep(0.05)

    def close(self) -> None:
        self.thread.join(120)
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


def started_client(client_id: str, port: int, username: str | None = None, password: str | None = None) -> mqtt.Client:
    """An MQTT 3.1.1 client connected to 127.0.0.1:port with its network loop running, 100 messages in flight."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def stored(sessions) -> int:  # noqa: ANN001 - a sessionmaker
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(TelemetryRecord))
