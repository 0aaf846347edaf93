"""`edgefleet cloud nats-config`: a NATS cluster configured from the cloud's database. Devices registered
through the cloud's own code (which keeps a bcrypt hash of the password) log in over MQTT on every node; a
device registered before bcrypt hashes were kept is left out and named; the cloud's ingest user gets in on
the NATS protocol with the secret; after a revocation, a re-run keeps the cloud's passwords and a reload
closes the revoked device's open connection at once while the others stay."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import nats
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

import edgefleet.cli.cloud_commands  # noqa: F401 - registers the cloud group
from edgefleet.cli.app import app
from edgefleet.cloud.api.devices import DeviceIn, add_device
from edgefleet.cloud.db import Device, make_engine, make_sessions
from edgefleet.cloud.mqtt_auth import INGEST, cloud_password, hash_password, new_cloud_secret
from edgefleet.cloud.nats_config import INGEST_INBOX
from edgefleet.cloud.schema import ensure_schema
from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.nats import NATS_SERVER, NatsCluster

pytestmark = pytest.mark.skipif(not shutil.which(NATS_SERVER), reason="nats-server missing: scripts/system-deps")


class Device_:
    """A device's MQTT connection to one node, and whether it is up."""

    def __init__(self, name: str, password: str, port: int) -> None:
        self.up, self.refused = threading.Event(), threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(name, password)
        self.client.on_connect = self._connected
        self.client.on_disconnect = lambda *args: self.up.clear()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _connected(self, client, userdata, flags, reason, properties) -> None:  # noqa: ANN001
        (self.refused if reason.is_failure else self.up).set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cli(*args: str, env: dict | None = None):  # noqa: ANN201
    result = CliRunner().invoke(app, ["cloud", "nats-config", *args], env={"COLUMNS": "200", **(env or {})})
    return result


def test_a_cluster_configured_from_the_database_admits_and_revokes_devices(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    engine = make_engine(f"sqlite:///{data / 'edgefleet.db'}")
    ensure_schema(engine)
    sessions = make_sessions(engine)
    with sessions() as session:  # registered as POST /devices and enrollment do
        created = {c.id: c.mqtt.password for c in (add_device(session, DeviceIn(id=f"pi-{n}", fleet="lab"),
                                                              nats_hash=True) for n in range(2))}
        session.add(Device(id="old-1", fleet="lab", password_hash=hash_password("legacy-password")))
        add_device(session, DeviceIn(id="bulk-1", fleet="lab"), nats_hash=False)  # EDGEFLEET_NATS_DEVICE_HASHES=0
        session.commit()
    cluster = NatsCluster(tmp_path / "nats")
    nodes = [f"--node={n.name}={n.host}:{n.client_port}:{n.cluster_port}:{n.mqtt_port}" for n in cluster.nodes]
    secret = new_cloud_secret()
    result = cli(str(cluster.workdir), *nodes, "--data", str(data), env={"EDGEFLEET_MQTT_PASSWORD": secret})
    assert result.exit_code == 0, result.output
    assert "3 node(s), 2 device(s)" in result.output and "left out 2 device(s)" in result.output
    assert "old-1" in result.output and "bulk-1" in result.output and "cloud MQTT secret" not in result.output
    cluster.add_monitoring()
    cluster.start()
    devices = {}
    try:
        for index, (name, password) in enumerate(created.items()):
            devices[name] = Device_(name, password, cluster.nodes[index].mqtt_port)
        legacy = Device_("old-1", "legacy-password", cluster.nodes[2].mqtt_port)
        assert all(d.up.wait(15) for d in devices.values())
        assert legacy.refused.wait(15) or not legacy.up.wait(1)
        legacy.close()

        async def ingest_login() -> bool:
            connection = await nats.connect(f"nats://127.0.0.1:{cluster.nodes[0].client_port}", user=INGEST.username,
                                            password=cloud_password(secret, INGEST), inbox_prefix=INGEST_INBOX,
                                            allow_reconnect=False)
            await connection.close()
            return True

        assert asyncio.run(ingest_login())

        users_before = (cluster.workdir / "users.conf").read_text()
        with sessions.begin() as session:  # what `edgefleet device revoke pi-0` records
            session.execute(update(Device).where(Device.id == "pi-0").values(revoked_at=time.time()))
        rerun = cli(str(cluster.workdir), *nodes, "--data", str(data))  # no secret: the cloud's hashes are kept
        assert rerun.exit_code == 0, rerun.output
        assert "1 device(s)" in rerun.output and "cloud MQTT secret" not in rerun.output
        users_after = (cluster.workdir / "users.conf").read_text()
        assert INGEST.username in users_after and '"pi-0"' in users_before and '"pi-0"' not in users_after
        cluster.add_monitoring()  # the test's own monitoring port again: a reload cannot change it
        cluster.reload()
        deadline = time.monotonic() + 10
        while devices["pi-0"].up.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not devices["pi-0"].up.is_set()  # its open connection was closed by the reload
        time.sleep(1.0)
        assert devices["pi-1"].up.is_set() and not devices["pi-0"].up.is_set()  # and it does not get back in
    finally:
        for device in devices.values():
            device.close()
        cluster.stop()


def test_bad_options_are_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ensure_schema(make_engine(f"sqlite:///{data / 'edgefleet.db'}"))
    for args, message in ((["--node", "n0=host:1:2"], "expected NAME=HOST:CLIENT_PORT:CLUSTER_PORT:MQTT_PORT"),
                          (["--node", "n0=h:1:1:2"], "three different ports"),
                          (["--node", "n0=h:1:2:3", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
                          (["--node", "n0=h:1:2:3", "--tls-ca", "ca.pem"], "--tls-ca needs --tls-cert"),
                          (["--node", "n0=h:1:2:3", "--data", str(tmp_path / "nowhere")], "no cloud database")):
        result = edgefleet("cloud", "nats-config", str(tmp_path / "out"), "--data", str(data), *args)
        assert_user_error(result, message)
