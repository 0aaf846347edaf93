"""The embedded MQTT broker: amqtt in-process, on its own event loop in a daemon thread.

It speaks MQTT 3.1.1 over TCP on `settings.mqtt_host:settings.mqtt_port` and enforces the policy of
`edgefleet.cloud.mqtt_auth` through two amqtt plugins, configured in the broker's `plugins` section:

- `EdgefleetAuthPlugin` (an amqtt auth plugin): no anonymous clients; a device logs in with its id and
  the password whose hash is `Device.password_hash`; each cloud client (`CLOUD_CLIENTS`) logs in as its own
  user with the password derived from `EmbeddedBroker.cloud_secret`, made fresh at every start and held
  only in memory. Every client's MQTT client id must be its username, the cloud's included.
- `EdgefleetTopicPlugin` (an amqtt topic-checking plugin): `may_publish` for PUBLISH, `may_subscribe`
  for SUBSCRIBE and for RECEIVE (amqtt asks again before it forwards each message to each client).

amqtt 0.12 leaves gaps that a plugin cannot close; `_GuardedBroker` closes them (see its docstring).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import errno
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.db import Device
from edgefleet.cloud.mqtt_auth import (
    CLOUD_CLIENTS,
    client_id_allowed,
    cloud_password,
    is_reserved_id,
    may_publish,
    may_subscribe,
    new_cloud_secret,
    verify_password,
)
from edgefleet.core.errors import EdgefleetError

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CACHE_SECONDS = 5.0  # how long a topic check may use a device's fleet without asking the database again
_MISSING = object()


class BrokerStartError(EdgefleetError):
    """The embedded broker could not start (port taken, bad address, timeout)."""


# --- who is who ---------------------------------------------------------------------------------
class DeviceDirectory:
    """Devices' (fleet, password_hash) from the database, each answer cached for `ttl` seconds.

    Logins always read the database; topic checks, which run for every message, use the cache."""

    def __init__(self, sessions: sessionmaker, ttl: float = CACHE_SECONDS) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, tuple[str, str] | None]] = {}

    def cached(self, device_id: str) -> Any:
        """The cached record (None for "no such device"), or `_MISSING` if unknown or stale."""
        with self._lock:
            hit = self._cache.get(device_id)
        if hit is None or hit[0] < time.monotonic():
            return _MISSING
        return hit[1]

    def lookup(self, device_id: str) -> tuple[str, str] | None:
        """Reads the database (blocking: call it off the event loop) and refreshes the cache."""
        with self._sessions() as db:
            row = db.get(Device, device_id)
            record = (row.fleet, row.password_hash) if row is not None and row.revoked_at is None else None
        with self._lock:
            if len(self._cache) > 100_000:  # unknown usernames must not grow it without bound
                self._cache.clear()
            self._cache[device_id] = (time.monotonic() + self._ttl, record)
        return record

    def forget(self, device_id: str) -> None:
        """Drops the cached answer, so the next topic check reads the database (after a revocation)."""
        with self._lock:
            self._cache.pop(device_id, None)


@dataclass(frozen=True)
class Authority:
    """What the plugins need: the device directory and this run's password of each cloud client."""

    devices: DeviceDirectory
    cloud_passwords: dict[str, str]

    def login(self, username: str | None, password: str | None, client_id: str | None,
              will_topic: str | None) -> tuple[bool, str]:
        """(accepted, reason). Blocking (database, PBKDF2): run it in a worker thread."""
        if not username:
            return False, "anonymous"
        if username in CLOUD_CLIENTS:
            expected = self.cloud_passwords[username].encode()
            if not hmac.compare_digest((password or "").encode("utf-8"), expected):
                return False, "wrong cloud password"
            if not client_id_allowed(username, client_id):
                return False, f"client id {client_id!r} is not the username"
            return True, ""
        if is_reserved_id(username):
            return False, "reserved name"
        record = self.devices.lookup(username)
        if record is None:
            return False, "unknown device"
        fleet, password_hash = record
        if not verify_password(password, password_hash):
            return False, "wrong password"
        if not client_id_allowed(username, client_id):
            return False, f"client id {client_id!r} is not the device id"
        if will_topic is not None and not may_publish(username, will_topic, fleet):
            return False, f"last-will topic {will_topic!r} is not the device's own"
        return True, ""

    async def fleet_of(self, username: str) -> str | None:
        record = self.devices.cached(username)
        if record is _MISSING:
            record = await asyncio.to_thread(self.devices.lookup, username)
        return record[0] if record else None


