"""The cloud on a real PostgreSQL: the same tables and queries as on SQLite (ingest dedupe with tuple IN,
bulk updates, presence ordering, the drift monitor, the API)."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import func, select, text

from edgefleet.cloud.db import Device, DriftResult, IngestCounter, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.bundle import Bundle
from tests.cloud.test_ingest import presence, publish, wait_for, window


def fresh_sessions(postgres, schema: str):
    """Each test gets its own database so tables start empty."""
    admin = make_engine(postgres.url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {schema}"))
        connection.execute(text(f"CREATE DATABASE {schema}"))
    admin.dispose()
    return make_sessions(make_engine(postgres.url.rsplit("/", 1)[0] + f"/{schema}"))


def test_ingest_and_drift_monitor_on_postgres(postgres, mosquitto):
    import paho.mqtt.client as mqtt

    from edgefleet.core.topics import topic

    sessions = fresh_sessions(postgres, "ingest_test")
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d1", "d2")])
    ingest = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    ingest.start()
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pg-test", protocol=mqtt.MQTTv311)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    try:
        assert ingest.wait_connected(10)
        time.sleep(0.3)
        for seq in (1, 2, 3, 2):
            publish(publisher, topic("lab", "d1", "telemetry"), window("d1", seq).to_payload())
        publish(publisher, topic("lab", "d2", "telemetry"), window("d2", 1).to_payload())
        publish(publisher, topic("lab", "d1", "birth"), presence("birth", 5))
        publish(publisher, topic("lab", "d1", "death"), presence("death", 4))  # older: ignored

        def counted() -> int:
            with sessions() as session:
                return session.scalar(select(func.coalesce(func.sum(IngestCounter.count), 0)))

        wait_for(lambda: counted() >= 7)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        ingest.stop()
    with sessions() as session:
        keys = session.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)
                               .order_by(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
        assert keys == [("d1", 1), ("d1", 2), ("d1", 3), ("d2", 1)]
        assert {r.reason: r.count for r in session.scalars(select(IngestCounter))}["duplicate"] == 1
        assert session.get(Device, "d1").online is True and session.get(Device, "d1").presence_stamp == 5

    # A profile shaped like test_ingest.window(): 2 features over 1 edge, 2 classes, 1 confidence edge.
    profile = {"count": 1000, "bins": 2,
               "features": [{"input": "pixels", "kind": "channel_stats", "names": ["m", "s"],
                             "edges": [[0.5], [0.5]], "counts": [[500, 500, 0], [500, 500, 0]]}],
               "predictions": {"classes": ["0", "1"], "counts": [500, 500]},
               "confidence": {"edges": [0.5], "counts": [500, 500, 0]}}
    monitor = DriftMonitor(sessions, lambda name, version: profile, lookback_seconds=1e6)
    monitor.run_once(now=1070.0)
    with sessions() as session:
        results = {(r.scope, r.scope_id): (r.samples, r.verdict) for r in session.scalars(select(DriftResult))}
    # 30 + 10 samples is below the 100 a verdict needs: stored as "insufficient", for devices and the fleet
    assert results == {("device", "d1"): (30, "insufficient"), ("device", "d2"): (10, "insufficient"),
                       ("fleet", "lab"): (40, "insufficient")}


def test_api_on_postgres(postgres, mosquitto, digits_bundle, tmp_path):
    fresh_sessions(postgres, "api_test")
    url = postgres.url.rsplit("/", 1)[0] + "/api_test"
    settings = load_settings(data_dir=tmp_path / "data", db_url=url, port=0, mqtt_url=mosquitto.url,
                             trusted_keys=[digits_bundle.public_key])
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "b.tar.gz")
    with CloudServer(settings) as cloud:
        auth = {"Authorization": f"Bearer {cloud.new_admin_token}"}
        with httpx.Client(base_url=cloud.url, headers=auth, timeout=30) as client:
            made = client.post("/api/v1/devices", json={"id": "pi-1", "fleet": "lab"})
            assert made.status_code == 201, made.text
            assert client.post("/api/v1/devices", json={"id": "pi-1", "fleet": "lab"}).status_code == 409
            stored = client.post("/api/v1/bundles", content=archive.read_bytes(),
                                 headers={"Content-Type": "application/gzip"})
            assert stored.status_code == 201, stored.text
            assert [b["version"] for b in client.get("/api/v1/bundles").json()] == [1]
            assert client.get("/healthz").json() == {"status": "ok", "db": True}
