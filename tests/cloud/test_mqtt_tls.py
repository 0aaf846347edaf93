"""MQTT over TLS with a private CA: `cloud mosquitto-config --tls-cert/--tls-key` makes a real Mosquitto listen
with TLS only; the cloud (`--mqtt-url mqtts://... --mqtt-ca`) and a real device agent (`[mqtt] url = mqtts://`,
`ca = ...`) connect through it and the device's telemetry is stored. A device that does not trust the
certificate, or that speaks plain MQTT to the TLS port, never connects and says why."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from edgefleet.cloud.mqtt_auth import Listener, hash_password, new_cloud_secret, new_password, write_mosquitto_config
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from tests.cloud.mqtt_scenarios import WAIT, wait_stored
from tests.cloud.test_mosquitto_acl import (  # noqa: F401 - fixtures, found by pytest under their names
    cloud_hashes,
    device_rows,
    hand_to_broker,
    mosquitto_for,
    mqtt_dir,
)
from tests.edge_runtime.ota_attack_kit import self_signed_tls
from tests.mosquitto import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow  # the digits bundle


def test_devices_and_the_cloud_speak_mqtt_over_tls(tmp_path, mqtt_dir, mosquitto_for, digits_bundle):  # noqa: F811
    self_signed_tls(mqtt_dir)  # server.crt / server.key for 127.0.0.1, signed by no CA the system knows
    cert, key = mqtt_dir / "server.crt", mqtt_dir / "server.key"
    passwords = {name: new_password() for name in ("pi-1", "pi-2", "pi-3")}
    secret = new_cloud_secret()
    data = tmp_path / "cloud"
    data.mkdir()
    sessions = device_rows(data / "edgefleet.db", passwords)
    broker = mosquitto_for()
    paths = write_mosquitto_config(mqtt_dir, [(d, "lab", hash_password(p)) for d, p in passwords.items()],
                                   cloud_hashes(secret), Listener(port=broker.port, tls_cert=cert, tls_key=key))
    assert f"certfile {cert}" in paths["conf"].read_text()
    hand_to_broker({name: paths[name] for name in ("passwd", "acl")} | {"key": key})
    broker.start()
    tls_url = f"mqtts://127.0.0.1:{broker.port}"

    def device(name: str, url: str, ca) -> DeviceConfig:  # noqa: ANN001
        return DeviceConfig(device=name, fleet="lab", bundle=digits_bundle.root,
                            trusted_keys=(digits_bundle.public_key,), data_dir=tmp_path / name, threads=1,
                            window_seconds=0.5, backends=("onnxruntime",),
                            http_port=free_port(), mqtt=MqttConfig(url, name, passwords[name], ca=ca))

    settings = load_settings(data_dir=data, port=0, mqtt_url=tls_url, mqtt_password=secret, mqtt_ca=cert)
    with CloudServer(settings) as cloud:
        parts = {part.name: part for part in cloud.components}
        assert parts["ingest"].wait_connected(WAIT) and parts["rollouts"].connected.wait(WAIT)
        trusting = device("pi-1", tls_url, cert)
        untrusting = device("pi-2", tls_url, None)
        plain = device("pi-3", f"mqtt://127.0.0.1:{broker.port}", None)
        with DeviceAgent(trusting) as good, DeviceAgent(untrusting) as blind, DeviceAgent(plain) as wrong:
            pixels = np.zeros((1, 1, 8, 8), np.float32).tolist()
            for agent in (good, blind, wrong):  # every device serves whatever its link does
                answer = httpx.post(f"{agent.http_url}/v1/predict", json={"inputs": pixels}, timeout=30)
                assert answer.status_code == 200, answer.text
            assert wait_stored(sessions, "pi-1", 1, timeout=30) >= 1, "pi-1's telemetry was not stored over TLS"
            until(lambda: blind.transport.last_error and wrong.transport.last_error,
                  "both failed connections to report why", 30)
            assert good.transport.connected and good.transport.connects >= 1
            assert "CERTIFICATE_VERIFY_FAILED" in blind.transport.last_error, blind.transport.last_error
            assert "needs mqtts://" in wrong.transport.last_error, wrong.transport.last_error
            assert blind.transport.connects == 0 and wrong.transport.connects == 0
            health = httpx.get(f"{blind.http_url}/healthz", timeout=10).json()["mqtt"]
            assert not health["connected"] and "CERTIFICATE_VERIFY_FAILED" in health["last_error"]
    assert wait_stored(sessions, "pi-2", 1, timeout=0) == 0 and wait_stored(sessions, "pi-3", 1, timeout=0) == 0


def test_mixed_schemes_and_a_bad_ca_are_refused(tmp_path, digits_bundle):
    from edgefleet.core.errors import EdgefleetError
    from edgefleet.edge_runtime.mqtt import MqttTransport, TransportError, parse_url
    from edgefleet.edge_runtime.outbox import Outbox

    assert parse_url("mqtts://broker.example") == ("broker.example", 8883)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    with pytest.raises(TransportError, match="mix mqtt:// and mqtts://"):
        MqttTransport("mqtts://a.example", fleet="lab", device="pi-1", outbox=outbox, failover=["mqtt://b.example"])
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(EdgefleetError, match="mqtt_ca: .*holds no PEM certificate"):
        load_settings(data_dir=tmp_path / "cloud", mqtt_url="mqtts://127.0.0.1:8883", mqtt_ca=bad)