# --- amqtt plugins ----------------------------------------------------------------------------------
class EdgefleetAuthPlugin(BaseAuthPlugin):
    """Accepts the cloud user and registered devices with their password; refuses everyone else."""

    @dataclass
    class Config:
        authority: Any = None  # an Authority; amqtt hands the plugin's config section over as is

    async def authenticate(self, *, session: Session) -> bool:
        will_topic = session.will_topic if session.will_flag else None
        ok, reason = await asyncio.to_thread(
            self.config.authority.login, session.username, session.password, session.client_id, will_topic)
        if not ok:
            log.warning("MQTT login refused for user %r (client %r) from %s: %s", session.username,
                        session.client_id, session.remote_address, reason)
        return ok


class EdgefleetTopicPlugin(BaseTopicPlugin):
    """`may_publish` for PUBLISH; `may_subscribe` for SUBSCRIBE and for RECEIVE."""

    @dataclass
    class Config:
        authority: Any = None

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        if session is None or not session.username or not topic:
            return False
        username = session.username
        fleet = None if username in CLOUD_CLIENTS else await self.config.authority.fleet_of(username)
        if action == Action.PUBLISH:
            allowed = may_publish(username, topic, fleet)
        elif action in (Action.SUBSCRIBE, Action.RECEIVE):
            allowed = may_subscribe(username, topic, fleet)
        else:
            allowed = False
        if not allowed and action != Action.RECEIVE:
            log.warning("MQTT %s refused for %r on %r", action, username, topic)
        return allowed


# --- the broker -------------------------------------------------------------------------------------
_PREAUTHENTICATED: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "edgefleet_preauthenticated", default=None)


