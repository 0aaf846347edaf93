"""`edgefleet cloud up --role ...` as real processes on one real PostgreSQL and one real Mosquitto: API replicas
serve the same data, and ingest workers split the device stream through a shared subscription, with none
lost and none stored twice when one worker is killed with -9 mid-stream and comes back under its name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, insert, select

from edgefleet.cloud.db import Device, IngestCounter, TelemetryRecord
from edgefleet.core.topics import topic
from tests.cloud.cloud_process import cloud_up, read_until
from tests.cloud.test_ingest import window
from tests.cloud.test_postgres import fresh_sessions
from tests.waiting import until


def run_up(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--data", str(tmp_path), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)


@pytest.mark.parametrize(("args", "message"), [
    (["--role", "api"], "--role api needs a PostgreSQL --db"),
    (["--role", "ingest", "--db", "postgresql+psycopg://u@127.0.0.1:9/x"], "--role ingest needs --mqtt-url"),
    (["--role", "ingest", "--db", "postgresql+psycopg://u@127.0.0.1:9/x", "--mqtt-url", "mqtt://127.0.0.1:9"],
     "--role ingest needs --worker NAME"),
    (["--role", "rollouts", "--db", "postgresql+psycopg://u@127.0.0.1:9/x", "--mqtt-url", "mqtt://127.0.0.1:9"],
     "--role rollouts needs --public-url"),
    (["--role", "cluster"], "--role: expected one of all, api, ingest, monitor, rollouts, got 'cluster'"),
    (["--worker", "w1"], "--worker names an ingest worker's MQTT session; --role all takes none"),
    (["--role", "ingest", "--worker", "a/b", "--db", "postgresql+psycopg://u@127.0.0.1:9/x", "--mqtt-url",
      "mqtt://127.0.0.1:9"], "--worker: expected 1-40 letters"),
])
def test_combinations_that_cannot_work_are_refused_with_one_line(tmp_path, args, message):
    result = run_up(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "edgefleet.db").exists()  # refused before anything was made


def database_url(postgres, name: str):
    sessions = fresh_sessions(postgres, name)  # a fresh database; the first process makes the tables
    return sessions, postgres.url.rsplit("/", 1)[0] + f"/{name}"


def test_two_api_replicas_answer_the_same_data(tmp_path, postgres, mosquitto):
    mosquitto.start()
    _sessions, url = database_url(postgres, "roles_api")
    common = ("--role", "api", "--db", url, "--mqtt-url", mosquitto.url, "--data", str(tmp_path / "data"))
    with cloud_up(tmp_path, *common) as (first, _l1, url1, printed), cloud_up(tmp_path, *common) as (_p, _l2, url2, _s):
        assert "role: api" in printed
        token = next(line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("admin token: "))
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url1, headers=headers, timeout=30) as one, \
                httpx.Client(base_url=url2, headers=headers, timeout=30) as two:
            created = one.post("/api/v1/devices", json={"id": "cam-1", "fleet": "lab"})
            assert created.status_code == 201, created.text
            assert two.post("/api/v1/devices", json={"id": "cam-2", "fleet": "lab"}).status_code == 201
            assert two.post("/api/v1/devices", json={"id": "cam-1", "fleet": "lab"}).status_code == 409
            listed = [[d["id"] for d in c.get("/api/v1/devices").json()] for c in (one, two)]
            assert listed == [["cam-1", "cam-2"], ["cam-1", "cam-2"]]
            assert two.get("/api/v1/info").json()["mqtt_url"] == mosquitto.url
            os.kill(first.pid, signal.SIGKILL)  # the other replica serves on alone
            first.wait(10)
            assert [d["id"] for d in two.get("/api/v1/devices").json()] == ["cam-1", "cam-2"]


DEVICES, WINDOWS = 20, 60  # 1,200 windows


class Publisher:
    """The devices: QoS 1 windows, each (device, seq) once, paced so that the stream outlasts a kill."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="roles-devices", protocol=mqtt.MQTTv311)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for seq in range(1, WINDOWS + 1):
            infos = [self.client.publish(topic("lab", f"d{n}", "telemetry"), window(f"d{n}", seq).to_payload(), qos=1)
                     for n in range(DEVICES)]
            for info in infos:
                info.wait_for_publish(30)
            self.sent += len(infos)
            time.sleep(0.05)

    def close(self) -> None:
        self.thread.join(120)
        self.client.loop_stop()
        self.client.disconnect()


