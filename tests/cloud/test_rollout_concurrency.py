"""A wave and the ingest on one real PostgreSQL at once: the rollout engine stamps its commands sent while the
ingest applies the devices' statuses (and their telemetry) to the same deployment rows. Both go through the
rows in device id order, so neither is ever picked as a deadlock victim; and a device that answers in time
gets its command once (the light simulator counts every command it receives, re-sends included).

Before the fix the engine stamped a whole wave's `sent_at` in one transaction in rank order while the ingest
updated the same rows in device order: PostgreSQL broke the cycle by killing one, a killed stamp left the
wave unsent in the database, and the next tick published it again (4 commands per device on 10,000)."""

from __future__ import annotations

import logging
import time

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
from tests.mosquitto import MOSQUITTO, MosquittoBroker

pytestmark = pytest.mark.skipif(not MOSQUITTO, reason="mosquitto missing: scripts/system-deps")
DEVICES = 600
WAIT = 240.0  # seconds the deployment may take on a loaded 2-core machine before the test fails


@pytest.fixture
def broker(tmp_path):
    broker = MosquittoBroker(tmp_path / "mosquitto").start()  # anonymous: the light fleet's connections
    yield broker
    broker.stop()


def test_a_wave_and_the_ingest_on_postgres_never_deadlock_and_send_each_command_once(
        tmp_path, postgres, broker, digits_bundle, caplog):
    caplog.set_level(logging.WARNING)
    sessions = fresh_sessions(postgres, "rollout_concurrency")
    url = postgres.url.rsplit("/", 1)[0] + "/rollout_concurrency"
    windows = record_windows(digits_bundle.root, [digits_bundle.public_key], load_splits().x_test, count=2)
    new = make_variant(digits_bundle.root, tmp_path / "v2", digits_bundle.private_key, version=2,
                       weight_noise=0.01)
    settings = load_settings(data_dir=tmp_path / "cloud", db_url=url, port=0, mqtt_url=broker.url,
                             trusted_keys=[digits_bundle.public_key], rollout_interval_seconds=0.2)
    fleet = LightFleet([broker.url], fleet="light", devices=DEVICES, windows=windows, rate=300.0, connections=4,
                       run="t1")
    with CloudServer(settings) as cloud, httpx.Client(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.new_admin_token}"}, timeout=60) as api:
        for root in (digits_bundle.root, new):
            archive = Bundle.open(root).pack(tmp_path / f"{root.name}-{root.parent.name}.tar.gz")
            api.post("/api/v1/bundles", content=archive.read_bytes(),
                     headers={"Content-Type": "application/gzip"}).raise_for_status()
        api.post("/api/v1/devices/bulk", json={"devices": [{"id": d, "fleet": "light"} for d in fleet.ids]}
                 ).raise_for_status()
        with fleet:
            time.sleep(1.0)  # telemetry flowing: the ingest writes device rows all along
            deployment = api.post("/api/v1/deployments", json={
                "target": {"fleet": "light"}, "bundle": {"name": "digits-cnn", "version": 2},
                "strategy": {"kind": "all", "success_threshold": 1.0, "health_window_seconds": 1.0,
                             "wave_timeout_seconds": WAIT}}).json()
            deadline = time.monotonic() + WAIT + 10
            while deployment["state"] not in ("completed", "aborted") and time.monotonic() < deadline:
                time.sleep(0.5)
                deployment = api.get(f"/api/v1/deployments/{deployment['id']}").json()
            answered = fleet.status()
    deadlocks = [r.getMessage() for r in caplog.records
                 if "deadlock" in (r.getMessage() + repr(r.exc_info[1] if r.exc_info else "")).lower()]
    assert deadlocks == []
    assert (deployment["state"], deployment["counts"]) == ("completed", {"active": DEVICES})
    assert (answered["commands"], answered["repeated"]) == (DEVICES, 0)  # one command per device, no re-send
    with sessions() as session:
        counts = dict(session.execute(select(IngestCounter.reason, IngestCounter.count)).all())
    assert counts.get("status") == DEVICES and "status_stale" not in counts and "status_unmatched" not in counts
