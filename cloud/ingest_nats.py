"""The ingest's source on a NATS cluster: device messages read natively from JetStream, shared by all workers.

NATS 2.9's MQTT layer has no `$share` subscriptions, so on NATS the ingest scales out on NATS's own work
sharing instead (`cloud up --role ingest --worker NAME --mqtt-url nats://host:4222[,nats://...]`; on a
cluster `nats_config` wrote with TLS, `tls://host:4222[,...]` and `--mqtt-ca` for a private CA):

- a JetStream stream, `nats_config.INGEST_STREAM`, captures the subjects devices publish on over MQTT
  (`edgefleet/v1/<fleet>/<device>/<kind>` arrives as `edgefleet.v1.<fleet>.<device>.<kind>`; QoS 1
  publishes land there), with work-queue retention (a message leaves the stream once acknowledged), on
  min(3, nodes) replicas (nodes: the cluster's client URLs the server announces), file storage, no limit
  but the nodes' `max_file_store`. It captures from its creation on: start a worker before the devices;
- one durable pull consumer, `nats_config.INGEST_CONSUMER`, that every worker pulls from: JetStream hands
  each message to one worker at a time (a work queue), explicit acks, `ack_wait` seconds (default 30)
  before a message no one acknowledged goes to whichever worker pulls next, never given up on;
- each worker validates, stores and counts exactly as the MQTT ingest does (cloud/ingest.py, whose writer
  thread this reuses), and acknowledges a message only after the commit of its batch. A worker killed with
  -9 mid-batch loses nothing (its unacknowledged messages are redelivered after `ack_wait`) and stores
  nothing twice (the (device, seq) key drops the copy of what it had committed but not acknowledged).

The first worker to start creates the stream and the consumer; later ones find them and use them as they
are (an operator's changes, such as a shorter ack_wait, stay), except for what `StreamSettings` names
(`EDGEFLEET_NATS_REPLICAS`, `_MAX_BYTES`, `_MAX_AGE_SECONDS`, `_ACK_WAIT_SECONDS`): a worker started with
one of those set brings the stream or the consumer to it, and logs the change. Stream and consumer live in the cluster,
not in a worker: no worker's name matters for recovery, and a killed worker needs no restart for its
messages to be stored (unlike MQTT's `$share`, where its persistent session keeps them). All workers log
in as `edgefleet-ingest` on the NATS protocol, the one cloud user `nats_config` lets off MQTT, with only
the JetStream rights its stream and consumer need; the worker name is the connection name.

Threads: an asyncio loop in its own thread pulls (at most 2 x batch_size messages in hand) and sends the
acks; it only enqueues, as paho's callback does. A graceful stop stops pulling, stores and acknowledges what
is in hand, then closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.ingest import Ingest, Received
from edgefleet.cloud.nats_config import (
    INGEST_CONSUMER,
    INGEST_INBOX,
    INGEST_STREAM,
    NATS_SCHEMES,
    ingest_subjects,
)
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.telemetry import MAX_PAYLOAD_BYTES
from edgefleet.core.tls import client_context

log = logging.getLogger(__name__)
MAX_ACK_PENDING = 50_000  # consumer-wide (all workers): unacknowledged messages out at once
PULL_WAIT = 1.0  # seconds a pull waits on an empty stream
DEFAULT_ACK_WAIT = 30.0


@dataclass(frozen=True)
class StreamSettings:
    """What a worker sets on the shared stream and consumer; None: the default at creation (min(3, nodes)
    replicas, no byte or age limit but the nodes' `max_file_store`, 30 s ack_wait), and whatever the cluster
    has afterwards. A message older than `max_age_seconds` or beyond `max_bytes` is dropped by the stream
    (the oldest first) before any worker stores it: limits for a backlog no one will drain, not for normal
    running."""

    replicas: int | None = None
    max_bytes: int | None = None
    max_age_seconds: float | None = None
    ack_wait_seconds: float | None = None


def nats_servers(url: str) -> list[str]:
    """`nats://host:port[,...]` (or `tls://`, all with one scheme) as the list of servers to try."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers or not all(s.startswith(NATS_SCHEMES) for s in servers):
        raise EdgefleetError(f"NATS URL {url!r}: expected nats://host:port[,nats://host:port...] (tls:// for TLS)")
    if len({s.split("://")[0] for s in servers}) > 1:
        raise EdgefleetError(f"NATS URL {url!r}: mixes nats:// and tls://; a cluster speaks one or the other")
    return servers


class _Acks:
    """What `Ingest._handle` acknowledges through: `ack(mid, qos)` hands the message to the loop's thread."""

    def __init__(self, source: NatsIngest) -> None:
        self.source = source

    def ack(self, mid: int, qos: int) -> None:  # writer thread
        self.source._ack(mid)


class NatsIngest(Ingest):
    name = "ingest"

    def __init__(
        self,
        sessions: sessionmaker,
        nats_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        worker: str = "edgefleet-ingest",
        max_bytes: int = MAX_PAYLOAD_BYTES,
        batch_size: int = 1000,
        flush_seconds: float = 0.05,
        stream: StreamSettings = StreamSettings(),
        ca: Path | None = None,
    ) -> None:
        self.servers = nats_servers(nats_url)
        self.stream = stream
        # tls:// (or a CA given): TLS checked against `ca`, else the system's store
        self._tls = client_context(ca) if ca is not None or self.servers[0].startswith("tls://") else None
        self._credentials = (username, password)
        self._pending: dict[int, Any] = {}  # mid -> nats Msg, until acknowledged
        self._mids = itertools.count(1)
        self._acks: deque[Any] = deque()
        self._ack_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pulling = threading.Event()
        self._nc: Any = None
        super().__init__(sessions, nats_url, username=username, password=password, client_id=worker,
                         max_bytes=max_bytes, batch_size=batch_size, flush_seconds=flush_seconds)

    def _new_client(self, url: str, client_id: str, username: str | None, password: str | None,
                    ca: object = None) -> _Acks:
        self.worker = client_id
        return _Acks(self)

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._loop = asyncio.new_event_loop()
        self._pulling.set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ingest-nats", daemon=True)
        self._thread.start()
        self._puller = asyncio.run_coroutine_threadsafe(self._pull(), self._loop)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops pulling, stores and acknowledges what is in hand (the writer's last batch), then closes."""
        self._pulling.clear()
        if self._loop is None:
            return
        if not self.connected.is_set():  # still connecting (nats-py retries a first connect forever): nothing in
            self._puller.cancel()  # hand to store, so the attempt is cancelled instead of waited for
        try:
            self._puller.result(timeout)
        except concurrent.futures.CancelledError:
            pass
        except Exception as err:  # noqa: BLE001 - a pull that failed or hung: close anyway
            log.warning("ingest: the NATS pull did not end cleanly: %r", err)
        self._queue.put(None)
        if self._writer:
            self._writer.join(timeout)
        self._stopping.set()
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout)
        except Exception as err:  # noqa: BLE001
            log.warning("ingest: closing the NATS connection: %r", err)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout)
        self._loop.close()

    async def _close(self) -> None:
        await self._send_acks()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.flush(timeout=2)  # the last acks out (no drain: a pull subscription's unread
            finally:  # messages would hold it; they are unacknowledged and go to another worker anyway)
                await self._nc.close()

    # loop thread ---------------------------------------------------------------------------------------
    async def _connect(self) -> Any:
        import nats  # nats-py: the cloud extra; imported only where a NATS URL is given

        username, password = self._credentials

        async def error(err: Exception) -> None:
            log.warning("ingest: NATS: %r", err)

        async def disconnected() -> None:
            self.connected.clear()
            log.warning("ingest: disconnected from NATS; reconnecting")

        async def reconnected() -> None:
            self.connected.set()
            log.info("ingest: reconnected to NATS at %s", self._nc.connected_url.netloc)

        return await nats.connect(servers=self.servers, user=username, password=password, name=self.worker,
                                  tls=self._tls, inbox_prefix=INGEST_INBOX, max_reconnect_attempts=-1,
                                  reconnect_time_wait=0.5,
                                  error_cb=error, disconnected_cb=disconnected, reconnected_cb=reconnected)

    async def _prepare(self, js: Any) -> None:
        """The stream and the shared durable consumer, each created if missing, else used as it is (an operator
        may have tuned them, e.g. `nats consumer edit` of ack_wait) but for what `self.stream` sets."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        wanted = self.stream
        limits = {"num_replicas": wanted.replicas, "max_bytes": wanted.max_bytes, "max_age": wanted.max_age_seconds}
        limits = {k: v for k, v in limits.items() if v is not None}
        try:
            config = (await js.stream_info(INGEST_STREAM)).config
        except NotFoundError:
            nodes = len(self._nc._server_info.get("connect_urls") or []) or 1
            config = StreamConfig(name=INGEST_STREAM, subjects=ingest_subjects(), num_replicas=min(3, nodes),
                                  retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE)
            for key, value in limits.items():
                setattr(config, key, value)
            log.info("ingest: creating JetStream stream %s on %d replica(s)", INGEST_STREAM, config.num_replicas)
            await js.add_stream(config)
        else:
            changed = {k: v for k, v in limits.items() if getattr(config, k) != v}
            if changed:
                log.info("ingest: stream %s: setting %s", INGEST_STREAM, changed)
                for key, value in changed.items():
                    setattr(config, key, value)
                await js.update_stream(config)
        ack_wait = wanted.ack_wait_seconds
        try:
            consumer = (await js.consumer_info(INGEST_STREAM, INGEST_CONSUMER)).config
        except NotFoundError:
            ack_wait = DEFAULT_ACK_WAIT if ack_wait is None else ack_wait
            log.info("ingest: creating the durable consumer %s (ack_wait %.1f s)", INGEST_CONSUMER, ack_wait)
            await js.add_consumer(INGEST_STREAM, ConsumerConfig(
                durable_name=INGEST_CONSUMER, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=ack_wait, max_deliver=-1, max_ack_pending=MAX_ACK_PENDING))
        else:
            if ack_wait is not None and consumer.ack_wait != ack_wait:
                log.info("ingest: consumer %s: ack_wait %.1f -> %.1f s", INGEST_CONSUMER, consumer.ack_wait, ack_wait)
                consumer.ack_wait = ack_wait
                await js.add_consumer(INGEST_STREAM, consumer)  # the same durable name: an update

    async def _pull(self) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        while self._pulling.is_set():  # until the cluster answers: a worker may start before its nodes
            try:
                self._nc = await self._connect()
                js = self._nc.jetstream()
                await self._prepare(js)
                subscription = await js.pull_subscribe_bind(INGEST_CONSUMER, INGEST_STREAM)
                break
            except Exception as err:  # noqa: BLE001 - not reachable, not ready, no JetStream leader yet
                log.warning("ingest: NATS stream or consumer not ready (%r); retrying", err)
                if self._nc is not None:
                    await self._nc.close()
                    self._nc = None
                await asyncio.sleep(1.0)
        else:
            return
        self.connected.set()
        log.info("ingest: worker %s pulls %s/%s from %s", self.worker, INGEST_STREAM, INGEST_CONSUMER,
                 self._nc.connected_url.netloc)
        while self._pulling.is_set():
            room = 2 * self.batch_size - len(self._pending)
            if room <= 0:
                await asyncio.sleep(0.01)
                continue
            try:
                messages = await subscription.fetch(min(room, self.batch_size), timeout=PULL_WAIT)
            except NatsTimeout:
                continue
            except Exception as err:  # noqa: BLE001 - disconnected; nats-py reconnects by itself
                log.debug("ingest: pull failed: %r", err)
                await asyncio.sleep(0.2)
                continue
            for message in messages:
                mid = next(self._mids)
                self._pending[mid] = message
                # The ids cannot hold a '.' on NATS (nats_config refuses them), so '.' -> '/' gives the topic.
                self._queue.put(Received(message.subject.replace(".", "/"), message.data, mid, 1))

    def _ack(self, mid: int) -> None:  # writer thread
        message = self._pending.pop(mid, None)
        if message is None:
            return
        self._acks.append(message)
        if not self._ack_scheduled:
            self._ack_scheduled = True
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._send_acks()))

    async def _send_acks(self) -> None:
        self._ack_scheduled = False
        while self._acks:
            message = self._acks.popleft()
            try:
                await message.ack()
            except Exception as err:  # noqa: BLE001 - not acknowledged: redelivered, and dropped as a duplicate
                log.debug("ingest: ack failed: %r", err)
