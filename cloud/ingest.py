"""MQTT ingest: device messages into the database, validated, deduplicated, batched, acknowledged last.

The paho callback only enqueues. A writer thread takes what has arrived (up to `batch_size`, waiting at
most `flush_seconds`), validates each message, writes the batch in one transaction, and only then sends
the PUBACKs (paho's manual_ack). So a telemetry window the broker considers delivered is always on
disk; if the cloud dies first, the broker redelivers it (persistent session), and the (device, seq)
filter drops the copy. A malformed, oversized, misaddressed or unknown-device message is counted by
reason (table ingest_counters) and dropped; nothing a device sends can stop the ingest.

OTA status messages (`core.ota`) are stored once per (device, seq) as DeviceStatus rows and move the
device's DeploymentDevice row (matched on deployment, device and one of its two command ids) to the
reported state, unless a status with a higher seq was applied already; the rollout engine reads these.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.cloud.db import DeploymentDevice, Device, DeviceStatus, IngestCounter, TelemetryRecord
from edgefleet.cloud.mqtt_client import broker_address, new_client
from edgefleet.core.ota import OtaError, Status, parse_status
from edgefleet.core.telemetry import MAX_PAYLOAD_BYTES, TelemetryError, TelemetryWindow, parse_telemetry
from edgefleet.core.topics import TopicError, parse, subscription

log = logging.getLogger(__name__)

SUBSCRIBED_KINDS = ("telemetry", "birth", "death", "status")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int


class Ingest:
    name = "ingest"

    def __init__(
        self,
        sessions: sessionmaker,
        mqtt_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "edgefleet-ingest",
        max_bytes: int = MAX_PAYLOAD_BYTES,
        batch_size: int = 1000,
        flush_seconds: float = 0.05,
    ) -> None:
        self.host, self.port = broker_address(mqtt_url)
        self.sessions = sessions
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self._queue: queue.Queue[Received | None] = queue.Queue()
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self.connected = threading.Event()
        self.counts: Counter[str] = Counter()  # this process's tallies; the table holds the totals
        self._client = new_client(client_id, username, password, clean_session=False, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # network thread: enqueue only ----------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho
        if reason_code.is_failure:
            log.error("ingest: broker refused the connection: %s", reason_code)
            return
        client.subscribe([(subscription(kind), 1) for kind in SUBSCRIBED_KINDS])
        self.connected.set()
        log.info("ingest: connected to %s:%s", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("ingest: disconnected (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001 - paho
        self._queue.put(Received(message.topic, message.payload, message.mid, message.qos))

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._queue.put(None)
        if self._writer:
            self._writer.join(timeout)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    # writer thread -------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - log and go on: the broker redelivers what was not acked
                log.exception("ingest: writing a batch of %d messages failed; they stay unacknowledged", len(batch))
                continue
            for item in batch:
                if item.qos > 0:
                    self._client.ack(item.mid, item.qos)

    def _take_batch(self) -> list[Received] | None:
        try:
            first = self._queue.get(timeout=0.5)
        except queue.Empty:
            return []
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _write(self, batch: list[Received]) -> None:
        tally: Counter[str] = Counter()
        windows: list[tuple[TelemetryWindow, bytes]] = []
        presence: list[tuple[str, str, bytes]] = []
        statuses: list[tuple[Status, bytes]] = []
        for item in batch:
            try:
                topic = parse(item.topic)
            except TopicError:
                tally["bad_topic"] += 1
                continue
            if topic.kind == "telemetry":
                try:
                    window = parse_telemetry(item.payload, max_bytes=self.max_bytes)
                except TelemetryError as err:
                    tally[err.reason] += 1
                    log.debug("ingest: dropped telemetry from %s: %s", topic.device, err)
                    continue
                if (window.fleet, window.device) != (topic.fleet, topic.device):
                    tally["topic_mismatch"] += 1
                    continue
                windows.append((window, item.payload))
            elif topic.kind == "status":
                try:
                    status = parse_status(item.payload)
                except OtaError as err:
                    tally[f"status_{err.reason}"] += 1
                    log.debug("ingest: dropped status from %s: %s", topic.device, err)
                    continue
                if (status.fleet, status.device) != (topic.fleet, topic.device):
                    tally["topic_mismatch"] += 1
                    continue
                statuses.append((status, item.payload))
            else:
                presence.append((topic.kind, topic.device, item.payload))
        with self.sessions.begin() as session:
            known = _known_devices(session, {w.device for w, _ in windows} | {p[1] for p in presence}
                                   | {s.device for s, _ in statuses})
            fresh = _without_duplicates(session, [(w, raw) for w, raw in windows if w.device in known], tally)
            tally["unknown_device"] += sum(1 for w, _ in windows if w.device not in known)
            if fresh:
                session.execute(insert(TelemetryRecord), [_record(w, raw) for w, raw in fresh])
            tally["accepted"] += len(fresh)
            _touch(session, [w for w, _ in fresh])
            for kind, device, payload in presence:
                if device not in known:
                    tally["unknown_device"] += 1
                    continue
                tally[_presence(session, kind, device, payload)] += 1
            tally["unknown_device"] += sum(1 for s, _ in statuses if s.device not in known)
            _store_statuses(session, [(s, raw) for s, raw in statuses if s.device in known], tally)
            _add_counts(session, tally)
        self.counts.update(tally)


def _known_devices(session: Session, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    return set(session.scalars(select(Device.id).where(Device.id.in_(ids))))


def _without_duplicates(session: Session, windows: list[tuple[TelemetryWindow, bytes]],
                        tally: Counter) -> list[tuple[TelemetryWindow, bytes]]:
    """Drops windows whose (device, seq) is stored already or repeats within the batch."""
    if not windows:
        return []
    keys = [(w.device, w.seq) for w, _ in windows]
    stored = set(session.execute(
        select(TelemetryRecord.device_id, TelemetryRecord.seq).where(
            tuple_(TelemetryRecord.device_id, TelemetryRecord.seq).in_(keys))
    ).all())
    fresh, seen = [], set(stored)
    for window, key in zip(windows, keys, strict=True):
        if key in seen:
            tally["duplicate"] += 1
            continue
        seen.add(key)
        fresh.append(window)
    return fresh


def _record(window: TelemetryWindow, raw: bytes) -> dict:
    """A row for the bulk insert; the payload is stored as it came (it was validated)."""
    return {
        "device_id": window.device, "fleet": window.fleet, "seq": window.seq, "model_name": window.model_name,
        "model_version": window.model_version, "window_start": window.start, "window_end": window.end,
        "requests": window.requests, "samples": window.samples, "errors": window.errors,
        "dropped_windows": window.dropped.windows, "payload": raw.decode(), "received_at": time.time(),
    }


def _touch(session: Session, windows: list[TelemetryWindow]) -> None:
    """Each device's last_seen, and the model it serves: that of its newest window (a window holds one
    model version, and the device closes the old version's window when an update swaps models)."""
    latest: dict[str, TelemetryWindow] = {}
    for window in windows:
        if window.device not in latest or window.end >= latest[window.device].end:
            latest[window.device] = window
    if latest:  # one executemany: ORM bulk UPDATE by primary key
        session.execute(update(Device), [
            {"id": device, "last_seen": w.end, "model_name": w.model_name, "model_version": w.model_version}
            for device, w in latest.items()
        ])


