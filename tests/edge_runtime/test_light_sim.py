"""The light simulator on a real anonymous Mosquitto with the real ingest: thousands of device ids over three
connections, windows recorded by the real digits model and replayed; an install command answered "active"
with the new version, which the device's later windows carry.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.digits import load_splits
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.mqtt_auth import hash_password
from edgefleet.core.ota import BundleRef, Command, parse_status
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.core.topics import topic
from edgefleet.edge_runtime.light_sim import LightFleet, Template, record_windows
from tests.cloud.mqtt_scenarios import connect
from tests.mosquitto import MOSQUITTO, MosquittoBroker

pytestmark = pytest.mark.skipif(not MOSQUITTO, reason="mosquitto missing: scripts/system-deps")
DEVICES = 2000


@pytest.fixture(scope="module")
def windows(digits_bundle):
    return record_windows(digits_bundle.root, [digits_bundle.public_key], load_splits().x_test, count=3)


@pytest.fixture
def broker(tmp_path):
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


def test_a_replayed_window_is_the_recorded_one_with_its_own_device_seq_and_version(windows):
    template = Template(windows[1], "big")
    got = parse_telemetry(template.render("big-ab12-000007", 42, 3, end=2_000_000_000.5))
    assert (got.fleet, got.device, got.seq, got.model_version, got.end) == ("big", "big-ab12-000007", 42, 3,
                                                                            2_000_000_000.5)
    assert got.end - got.start == pytest.approx(windows[1].end - windows[1].start)
    assert (got.features, got.predictions, got.requests) == (windows[1].features, windows[1].predictions,
                                                             windows[1].requests)


def test_many_devices_over_three_connections_reach_the_ingest_once_each(windows, broker, tmp_path):
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    fleet = LightFleet([broker.url], fleet="big", devices=DEVICES, windows=windows, rate=3000, connections=3,
                       run="t1")
    with sessions.begin() as db:  # the ingest keeps registered devices' windows only
        hashed = hash_password("unused")
        db.add_all([Device(id=d, fleet="big", password_hash=hashed) for d in fleet.ids])
    ingest = Ingest(sessions, broker.url, flush_seconds=0.02)
    ingest.start()
    try:
        assert ingest.wait_connected(10)
        with fleet:
            deadline = time.monotonic() + 60
            while fleet.status()["acked"] < DEVICES + 500 and time.monotonic() < deadline:
                time.sleep(0.1)
        acked = fleet.status()["acked"]
        assert acked >= DEVICES + 500, fleet.status()
        while time.monotonic() < deadline:
            with sessions() as db:
                rows = db.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
            if len(rows) >= acked:
                break
            time.sleep(0.2)
    finally:
        ingest.stop()
    per_device: dict[str, list[int]] = {}
    for device, seq in rows:
        per_device.setdefault(device, []).append(seq)
    # nothing acknowledged is lost and nothing is stored twice; a window in flight when the fleet stopped
    # may be stored without its acknowledgement counted yet (rows > acked by a few)
    assert len(rows) >= acked and len(set(rows)) == len(rows)
    assert set(per_device) == set(fleet.ids)  # every device sent at least once
    assert all(sorted(seqs) == list(range(1, len(seqs) + 1)) for seqs in per_device.values())


def test_an_install_is_answered_active_and_later_windows_carry_the_new_version(windows, broker):
    cloud = connect(broker.port, None, None, "cloud-side")
    fleet = LightFleet([broker.url], fleet="big", devices=50, windows=windows, rate=200, connections=2, run="t2")
    device = fleet.ids[7]
    assert cloud.subscribe(topic("big", device, "status")) == 1
    assert cloud.subscribe(topic("big", device, "telemetry")) == 1
    command = Command("c-1", "install", "d-1", BundleRef("digits-cnn", 2, "http://cloud/unused", "0" * 64, 10))
    try:
        with fleet:
            cloud.publish(topic("big", device, "cmd"), command.to_payload())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                statuses = [parse_status(p) for t, p in cloud.received() if t.endswith("/status")]
                newer = [w for t, p in cloud.received() if t.endswith("/telemetry")
                         for w in [parse_telemetry(p)] if w.model_version == 2]
                if statuses and newer:
                    break
                time.sleep(0.1)
    finally:
        cloud.close()
    assert [(s.command, s.deployment, s.state, s.bundle.version) for s in statuses] == [("c-1", "d-1", "active", 2)]
    assert newer and newer[0].seq > statuses[0].seq  # one seq counter per device, as an agent's outbox
    assert fleet.status()["commands"] == 1
