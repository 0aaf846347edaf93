"""The cloud's side of data capture, fed over real HTTP to a real CloudServer (SQLite, Mosquitto): device
authentication, uploads deduplicated on (device, sample id), every refusal as one 4xx (never a 500), the
privacy switch, the listing joined with labels from the feedback API, retention and `edgefleet capture`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx
import numpy as np

from edgefleet.cloud.capture_store import decode_arrays
from edgefleet.cloud.capture_tables import CaptureSample
from edgefleet.cloud.retention import Retention, RetentionSettings
from edgefleet.edge_runtime.capture import Capturer, encode_arrays
from edgefleet.edge_runtime.capture_spool import CaptureSpool
from edgefleet.edge_runtime.capture_upload import CaptureUplink
from tests.cloud.api_kit import Cloud


def register(cloud: Cloud, device: str, fleet: str = "lab") -> httpx.BasicAuth:
    answer = cloud.client.post("/api/v1/devices", json={"id": device, "fleet": fleet})
    assert answer.status_code == 201, answer.text
    return httpx.BasicAuth(device, answer.json()["mqtt"]["password"])


def sample(device: str, request_id: str | None = None, **changes: object) -> dict:
    pixels = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    return {"sample_id": uuid.uuid4().hex, "request_id": request_id or uuid.uuid4().hex, "device": device,
            "fleet": "lab", "captured_at": time.time(), "model": {"name": "digits", "version": 1},
            "task": "classification", "confidence": 0.4, "slice": None, "reason": "sampled",
            "inputs": encode_arrays({"pixels": pixels}),
            "outputs": encode_arrays({"logits": np.linspace(-1, 1, 10, dtype=np.float32)[None]}), **changes}


def upload(cloud: Cloud, auth: httpx.BasicAuth | None, samples: list[dict]) -> httpx.Response:
    return httpx.post(f"{cloud.server.url}/api/v1/device/captures", json={"samples": samples}, auth=auth, timeout=30)


def test_an_upload_is_stored_once_and_listed_with_its_label(cloud: Cloud):
    auth = register(cloud, "cam-1")
    first, second = sample("cam-1", "req-1"), sample("cam-1", "req-2")
    answer = upload(cloud, auth, [first, second])
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 2 and set(answer.json()["acknowledged"]) == {first["sample_id"],
                                                                                  second["sample_id"]}
    again = upload(cloud, auth, [first, second]).json()  # a resend after a lost answer
    assert again["stored"] == 0 and again["duplicates"] == 2 and len(again["acknowledged"]) == 2
    label = cloud.client.post("/api/v1/feedback", json={"device": "cam-1", "request_id": "req-1", "label": 3})
    assert label.status_code == 202, label.text
    rows = cloud.client.get("/api/v1/captures", params={"device": "cam-1", "model": "digits",
                                                        "since": time.time() - 60, "arrays": "true"}).json()
    assert [r["request_id"] for r in rows] == ["req-1", "req-2"]
    assert rows[0]["label"] == {"label": 3} and rows[1]["label"] is None
    assert rows[0]["inputs"]["pixels"]["shape"] == [1, 8, 8]
    pixels = np.frombuffer(__import__("base64").b64decode(rows[0]["inputs"]["pixels"]["data"]), np.float32)
    assert np.array_equal(pixels.reshape(1, 8, 8), np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64)
    assert cloud.client.get("/api/v1/captures", params={"since": time.time() + 60}).json() == []
    counters = cloud.client.get("/api/v1/ingest").json()
    assert counters["capture_stored"] == 2 and counters["capture_duplicate"] == 2


def test_devices_authenticate_with_their_own_credentials(cloud: Cloud):
    auth = register(cloud, "cam-1")
    other = register(cloud, "cam-2")
    body = [sample("cam-1")]
    assert upload(cloud, None, body).status_code == 401
    assert upload(cloud, httpx.BasicAuth("cam-1", "wrong"), body).status_code == 401
    assert upload(cloud, httpx.BasicAuth("nobody", "x"), body).status_code == 401
    admin = httpx.post(f"{cloud.server.url}/api/v1/device/captures", json={"samples": body}, timeout=30,
                       headers={"Authorization": cloud.client.headers["Authorization"]})
    assert admin.status_code == 401  # the admin token is not a device
    assert httpx.get(f"{cloud.server.url}/api/v1/captures", auth=auth).status_code == 401  # nor a device an admin
    answer = upload(cloud, other, body).json()  # cam-2 cannot upload as cam-1
    assert answer["stored"] == 0 and "not the one that sent it" in answer["refused"][0]["reason"]
    assert upload(cloud, auth, body).json()["stored"] == 1


MALFORMED = [
    (b"not json", "JSON"),
    (b"", "JSON"),
    (b'{"samples": "x"}', "list of 1 to"),
    (b'{"samples": []}', "list of 1 to"),
    (b'{"samples": [{"request_id": "r"}]}', "sample_id"),
    (b'{"samples": [{"sample_id": "../x"}]}', "sample_id"),
    (b'{"other": 1}', "samples"),
    (b'{"samples": [' + b"[" * 40 + b"]" * 40 + b"]}", "deep"),
    (b'{"samples": [{"sample_id": "a", "captured_at": NaN}]}', "NaN"),
]
BAD_SAMPLES = [
    ({"inputs": {"pixels": {"dtype": "|O", "shape": [1], "data": "AAAAAAAAAAA="}}}, "dtype"),
    ({"inputs": {"pixels": {"dtype": "<f4", "shape": [1000], "data": "AAAA"}}}, "exactly 4000 bytes"),
    ({"inputs": {"pixels": {"dtype": "<f4", "shape": [1], "data": "!!!!!!!!"}}}, "not base64"),
    ({"inputs": {"pixels": {"dtype": "<f4", "shape": [1] * 9, "data": "AAAAAA=="}}}, "at most 8"),
    ({"inputs": {"pixels": {"dtype": "<f4", "shape": [-1], "data": ""}}}, "shape"),
    ({"inputs": {"pixels": [1, 2]}}, "dtype"),
    ({"model": {"name": "digits", "version": -1}}, "model"),
    ({"request_id": "a b"}, "request_id"),
    ({"captured_at": "yesterday"}, "captured_at"),
    ({"confidence": 7}, "confidence"),
]


def test_a_malformed_upload_gets_one_400_and_a_bad_sample_is_refused_by_id(cloud: Cloud):
    auth = register(cloud, "cam-1")
    for content, fragment in MALFORMED:
        answer = httpx.post(f"{cloud.server.url}/api/v1/device/captures", content=content, auth=auth, timeout=30,
                            headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and fragment in answer.text, (content[:40], answer.text)
    for change, fragment in BAD_SAMPLES:
        bad, good = sample("cam-1", **change), sample("cam-1")
        answer = upload(cloud, auth, [bad, good])
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["stored"] == 1 and body["acknowledged"] == [good["sample_id"]]
        assert body["refused"][0]["sample_id"] == bad["sample_id"], body
        assert fragment in body["refused"][0]["reason"], (change, body)
    assert len(cloud.client.get("/api/v1/captures").json()) == len(BAD_SAMPLES)


def test_an_oversized_upload_gets_one_413(start_cloud):
    cloud = start_cloud(max_capture_upload_bytes=64 * 1024)
    auth = register(cloud, "cam-1")
    big = [sample("cam-1", inputs=encode_arrays({"pixels": np.zeros(20_000, np.float32)}))]
    answer = upload(cloud, auth, big)
    assert answer.status_code == 413 and "max_capture_upload_bytes" in answer.text, answer.text

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"samples": [{"sample_id": "a", "pad": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}]}'

    streamed = httpx.post(f"{cloud.server.url}/api/v1/device/captures", content=chunks(), auth=auth, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413, streamed.text
    assert upload(cloud, auth, [sample("cam-1")]).json()["stored"] == 1  # and it keeps serving


def test_the_privacy_switch_refuses_uploads_and_tells_the_devices(cloud: Cloud):
    auth = register(cloud, "cam-1")
    policy = httpx.get(f"{cloud.server.url}/api/v1/device/capture", auth=auth, timeout=30).json()
    assert policy["enabled"] is False and policy["never_capture"] is False  # off by default
    changed = cloud.client.put("/api/v1/fleets/lab/capture", json={"enabled": True, "never_capture": True,
                                                                     "sample_rate": 1.0})
    assert changed.status_code == 200 and changed.json()["sample_rate"] == 1.0, changed.text
    policy = httpx.get(f"{cloud.server.url}/api/v1/device/capture", auth=auth, timeout=30).json()
    assert policy["never_capture"] is True and policy["drift_alert_open"] is False
    answer = upload(cloud, auth, [sample("cam-1")])
    assert answer.status_code == 403 and answer.json()["reason"] == "never_capture"
    assert cloud.client.get("/api/v1/captures").json() == []
    refused = cloud.client.put("/api/v1/fleets/lab/capture", json={"sample_rate": 2})
    assert refused.status_code == 422 and "sample_rate" in refused.text
    assert cloud.client.put("/api/v1/fleets/lab/capture", json={"surprise": 1}).status_code == 422


def test_retention_deletes_samples_after_their_fleets_period(cloud: Cloud):
    auth, other = register(cloud, "cam-1"), register(cloud, "cam-9", fleet="yard")
    cloud.client.put("/api/v1/fleets/lab/capture", json={"retention_days": 1})
    assert upload(cloud, auth, [sample("cam-1")]).json()["stored"] == 1
    assert upload(cloud, other, [sample("cam-9", fleet="yard")]).json()["stored"] == 1
    retention = Retention(cloud.server.sessions, RetentionSettings(captures_days=30))
    assert retention.run_once(now=time.time() + 0.5 * 86400)["captures"] == 0
    assert retention.run_once(now=time.time() + 2 * 86400)["captures"] == 1  # lab keeps 1 day
    assert [r["device"] for r in cloud.client.get("/api/v1/captures").json()] == ["cam-9"]
    assert retention.run_once(now=time.time() + 31 * 86400)["captures"] == 1  # yard: the 30-day default
    with cloud.server.sessions() as session:
        assert session.query(CaptureSample).count() == 0


def test_stored_arrays_decode_to_what_the_device_sent(cloud: Cloud):
    auth = register(cloud, "cam-1")
    pixels = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    sent = sample("cam-1", inputs=encode_arrays({"pixels": pixels, "mask": np.array([True, False])}))
    assert upload(cloud, auth, [sent]).json()["stored"] == 1
    with cloud.server.sessions() as session:
        decoded = decode_arrays(session.query(CaptureSample).one())
    assert np.array_equal(decoded["inputs"]["pixels"], pixels) and decoded["inputs"]["mask"].tolist() == [True, False]


def test_the_capture_commands(cloud: Cloud, tmp_path):
    auth = register(cloud, "cam-1")
    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "200",
           "PATH": "/usr/bin:/bin"}

    def edgefleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "capture", *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)

    changed = edgefleet("settings", "lab", "--enable", "--sample-rate", "0.05", "--low-confidence-below", "0.6")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["low_confidence_below"] == 0.6
    upload(cloud, auth, [sample("cam-1", "req-7")])
    cloud.client.post("/api/v1/feedback", json={"device": "cam-1", "request_id": "req-7", "label": 5})
    listed = edgefleet("list", "--device", "cam-1", "--model", "digits", "--minutes", "5")
    assert listed.returncode == 0 and "req-7" in listed.stdout and "1 captured samples" in listed.stdout, listed
    rows = json.loads(edgefleet("list", "--json").stdout)
    assert rows[0]["label"] == {"label": 5}
    bad = edgefleet("list", "--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr and "Traceback" not in bad.stderr


def test_the_uplink_isolates_and_deletes_what_the_cloud_will_never_take(start_cloud, tmp_path):
    """A sample the cloud refuses as malformed (400 for its batch) or too large (413) would block the spool:
    the uplink halves its batches until it is alone, deletes it, and uploads the rest."""
    cloud = start_cloud(max_capture_upload_bytes=64 * 1024)
    answer = cloud.client.post("/api/v1/devices", json={"id": "cam-2", "fleet": "lab"}).json()
    password = answer["mqtt"]["password"]
    cloud.client.put("/api/v1/fleets/lab/capture", json={"enabled": True, "sample_rate": 1.0})
    spool = CaptureSpool(tmp_path / "capture.sqlite", 2**24)
    capturer = Capturer(spool, fleet="lab", device="cam-2")
    good = [sample("cam-2") for _ in range(6)]
    malformed = {**sample("cam-2"), "sample_id": "../not-an-id"}
    huge = sample("cam-2", inputs=encode_arrays({"pixels": np.zeros(30_000, np.float32)}))
    for index, item in enumerate([*good[:3], malformed, huge, *good[3:]]):
        assert spool.append(f"s{index}" if item is malformed else item["sample_id"],
                            json.dumps(item).encode()) is None
    uplink = CaptureUplink(capturer, cloud.server.url, username="cam-2", password=password)
    assert uplink.poll().enabled
    for _ in range(50):
        if not uplink.upload_once():
            break
    assert len(spool) == 0 and uplink.uploaded == 6
    stored = cloud.client.get("/api/v1/captures", params={"device": "cam-2"}).json()
    assert sorted(r["sample_id"] for r in stored) == sorted(s["sample_id"] for s in good)
    capturer.close()
    spool.close()


def test_the_policy_says_when_a_drift_alert_is_open_for_the_device_or_its_fleet(cloud: Cloud):
    from edgefleet.cloud.db import Alert

    auth = register(cloud, "cam-1")
    register(cloud, "cam-5", fleet="yard")

    def drift_open() -> bool:
        return httpx.get(f"{cloud.server.url}/api/v1/device/capture", auth=auth, timeout=30).json()["drift_alert_open"]

    def alert(scope: str, scope_id: str, fleet: str, kind: str = "data_drift") -> Alert:
        with cloud.server.sessions.begin() as session:
            row = Alert(scope=scope, scope_id=scope_id, fleet=fleet, model_name="digits", model_version=1, kind=kind,
                        message="m", details={})
            session.add(row)
        return row

    alert("device", "cam-5", "yard")  # another device, another fleet
    alert("device", "cam-1", "lab", kind="latency")  # not a drift alert
    assert drift_open() is False
    fleet_alert = alert("fleet", "lab", "lab", kind="prediction_drift")
    assert drift_open() is True
    with cloud.server.sessions.begin() as session:
        session.get(Alert, fleet_alert.id).status = "closed"
    assert drift_open() is False
