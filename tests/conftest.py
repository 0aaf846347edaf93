"""Shared fixtures: one real digits CNN, trained and exported once per test session."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class DigitsBundle:
    root: Path  # the signed bundle directory (treat as read-only; copy it to tamper)
    public_key: Path  # the trusted public key
    private_key: Path


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> DigitsBundle:
    from edgefleet.cloud.digits import build_digits_bundle

    workdir = tmp_path_factory.mktemp("digits")
    root, public = build_digits_bundle(workdir, epochs=10)
    return DigitsBundle(root, public, public.with_suffix(".key"))


@pytest.fixture
def bundle_copy(digits_bundle: DigitsBundle, tmp_path: Path) -> Path:
    """A private copy of the digits bundle that a test may damage."""
    return Path(shutil.copytree(digits_bundle.root, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def digits_splits():
    from edgefleet.cloud.digits import load_splits

    return load_splits()


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A running Mosquitto that allows anonymous clients; stopped by PID at the end."""
    from tests.mosquitto import MosquittoBroker

    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path):
    """Makes brokers with options (password_file=, acl_file=); every one is stopped at the end."""
    from tests.mosquitto import MosquittoBroker

    brokers: list[MosquittoBroker] = []

    def make(**options) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"mosquitto-{len(brokers)}", **options)
        brokers.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL for the tests that check the cloud's tables work beyond SQLite."""
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