def ingest_worker(stack: ExitStack, tmp_path, url: str, broker, name: str):
    """Starts `cloud up --role ingest --worker NAME` and waits until the broker logged its connection."""
    connected = f"as edgefleet-ingest-{name} "
    before = broker.log.count(connected)
    process, lines, _url, printed = stack.enter_context(cloud_up(
        tmp_path, "--role", "ingest", "--worker", name, "--db", url, "--mqtt-url", broker.url,
        "--data", str(tmp_path / "data")))
    assert "role: ingest" in printed and "edgefleet cloud API" not in printed
    until(lambda: broker.log.count(connected) > before, f"worker {name} connected", 20)
    return process, lines


def stored(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(TelemetryRecord))


def test_two_ingest_workers_share_a_stream_and_one_killed_loses_nothing(tmp_path, postgres, mosquitto):
    mosquitto.start()
    sessions, url = database_url(postgres, "roles_ingest")
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": f"d{n}", "fleet": "lab", "password_hash": "-"} for n in range(DEVICES)])
    with ExitStack() as stack:
        ingest_worker(stack, tmp_path, url, mosquitto, "a")
        b, _ = ingest_worker(stack, tmp_path, url, mosquitto, "b")
        time.sleep(0.5)  # both subscribed
        devices = Publisher(mosquitto.port)
        devices.thread.start()
        until(lambda: stored(sessions) >= DEVICES * WINDOWS // 4, "a quarter of the stream stored", 60)
        os.kill(b.pid, signal.SIGKILL)  # mid-stream: b holds windows it received but did not acknowledge
        b.wait(10)
        half_way = devices.sent
        time.sleep(1.0)  # the broker queues b's share in its session meanwhile
        ingest_worker(stack, tmp_path, url, mosquitto, "b")  # a supervisor restarts it under its name
        devices.close()
        assert half_way < DEVICES * WINDOWS  # the kill happened mid-stream
        until(lambda: stored(sessions) >= DEVICES * WINDOWS, "every window stored", 60)
        time.sleep(1.0)  # anything redelivered late would show up as a second row or a counter now
    with sessions() as session:
        per_key = session.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq, func.count())
                                  .group_by(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
        counters = {row.reason: row.count for row in session.scalars(select(IngestCounter))}
    assert len(per_key) == DEVICES * WINDOWS and {count for *_key, count in per_key} == {1}
    assert counters.get("store_error", 0) == 0
    assert counters["accepted"] == DEVICES * WINDOWS
    log = mosquitto.log
    assert "as edgefleet-ingest-a" in log and "as edgefleet-ingest-b" in log


def test_a_worker_stopped_gracefully_leaves_its_share_to_the_others(tmp_path, postgres, mosquitto):
    mosquitto.start()
    sessions, url = database_url(postgres, "roles_leave")
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": f"d{n}", "fleet": "lab", "password_hash": "-"} for n in range(DEVICES)])
    with ExitStack() as stack:
        ingest_worker(stack, tmp_path, url, mosquitto, "a")
        b, lines = ingest_worker(stack, tmp_path, url, mosquitto, "b")
        time.sleep(0.5)
        os.kill(b.pid, signal.SIGTERM)  # scaled down: b leaves the group and is not restarted
        read_until(lines, "stopped", b, tmp_path)
        assert b.wait(20) == 0
        devices = Publisher(mosquitto.port)
        devices.thread.start()
        devices.close()
        until(lambda: stored(sessions) >= DEVICES * WINDOWS, "every window stored by the remaining worker", 60)
