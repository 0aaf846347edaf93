"""Forwards the labels the cloud received (cloud/labels_store.py) to the devices that made the predictions.

Every `interval` seconds: the unsent labels, oldest first, grouped per device into commands of at most
MAX_COMMAND_LABELS (core/labels.py `label_command`, op "labels" on the device's cmd topic, QoS 1). A
command id is committed on its labels before the publish and `sent_at` once the broker acknowledged it; a
label whose publish was not acknowledged is sent again under the same id on the next run (the device
refuses a second label for one request, so a duplicate is never counted twice). A device that is offline
gets its commands from its persistent session when it reconnects (as it gets its updates). It logs in as
its own MQTT user (`mqtt_auth.LABELS`), allowed to publish only `cmd`.

Several rollouts workers (cloud/roles.py) each start a forwarder: one at a time forwards, the holder of
the lease LEASE (cloud/leases.py), renewed every period / 3 and trusted for one period after the renewal
was sent; the others ask again at the same pace and take over within a period of the holder's death. Each
connects under its own client id, or the broker would hand the one connection back and forth between them.

Recovery: nothing lives in memory but the connection; a restarted cloud sends what has no `sent_at`.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.labels_store import CloudLabel
from edgefleet.cloud.leases import Leases
from edgefleet.cloud.mqtt_client import broker_address, new_client
from edgefleet.core.labels import MAX_COMMAND_LABELS, label_command
from edgefleet.core.topics import topic

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT = 10.0
BATCH = 5000  # labels read per run
LEASE = "rollouts/labels"  # the one forwarder of many rollouts workers that sends


class LabelForwarder:
    name = "label-forwarder"

    def __init__(self, sessions: sessionmaker, mqtt_url: str, *, username: str | None, password: str | None,
                 client_id: str, interval_seconds: float = 0.5, leases: Leases | None = None,
                 ca: Path | None = None) -> None:
        self.sessions, self.interval_seconds, self.leases = sessions, interval_seconds, leases
        self._ask_at = self._trusted_until = 0.0  # monotonic: next lease request; end of the held lease
        self.host, self.port = broker_address(mqtt_url)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = new_client(client_id, username, password, mqtt_url=mqtt_url, ca=ca)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *args: self.connected.clear()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho
        if reason_code.is_failure:
            log.error("labels: broker refused the connection: %s", reason_code)
            return
        self.connected.set()

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = PUBLISH_TIMEOUT + 5) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        if self.leases is not None and self._trusted_until > time.monotonic():
            self.leases.release([LEASE])  # another worker's forwarder takes over at once
        self._client.disconnect()
        self._client.loop_stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            if not self.connected.is_set():
                continue
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the forwarder must outlive any one bad run
                log.exception("%s: run failed", self.name)

    def holds_lease(self) -> bool:
        """Whether this forwarder is the one that sends (always, without leases): asks for LEASE every
        period / 3 and trusts a grant for one period from the moment it asked."""
        if self.leases is None:
            return True
        asked = time.monotonic()
        if asked >= self._ask_at:
            self._ask_at = asked + self.leases.period / 3
            self._trusted_until = asked + self.leases.period if LEASE in self.leases.acquire([LEASE]) else 0.0
        return time.monotonic() < self._trusted_until

    def run_once(self) -> int:
        """Sends every unsent label if this forwarder holds the lease; returns how many the broker
        acknowledged."""
        if not self.holds_lease():
            return 0
        with self.sessions() as session:
            rows = session.scalars(select(CloudLabel).where(CloudLabel.sent_at.is_(None))
                                   .order_by(CloudLabel.id).limit(BATCH)).all()
            commands: dict[str, list[CloudLabel]] = defaultdict(list)  # command id -> its labels
            open_command: dict[str, str] = {}  # device -> the command being filled this run
            for row in rows:
                if row.command_id is None:
                    current = open_command.get(row.device_id)
                    if current is None or len(commands[current]) >= MAX_COMMAND_LABELS:
                        current = open_command[row.device_id] = f"l-{secrets.token_hex(6)}"
                    row.command_id = current
                commands[row.command_id].append(row)
            session.commit()  # the ids first: a publish that happens is always under a recorded id
            sent = 0
            for command_id, labels in commands.items():
                first = labels[0]
                payload = label_command(command_id, [label.item for label in labels], time.time())
                info = self._client.publish(topic(first.fleet, first.device_id, "cmd"), payload, qos=1)
                try:
                    info.wait_for_publish(PUBLISH_TIMEOUT)
                except (RuntimeError, ValueError) as err:
                    log.warning("labels: command %s to %s not acknowledged: %s", command_id, first.device_id, err)
                    continue
                if info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published():
                    for label in labels:
                        label.sent_at = time.time()
                    sent += len(labels)
            session.commit()
        return sent
