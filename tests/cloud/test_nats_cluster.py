"""A 3-node NATS cluster (MQTT on JetStream) configured by `write_nats_config`: devices spread over the
nodes, the real ingest on one node, one device node killed -9 mid-stream: its devices fail over by
themselves to the next node of their list (device.toml's mqtt.failover), and every window each device
sent is stored once per (device, seq). The users file keeps each device inside
its own topics as Mosquitto's ACL does.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from sqlalchemy import select

from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.mqtt_auth import (
    CLOUD_CLIENTS,
    INGEST,
    MqttAuthError,
    cloud_password,
    hash_password,
    new_cloud_secret,
)
from edgefleet.cloud.nats_config import NatsNode, bcrypt_hash, subject, write_nats_config
from edgefleet.core.topics import topic
from edgefleet.edge_runtime.light_sim import LightFleet
from edgefleet.edge_runtime.mqtt import MqttTransport
from edgefleet.edge_runtime.outbox import Outbox
from tests.cloud.mqtt_scenarios import GRACE, connect, refused, window
from tests.nats import NATS_SERVER, NatsCluster

pytestmark = pytest.mark.skipif(not shutil.which(NATS_SERVER), reason="nats-server missing: scripts/system-deps")
FLEET = "lab"
WINDOWS = 40  # per device; the kill comes after the first third


def hashes(secret: str) -> dict[str, str]:
    return {name: bcrypt_hash(cloud_password(secret, name), rounds=4) for name in CLOUD_CLIENTS}


@pytest.fixture
def cluster(tmp_path):
    secret = new_cloud_secret()
    devices = {f"dev-{i}": f"pw-{i}" for i in range(6)}
    nats = NatsCluster(tmp_path / "nats")
    nats.configure([(d, FLEET, bcrypt_hash(p, rounds=4)) for d, p in devices.items()], hashes(secret),
                   sim_users=[("sim-load", FLEET, bcrypt_hash("sim-pw", rounds=4))])
    nats.start()
    try:
        yield nats, secret, devices
    finally:
        nats.stop()


def stored(sessions) -> dict[str, list[int]]:  # noqa: ANN001
    with sessions() as db:
        rows = db.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
    out: dict[str, list[int]] = {}
    for device, seq in rows:
        out.setdefault(device, []).append(seq)
    return out


def send(device: str, outbox: Outbox, transports: dict, done: threading.Event) -> None:
    for _ in range(WINDOWS):
        outbox.append(topic(FLEET, device, "telemetry"), lambda seq, _drop: window(device, seq, FLEET).to_payload())
        transports[device].wake()
        time.sleep(0.05)
    done.set()


def test_node_killed_mid_stream_loses_no_window(cluster, tmp_path):
    nats, secret, devices = cluster
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as db:  # the registry: the ingest stores windows of registered devices only
        db.add_all([Device(id=d, fleet=FLEET, password_hash=hash_password(p)) for d, p in devices.items()])
    ingest = Ingest(sessions, nats.url(0), username=INGEST.username, password=cloud_password(secret, INGEST),
                    client_id=INGEST.username, flush_seconds=0.02)
    ingest.start()
    transports: dict[str, MqttTransport] = {}
    outboxes = {d: Outbox(tmp_path / "devices" / f"{d}.sqlite") for d in devices}
    home = {d: index % 3 for index, d in enumerate(devices)}  # two devices per node
    try:
        assert ingest.wait_connected(30), nats.log(0)[-2000:]
        for device, password in devices.items():
            others = [nats.url((home[device] + step) % 3) for step in (1, 2)]
            transports[device] = MqttTransport(nats.url(home[device]), fleet=FLEET, device=device,
                                               outbox=outboxes[device], username=device, password=password,
                                               reconnect_max=2.0, failover=others).start()
        finished = {d: threading.Event() for d in devices}
        senders = [threading.Thread(target=send, args=(d, outboxes[d], transports, finished[d]), daemon=True)
                   for d in devices]
        for thread in senders:
            thread.start()
        while max(outbox.last_seq for outbox in outboxes.values()) < WINDOWS // 3:
            time.sleep(0.05)
        # A loaded machine can make a first connect fail, and that device then starts on its next node: the
        # node killed is whichever of 1 and 2 (not the ingest's) holds more devices now.
        at_kill = {d: (t.port, t.connects) for d, t in transports.items()}
        ports = [node.mqtt_port for node in nats.nodes]
        victim = max((1, 2), key=lambda i: (sum(port == ports[i] for port, _ in at_kill.values()), -i))
        moved = [d for d, (port, _) in at_kill.items() if port == ports[victim]]
        assert moved, at_kill
        nats.kill(victim)
        for thread in senders:
            thread.join(60)
        for device, transport in transports.items():
            assert transport.flush(120), f"{device}: {len(outboxes[device])} windows never acknowledged"
        deadline = time.monotonic() + 60
        while sum(map(len, stored(sessions).values())) < WINDOWS * len(devices) and time.monotonic() < deadline:
            time.sleep(0.2)
        got = stored(sessions)
        assert {d: sorted(got.get(d, [])) for d in devices} == {d: list(range(1, WINDOWS + 1)) for d in devices}, (
            ingest.counts, nats.log(0)[-3000:])
        after = {d: (transports[d].port, transports[d].connects) for d in moved}  # by themselves, on a live node
        assert all(port != ports[victim] and connects > at_kill[d][1] for d, (port, connects) in after.items()), (
            at_kill, after)
    finally:
        for transport in transports.values():
            transport.stop(timeout=1.0)
        ingest.stop()
        for outbox in outboxes.values():
            outbox.close()


def test_device_stays_inside_its_own_topics(cluster):
    nats, secret, devices = cluster
    port = [node.mqtt_port for node in nats.nodes]
    assert refused(port[2], "dev-2", "not-its-password")
    ingest = connect(port[0], INGEST.username, cloud_password(secret, INGEST))
    spy = connect(port[1], "dev-1", devices["dev-1"])
    dev = connect(port[2], "dev-0", devices["dev-0"])
    try:
        assert ingest.subscribe("edgefleet/v1/+/+/telemetry") == 1
        refusals = [spy.subscribe(f) for f in ("#", "$MQTT/sub/#", topic(FLEET, "dev-0", "cmd"))]
        assert refusals == [0x80] * 3
        dev.publish(topic(FLEET, "dev-1", "telemetry"), b"forged")
        dev.publish(topic(FLEET, "dev-0", "telemetry"), b"own")
        ingest.expect(topic(FLEET, "dev-0", "telemetry"), b"own")
        time.sleep(GRACE)
        assert (ingest.received(), spy.received()) == ([(topic(FLEET, "dev-0", "telemetry"), b"own")], [])
    finally:
        for peer in (ingest, spy, dev):
            peer.close()


def test_light_sim_user_spreads_many_device_ids_over_the_nodes(cluster, tmp_path):
    nats, secret, _ = cluster
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    fleet = LightFleet([nats.url(i) for i in range(3)], fleet=FLEET, devices=300, windows=[window("x", 1, FLEET)],
                       rate=600, connections=3, username="sim-load", password="sim-pw", run="n1")
    with sessions.begin() as db:
        db.add_all([Device(id=d, fleet=FLEET, password_hash=hash_password("-")) for d in fleet.ids])
    ingest = Ingest(sessions, nats.url(0), username=INGEST.username, password=cloud_password(secret, INGEST),
                    client_id=INGEST.username, flush_seconds=0.02)
    ingest.start()
    try:
        assert ingest.wait_connected(30)
        with fleet:
            deadline = time.monotonic() + 60
            while len(stored(sessions)) < 300 and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        ingest.stop()
    assert set(stored(sessions)) == set(fleet.ids)


def test_config_refuses_what_nats_cannot_check(tmp_path):
    nodes = [NatsNode("n0", 4222, 6222, 1883)]
    secret = new_cloud_secret()
    with pytest.raises(MqttAuthError, match="not bcrypt"):
        write_nats_config(tmp_path, nodes, [("dev-a", FLEET, "$7$101$abc$def")], hashes(secret))
    with pytest.raises(MqttAuthError, match="'.'"):
        write_nats_config(tmp_path, nodes, [("dev.a", FLEET, bcrypt_hash("x", rounds=4))], hashes(secret))
    assert subject("edgefleet/v1/+/+/cmd") == "edgefleet.v1.*.*.cmd"
    assert not (tmp_path / "users.conf").exists()
