"""MQTT ingest: device messages into the database, validated, deduplicated, batched, acknowledged last.

The paho callback only enqueues. A writer thread takes what has arrived (up to `batch_size`, waiting at
most `flush_seconds`), validates each message, writes the batch in one transaction (cloud/ingest_store.py),
and only then sends the PUBACKs (paho's manual_ack). So a telemetry window the broker considers delivered
is always on disk; if the cloud dies first, the broker redelivers it (persistent session), and the
(device, seq) filter drops the copy.

Every message is either stored or counted by reason (table ingest_counters), and acknowledged either way;
nothing a device sends can stall a batch or the connection:
- Validation runs per message, with bounded parsing (core/bounded_json: size, depth, int64, finite
  numbers) and values checked against the columns. A refusal is counted by its reason code
  (docs/mqtt-payloads.md); an exception the validators did not foresee is counted as `invalid`.
- If the batch's transaction fails anyway, the batch is retried in halves until the message that fails
  is alone; it is counted as `store_error` and acknowledged, the rest are stored.
- Only when the database itself does not answer (`SELECT 1` fails too) do messages stay unacknowledged;
  the writer keeps them and retries with backoff (0.5 s doubling to 10 s) until it answers again. An
  OperationalError (a lock, a dropped connection) counts as not answering for TRANSIENT_ATTEMPTS tries
  of the same batch; if it persists while `SELECT 1` works, the batch is halved as above.

Scaling out (role `ingest`, cloud/roles.py): with `share_group` set, the ingest subscribes to
`$share/<group>/<filter>`, and the broker hands each message to one member of the group (MQTT shared
subscriptions; Mosquitto serves them to 3.1.1 clients). Each worker keeps its own persistent session
(client id `edgefleet-ingest-<worker>`), so what the broker sent a worker that died before its PUBACKs is
redelivered when that worker's session reconnects; the broker may also hand a copy to another member, and
the (device, seq) filter drops whichever commits second. Nothing else changes: acknowledge after commit.
Mosquitto keeps routing a share to a member whose persistent session is offline (queued for it), so: a
worker that stops gracefully first leaves the group (UNSUBSCRIBE) and stores what is still on its way until
the stream goes quiet, then its share goes to the others; a worker killed with -9 must come back under the
same name (a supervisor's restart), and then stores what waited for it.

OTA status messages (`core.ota`) are stored once per (device, seq) as DeviceStatus rows and move the
device's DeploymentDevice row (matched on deployment, device and one of its two command ids) to the
reported state, unless a status with a higher seq was applied already; the rollout engine reads these.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.ingest_store import Checked, store
from edgefleet.cloud.mqtt_client import broker_address, new_client, send_pubacks
from edgefleet.core.ota import OtaError, Status, parse_status
from edgefleet.core.presence import Presence, PresenceError, parse_presence
from edgefleet.core.telemetry import MAX_INT, MAX_PAYLOAD_BYTES, TelemetryError, TelemetryWindow, parse_telemetry
from edgefleet.core.topics import TopicError, parse, subscription

log = logging.getLogger(__name__)

SUBSCRIBED_KINDS = ("telemetry", "presence", "status", "birth", "death")
RETRY_MIN, RETRY_MAX = 0.5, 10.0  # seconds between attempts while the database does not answer
TRANSIENT_ATTEMPTS = 5  # tries of one batch that an OperationalError alone may cost before it is halved
STATUS_ID_CHARS = 64  # device_status.deployment_id and command_id are String(64)
QUIET_SECONDS = 0.5  # leaving a share group: the stream is drained once nothing arrived for this long


class DatabaseUnavailable(Exception):
    """The database does not answer at all: the batch stays unacknowledged and is retried."""


class Received(NamedTuple):  # a tuple: made on paho's network thread for every message, at C speed
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
        share_group: str | None = None,
        ca: Path | None = None,  # for mqtts://: a private CA's PEM (None: the system's store)
    ) -> None:
        self.sessions = sessions
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.filters = [f"$share/{share_group}/{subscription(kind)}" if share_group else subscription(kind)
                        for kind in SUBSCRIBED_KINDS]
        # SimpleQueue: its put, on paho's network thread for every message, is one C call (Queue.put took
        # a lock and a condition in Python, a tenth of that thread's time at 1,000 msg/s).
        self._queue: queue.SimpleQueue[Received | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._share_group = share_group
        self._left = threading.Event()  # the broker confirmed the UNSUBSCRIBE from the share group
        self._last_message = time.monotonic()
        self._writer: threading.Thread | None = None
        self.connected = threading.Event()
        self.counts: Counter[str] = Counter()  # this process's tallies; the table holds the totals
        self._client = self._new_client(mqtt_url, client_id, username, password, ca)

    def _new_client(self, mqtt_url: str, client_id: str, username: str | None, password: str | None,  # noqa: ANN202
                    ca: Path | None):
        """The connection messages come from; `_handle` calls its `ack(mid, qos)` after the commit (paho
        here; cloud/ingest_nats.py's source overrides this and start/stop)."""
        self.host, self.port = broker_address(mqtt_url)
        client = new_client(client_id, username, password, clean_session=False, manual_ack=True,
                            mqtt_url=mqtt_url, ca=ca)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_unsubscribe = lambda *_args: self._left.set()
        return client

    # network thread: enqueue only ----------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho
        if reason_code.is_failure:
            log.error("ingest: broker refused the connection: %s", reason_code)
            return
        client.subscribe([(name, 1) for name in self.filters])
        self.connected.set()
        log.info("ingest: connected to %s:%s", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("ingest: disconnected (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001 - paho
        try:
            name = message.topic
        except UnicodeDecodeError:  # a broker that passes a non-UTF-8 topic on: counted as bad_topic
            name = ""
        self._last_message = time.monotonic()
        self._queue.put(Received(name, message.payload, message.mid, message.qos))

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops after the batch in hand: what it stored is acknowledged before the connection closes (a
        disconnect first lost those PUBACKs, and the broker redelivered stored windows as duplicates). In a
        share group, it first leaves the group and takes in what is still on its way (see the module doc)."""
        if self._share_group and self.connected.is_set():
            self._leave_group(timeout)
        self._stopping.set()
        self._queue.put(None)
        if self._writer:
            self._writer.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def _leave_group(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._client.unsubscribe(self.filters)
        if not self._left.wait(timeout):
            log.warning("ingest: the broker did not confirm leaving the share group; stopping anyway")
            return
        while time.monotonic() - self._last_message < QUIET_SECONDS and time.monotonic() < deadline:
            time.sleep(0.05)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    # writer thread -------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        retry: list[Received] = []
        attempt, delay = 0, RETRY_MIN
        while True:
            batch = retry or self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            retry = self._handle(batch, attempt)
            if not retry:
                attempt, delay = 0, RETRY_MIN
                continue
            if self._stopping.wait(delay):
                return  # unacknowledged: the broker redelivers them to the next ingest
            attempt, delay = attempt + 1, min(delay * 2, RETRY_MAX)

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

    def _handle(self, batch: list[Received], attempt: int = 0) -> list[Received]:
        """Validates, stores and acknowledges `batch`; returns what could not be stored (database down).
        `attempt` counts the earlier tries of this batch."""
        checked = [self._check(item) for item in batch]
        done: list[int] = []
        try:
            self._store(list(range(len(batch))), checked, done, transient=attempt < TRANSIENT_ATTEMPTS)
        except DatabaseUnavailable as err:
            log.error("ingest: the database does not answer (%s); %d message(s) stay unacknowledged and are "
                      "retried", err.__cause__, len(batch) - len(done))
        self._acknowledge([batch[index] for index in done])
        stored = set(done)
        return [item for index, item in enumerate(batch) if index not in stored]

    def _acknowledge(self, items: list[Received]) -> None:
        """PUBACKs of the stored QoS 1 messages in one write (mqtt_client.send_pubacks); others one by one."""
        send_pubacks(self._client, [item.mid for item in items if item.qos == 1])
        for item in items:
            if item.qos > 1:
                self._client.ack(item.mid, item.qos)

    def _check(self, item: Received) -> Checked:
        try:
            return check(item.topic, item.payload, self.max_bytes)
        except Exception as err:  # noqa: BLE001 - a validator's blind spot costs one message, never the ingest
            log.debug("ingest: refused a message on %s: unexpected %r", item.topic[:200], err)
            return Checked("", item.payload, None, "invalid")

    def _store(self, indexes: list[int], checked: list[Checked], done: list[int], transient: bool = False) -> None:
        """Commits the messages at `indexes` in one transaction; if that fails on a database that answers,
        commits each half on its own, so a message the database refuses ends alone, counted as store_error.
        Appends what was committed to `done`; raises DatabaseUnavailable when the database does not answer
        (or, while `transient`, raises an OperationalError)."""
        try:
            self._commit([checked[i] for i in indexes])
        except Exception as err:  # noqa: BLE001 - any failure: find the message that causes it
            if (transient and isinstance(err, OperationalError)) or not self._database_answers():
                raise DatabaseUnavailable(f"{type(err).__name__}: {str(err)[:200]}") from err
            if len(indexes) > 1:
                half = len(indexes) // 2
                self._store(indexes[:half], checked, done, transient)
                self._store(indexes[half:], checked, done, transient)
                return
            message = checked[indexes[0]]
            log.warning("ingest: the database refused a %s from %s (%s: %s); counted as store_error",
                        type(message.message).__name__, message.device, type(err).__name__, str(err)[:200])
            try:
                self._commit([Checked(message.device, b"", None, "store_error")])
            except Exception as again:  # noqa: BLE001 - cannot even count: treat as an outage
                raise DatabaseUnavailable(f"{type(again).__name__}: {str(again)[:200]}") from again
        done.extend(indexes)

    def _commit(self, messages: list[Checked]) -> None:
        with self.sessions.begin() as session:
            tally = store(session, messages)
        self.counts.update(tally)

    def _database_answers(self) -> bool:
        try:
            with self.sessions() as session:
                session.execute(select(1))
        except Exception:  # noqa: BLE001 - whatever the driver raises, the answer is no
            return False
        return True


def check(topic_name: str, payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Checked:
    """Validates one device message against its topic: the parsed message to store, or the reason it is
    refused (a reason code of docs/mqtt-payloads.md). Refusals are logged at debug level, once each."""
    try:
        where = parse(topic_name)
    except TopicError:
        log.debug("ingest: refused a message on %r: not an edgefleet device topic", topic_name[:200])
        return Checked("", payload, None, "bad_topic")
    message: TelemetryWindow | Status | Presence
    try:
        if where.kind == "telemetry":
            message = parse_telemetry(payload, max_bytes=max_bytes)
        elif where.kind == "status":
            message = _checked_status(parse_status(payload))
        elif where.kind == "cmd":
            raise TopicError("a cmd topic is the cloud's, not a device's")
        else:
            message = parse_presence(payload, where.kind)
    except (TelemetryError, OtaError, PresenceError, TopicError) as err:
        reason = getattr(err, "reason", "bad_topic")
        prefix = {"status": "status_", "telemetry": ""}.get(where.kind, "presence_")
        log.debug("ingest: refused a %s message from %s/%s: %s", where.kind, where.fleet, where.device, err)
        return Checked(where.device, payload, None, reason if reason == "bad_topic" else prefix + reason)
    if message.fleet not in (where.fleet, None) or message.device not in (where.device, None):  # None: presence
        log.debug("ingest: refused a %s message on %s: it names %s/%s", where.kind, topic_name,
                  message.fleet, message.device)
        return Checked(where.device, payload, None, "topic_mismatch")
    return Checked(where.device, payload, message)


def _checked_status(status: Status) -> Status:
    """A status whose values fit the device_status and deployment_devices columns, or OtaError."""
    if status.seq > MAX_INT:
        raise OtaError("number_out_of_range", f"seq is {status.seq}, over the largest stored integer {MAX_INT}")
    for label, value in (("deployment", status.deployment), ("command", status.command)):
        if len(value) > STATUS_ID_CHARS or "\0" in value:
            raise OtaError("bad_field", f"{label} must be at most {STATUS_ID_CHARS} characters without NUL")
    if status.reason is not None and "\0" in status.reason:
        raise OtaError("bad_field", "reason must not hold NUL characters")
    return status