class _GuardedBroker(Broker):
    """amqtt's Broker with fixes that its plugin API cannot express (amqtt 0.12.1):

    1. amqtt finds the session of the connecting client id, deletes it (clean session) or overwrites its
       credentials (persistent session), and takes over a connected client, all *before* it asks the
       auth plugins. A client with a wrong password could so wipe the cloud's subscriptions. Here the
       CONNECT is authenticated first and a refused client never touches another session.
    2. On every connect amqtt sends the new client the retained messages of *every* filter any client
       holds, without a topic check. Here a client gets retained messages only for its own filters.
    3. amqtt sends the messages it queued for an offline persistent session with the RETAIN flag set;
       like Mosquitto (and MQTT-3.3.1-9), they go out as ordinary messages here.
    """

    async def close_client(self, client_id: str) -> bool:
        """Closes the connection of a connected client (a revoked device): its reader sees the end of the
        stream and amqtt disconnects it as it does any dropped client. False if it is not connected."""
        handler = self._sessions.get(client_id, (None, None))[1]
        if handler is None or handler.writer is None:
            return False
        await handler.writer.close()
        return True

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        except NoDataError as err:
            raise AMQTTError(err) from err
        if not await super()._authenticate(session, None):
            handler.attach(session, reader, writer)
            await handler.mqtt_connack_authorize(False)  # CONNACK 5, not authorised
            await writer.close()
            raise MQTTError(f"client {session.client_id!r} from {remote_address}:{remote_port} refused")

        # From here on as amqtt's own _initialize_client_session.
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "username", "password"):
                setattr(existing, name, getattr(session, name))
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        _PREAUTHENTICATED.set(session)  # same task as the _authenticate call that follows
        return handler, session

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        if _PREAUTHENTICATED.get() is session:
            return True
        return await super()._authenticate(session, listener)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        topic_filter, _ = subscription
        holders = self._subscriptions.get(topic_filter, ())
        held = [qos for holder, qos in holders if holder.client_id == session.client_id]
        if held:
            await super()._publish_retained_messages_for_subscription((topic_filter, held[0]), session)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        sends = []
        while handler is not None and not session.retained_messages.empty():
            queued = await session.retained_messages.get()
            sends.append(asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos,
                                                                    retain=False)))
        if sends:
            await asyncio.wait(sends)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class EmbeddedBroker:
    """The in-process broker. `start()` returns once it accepts connections; `stop()` shuts it down.

    `settings` needs `mqtt_host` and `mqtt_port` (0 picks a free port; `port` and `url` then tell which).
    """

    def __init__(self, settings: Any, sessions: sessionmaker, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self.host: str = settings.mqtt_host
        self.port: int = int(settings.mqtt_port)
        # This run's cloud secret; each cloud client's password is `cloud_password(cloud_secret, client)`.
        self.cloud_secret: str | None = None
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: _GuardedBroker | None = None
        self._directory: DeviceDirectory | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{_bind(self.host, self.port)}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    def start(self, timeout: float = START_TIMEOUT) -> EmbeddedBroker:
        if self._broker is not None:
            return self
        self.cloud_secret = new_cloud_secret()
        self._directory = DeviceDirectory(self._sessions, self._cache_seconds)
        authority = Authority(self._directory,
                              {name: cloud_password(self.cloud_secret, name) for name in CLOUD_CLIENTS})
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="edgefleet-mqtt-broker", daemon=True)
        thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(authority), loop)
        try:
            self._broker = future.result(timeout)
        except concurrent.futures.TimeoutError as err:
            future.cancel()
            _stop_loop(loop, thread)
            raise BrokerStartError(f"the embedded MQTT broker did not start on {self.host}:{self.port} "
                                   f"within {timeout} s") from err
        except Exception as err:
            _stop_loop(loop, thread)
            raise BrokerStartError(self._explain(err)) from err
        self._loop, self._thread = loop, thread
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) listening on %s", self.url)
        return self

    async def _start(self, authority: Authority) -> _GuardedBroker:
        plugin = {"authority": authority}
        config = BrokerConfig(
            listeners={"default": ListenerConfig(type=ListenerType.TCP, bind=_bind(self.host, self.port))},
            plugins={f"{__name__}.EdgefleetAuthPlugin": plugin, f"{__name__}.EdgefleetTopicPlugin": plugin},
        )
        broker = _GuardedBroker(config, loop=asyncio.get_running_loop(), plugin_namespace="edgefleet.mqtt_broker")
        await broker.start()
        server = broker._servers.get("default")
        sockets = getattr(getattr(server, "instance", None), "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return broker

    def _explain(self, err: BaseException) -> str:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                return (f"cannot start the embedded MQTT broker: {self.host}:{self.port} is already in use "
                        f"(another broker running?); choose another mqtt_port or stop that process")
            cause = cause.__cause__ or cause.__context__
        return f"cannot start the embedded MQTT broker on {self.host}:{self.port}: {err}"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        broker, loop, thread = self._broker, self._loop, self._thread
        self._broker = self._loop = self._thread = None
        if broker is None or loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout)
        except Exception:  # noqa: BLE001 - stopping must go on; the loop goes away below anyway
            log.warning("embedded MQTT broker did not shut down cleanly", exc_info=True)
        _stop_loop(loop, thread, timeout)
        self.cloud_secret = None
        log.info("embedded MQTT broker on %s stopped", self.url)

    def revoke(self, device_id: str, timeout: float = STOP_TIMEOUT) -> bool:
        """Applies a revocation at once (its row is marked already): the cached rights go, and an open
        connection is closed, so the device's reconnect meets the refusal. True if it was connected."""
        broker, loop, directory = self._broker, self._loop, self._directory
        if broker is None or loop is None or directory is None:
            return False
        directory.forget(device_id)
        return asyncio.run_coroutine_threadsafe(broker.close_client(device_id), loop).result(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float = STOP_TIMEOUT) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)
    if thread.is_alive():
        log.warning("embedded MQTT broker thread did not end within %s s", timeout)
