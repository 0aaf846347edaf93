"""The ingest scaled out on a 3-node NATS cluster (MQTT on JetStream) through NATS's own work sharing: devices
publish over MQTT, `cloud up --role ingest --worker NAME --mqtt-url nats://...` workers pull from one durable
JetStream consumer (cloud/ingest_nats.py). One worker killed with -9 mid-stream loses nothing and nothing is
stored twice; a malformed payload is counted and the worker goes on; the ingest's NATS rights stop at its
stream and consumer, and devices stay on MQTT."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from contextlib import ExitStack

import nats  # the cloud extra installs nats-py: a missing one is a failed install, not a skip
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, insert, select, text

from edgefleet.cloud.db import Device, IngestCounter, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, INGEST, cloud_password, new_cloud_secret
from edgefleet.cloud.nats_config import INGEST_CONSUMER, INGEST_INBOX, INGEST_STREAM, bcrypt_hash
from edgefleet.core.topics import topic
from tests.cloud.cloud_process import cloud_up
from tests.cloud.paced_devices import PacedDevices, started_client, stored
from tests.cloud.test_ingest import window
from tests.cloud.test_postgres import fresh_sessions
from tests.nats import NATS_SERVER, NatsCluster
from tests.waiting import until

pytestmark = pytest.mark.skipif(not shutil.which(NATS_SERVER), reason="nats-server missing: scripts/system-deps")
FLEET, DEVICES, WINDOWS = "lab", 20, 60  # 1,200 windows
ACK_WAIT = 3.0  # seconds before a killed worker's unacknowledged messages go to another worker


@pytest.fixture
def cluster(tmp_path):
    secret = new_cloud_secret()
    nats_cluster = NatsCluster(tmp_path / "nats")
    nats_cluster.configure([("dev-0", FLEET, bcrypt_hash("pw-0", rounds=4))],
                           {name: bcrypt_hash(cloud_password(secret, name), rounds=4) for name in CLOUD_CLIENTS},
                           sim_users=[("sim-load", FLEET, bcrypt_hash("sim-pw", rounds=4))])
    nats_cluster.start()
    try:
        yield nats_cluster, secret
    finally:
        nats_cluster.stop()


def nats_url(cluster: NatsCluster, *indexes: int) -> str:
    return ",".join(f"nats://127.0.0.1:{cluster.nodes[i].client_port}" for i in indexes)


def ingest_nats(secret: str, url: str, coroutine, errors: list | None = None):  # noqa: ANN001, ANN201
    """Runs `coroutine(connection)` on a NATS connection as the ingest user (as an operator's `nats` CLI
    would); the errors the server sends go to `errors`."""
    async def error(err: Exception) -> None:
        (errors if errors is not None else []).append(str(err))

    async def run():  # noqa: ANN202
        connection = await nats.connect(url, user=INGEST.username, password=cloud_password(secret, INGEST),
                                        inbox_prefix=INGEST_INBOX, allow_reconnect=False, error_cb=error)
        try:
            return await coroutine(connection)
        finally:
            await connection.close()

    return asyncio.run(run())


def short_ack_wait(secret: str, url: str) -> None:
    """The stream and the consumer made ahead of the workers, with a 3 s ack_wait (the workers' default is 30 s)
    so the test need not wait: the workers use what exists as it is."""
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    from edgefleet.cloud.nats_config import ingest_subjects

    async def make(connection):  # noqa: ANN001, ANN202
        js = connection.jetstream()
        await js.add_stream(StreamConfig(name=INGEST_STREAM, subjects=ingest_subjects(), num_replicas=3,
                                         retention=RetentionPolicy.WORK_QUEUE))
        await js.add_consumer(INGEST_STREAM, ConsumerConfig(durable_name=INGEST_CONSUMER, ack_policy=AckPolicy.EXPLICIT,
                                                            ack_wait=ACK_WAIT, max_deliver=-1))

    ingest_nats(secret, url, make)


def counters(sessions) -> dict[str, int]:  # noqa: ANN001
    with sessions() as session:
        return {row.reason: row.count for row in session.scalars(select(IngestCounter))}


def worker(stack: ExitStack, tmp_path, db_url: str, url: str, secret: str, name: str):  # noqa: ANN001, ANN201
    process, lines, _url, printed = stack.enter_context(cloud_up(
        tmp_path, "--role", "ingest", "--worker", name, "--db", db_url, "--mqtt-url", url,
        "--data", str(tmp_path / "data"), env={"EDGEFLEET_MQTT_PASSWORD": secret}))
    assert "role: ingest" in printed and "edgefleet cloud API" not in printed
    return process


def consumer_state(secret: str, url: str):  # noqa: ANN201
    async def info(connection):  # noqa: ANN001, ANN202
        return await connection.jetstream().consumer_info(INGEST_STREAM, INGEST_CONSUMER)

    return ingest_nats(secret, url, info)


def test_two_workers_share_the_stream_and_one_killed_loses_nothing(tmp_path, postgres, cluster):
    nodes, secret = cluster
    sessions = fresh_sessions(postgres, "nats_ingest")
    db_url = postgres.url.rsplit("/", 1)[0] + "/nats_ingest"
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": f"d{n}", "fleet": FLEET, "password_hash": "-"} for n in range(DEVICES)])
    short_ack_wait(secret, nats_url(nodes, 0))
    with ExitStack() as stack:
        worker(stack, tmp_path, db_url, nats_url(nodes, 0, 1), secret, "a")
        b = worker(stack, tmp_path, db_url, nats_url(nodes, 1, 2), secret, "b")
        until(lambda: consumer_state(secret, nats_url(nodes, 0)).num_waiting >= 2, "both workers pulling", 30)
        devices = PacedDevices([started_client(f"sim-load-{i}", nodes.nodes[i].mqtt_port, "sim-load", "sim-pw")
                                for i in (1, 2)], FLEET, DEVICES, WINDOWS)
        devices.thread.start()
        until(lambda: stored(sessions) >= DEVICES * WINDOWS // 4, "a quarter of the stream stored", 60)
        with sessions.begin() as session:  # the workers' inserts wait on this lock: each holds windows it
            session.execute(text(f"LOCK TABLE {TelemetryRecord.__tablename__} IN EXCLUSIVE MODE"))  # cannot ack
            time.sleep(1.0)
            os.kill(b.pid, signal.SIGKILL)  # mid-batch, not restarted: its unacknowledged messages go to a
            b.wait(10)
        half_way = devices.sent
        devices.close()
        assert half_way < DEVICES * WINDOWS  # the kill happened mid-stream
        until(lambda: stored(sessions) >= DEVICES * WINDOWS, "every window stored", 90)
        time.sleep(ACK_WAIT + 1.0)  # anything redelivered late would show up as a second row or a counter now
        state = consumer_state(secret, nats_url(nodes, 0))
    with sessions() as session:
        per_key = session.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq, func.count())
                                  .group_by(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
    assert len(per_key) == DEVICES * WINDOWS and {count for *_key, count in per_key} == {1}
    tally = counters(sessions)
    assert tally.get("store_error", 0) == 0 and tally["accepted"] == DEVICES * WINDOWS, tally
    assert (state.num_pending, state.num_ack_pending) == (0, 0)  # the stream is drained, every message acked
    assert state.delivered.consumer_seq > DEVICES * WINDOWS  # b's windows were delivered again, to a


def test_a_malformed_payload_is_counted_and_the_worker_goes_on(tmp_path, cluster):
    from edgefleet.cloud.ingest_nats import NatsIngest

    nodes, secret = cluster
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add(Device(id="dev-0", fleet=FLEET, password_hash="-"))
    ingest = NatsIngest(sessions, nats_url(nodes, 0), username=INGEST.username,
                        password=cloud_password(secret, INGEST), worker="edgefleet-ingest-t", flush_seconds=0.02)
    ingest.start()
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-0", protocol=mqtt.MQTTv311)
    device.username_pw_set("dev-0", "pw-0")
    device.connect("127.0.0.1", nodes.nodes[2].mqtt_port)
    device.loop_start()
    try:
        assert ingest.wait_connected(30)
        where = topic(FLEET, "dev-0", "telemetry")
        for payload in (b'{"seq": 1, "not a window', window("dev-0", 1).to_payload(), b"\xff\xfe",
                        window("dev-0", 2).to_payload()):
            device.publish(where, payload, qos=1).wait_for_publish(10)
        until(lambda: stored(sessions) == 2, "both windows stored", 30)
        until(lambda: sum(counters(sessions).values()) == 4, "every message counted", 10)
    finally:
        device.loop_stop()
        device.disconnect()
        ingest.stop()
    tally = counters(sessions)
    assert tally == {"accepted": 2, "not_json": 1, "not_utf8": 1}
    state = consumer_state(secret, nats_url(nodes, 1))
    assert (state.num_pending, state.num_ack_pending) == (0, 0)  # refused messages are acknowledged too


def test_the_ingest_user_reaches_its_stream_only_and_devices_stay_on_mqtt(cluster):
    nodes, secret = cluster
    url = nats_url(nodes, 0)
    with pytest.raises(Exception, match="(?i)authorization"):
        asyncio.run(nats.connect(url, user="dev-0", password="pw-0", allow_reconnect=False, max_reconnect_attempts=0))

    async def overreach(connection):  # noqa: ANN001, ANN202
        await connection.publish(topic(FLEET, "dev-0", "telemetry").replace("/", "."), b"forged")
        js = connection.jetstream(timeout=1.0)
        refused = []
        for attempt in (js.delete_stream(INGEST_STREAM), js.add_stream(name="OTHER", subjects=["other.>"])):
            try:
                await attempt
            except Exception as err:  # noqa: BLE001 - a timeout: the server drops a request it does not permit
                refused.append(type(err).__name__)
        await connection.flush()
        await asyncio.sleep(0.3)
        return refused

    short_ack_wait(secret, url)
    errors: list[str] = []
    refused = ingest_nats(secret, url, overreach, errors)
    assert len(refused) == 2 and any("permissions violation" in e for e in errors), (errors, refused)
