"""`edgefleet cloud up --role ...` as real processes on one real PostgreSQL and one real Mosquitto: API replicas
serve the same data, and ingest workers split the device stream through a shared subscription, with none
lost and none stored twice when one worker is killed with -9 mid-stream and comes back under its name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack

import httpx
import pytest
from sqlalchemy import func, insert, select

from edgefleet.cloud.db import Device, IngestCounter, TelemetryRecord
from edgefleet.cloud.mqtt_auth import hash_password, new_cloud_secret, new_password
from edgefleet.cloud.signed_urls import CloudSecret, download_signature
from edgefleet.core.topics import topic
from tests.cloud.cloud_process import cloud_up, read_until
from tests.cloud.mqtt_scenarios import connect, wait_stored
from tests.cloud.mqtt_scenarios import window as scenario_window
from tests.cloud.paced_devices import PacedDevices, started_client, stored
from tests.cloud.test_mosquitto_acl import hand_to_broker, mosquitto_for, mqtt_dir  # noqa: F401 - fixtures
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
    (["--role", "monitor", "--db", "postgresql+psycopg://u@127.0.0.1:9/x", "--mqtt-url", "nats://127.0.0.1:9"],
     "--role monitor: a nats:// (or tls://) URL serves the ingest role only"),
    (["--mqtt-url", "nats://127.0.0.1:9"], "--role all: a nats:// (or tls://) URL serves the ingest role only"),
    (["--role", "cluster"], "--role: expected one of all, api, ingest, monitor, rollouts, got 'cluster'"),
    (["--worker", "w1"], "--worker names an ingest or rollouts worker's MQTT users; --role all takes none"),
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
    """Each replica has its own --data directory: what they share is the database, the signing key of the
    download URLs included (a URL one signs, the other accepts)."""
    mosquitto.start()
    sessions, url = database_url(postgres, "roles_api")
    common = ("--role", "api", "--db", url, "--mqtt-url", mosquitto.url)
    with cloud_up(tmp_path, *common, "--data", str(tmp_path / "data-1")) as (first, _l1, url1, printed), \
            cloud_up(tmp_path, *common, "--data", str(tmp_path / "data-2")) as (_p, _l2, url2, _s):
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
            with sessions() as db:
                secret = bytes.fromhex(db.scalars(select(CloudSecret.value)).one())
            expires = int(time.time()) + 60
            signed = {"device": "pi-7", "expires": expires,
                      "sig": download_signature(secret, "digits-cnn", 1, "pi-7", expires)}
            for replica in (one, two):  # signature accepted, then no such bundle: 404, not 403
                path = "/api/v1/bundles/digits-cnn/1/download"
                answer = httpx.get(f"{replica.base_url}{path}", params=signed)
                assert answer.status_code == 404, answer.text
                forged = httpx.get(f"{replica.base_url}{path}", params={**signed, "sig": "0" * 64})
                assert forged.status_code == 403
            os.kill(first.pid, signal.SIGKILL)  # the other replica serves on alone
            first.wait(10)
            assert [d["id"] for d in two.get("/api/v1/devices").json()] == ["cam-1", "cam-2"]


DEVICES, WINDOWS = 20, 60  # 1,200 windows


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


def test_two_ingest_workers_share_a_stream_and_one_killed_loses_nothing(tmp_path, postgres, mosquitto):
    mosquitto.start()
    sessions, url = database_url(postgres, "roles_ingest")
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": f"d{n}", "fleet": "lab", "password_hash": "-"} for n in range(DEVICES)])
    with ExitStack() as stack:
        ingest_worker(stack, tmp_path, url, mosquitto, "a")
        b, _ = ingest_worker(stack, tmp_path, url, mosquitto, "b")
        time.sleep(0.5)  # both subscribed
        devices = PacedDevices([started_client("roles-devices", mosquitto.port)], "lab", DEVICES, WINDOWS)
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
        devices = PacedDevices([started_client("roles-devices", mosquitto.port)], "lab", DEVICES, WINDOWS)
        devices.thread.start()
        devices.close()
        until(lambda: stored(sessions) >= DEVICES * WINDOWS, "every window stored by the remaining worker", 60)


def generated_broker(broker, tmp_path, directory, url: str, secret: str, *flags: str):
    """`broker` started on the files `edgefleet cloud mosquitto-config DIRECTORY --db URL FLAGS` wrote with the cloud's
    MQTT secret `secret`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"EDGEFLEET_MQTT_PASSWORD": secret}
    done = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "mosquitto-config", str(directory),
                           "--db", url, "--port", str(broker.port), *flags],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    hand_to_broker({name: directory / name for name in ("passwd", "acl")})
    return broker.start()


