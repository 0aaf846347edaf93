"""The device's MQTT transport: a small class around paho that drains the outbox to the broker.

    transport = MqttTransport("mqtt://broker:1883", fleet="f1", device="d7", outbox=outbox, birth=make_birth)
    transport.start()
    outbox.append(topic, render); transport.wake()
    transport.flush(5.0); transport.stop()

MQTT 3.1.1, client id = device id, clean_session=False (the broker keeps the device's session and its
queued commands while it is away), keepalive 30 s, paho's loop_start() thread with exponential reconnect
backoff. Presence is one retained message on the device's `presence` topic (core/presence.py): the birth
when a connection comes up, the death (the last will, armed for each connection with its stamp) when it
ends; each replaces the other at the broker, so whoever subscribes later reads the latest, and only it.
stop() publishes the death itself, because the broker sends a will only when a connection ends without
DISCONNECT.

Threads. paho's network thread runs the callbacks, and they only signal: set a flag, put an event on a
queue. A sender thread owns everything else: on each new connection it subscribes to `cmd`, publishes the
retained birth message, then publishes the outbox oldest first (QoS 1) with at most `max_inflight`
unacknowledged messages; a PUBACK (on_publish, mid -> seq) is what lets it `outbox.ack(seq)`. Commands go
to `on_command` on a third thread. Nothing user-supplied runs on the network thread.

Resend rule: the outbox is the only source of retransmission. When a connection comes up, on_connect
drops whatever paho still holds from the previous one (`drop_out_messages`) and the sender starts again
from the oldest unacknowledged entry, so after an outage the broker sees every message again in seq order
(duplicates possible, the cloud dedupes on (device, seq); losses not). A publish happens only under a gate
that on_connect also takes, and only for the connection the sender has seen come up: a newer message can
never overtake a resend on a fresh connection (paho would otherwise write it before the CONNACK).
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.presence import death_payload, stamped
from edgefleet.core.tls import client_context
from edgefleet.core.topics import check_id, topic
from edgefleet.edge_runtime.outbox import Outbox

log = logging.getLogger(__name__)
DEFAULT_PORT = 1883
TLS_PORT = 8883  # mqtts://
KEEPALIVE_SECONDS = 30
POLL_SECONDS = 0.5  # the sender looks at the outbox at least this often, even without wake()
AUTH_REASONS = ("Not authorized", "Bad user name or password")


class TransportError(EdgefleetError):
    """The MQTT transport cannot be set up (bad URL or options) or was used out of order."""


def parse_url(url: str) -> tuple[str, int]:
    """`mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (TLS, default 8883) -> (host, port);
    anything else raises TransportError saying why."""
    if not isinstance(url, str) or not url:
        raise TransportError(f"MQTT URL must be a string like mqtt://host:1883, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise TransportError(f"MQTT URL {url!r}: the scheme must be mqtt:// or mqtts:// (got "
                             f"{parts.scheme or 'none'!r}; websockets are not supported)")
    if "@" in parts.netloc:
        raise TransportError(f"MQTT URL {url!r}: pass credentials as username=/password=, not in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TransportError(f"MQTT URL {url!r}: expected mqtt://host:port with no path, query or fragment")
    try:
        port = parts.port
    except ValueError as err:
        raise TransportError(f"MQTT URL {url!r}: the port must be a number from 1 to 65535") from err
    if not parts.hostname:
        raise TransportError(f"MQTT URL {url!r} names no host")
    if port == 0:
        raise TransportError(f"MQTT URL {url!r}: the port must be a number from 1 to 65535")
    return parts.hostname, port or (TLS_PORT if parts.scheme == "mqtts" else DEFAULT_PORT)


def uses_tls(url: str) -> bool:
    """Whether an MQTT URL (checked by parse_url) asks for TLS."""
    return urlsplit(url).scheme == "mqtts"


class MqttTransport:
    def __init__(self, url: str, *, fleet: str, device: str, outbox: Outbox, username: str | None = None,
                 password: str | None = None, birth: Callable[[], bytes] | None = None,
                 on_command: Callable[[bytes], None] | None = None, max_inflight: int = 20,
                 reconnect_min: float = 0.5, reconnect_max: float = 30.0, failover: Sequence[str] = (),
                 ca: Path | None = None) -> None:
        self.brokers = [parse_url(u) for u in (url, *failover)]  # tried in turn, each after a failed connect
        schemes = {uses_tls(u) for u in (url, *failover)}
        if len(schemes) > 1:  # one paho client keeps its TLS setting for every broker it fails over to
            raise TransportError(f"MQTT URLs {[url, *failover]}: mix mqtt:// and mqtts://; use one scheme")
        # mqtts://: verified against the system's CA store or `ca` (a private CA), hostname checked
        self.tls = client_context(ca) if schemes == {True} else None
        self._broker = 0
        self.host, self.port = self.brokers[0]
        if max_inflight < 1:
            raise TransportError(f"max_inflight must be at least 1, got {max_inflight}")
        if not 0 < reconnect_min <= reconnect_max:
            raise TransportError(f"reconnect delays must satisfy 0 < min <= max, got {reconnect_min}, "
                                 f"{reconnect_max}")
        self.fleet, self.device = check_id(fleet, "fleet"), check_id(device, "device")
        self.outbox = outbox
        self.username, self.password = username, password
        self.birth, self.on_command = birth, on_command
        self.max_inflight = max_inflight
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.last_error: str | None = None  # why the last connection attempt failed or ended; None when fine
        self.connects = 0  # successful connections so far
        # Every connection has a stamp, carried by its birth and by the last will armed for it, so the cloud
        # can order retained births and deaths that reach it in any order (after its own restart, say).
        self._stamp = time.time_ns()  # the will armed for the next connection
        self._connected_stamp = self._stamp  # the stamp of the current connection
        self._client: mqtt.Client | None = None
        self._up = False  # set by on_connect (under the gate), cleared by on_disconnect
        self._link = 0  # counts connections; a publish is only for the link the sender has seen come up
        self._gate = threading.Lock()
        self._events: queue.Queue[tuple] = queue.Queue()
        self._commands: queue.Queue[bytes | None] = queue.Queue()
        self._drained = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def topic(self, kind: str) -> str:
        return topic(self.fleet, self.device, kind)

    def _death(self, stamp: int) -> bytes:
        return death_payload(self.fleet, self.device, stamp)

    @property
    def connected(self) -> bool:
        return self._up

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> MqttTransport:
        """Connects in the background (retrying with backoff) and returns at once."""
        if self._client is not None:
            raise TransportError("this transport was already started; make a new one")
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device, clean_session=False,
                             protocol=mqtt.MQTTv311)
        # paho logs an expected broker outage as an ERROR ("failed to receive on socket"); its lines go to
        # DEBUG here, and this class logs what matters (refused, lost, unreachable) once per change.
        paho_log = logging.getLogger(f"{__name__}.paho")
        client.on_log = lambda client, userdata, level, message: paho_log.debug(message)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls is not None:
            client.tls_set_context(self.tls)
        client.will_set(self.topic("presence"), self._death(self._stamp), qos=1, retain=True)
        client.reconnect_delay_set(self.reconnect_min, self.reconnect_max)  # type: ignore[arg-type]
        client.max_inflight_messages_set(0)  # the sender bounds the window; paho must not queue behind it
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._threads = [threading.Thread(target=self._send_loop, name=f"mqtt-sender-{self.device}", daemon=True)]
        if self.on_command is not None:
            self._threads.append(threading.Thread(target=self._command_loop, name=f"mqtt-commands-{self.device}",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()
        client.connect_async(self.host, self.port, keepalive=KEEPALIVE_SECONDS)
        client.loop_start()
        log.info("MQTT: connecting to %s:%d as %s/%s", self.host, self.port, self.fleet, self.device)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops sending, publishes the death message if connected, disconnects. Unsent messages stay in
        the outbox for the next start."""
        client = self._client
        if client is None or self._stopping:
            return
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._events.put(("stop",))
        self._commands.put(None)
        self._threads[0].join(max(0.0, deadline - time.monotonic()))
        if self._up:
            with self._gate:
                info = client.publish(self.topic("presence"), self._death(self._connected_stamp), qos=1,
                                      retain=True)
            try:
                info.wait_for_publish(max(0.0, min(1.0, deadline - time.monotonic())))
            except (RuntimeError, ValueError):  # not queued: the connection went away meanwhile
                pass
        client.disconnect()
        client.loop_stop()
        self._up = False
        for thread in self._threads[1:]:
            thread.join(max(0.0, deadline - time.monotonic()))
        log.info("MQTT: stopped %s/%s", self.fleet, self.device)

    def wake(self) -> None:
        """Tells the sender that the outbox has something new (call after append)."""
        self._events.put(("wake",))

    def flush(self, timeout: float) -> bool:
        """Waits until the outbox is empty (everything acknowledged); False if it is not after `timeout`."""
        deadline = time.monotonic() + timeout
        self.wake()
        with self._drained:
            while len(self.outbox):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._drained.wait(min(remaining, 0.1))
        return True

    def __enter__(self) -> MqttTransport:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # paho callbacks: network thread, they only signal ----------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: mqtt.ReasonCode, properties: object) -> None:
        if reason_code.is_failure:
            hint = " (check the username and password)" if str(reason_code) in AUTH_REASONS else ""
            self._set_error(f"broker {self.host}:{self.port} refused the connection: {reason_code}{hint}",
                            logging.ERROR)
            return
        with self._gate:
            client.drop_out_messages()  # the outbox resends them, in order, after the birth message
            self._link += 1
            self._up = True
            link = self._link
            self._connected_stamp = self._stamp
        self.connects += 1
        self.last_error = None
        self._events.put(("up", link, flags.session_present))

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        cause = self._tls_failure() if self.tls is not None else None  # paho does not say why a connect failed
        self._set_error(f"cannot reach the broker at {self.host}:{self.port}{f' ({cause})' if cause else ''}; "
                        f"retrying" + (" on the next node" if len(self.brokers) > 1 else ""))
        self._next_broker(client)

    def _tls_failure(self) -> str | None:
        """Why a TLS handshake with the current broker fails (an untrusted certificate, a wrong host name), by
        trying one; None when it succeeds or the broker cannot be reached at all."""
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as raw, \
                    self.tls.wrap_socket(raw, server_hostname=self.host):  # type: ignore[union-attr]
                return None
        except ssl.SSLError as err:
            return f"TLS: {err.reason or err}: {getattr(err, 'verify_message', '') or err}"
        except OSError:
            return None

    def _next_broker(self, client: mqtt.Client) -> None:
        """Failover: the next attempt goes to the next URL of the list (round robin). A lost connection first
        retries its own node; only a connect that fails moves on, so a node that restarts keeps its devices
        and a dead one hands them to the others after one reconnect delay. connect_async is paho's public
        way to change the address between attempts; its loop thread makes the next attempt."""
        if len(self.brokers) < 2 or self._stopping:
            return
        self._broker = (self._broker + 1) % len(self.brokers)
        self.host, self.port = self.brokers[self._broker]
        client.connect_async(self.host, self.port, keepalive=KEEPALIVE_SECONDS)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason_code: mqtt.ReasonCode, properties: object) -> None:
        was_up, self._up = self._up, False  # no gate here: paho may hold its message lock while calling
        self._events.put(("down",))
        if not self._stopping:  # arm a fresh will before paho reconnects: the next connection's stamp
            self._stamp = max(time.time_ns(), self._stamp + 1)
            client.will_set(self.topic("presence"), self._death(self._stamp), qos=1, retain=True)
        if was_up and not self._stopping:
            self._set_error(f"lost the connection to {self.host}:{self.port}: {reason_code}; reconnecting")
        elif not self._stopping and not (self.last_error or "").startswith(f"broker {self.host}:{self.port} refused"):
            hint = "" if self.tls is not None else " (a TLS-only port needs mqtts://)"
            self._set_error(f"broker {self.host}:{self.port} closed the connection before accepting it: "
                            f"{reason_code}{hint}; retrying")

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: mqtt.ReasonCode,
                    properties: object) -> None:
        self._events.put(("acked", mid))  # paho holds its message lock here: never block

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self.on_command is not None:
            self._commands.put(bytes(message.payload))

    def _set_error(self, message: str, level: int = logging.WARNING) -> None:
        if message != self.last_error:  # once per change, not once per retry
            log.log(level, "MQTT: %s", message)
        self.last_error = message

    # sender thread -----------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        link: int | None = None  # the connection this thread has seen come up, None while down
        cursor = 0  # highest seq handed to paho on this link
        inflight: dict[int, int] = {}  # mid -> seq, unacknowledged on this link
        stopping = False
        while not stopping:
            acked: list[int] = []
            for event in self._next_events():
                if event[0] == "acked":
                    seq = inflight.pop(event[1], None)
                    if seq is not None:
                        acked.append(seq)
                elif event[0] == "up":
                    link, cursor = event[1], 0
                    inflight.clear()  # paho dropped them; they go again from the outbox
                    self._link_up(link, event[2])
                elif event[0] == "down":
                    link = None
                elif event[0] == "stop":
                    stopping = True
                    break
            try:
                self._ack(acked)
                if link is not None and not stopping:
                    cursor = self._fill(link, cursor, inflight)
            except Exception:  # noqa: BLE001 - the sender must not die; what is unsent stays in the outbox
                log.exception("MQTT: sending from the outbox failed; trying again shortly")
                time.sleep(POLL_SECONDS)

    def _next_events(self) -> list[tuple]:
        try:
            events = [self._events.get(timeout=POLL_SECONDS)]
        except queue.Empty:
            return []
        while len(events) < 1000:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        return events

    def _ack(self, seqs: list[int]) -> None:
        if seqs:
            self.outbox.ack_many(seqs)
            with self._drained:
                self._drained.notify_all()

    def _link_up(self, link: int, session_present: bool) -> None:
        if self.on_command is not None:
            self._gated(link, lambda client: client.subscribe(self.topic("cmd"), qos=1))
        if self.birth is not None:
            try:
                payload = stamped(self.birth(), self._connected_stamp)
            except Exception:  # noqa: BLE001 - a broken birth callable must not stop telemetry
                log.exception("MQTT: building the birth message failed; connected without one")
            else:
                self._gated(link, lambda client: client.publish(self.topic("presence"), payload, qos=1,
                                                                retain=True))
        log.info("MQTT: connected to %s:%d (session present: %s); %d message(s) to send", self.host, self.port,
                 session_present, len(self.outbox))

    def _fill(self, link: int, cursor: int, inflight: dict[int, int]) -> int:
        """Publishes outbox entries after `cursor` until max_inflight are unacknowledged; returns the new cursor."""
        while len(inflight) < self.max_inflight:
            entries = self.outbox.peek(self.max_inflight - len(inflight), after=cursor)
            if not entries:
                break
            for entry in entries:
                info = self._gated(link, lambda client, e=entry: client.publish(e.topic, e.payload, qos=1))
                if info is None or info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return cursor  # the link went away; its "down"/"up" events are on their way
                inflight[info.mid] = entry.seq
                cursor = entry.seq
        return cursor

    def _gated(self, link: int, action: Callable[[mqtt.Client], object]) -> object | None:
        """Runs a paho call only while `link` is still the live connection (see the module doc)."""
        with self._gate:
            if not self._up or self._link != link or not self._client.is_connected():
                return None
            return action(self._client)

    # command thread ----------------------------------------------------------------------------------
    def _command_loop(self) -> None:
        while True:
            payload = self._commands.get()
            if payload is None:
                return
            try:
                self.on_command(payload)
            except Exception:  # noqa: BLE001 - one bad command must not stop the next
                log.exception("MQTT: on_command failed for a %d-byte command", len(payload))

