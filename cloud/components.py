"""The background parts of the cloud service besides the HTTP API: the MQTT ingest, the drift monitor, the
label-free accuracy alert (performance monitor), the rollout engine and the label forwarder.

Each component has start() and stop(); the server starts them after the broker and stops them before
it. `build_components` is the one place that decides which run (those of `settings.role`, cloud/roles.py)
and with which credentials: the ingest and the rollout engine each log in as their own user
(`mqtt_auth.INGEST`, `mqtt_auth.ROLLOUTS`, username = client id), with the password derived from the cloud
secret: the one the embedded broker made at start, or `settings.mqtt_password` for an external broker
(Mosquitto; no secret: no credentials). An ingest worker (role `ingest`) logs in as
`edgefleet-ingest-<worker>` and subscribes through the shared subscription group `roles.SHARE_GROUP`; with
a `nats://` URL it pulls from the JetStream consumer the workers share instead (cloud/ingest_nats.py).
Monitor and rollout workers share their work through leases in the database (cloud/leases.py): device
shards and the fleet scopes, webhook delivery and retention for monitors, one deployment at a time for
rollout engines; on SQLite the one process holds them all.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.api.bundles import reference_profile
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.label_forwarder import LabelForwarder
from edgefleet.cloud.leases import FLEETS, Leases, ShardLeases, new_holder
from edgefleet.cloud.mqtt_auth import (
    INGEST,
    LABELS,
    ROLLOUTS,
    CloudClient,
    cloud_credentials,
    ingest_worker,
    rollouts_worker,
)
from edgefleet.cloud.nats_config import NATS_SCHEMES
from edgefleet.cloud.ops_monitor import OpsMonitor
from edgefleet.cloud.performance_monitor import PerformanceMonitor
from edgefleet.cloud.retention import Retention, RetentionSettings
from edgefleet.cloud.roles import SHARE_GROUP, runs
from edgefleet.cloud.rollout import RolloutEngine
from edgefleet.cloud.settings import CloudSettings
from edgefleet.cloud.webhooks import WebhookDispatcher

if TYPE_CHECKING:
    from edgefleet.cloud.broker import EmbeddedBroker

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def build_components(settings: CloudSettings, sessions: sessionmaker, broker: EmbeddedBroker | None = None,
                     public_url: Callable[[], str | None] | None = None) -> list[Component]:
    """`public_url` gives the API's base URL for devices' download links when the engine sends a command, or
    None while it is not known yet (CloudServer passes its bound address once it listens); default:
    settings.public_url or http://host:port."""
    if broker is not None:
        url, secret = broker.url, broker.cloud_secret
    else:
        url, secret = settings.broker_url, settings.mqtt_password
    role = settings.role
    parts: list[Component] = []
    if runs(role, "ingest"):
        parts.append(_ingest(settings, sessions, url, secret))
    if runs(role, "monitor"):
        parts += _monitors(settings, sessions)
    if runs(role, "rollouts"):
        engine, labels = _rollouts_clients(role, settings.worker)
        username, password = cloud_credentials(secret, engine[0])
        parts.append(RolloutEngine(sessions, settings, url, username=username, password=password,
                                   client_id=engine[1], public_url=public_url,
                                   leases=Leases(sessions, new_holder("rollouts"), settings.lease_seconds)))
        username, password = cloud_credentials(secret, labels[0])
        parts.append(LabelForwarder(sessions, url, username=username, password=password, client_id=labels[1],
                                    ca=settings.mqtt_ca,
                                    leases=Leases(sessions, new_holder("labels"), settings.lease_seconds)))
    return parts


def _rollouts_clients(role: str, worker: str | None) -> tuple[tuple[CloudClient, str], tuple[CloudClient, str]]:
    """(client, client id) of the rollout engine and of the label forwarder: in `all`, the shared users; a
    named rollouts worker, its own users (a broker binding client ids to usernames keeps them apart); an
    unnamed one, the shared users under random client ids, or the workers would take each other's connection."""
    if worker is not None:
        engine, labels = rollouts_worker(worker)
        return (engine, engine.username), (labels, labels.username)
    if role == "all":
        return (ROLLOUTS, ROLLOUTS.username), (LABELS, LABELS.username)
    tag = secrets.token_hex(4)
    return (ROLLOUTS, f"{ROLLOUTS.username}-{tag}"), (LABELS, f"{LABELS.username}-{tag}")


def _ingest(settings: CloudSettings, sessions: sessionmaker, url: str, secret: str | None) -> Ingest:
    """The ingest of role `all` (its own persistent session, the whole stream), or an ingest worker: its
    session named after the worker, its share of the stream from the broker's shared subscription; on a
    NATS URL, a worker pulling from the JetStream consumer all workers share (cloud/ingest_nats.py)."""
    if url.startswith(NATS_SCHEMES):
        from edgefleet.cloud.ingest_nats import NatsIngest, StreamSettings

        username, password = cloud_credentials(secret, INGEST)  # nats_config lets this one user off MQTT
        stream = StreamSettings(settings.nats_replicas, settings.nats_max_bytes, settings.nats_max_age_seconds,
                                settings.nats_ack_wait_seconds)
        return NatsIngest(sessions, url, username=username, password=password,
                          worker=ingest_worker(settings.worker or "all").username,
                          max_bytes=settings.telemetry_max_bytes, stream=stream, ca=settings.mqtt_ca)
    client = INGEST if settings.worker is None else ingest_worker(settings.worker)
    username, password = cloud_credentials(secret, client)
    group = SHARE_GROUP if settings.role == "ingest" else None
    return Ingest(sessions, url, username=username, password=password, client_id=client.username,
                  max_bytes=settings.telemetry_max_bytes, share_group=group, ca=settings.mqtt_ca)


def _monitors(settings: CloudSettings, sessions: sessionmaker) -> list[Component]:
    """The leases of this monitor worker (first: held before the monitors run, given back after they stop),
    the drift, accuracy and operations monitors, the webhook dispatcher and retention."""
    drift = settings.drift_monitor_settings()
    shards = ShardLeases(Leases(sessions, new_holder("monitor"), settings.lease_seconds), "monitor",
                         singletons=(FLEETS, "webhooks", "retention"))

    def profile_for(name: str, version: int) -> dict | None:
        return reference_profile(sessions, settings, name, version)

    monitor = DriftMonitor(sessions, profile_for, drift.thresholds, lookback_seconds=drift.lookback_seconds,
                           interval_seconds=drift.interval_seconds, shards=shards)
    performance = PerformanceMonitor(sessions, profile_for, drop=settings.performance_drop, drift=drift,
                                     shards=shards)
    webhooks = WebhookDispatcher(sessions, retry_base=settings.webhook_retry_seconds,
                                 max_attempts=settings.webhook_max_attempts)
    retention = Retention(sessions, RetentionSettings(settings.retention_raw_days, settings.retention_hourly_days,
                                                      settings.retention_evaluations_days,
                                                      settings.retention_interval_seconds,
                                                      captures_days=settings.capture_retention_days))
    webhooks.lease, retention.lease = (lambda: shards.holds("webhooks")), (lambda: shards.holds("retention"))
    return [  # issue 14: latency, errors, health and data quality; webhooks; retention
        shards, monitor, performance,
        OpsMonitor(sessions, profile_for, settings.ops_limits(),  # --ops-interval is its interval_seconds
                   shards=shards),
        webhooks, retention,
    ]
