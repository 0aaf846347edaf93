"""Fixtures of the cloud API tests: a cloud configured through arguments only, on a real Mosquitto."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cloud.api_kit import Cloud, api_clouds


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDGEFLEET_* variable of the developer's shell reaches the cloud under test."""
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)


@pytest.fixture
def start_cloud(tmp_path: Path, mosquitto, digits_bundle) -> Iterator[Callable[..., Cloud]]:
    """Starts in-process clouds (options as keyword arguments); all are stopped at the end."""
    with api_clouds(tmp_path, mosquitto.url, digits_bundle.public_key) as start:
        yield start


@pytest.fixture
def cloud(start_cloud) -> Cloud:
    return start_cloud()
