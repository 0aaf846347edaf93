"""A deploy to a light fleet on one real PostgreSQL and one real Mosquitto, shared by the rollout tests that
count commands per device (test_rollout_resends, test_rollout_concurrency): the anonymous broker fixture,
a cloud with both digits bundles pushed and the fleet registered, and the status counters' check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import select

from edgefleet.cloud.db import IngestCounter
from edgefleet.cloud.digits import load_splits
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.light_sim import LightFleet, record_windows
from tests.cloud.test_postgres import fresh_sessions
from tests.edge_runtime.ota_kit import make_variant
from tests.mosquitto import MosquittoBroker


@pytest.fixture
def broker(tmp_path):
    broker = MosquittoBroker(tmp_path / "mosquitto").start()  # anonymous: the light fleet's connections
    yield broker
    broker.stop()


@contextmanager
def light_cloud(tmp_path, postgres, broker, digits_bundle, database: str, devices: int, rate: float,  # noqa: ANN001
                run: str) -> Iterator[tuple[httpx.Client, LightFleet, object]]:
    """(api client, light fleet not yet started, sessions): a cloud on database `database` with digits-cnn 1
    and a variant 2 pushed, and `devices` light devices registered in fleet "light"."""
    sessions = fresh_sessions(postgres, database)
    url = postgres.url.rsplit("/", 1)[0] + f"/{database}"
    windows = record_windows(digits_bundle.root, [digits_bundle.public_key], load_splits().x_test, count=2)
    new = make_variant(digits_bundle.root, tmp_path / "v2", digits_bundle.private_key, version=2,
                       weight_noise=0.01)
    settings = load_settings(data_dir=tmp_path / "cloud", db_url=url, port=0, mqtt_url=broker.url,
                             trusted_keys=[digits_bundle.public_key], rollout_interval_seconds=0.2)
    fleet = LightFleet([broker.url], fleet="light", devices=devices, windows=windows, rate=rate, connections=4,
                       run=run)
    with CloudServer(settings) as cloud, httpx.Client(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.new_admin_token}"}, timeout=60) as api:
        for root in (digits_bundle.root, new):
            archive = Bundle.open(root).pack(tmp_path / f"{root.name}-{root.parent.name}.tar.gz")
            api.post("/api/v1/bundles", content=archive.read_bytes(),
                     headers={"Content-Type": "application/gzip"}).raise_for_status()
        for start in range(0, devices, 1000):
            api.post("/api/v1/devices/bulk", json={"devices": [{"id": d, "fleet": "light"}
                                                               for d in fleet.ids[start:start + 1000]]}
                     ).raise_for_status()
        yield api, fleet, sessions


def assert_each_status_applied_once(sessions, devices: int) -> None:  # noqa: ANN001
    with sessions() as session:
        counts = dict(session.execute(select(IngestCounter.reason, IngestCounter.count)).all())
    assert counts.get("status") == devices and "status_stale" not in counts and "status_unmatched" not in counts
