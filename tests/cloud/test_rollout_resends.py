"""A deploy to a fleet larger than one ingest batch, on one real PostgreSQL and one real Mosquitto, with a
resend interval shorter than the old status path needed: every light device answers at once, so each
must get its install once (the light simulator counts every command it receives, re-sends included),
while a registered device that never connects is still sent the install again.

Before the fix the ingest applied statuses one SELECT and one UPDATE at a time (60-100 per second with the
deploy's traffic in the same process): a delivered install whose status still waited in the ingest was
sent again once the resend interval ran out (1.83 commands per device on a 10,000-device deploy)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from edgefleet.cloud.db import DeploymentDevice
from tests.cloud.light_rollout_kit import (  # noqa: F401 - broker: a fixture, found by its name
    assert_each_status_applied_once,
    broker,
    light_cloud,
)
from tests.mosquitto import MOSQUITTO

pytestmark = pytest.mark.skipif(not MOSQUITTO, reason="mosquitto missing: scripts/system-deps")
DEVICES = 3000
RESEND = 8.0  # seconds: 3,000 statuses at 60-100 per second took 30-50 s
WAIT = 240.0  # seconds the light devices may take to be active on a loaded 2-core machine


def test_a_large_deploy_sends_each_answering_device_one_install_and_resends_only_to_the_silent(
        tmp_path, postgres, broker, digits_bundle):  # noqa: F811
    with light_cloud(tmp_path, postgres, broker, digits_bundle, "rollout_resends", DEVICES, DEVICES / 60.0, "r1") as (
            api, fleet, sessions):
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
    assert_each_status_applied_once(sessions, DEVICES)
