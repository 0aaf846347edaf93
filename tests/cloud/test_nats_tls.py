"""NATS with TLS on every port, as `write_nats_config(tls=NatsTls(...))` writes it: a 3-node cluster whose
routes are TLS forms, a device publishes over MQTT with TLS (`mqtts://`), and an ingest worker on
`tls://` with the private CA stores its windows. A worker or a device that does not trust the certificate,
or that speaks plain text to a TLS port, never gets in. The stream and consumer settings a worker is
given (`StreamSettings`, `EDGEFLEET_NATS_*`) are applied to what the cluster already has."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import threading

import nats
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ingest_nats import NatsIngest, StreamSettings
from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, INGEST, cloud_password, new_cloud_secret
from edgefleet.cloud.nats_config import INGEST_CONSUMER, INGEST_INBOX, INGEST_STREAM, NatsTls, bcrypt_hash
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import topic
from tests.cloud.test_ingest import window
from tests.edge_runtime.ota_attack_kit import self_signed_tls
from tests.nats import NATS_SERVER, NatsCluster
from tests.waiting import until

pytestmark = pytest.mark.skipif(not shutil.which(NATS_SERVER), reason="nats-server missing: scripts/system-deps")
FLEET = "lab"


@pytest.fixture
def tls_cluster(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    self_signed_tls(certs)  # server.crt (127.0.0.1) is its own CA: no system store trusts it
    cert = certs / "server.crt"
    secret = new_cloud_secret()
    cluster = NatsCluster(tmp_path / "nats")
    paths = cluster.configure([("dev-0", FLEET, bcrypt_hash("pw-0", rounds=4))],
                              {name: bcrypt_hash(cloud_password(secret, name), rounds=4) for name in CLOUD_CLIENTS},
                              tls=NatsTls(cert, certs / "server.key", ca=cert))
    conf = paths["n0"].read_text()
    assert conf.count("tls {") == 3 and "ca_file" in conf  # clients, routes (peers checked), MQTT
    cluster.start()  # ready() waits for the JetStream meta group of 3: the TLS routes work
    try:
        yield cluster, secret, cert
    finally:
        cluster.stop()


def tls_url(cluster: NatsCluster, *indexes: int) -> str:
    return ",".join(f"tls://127.0.0.1:{cluster.nodes[i].client_port}" for i in indexes)


def device(cluster: NatsCluster, index: int, ca) -> mqtt.Client:  # noqa: ANN001
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-0", protocol=mqtt.MQTTv311)
    client.username_pw_set("dev-0", "pw-0")
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    client.connect("127.0.0.1", cluster.nodes[index].mqtt_port)
    return client


def stored(sessions) -> int:  # noqa: ANN001
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(TelemetryRecord))


def stream_and_consumer(secret: str, url: str, ca):  # noqa: ANN001, ANN201
    async def run():  # noqa: ANN202
        connection = await nats.connect(url, user=INGEST.username, password=cloud_password(secret, INGEST),
                                        tls=ssl.create_default_context(cafile=str(ca)), inbox_prefix=INGEST_INBOX,
                                        allow_reconnect=False)
        try:
            js = connection.jetstream()
            return ((await js.stream_info(INGEST_STREAM)).config,
                    (await js.consumer_info(INGEST_STREAM, INGEST_CONSUMER)).config)
        finally:
            await connection.close()

    return asyncio.run(run())


def test_devices_and_ingest_workers_speak_tls_to_the_cluster(tmp_path, tls_cluster):
    cluster, secret, cert = tls_cluster
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add(Device(id="dev-0", fleet=FLEET, password_hash="-"))
    credentials = {"username": INGEST.username, "password": cloud_password(secret, INGEST)}
    first = NatsIngest(sessions, tls_url(cluster, 0, 1), worker="w-first", ca=cert, flush_seconds=0.02,
                       **credentials)
    first.start()
    try:
        assert first.wait_connected(30)
    finally:
        first.stop()
    stream, consumer = stream_and_consumer(secret, tls_url(cluster, 0), cert)
    assert (stream.num_replicas, stream.max_age, stream.max_bytes, consumer.ack_wait) == (3, 0, -1, 30.0)  # defaults

    wanted = StreamSettings(max_bytes=64 * 1024 * 1024, max_age_seconds=3600.0, ack_wait_seconds=5.0)
    ingest = NatsIngest(sessions, tls_url(cluster, 1, 2), worker="w-tls", ca=cert, flush_seconds=0.02,
                        stream=wanted, **credentials)
    ingest.start()
    publisher = device(cluster, 2, cert)
    publisher.loop_start()
    try:
        assert ingest.wait_connected(30)
        for seq in range(1, 6):
            publisher.publish(topic(FLEET, "dev-0", "telemetry"), window("dev-0", seq).to_payload(),
                              qos=1).wait_for_publish(10)
        until(lambda: stored(sessions) == 5, "the device's windows stored through TLS on both hops", 30)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        ingest.stop()
    stream, consumer = stream_and_consumer(secret, tls_url(cluster, 2), cert)
    assert (stream.max_bytes, stream.max_age, stream.num_replicas) == (64 * 1024 * 1024, 3600.0, 3)
    assert consumer.ack_wait == 5.0  # the existing consumer was brought to the setting


def test_untrusting_or_plain_clients_never_get_in(tmp_path, tls_cluster, caplog):
    cluster, secret, cert = tls_cluster
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    credentials = {"username": INGEST.username, "password": cloud_password(secret, INGEST)}
    untrusting = NatsIngest(sessions, tls_url(cluster, 0), worker="w-untrusting", **credentials)  # system store
    plain = NatsIngest(sessions, f"nats://127.0.0.1:{cluster.nodes[1].client_port}", worker="w-plain",
                       **credentials)
    for worker in (untrusting, plain):
        worker.start()
    try:
        until(lambda: any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records),
              "the untrusting worker's log saying why it cannot connect", 30)  # a loaded machine is slow to try
        assert not untrusting.wait_connected(2) and not plain.wait_connected(0.5)
    finally:
        for worker in (untrusting, plain):
            worker.stop()
    with pytest.raises(ssl.SSLCertVerificationError):  # a device without the CA: the handshake fails
        device(cluster, 0, ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    connected = threading.Event()
    plain_device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-0", protocol=mqtt.MQTTv311)
    plain_device.username_pw_set("dev-0", "pw-0")
    plain_device.on_connect = lambda *args: connected.set()
    plain_device.connect("127.0.0.1", cluster.nodes[0].mqtt_port)  # TCP only: the CONNECT is not TLS
    plain_device.loop_start()
    try:
        assert not connected.wait(3)  # never a CONNACK, the server drops the plain-text client
    finally:
        plain_device.loop_stop()


def test_bad_urls_and_files_are_one_message(tmp_path):
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with pytest.raises(EdgefleetError, match="mixes nats:// and tls://"):
        NatsIngest(sessions, "nats://a:4222,tls://b:4222")
    with pytest.raises(EdgefleetError, match="does not exist"):
        NatsIngest(sessions, "tls://a:4222", ca=tmp_path / "missing.pem")
    from edgefleet.cloud.nats_config import NatsNode, write_nats_config

    with pytest.raises(EdgefleetError, match="does not exist"):
        write_nats_config(tmp_path, [NatsNode("n0", 1, 2, 3)], [], {}, tls=NatsTls(tmp_path / "x.crt",
                                                                                   tmp_path / "x.key"))