def _presence(session: Session, kind: str, device: str, payload: bytes) -> str:
    """Birth and death (last will) keep a device's online state and model version.

    Both carry their connection's stamp. A birth applies only if its connection is newer than the last
    presence message applied, a death if it is at least as new (a death ends its own connection), so
    the state is right whatever order the broker delivers retained births and deaths in.
    """
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError:
        return "bad_presence"
    stamp = data.get("connection")
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        stored = session.scalar(select(Device.presence_stamp).where(Device.id == device))
        if stored is not None and (stamp < stored or (kind == "birth" and stamp == stored)):
            return f"{kind}_stale"
    else:
        stamp = None
    values: dict = {"online": kind == "birth", "last_seen": time.time(), "presence_stamp": stamp}
    model = data.get("model")
    if kind == "birth" and isinstance(model, dict):
        values.update(model_name=str(model.get("name")), model_version=int(model.get("version", 0)))
        if data.get("agent_version"):
            values["agent_version"] = str(data["agent_version"])
    session.execute(update(Device).where(Device.id == device).values(**values))
    return kind


def _store_statuses(session: Session, statuses: list[tuple[Status, bytes]], tally: Counter) -> None:
    """Stores new (device, seq) statuses and applies each, in seq order, to its deployment's device row."""
    if not statuses:
        return
    keys = [(s.device, s.seq) for s, _ in statuses]
    seen = set(session.execute(select(DeviceStatus.device_id, DeviceStatus.seq)
                               .where(tuple_(DeviceStatus.device_id, DeviceStatus.seq).in_(keys))).all())
    fresh = []
    for (status, raw), key in zip(statuses, keys, strict=True):
        if key in seen:
            tally["status_duplicate"] += 1
            continue
        seen.add(key)
        fresh.append((status, raw))
    if not fresh:
        return
    stamp = time.time()
    session.execute(insert(DeviceStatus), [
        {"device_id": s.device, "fleet": s.fleet, "seq": s.seq, "deployment_id": s.deployment, "command_id": s.command,
         "state": s.state, "reason": s.reason, "at": s.at, "payload": raw.decode(), "received_at": stamp}
        for s, raw in fresh])
    for status, _ in sorted(fresh, key=lambda item: (item[0].device, item[0].seq)):
        tally[_apply_status(session, status, stamp)] += 1


def _apply_status(session: Session, status: Status, stamp: float) -> str:
    row = session.scalar(select(DeploymentDevice).where(DeploymentDevice.deployment_id == status.deployment,
                                                        DeploymentDevice.device_id == status.device))
    if row is None or status.command not in (row.command_id, row.rollback_command_id):
        return "status_unmatched"  # stored, but about no command of ours (an old or a foreign deployment)
    if row.status_seq is not None and status.seq <= row.status_seq:
        return "status_stale"  # a newer status of this device was applied already
    row.state, row.reason, row.status_seq, row.updated_at = status.state, status.reason, status.seq, stamp
    log.debug("ingest: %s is %s in deployment %s", status.device, status.state, status.deployment)
    return "status"


def _add_counts(session: Session, tally: Counter) -> None:
    for reason, count in tally.items():
        if not count:
            continue
        row = session.get(IngestCounter, reason)
        if row is None:
            session.add(IngestCounter(reason=reason, count=count))
        else:
            row.count += count
