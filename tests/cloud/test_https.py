"""The cloud API over HTTPS with a private CA's certificate: `cloud up --tls-cert/--tls-key` serves it, the CLI
trusts it through SSL_CERT_FILE, `device enroll --ca` enrolls over it and writes the CA into device.toml, and
the enrolled agent (real Mosquitto, the digits CNN) uploads its captured samples over HTTPS. A device that does
not trust the certificate uploads nothing, says why, and keeps serving. A real uvicorn with TLS on a loopback
port; the certificate is made by the test."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import tomllib

from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig
from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.edge_runtime.ota_attack_kit import self_signed_tls
from tests.mosquitto import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow  # the digits bundle


@pytest.fixture(name="tls_files")
def tls_files_fixture(tmp_path: Path) -> tuple[Path, Path]:
    self_signed_tls(tmp_path)  # a certificate for 127.0.0.1 that no system store trusts: its own CA
    return tmp_path / "server.crt", tmp_path / "server.key"


def fast_uploads(config: DeviceConfig) -> DeviceConfig:
    return dataclasses.replace(config, cloud=dataclasses.replace(config.cloud, poll_seconds=0.5, upload_seconds=0.3))


def captures(admin: CloudClient, device: str) -> list:
    return admin.get(f"/api/v1/captures?device={device}")


def test_enrollment_and_captured_samples_go_over_https(tls_files, mosquitto, digits_bundle, digits_splits,
                                                       tmp_path: Path):
    cert, key = tls_files
    settings = load_settings(data_dir=tmp_path / "cloud", port=0, mqtt_url=mosquitto.url,
                             trusted_keys=[digits_bundle.public_key], tls_cert=cert, tls_key=key)
    with CloudServer(settings) as cloud:
        assert cloud.url.startswith("https://127.0.0.1:")
        admin = CloudClient(cloud.url, cloud.new_admin_token, ca=cert)
        assert admin.get("/api/v1/info")["mqtt_url"] == mosquitto.url
        with pytest.raises(EdgefleetError, match="CERTIFICATE_VERIFY_FAILED"):
            CloudClient(cloud.url, admin.token).get("/api/v1/info")  # the system's store does not know this CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(cloud.url.replace("https://", "http://") + "/healthz", timeout=5)  # no plain HTTP on it

        env = {"EDGEFLEET_CLOUD": cloud.url, "EDGEFLEET_TOKEN": admin.token, "SSL_CERT_FILE": str(cert)}
        made = edgefleet("enroll-token", "create", "--fleet", "lab", "--uses", "2", env=env)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        out = tmp_path / "device.toml"
        enrolled = edgefleet("device", "enroll", "--cloud", cloud.url, "--token", token, "--id", "pi-1",
                             "--bundle", str(digits_bundle.root), "--trusted-key", str(digits_bundle.public_key),
                             "--out", str(out), "--port", str(free_port()), "--ca", str(cert))
        assert enrolled.returncode == 0, enrolled.stderr
        written = tomllib.loads(out.read_text())
        ca = str(cert.resolve())
        assert written["cloud"] == {"url": cloud.url, "ca": ca} and written["mqtt"]["ca"] == ca
        trusting = fast_uploads(DeviceConfig.load(out))
        untrusting = dataclasses.replace(trusting, device="pi-2", http_port=free_port(), data_dir=tmp_path / "pi-2",
                                         cloud=dataclasses.replace(trusting.cloud, ca=None))

        admin.put_json("/api/v1/fleets/lab/capture", {"enabled": True, "sample_rate": 1.0, "max_per_second": 1000})
        x = digits_splits.x_test
        with DeviceAgent(trusting) as good, DeviceAgent(untrusting) as blind:
            until(lambda: good.capturer.policy.enabled, "the trusting device to read the settings over HTTPS", 20)
            until(lambda: blind.uplink.last_error, "the untrusting device's first failed poll", 20)
            for agent in (good, blind):
                for index in range(5):
                    answer = httpx.post(f"{agent.http_url}/v1/predict", json={"inputs": x[index:index + 1].tolist()},
                                        timeout=30)
                    assert answer.status_code == 200, answer.text  # a device that cannot upload still serves
            rows = until(lambda: len(r := captures(admin, "pi-1")) >= 5 and r, "5 samples uploaded over HTTPS", 30)
            assert len(rows) == 5 and rows[0]["inputs"]["pixels"]["shape"] == [1, 1, 8, 8]
            assert "CERTIFICATE_VERIFY_FAILED" in blind.uplink.last_error
            assert blind.uplink.requests == 0 and not blind.capturer.policy.enabled  # never got the settings
        assert captures(admin, "pi-2") == []


def test_a_bad_tls_setting_is_one_line_and_exit_2(tls_files, tmp_path: Path):
    cert, key = tls_files
    base = [sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--data", str(tmp_path / "cloud"), "--port", "0"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}, "COLUMNS": "200"}
    for extra, message in (
        (["--tls-cert", str(cert)], "tls_cert and tls_key go together"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)], "missing.pem does not exist"),
        (["--tls-cert", str(key), "--tls-key", str(key)], "cannot be used together"),
    ):
        result = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120, env=env)
        assert_user_error(result, message)


def test_a_device_config_with_an_unreadable_ca_is_refused(tmp_path: Path, digits_bundle):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    text = "\n".join([
        "[device]", 'id = "pi-1"', 'fleet = "lab"', "", "[model]", f"bundle = {json.dumps(str(digits_bundle.root))}",
        f"trusted_keys = [{json.dumps(str(digits_bundle.public_key))}]", "",
        "[mqtt]", 'url = "mqtt://127.0.0.1:1883"', "", "[cloud]", 'url = "https://127.0.0.1:8443"',
        f"ca = {json.dumps(str(bad))}", ""])
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises(EdgefleetError, match="cloud.ca: CA file .*ca.pem holds no PEM certificate"):
        DeviceConfig.load(path)
