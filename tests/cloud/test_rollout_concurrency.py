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

import pytest

from tests.cloud.light_rollout_kit import (  # noqa: F401 - broker: a fixture, found by its name
    assert_each_status_applied_once,
    broker,
    light_cloud,
)
from tests.mosquitto import MOSQUITTO

pytestmark = pytest.mark.skipif(not MOSQUITTO, reason="mosquitto missing: scripts/system-deps")
DEVICES = 600
WAIT = 240.0  # seconds the deployment may take on a loaded 2-core machine before the test fails


def test_a_wave_and_the_ingest_on_postgres_never_deadlock_and_send_each_command_once(
        tmp_path, postgres, broker, digits_bundle, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    with light_cloud(tmp_path, postgres, broker, digits_bundle, "rollout_concurrency", DEVICES, 300.0, "t1") as (
            api, fleet, sessions):
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
    assert_each_status_applied_once(sessions, DEVICES)
