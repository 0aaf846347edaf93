"""The cloud API as a client sees it: the real uvicorn server that `CloudServer` runs on a free port, a
real SQLite file, and the Mosquitto fixture as the external broker (so no embedded broker runs)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.cloud.api.bundles import reference_profile
from edgefleet.cloud.auth import check_token, create_token, ensure_admin_token
from edgefleet.cloud.db import Alert, Device, DriftResult, IngestCounter
from edgefleet.cloud.mqtt_auth import verify_password
from edgefleet.cloud.settings import load_settings
from edgefleet.core.bundle import SIGNATURE, Bundle, sign
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.signing import SigningKey
from tests.cloud.api_kit import GZIP, Cloud
from tests.cloud.cloud_process import cloud_up, read_until

pytestmark = pytest.mark.usefixtures("clean_environment")



@pytest.fixture
def archive(digits_bundle, tmp_path: Path) -> Path:
    return Bundle.open(digits_bundle.root).pack(tmp_path / "b.tar.gz")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDGEFLEET_TRUSTED_KEYS", f"{tmp_path / 'a.pub'}{os.pathsep}{tmp_path / 'keys'}")
    monkeypatch.setenv("EDGEFLEET_PORT", "9000")
    settings = load_settings(port=None, host="0.0.0.0")  # None: not given, the environment decides
    assert settings.port == 9000 and settings.host == "0.0.0.0"
    assert settings.trusted_keys == [tmp_path / "a.pub", tmp_path / "keys"]
    assert settings.db_url == f"sqlite:///{tmp_path / 'data' / 'edgefleet.db'}"
    assert settings.broker_url == "mqtt://127.0.0.1:1883" and settings.max_bundle_bytes == 256 * 1024 * 1024
    monkeypatch.setenv("EDGEFLEET_PORT", "eighty")
    with pytest.raises(EdgefleetError, match="port: Input should be a valid integer"):
        load_settings()


# --- auth and health --------------------------------------------------------------------------------
def test_health_needs_no_token(cloud: Cloud):
    response = httpx.get(cloud.server.url + "/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "db": True}


@pytest.mark.parametrize("path", ["/api/v1/devices", "/api/v1/bundles", "/api/v1/alerts", "/api/v1/ingest",
                                  "/api/v1/fleets/f/drift", "/api/v1/devices/d/drift",
                                  "/api/v1/devices/d/windows?resolution=hour", "/api/v1/fleets/f/windows",
                                  "/api/v1/models/m/windows?resolution=day", "/api/v1/ops/settings",
                                  "/api/v1/performance/settings", "/api/v1/webhooks"])
def test_every_api_route_needs_the_admin_token(cloud: Cloud, path: str):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic YWRtaW46eA=="}):
        response = httpx.get(cloud.server.url + path, headers=headers)
        assert response.status_code == 401, (path, headers)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in response.json()["detail"]
    assert cloud.client.get(path).status_code in (200, 404)  # 404: the device "d" does not exist


def test_tokens_are_stored_hashed_and_the_first_is_made_once(cloud: Cloud):
    sessions, token = cloud.server.sessions, cloud.server.new_admin_token
    assert check_token(sessions, token) and not check_token(sessions, token + "x") and not check_token(sessions, "")
    assert ensure_admin_token(sessions) is None  # one exists already
    db_bytes = Path(cloud.settings.db_url.removeprefix("sqlite:///")).read_bytes()
    assert token.encode() not in db_bytes
    second = create_token(sessions, "ci")
    assert httpx.get(cloud.server.url + "/api/v1/devices", headers={"Authorization": f"Bearer {second}"}).is_success


# --- devices ----------------------------------------------------------------------------------------
def test_device_registration(cloud: Cloud):
    response = cloud.client.post("/api/v1/devices", json={"id": "pi-7", "fleet": "lab"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == "pi-7" and body["fleet"] == "lab"
    assert body["mqtt"]["username"] == "pi-7" and len(body["mqtt"]["password"]) >= 32
    assert body["mqtt"]["topics"] == {"publish_prefix": "edgefleet/v1/lab/pi-7/",
                                      "command": "edgefleet/v1/lab/pi-7/cmd"}
    with cloud.server.sessions() as session:
        stored = session.get(Device, "pi-7").password_hash
    assert stored.startswith("$7$") and body["mqtt"]["password"] not in stored
    assert verify_password(body["mqtt"]["password"], stored)

    again = cloud.client.post("/api/v1/devices", json={"id": "pi-7", "fleet": "other"})
    assert again.status_code == 409 and "pi-7" in again.json()["detail"]
    bad = cloud.client.post("/api/v1/devices", json={"id": "pi/7", "fleet": "lab"})
    assert bad.status_code == 400 and "device id 'pi/7' must be" in bad.json()["detail"]
    bad_fleet = cloud.client.post("/api/v1/devices", json={"fleet": "#"})
    assert bad_fleet.status_code == 400 and "fleet '#'" in bad_fleet.json()["detail"]

    generated = cloud.client.post("/api/v1/devices", json={"fleet": "field"}).json()
    assert generated["id"] and generated["mqtt"]["username"] == generated["id"]
    assert [d["id"] for d in cloud.client.get("/api/v1/devices").json()] == [generated["id"], "pi-7"]
    assert [d["id"] for d in cloud.client.get("/api/v1/devices", params={"fleet": "lab"}).json()] == ["pi-7"]
    one = cloud.client.get("/api/v1/devices/pi-7").json()
    assert one["online"] is False and one["model_name"] is None and one["last_seen"] is None
    missing = cloud.client.get("/api/v1/devices/ghost")
    assert missing.status_code == 404 and missing.json() == {"detail": "no device 'ghost' is registered"}


# --- bundles ----------------------------------------------------------------------------------------
def test_upload_list_duplicate_and_reference_profile(cloud: Cloud, archive: Path, digits_bundle):
    response = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["version"], body["size"]) == ("digits-cnn", 1, archive.stat().st_size)
    assert body["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    stored = cloud.settings.data_dir / "bundles" / "digits-cnn" / "1.tar.gz"
    assert stored.read_bytes() == archive.read_bytes()
    assert cloud.stored_files() == ["bundles/digits-cnn/1.tar.gz"]  # the spool is empty again

    listed = cloud.client.get("/api/v1/bundles").json()
    assert len(listed) == 1 and listed[0]["name"] == "digits-cnn" and listed[0]["version"] == 1
    assert listed[0]["label"] == Bundle.open(digits_bundle.root).manifest.get("label")
    assert listed[0]["metrics"]["eval"]["accuracy"] > 0.9

    again = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(),
                              headers={"Content-Type": "application/octet-stream"})
    assert again.status_code == 409 and "digits-cnn v1" in again.json()["detail"]
    assert len(cloud.client.get("/api/v1/bundles").json()) == 1 and stored.read_bytes() == archive.read_bytes()

    expected = json.loads((digits_bundle.root / "profile.json").read_text())
    assert reference_profile(cloud.server.sessions, cloud.settings, "digits-cnn", 1) == expected
    again_profile = reference_profile(cloud.server.sessions, cloud.settings, "digits-cnn", 1)
    assert again_profile == expected and again_profile is not expected  # cached, but a fresh dict each time
    assert reference_profile(cloud.server.sessions, cloud.settings, "digits-cnn", 2) is None
    assert reference_profile(cloud.server.sessions, cloud.settings, "unknown", 1) is None


def _flip_byte(bundle: Path) -> None:
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def _edit_manifest(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["label"] = "not what was signed"
    (bundle / "manifest.json").write_text(json.dumps(manifest))


REFUSALS = {
    "tampered byte": (_flip_byte, "model.onnx has sha256"),
    "edited manifest": (_edit_manifest, "manifest.json was changed after signing"),
    "unsigned": (lambda b: (b / SIGNATURE).unlink(), "is not signed"),
    "unknown key": (lambda b: sign(b, SigningKey.generate()), "not among the trusted keys"),
    "extra file": (lambda b: (b / "payload.sh").write_text("echo hi"), "payload.sh is in the bundle but not in"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_untrusted_bundles_are_refused_and_nothing_is_stored(cloud: Cloud, bundle_copy: Path, tmp_path: Path,
                                                             case: str):
    damage, message = REFUSALS[case]
    damage(bundle_copy)
    archive = Bundle.open(bundle_copy).pack(tmp_path / "bad.tar.gz")
    response = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert cloud.stored_files() == [] and cloud.client.get("/api/v1/bundles").json() == []


def test_oversized_uploads_get_413_and_nothing_is_stored(start_cloud, archive: Path):
    cloud = start_cloud(max_bundle_bytes=archive.stat().st_size - 1)
    declared = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
    assert declared.status_code == 413 and "limit of" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count while it streams
        data = archive.read_bytes()
        for start in range(0, len(data), 4096):
            yield data[start:start + 4096]

    streamed = cloud.client.post("/api/v1/bundles", content=chunks(), headers=GZIP)
    assert streamed.status_code == 413 and "limit of" in streamed.json()["detail"]
    assert cloud.stored_files() == [] and cloud.client.get("/api/v1/bundles").json() == []


def test_an_archive_that_unpacks_too_large_gets_413(start_cloud, tmp_path: Path):
    cloud = start_cloud(max_bundle_bytes=100_000)
    zeros = tmp_path / "bomb" / "zeros.bin"
    zeros.parent.mkdir()
    zeros.write_bytes(bytes(2_000_000))  # compresses to a few KiB
    bomb = archive_of(zeros.parent, tmp_path / "bomb.tar.gz")
    assert bomb.stat().st_size < 100_000
    response = cloud.client.post("/api/v1/bundles", content=bomb.read_bytes(), headers=GZIP)
    assert response.status_code == 413 and "unpacks to more than" in response.json()["detail"]
    assert cloud.stored_files() == []


def archive_of(directory: Path, out: Path) -> Path:
    from edgefleet.core.archive import pack

    return pack(directory, out)


def test_upload_refusals_that_are_not_about_trust(start_cloud, archive: Path):
    no_keys = start_cloud(trusted_keys=[])
    response = no_keys.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
    assert response.status_code == 400 and "trusts no signing keys" in response.json()["detail"]

    cloud = start_cloud()
    wrong_type = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(),
                                   headers={"Content-Type": "multipart/form-data"})
    assert wrong_type.status_code == 415 and "application/gzip" in wrong_type.json()["detail"]
    garbage = cloud.client.post("/api/v1/bundles", content=b"not a tarball", headers=GZIP)
    assert garbage.status_code == 400 and "not a readable bundle archive" in garbage.json()["detail"]
    assert cloud.stored_files() == [] and cloud.client.get("/api/v1/bundles").json() == []


# --- drift, alerts, ingest --------------------------------------------------------------------------
def _drift(scope: str, scope_id: str, computed_at: float, verdict: str = "ok") -> DriftResult:
    return DriftResult(scope=scope, scope_id=scope_id, fleet="lab", model_name="digits-cnn", model_version=1,
                       window_start=computed_at - 300, window_end=computed_at, samples=640, verdict=verdict,
                       report={"signals": {"confidence": {"psi": 0.01}}}, computed_at=computed_at)


def _alert(opened_at: float, status: str) -> Alert:
    return Alert(scope="device", scope_id="cam-1", fleet="lab", model_name="digits-cnn", model_version=1,
                 kind="data_drift", message=f"drift at {opened_at}", details={"psi": 0.4}, status=status,
                 opened_at=opened_at, closed_at=opened_at + 5 if status == "closed" else None)


def test_drift_alerts_and_ingest_read_what_others_wrote(cloud: Cloud):
    with cloud.server.sessions.begin() as session:
        session.add(Device(id="cam-1", fleet="lab", password_hash="$7$101$x$y"))
        session.add_all([_drift("device", "cam-1", t, "drift" if t == 300 else "ok") for t in (100, 300, 200)])
        session.add_all([_drift("fleet", "lab", 150), _drift("device", "cam-2", 400)])
        session.add_all([_alert(10, "closed"), _alert(30, "open"), _alert(20, "open")])
        session.add_all([IngestCounter(reason="accepted", count=12), IngestCounter(reason="duplicate", count=3)])

    rows = cloud.client.get("/api/v1/devices/cam-1/drift").json()
    assert [r["computed_at"] for r in rows] == [300, 200, 100] and rows[0]["verdict"] == "drift"
    assert rows[0]["report"] == {"signals": {"confidence": {"psi": 0.01}}} and rows[0]["model_name"] == "digits-cnn"
    assert [r["computed_at"] for r in cloud.client.get("/api/v1/devices/cam-1/drift?limit=1").json()] == [300]
    assert cloud.client.get("/api/v1/devices/ghost/drift").status_code == 404
    fleet = cloud.client.get("/api/v1/fleets/lab/drift").json()
    assert [(r["scope"], r["computed_at"]) for r in fleet] == [("fleet", 150)]

    assert [a["opened_at"] for a in cloud.client.get("/api/v1/alerts").json()] == [30, 20]  # open by default
    assert [a["opened_at"] for a in cloud.client.get("/api/v1/alerts?status=closed").json()] == [10]
    everything = cloud.client.get("/api/v1/alerts?status=all").json()
    assert [a["opened_at"] for a in everything] == [30, 20, 10] and everything[2]["closed_at"] == 15
    assert cloud.client.get("/api/v1/alerts?status=maybe").status_code == 422
    assert cloud.client.get("/api/v1/ingest").json() == {"accepted": 12, "duplicate": 3}


# --- the command ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cloud_up_prints_the_token_once_serves_and_stops_on_sigterm(tmp_path: Path, mosquitto, digits_bundle,
                                                                     archive: Path):
    data = tmp_path / "data"
    args = ("--data", str(data), "--mqtt-url", mosquitto.url, "--trust", str(digits_bundle.public_key))
    with cloud_up(tmp_path, *args) as (process, lines, url, output):
        assert f"edgefleet cloud API: {url}" in output and f"MQTT broker (external): {mosquitto.url}" in output
        token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
        assert "shown only now" in output
        assert httpx.get(url + "/healthz", timeout=10).json() == {"status": "ok", "db": True}
        auth = {"Authorization": f"Bearer {token}"}
        pushed = httpx.post(url + "/api/v1/bundles", content=archive.read_bytes(), headers={**auth, **GZIP})
        assert pushed.status_code == 201, pushed.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        read_until(lines, "stopped", process, tmp_path)

    made = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "token", "--data", str(data)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    second = next(line.split(": ", 1)[1] for line in made.stdout.splitlines() if line.startswith("admin token: "))
    assert second != token

    with cloud_up(tmp_path, *args) as (process, lines, url, output):
        assert "admin token" not in output, output  # shown once, on the first start
        for known in (token, second):
            listed = httpx.get(url + "/api/v1/bundles", headers={"Authorization": f"Bearer {known}"}, timeout=10)
            assert [b["name"] for b in listed.json()] == ["digits-cnn"]
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
