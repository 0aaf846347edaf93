"""A deploy to a fleet larger than one ingest batch, on one real PostgreSQL and one real Mosquitto, with a
resend interval shorter than the old status path needed: every light device answers at once, so each
must get its install once (the light simulator counts every command it receives, re-sends included),
while a registered device that never connects is still sent the install again.

Before the fix the ingest applied statuses one SELECT and one UPDATE at a time (60-100 per second with the
deploy's traffic in the same process): a delivered install whose status still waited in the ingest was
sent again once the resend interval ran out (1.83 commands per device on a 10,000-device deploy)."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select

from edgefleet.cloud.db import DeploymentDevice, IngestCounter
from edgefleet.cloud.digits import load_splits
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.light_sim import LightFleet, record_windows
from tests.cloud.test_postgres import fresh_sessions
from tests.edge_runtime.ota_kit import make_variant
from tests.mosquitto import MOSQUITTO, MosquittoBroker

pytestmark = pytest.mark.skipif(not MOSQUITTO, reason="mosquitto missing: scripts/system-deps")
DEVICES = 3000
RESEND = 8.0  # seconds: 3,000 statuses at 60-100 per second took 30-50 s
WAIT = 240.0  # seconds the light devices may take to be active on a loaded 2-core machine


@pytest.fixture
def broker(tmp_path):
    broker = MosquittoBroker(tmp_path / "mosquitto").start()  # anonymous: the light fleet's connections
    yield broker
    broker.stop()


def test_a_large_deploy_sends_each_answering_device_one_install_and_resends_only_to_the_silent(
        tmp_path, postgres, broker, digits_bundle):
    sessions = fresh_sessions(postgres, "rollout_resends")
    url = postgres.url.rsplit("/", 1)[0] + "/rollout_resends"
    windows = record_windows(digits_bundle.root, [digits_bundle.public_key], load_splits().x_test, count=2)
    new = make_variant(digits_bundle.root, tmp_path / "v2", digits_bundle.private_key, version=2,
                       weight_noise=0.01)
    settings = load_settings(data_dir=tmp_path / "cloud", db_url=url, port=0, mqtt_url=broker.url,
                             trusted_keys=[digits_bundle.public_key], rollout_interval_seconds=0.2)
    fleet = LightFleet([broker.url], fleet="light", devices=DEVICES, windows=windows, rate=DEVICES / 60.0,
                       connections=4, run="r1")
    with CloudServer(settings) as cloud, httpx.Client(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.new_admin_token}"}, timeout=60) as api:
        for root in (digits_bundle.root, new):
            archive = Bundle.open(root).pack(tmp_path / f"{root.name}-{root.parent.name}.tar.gz")
            api.post("/api/v1/bundles", content=archive.read_bytes(),
                     headers={"Content-Type": "application/gzip"}).raise_for_status()
        for start in range(0, DEVICES, 1000):
            api.post("/api/v1/devices/bulk", json={"devices": [{"id": d, "fleet": "light"}
                                                               for d in fleet.ids[start:start + 1000]]}
                     ).raise_for_status()
        api.post("/api/v1/devices", json={"id": "silent-1", "fleet": "light"}).raise_for_status()  # never connects
        with fleet:
            deployment = api.post("/api/v1/deployments", json={
                "target": {"fleet": "light"}, "bundle": {"name": "digits-cnn", "version": 2},
                "strategy": {"kind": "all", "success_threshold": 1.0, "health_window_seconds": 1.0,
                             "wave_timeout_seconds": WAIT + 60, "resend_interval_seconds": RESEND,
                             "max_resends": 5}}).json()
            deadline = time.monotonic() + WAIT

            def row(device: str) -> DeploymentDevice:
                with sessions() as session:
                    return session.scalar(select(DeploymentDevice).where(
                        DeploymentDevice.deployment_id == deployment["id"], DeploymentDevice.device_id == device))

            while time.monotonic() < deadline:
                counts = api.get(f"/api/v1/deployments/{deployment['id']}").json()["counts"]
                if counts.get("active") == DEVICES and (row("silent-1").resends or 0) >= 1:
                    break
                time.sleep(1.0)
            answered = fleet.status()
    assert counts == {"active": DEVICES, "pending": 1}
    assert (answered["commands"], answered["repeated"]) == (DEVICES, 0)  # one install per answering device
    assert (row("silent-1").resends or 0) >= 1  # the device that never answered is sent it again
    with sessions() as session:
        statuses = dict(session.execute(select(IngestCounter.reason, IngestCounter.count)).all())
    assert statuses.get("status") == DEVICES and "status_stale" not in statuses and "status_unmatched" not in statuses
