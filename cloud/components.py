"""The background parts of the cloud service besides the HTTP API: the MQTT ingest, the drift monitor and
the rollout engine.

Each component has start() and stop(); the server starts them after the broker and stops them before
it. `build_components` is the one place that decides which run and with which credentials: with the
embedded broker, the ingest and the rollout engine log in as the cloud's own user with the password the
broker generated at start; with an external broker (Mosquitto), with the credentials from the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.api.bundles import reference_profile
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.mqtt_auth import CLOUD_USERNAME
from edgefleet.cloud.rollout import RolloutEngine
from edgefleet.cloud.settings import CloudSettings

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
        url, username, password = broker.url, CLOUD_USERNAME, broker.cloud_password
    else:
        url, username, password = settings.broker_url, settings.mqtt_username, settings.mqtt_password
    ingest = Ingest(sessions, url, username=username, password=password, max_bytes=settings.telemetry_max_bytes)
    monitor = DriftMonitor(sessions, lambda name, version: reference_profile(sessions, settings, name, version),
                           lookback_seconds=settings.drift_lookback_seconds,
                           interval_seconds=settings.drift_interval_seconds)
    rollouts = RolloutEngine(sessions, settings, url, username=username, password=password, public_url=public_url)
    return [ingest, monitor, rollouts]
