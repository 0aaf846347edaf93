"""The background parts of the cloud service besides the HTTP API: the MQTT ingest, the drift monitor, the
label-free accuracy alert (performance monitor), the rollout engine and the label forwarder.

Each component has start() and stop(); the server starts them after the broker and stops them before
it. `build_components` is the one place that decides which run and with which credentials: the ingest and
the rollout engine each log in as their own user (`mqtt_auth.INGEST`, `mqtt_auth.ROLLOUTS`, username =
client id), with the password derived from the cloud secret: the one the embedded broker made at start, or
`settings.mqtt_password` for an external broker (Mosquitto; no secret: no credentials).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.api.bundles import reference_profile
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.label_forwarder import LabelForwarder
from edgefleet.cloud.mqtt_auth import INGEST, LABELS, ROLLOUTS, cloud_credentials
from edgefleet.cloud.ops_monitor import OpsMonitor
from edgefleet.cloud.performance_monitor import PerformanceMonitor
from edgefleet.cloud.retention import Retention, RetentionSettings
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
    username, password = cloud_credentials(secret, INGEST)
    ingest = Ingest(sessions, url, username=username, password=password, client_id=INGEST.username,
                    max_bytes=settings.telemetry_max_bytes)
    drift = settings.drift_monitor_settings()
    def profile_for(name: str, version: int) -> dict | None:
        return reference_profile(sessions, settings, name, version)

    monitor = DriftMonitor(sessions, profile_for, drift.thresholds, lookback_seconds=drift.lookback_seconds,
                           interval_seconds=drift.interval_seconds)
    performance = PerformanceMonitor(sessions, profile_for, drop=settings.performance_drop, drift=drift)
    operations = [  # issue 14: latency, errors, health and data quality; webhooks; retention
        OpsMonitor(sessions, lambda name, version: reference_profile(sessions, settings, name, version),
                   settings.ops_limits(), interval_seconds=settings.ops_interval_seconds),
        WebhookDispatcher(sessions, retry_base=settings.webhook_retry_seconds,
                          max_attempts=settings.webhook_max_attempts),
        Retention(sessions, RetentionSettings(settings.retention_raw_days, settings.retention_hourly_days,
                                              settings.retention_evaluations_days,
                                              settings.retention_interval_seconds,
                                              captures_days=settings.capture_retention_days)),
    ]
    username, password = cloud_credentials(secret, ROLLOUTS)
    rollouts = RolloutEngine(sessions, settings, url, username=username, password=password,
                             client_id=ROLLOUTS.username, public_url=public_url)
    username, password = cloud_credentials(secret, LABELS)
    labels = LabelForwarder(sessions, url, username=username, password=password, client_id=LABELS.username)
    return [ingest, monitor, performance, *operations, rollouts, labels]
