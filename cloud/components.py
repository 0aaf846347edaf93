"""The background parts of the cloud service besides the HTTP API (MQTT ingest, drift monitor).

Each component has start() and stop(); the server starts them after the broker and stops them before
it. `build_components` is the one place that decides which run.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import sessionmaker


class Component(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def build_components(settings: object, sessions: sessionmaker) -> list[Component]:
    """The components the service runs. Filled in as ingest and the drift monitor land."""
    return []
