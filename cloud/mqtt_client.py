"""The cloud's own MQTT connections (the ingest, the rollout engine): address and client set up once.

Callbacks stay with each user; this only parses the broker URL and makes a paho client with the
project's settings (MQTT 3.1.1, callback API v2, backoff from 0.5 s to 30 s, credentials if given).
Each connection's client id is its username (`mqtt_auth.CLOUD_CLIENTS`; `components.build_components`
passes both): the brokers refuse or replace any other, so two connections must never share a user.
"""

from __future__ import annotations

import struct
from pathlib import Path
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.tls import client_context


def broker_address(mqtt_url: str) -> tuple[str, int]:
    """mqtt://host[:1883] or mqtts://host[:8883] (TLS) -> (host, port)."""
    url = urlparse(mqtt_url)
    if url.scheme not in ("mqtt", "tcp", "mqtts") or not url.hostname:
        raise EdgefleetError(f"MQTT URL {mqtt_url!r}: expected mqtt://host:port or mqtts://host:port")
    return url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883)


def new_client(client_id: str, username: str | None, password: str | None, *, clean_session: bool | None = None,
               manual_ack: bool = False, mqtt_url: str = "", ca: Path | None = None) -> mqtt.Client:
    """mqtt_url's scheme decides TLS: mqtts:// verifies the broker against the system's CA store or `ca`."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                         protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    if urlparse(mqtt_url).scheme == "mqtts":
        client.tls_set_context(client_context(ca))
    if username:
        client.username_pw_set(username, password)
    client.reconnect_delay_set(0.5, 30)
    return client


_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 PUBACK: type 0x40, remaining length 2, the packet id


def send_pubacks(client: mqtt.Client, mids: list[int]) -> None:
    """Acknowledges the QoS 1 messages `mids` (manual_ack) in one socket write. paho's `ack` queues each
    PUBACK as a packet of its own, wakes its loop through a socket pair per packet and sends each with a
    system call: 2,000 system calls per batch of 1,000, and as many small reads for the broker. One queued
    packet holding all the PUBACKs is the same bytes on the wire (paho resumes a partial send of it); a
    client without paho's queue falls back to `ack` one by one."""
    queue = getattr(client, "_packet_queue", None)
    if not mids:
        return
    if queue is not None and isinstance(client, mqtt.Client):
        try:
            queue(mqtt.PUBACK, b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids]), 0, 1)
            return
        except TypeError:  # a paho whose private queue takes other arguments: nothing was queued
            pass
    for mid in mids:
        client.ack(mid, 1)