def test_ingest_workers_log_in_to_the_generated_mosquitto_as_their_own_users(
        tmp_path, postgres, mqtt_dir, mosquitto_for):  # noqa: F811 - the fixtures imported above
    """`mosquitto-config --ingest-worker a --ingest-worker b` gives each worker its own user with the ingest's
    rights; with EDGEFLEET_MQTT_PASSWORD the workers log in, share the stream, and a device's windows land."""
    sessions, url = database_url(postgres, "roles_mosquitto")
    password, secret = new_password(), new_cloud_secret()
    with sessions.begin() as session:
        session.add(Device(id="dev-a", fleet="lab", password_hash=hash_password(password)))
    broker = generated_broker(mosquitto_for(), tmp_path, mqtt_dir, url, secret, "--ingest-worker", "a",
                              "--ingest-worker", "b")
    secret_env = {"EDGEFLEET_MQTT_PASSWORD": secret}
    with ExitStack() as stack:
        for name in ("a", "b"):
            stack.enter_context(cloud_up(tmp_path, "--role", "ingest", "--worker", name, "--db", url, "--mqtt-url",
                                         broker.url, "--data", str(tmp_path / "data"), env=secret_env))
            until(lambda name=name: f"u'edgefleet-ingest-{name}'" in broker.log, f"worker {name} logged in", 20)
        time.sleep(0.5)
        device = connect(broker.port, "dev-a", password)
        try:
            for seq in range(1, 21):
                device.publish(topic("lab", "dev-a", "telemetry"), scenario_window("dev-a", seq).to_payload())
            assert wait_stored(sessions, "dev-a", 20) == 20
        finally:
            device.close()
    assert "not authorised" not in broker.log.lower() and "denied" not in broker.log.lower()


def test_rollouts_workers_log_in_to_the_generated_mosquitto_as_their_own_users(
        tmp_path, postgres, mqtt_dir, mosquitto_for):  # noqa: F811 - the fixtures imported above
    """The generated config binds client ids to usernames: two rollouts workers under the shared users would take
    each other's connection. `mosquitto-config --rollouts-worker a --rollouts-worker b` gives each worker's
    engine and label forwarder users of their own, and both workers stay connected."""
    _sessions, url = database_url(postgres, "roles_rollouts_users")
    secret = new_cloud_secret()
    broker = generated_broker(mosquitto_for(), tmp_path, mqtt_dir, url, secret, "--rollouts-worker", "a",
                              "--rollouts-worker", "b")
    acl = (mqtt_dir / "acl").read_text()
    assert "user edgefleet-rollouts-a" in acl and "user edgefleet-labels-b" in acl
    users = [f"edgefleet-{kind}-{name}" for name in ("a", "b") for kind in ("rollouts", "labels")]
    with ExitStack() as stack:
        for name in ("a", "b"):
            stack.enter_context(cloud_up(tmp_path, "--role", "rollouts", "--worker", name, "--db", url, "--mqtt-url",
                                         broker.url, "--public-url", "http://127.0.0.1:9",
                                         "--data", str(tmp_path / "data"), env={"EDGEFLEET_MQTT_PASSWORD": secret}))
        until(lambda: all(f"u'{user}'" in broker.log for user in users), "both workers' clients logged in", 20)
        time.sleep(2.0)  # a client id taken twice would show as the broker closing the old connection by now
        log = broker.log
    assert "already connected" not in log and "not authorised" not in log.lower()
    assert all(log.count(f"u'{user}'") == 1 for user in users), log  # each logged in once: no reconnect loop


def test_monitor_and_rollouts_roles_run_without_the_api_or_a_broker_of_their_own(tmp_path, postgres, mosquitto):
    mosquitto.start()
    _sessions, url = database_url(postgres, "roles_background")
    data = ("--data", str(tmp_path / "data"), "--db", url)
    with cloud_up(tmp_path, "--role", "monitor", *data) as (_p1, _l1, monitor_url, monitor), \
            cloud_up(tmp_path, "--role", "rollouts", *data, "--mqtt-url", mosquitto.url,
                     "--public-url", "http://127.0.0.1:9") as (_p2, _l2, rollouts_url, rollouts):
        assert "role: monitor" in monitor and "role: rollouts" in rollouts
        assert "admin token" not in monitor + rollouts and "edgefleet cloud API" not in monitor + rollouts
        for address in (monitor_url, rollouts_url):  # the --port cloud_up passed is not served
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{address}/api/v1/info", timeout=5)
        assert "MQTT broker (external)" in rollouts and "MQTT broker" not in monitor
        until(lambda: "as edgefleet-rollouts-" in mosquitto.log, "the rollout engine connected", 20)
