"""The registry on an S3 store (cloud/bundle_store.py): a real S3 API server (moto's standalone server,
tests/s3.py, a subprocess on a free loopback port) behind the real cloud. A pushed bundle lands in the
bucket and not in the data directory; the admin downloads it whole and by Range through the API; a device's
signed URL is redirected to a presigned GET that the device's own downloader follows, resuming with Range;
a rollout's devices install from it; an object removed or replaced in the bucket is a clear 404 or 409."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgefleet.cloud.bundle_store import S3Store
from edgefleet.cloud.signed_urls import download_secret, signed_download_url
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.download import download
from tests.cloud.rollout_kit import (  # noqa: F401 - fixtures, found by pytest under their names
    GZIP,
    Cloud,
    archive_fixture,
    devices_to_stop_fixture,
    no_edgefleet_environment_fixture,
    planned_waves,
    start_cloud_fixture,
    start_devices,
)
from tests.s3 import CREDENTIALS, S3Server

BUCKET, PREFIX = "fleet-bundles", "edgefleet/prod"
KEY = f"{PREFIX}/bundles/digits-cnn/1.tar.gz"


def _secret(cloud) -> bytes:  # noqa: ANN001 - either kit's Cloud
    """The download URL signing key, as the cloud keeps it (in its database)."""
    return download_secret(cloud.settings, cloud.server.sessions)


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_cloud(s3: S3Server, start_cloud, archive: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = s3.client()
    bucket = f"{BUCKET}-{hashlib.sha256(str(archive).encode()).hexdigest()[:8]}"  # one per test
    client.create_bucket(Bucket=bucket)
    cloud = start_cloud(bundle_store=f"s3://{bucket}/{PREFIX}", s3_endpoint=s3.url)
    pushed = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
    assert pushed.status_code == 201, pushed.text
    cloud.bucket = bucket  # type: ignore[attr-defined]
    return cloud


def test_push_lands_in_the_bucket_and_downloads_stream_with_range(s3_cloud: Cloud, s3: S3Server, archive: Path,
                                                                   tmp_path: Path, digits_bundle):
    data = archive.read_bytes()
    head = s3.client().head_object(Bucket=s3_cloud.bucket, Key=KEY)
    assert head["ContentLength"] == len(data) and head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not (s3_cloud.settings.data_dir / "bundles").exists()  # nothing on the API's disk

    whole = s3_cloud.client.get("/api/v1/bundles/digits-cnn/1/download")  # the admin: streamed by the API
    assert whole.status_code == 200 and whole.content == data, whole.text
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-length"] == str(len(data))
    part = s3_cloud.client.get("/api/v1/bundles/digits-cnn/1/download", headers={"Range": "bytes=100-299"})
    assert part.status_code == 206 and part.content == data[100:300]
    assert part.headers["content-range"] == f"bytes 100-299/{len(data)}"
    tail = s3_cloud.client.get("/api/v1/bundles/digits-cnn/1/download", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == data[-50:]
    past = s3_cloud.client.get("/api/v1/bundles/digits-cnn/1/download", headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"

    # A device: its signed URL answers 307 to a presigned GET on the store, which serves the bytes.
    signed = signed_download_url(_secret(s3_cloud), s3_cloud.server.url, "digits-cnn", 1, "pi-7", ttl=60)
    redirect = httpx.get(signed)
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(f"{s3.url}/{s3_cloud.bucket}/")
    assert "X-Amz-Signature=" in redirect.headers["location"] and "X-Amz-Expires=300" in redirect.headers["location"]
    assert httpx.get(redirect.headers["location"], headers={"Range": "bytes=10-19"}).content == data[10:20]
    assert httpx.get(signed.replace("sig=", "sig=0")).status_code == 403  # still the API's signature first

    # The device's own downloader follows the redirect and resumes a partial file with Range.
    dest = tmp_path / "incoming" / "digits-1.tar.gz"
    dest.parent.mkdir()
    Path(f"{dest}.partial").write_bytes(data[:1000])
    download(signed, dest, max_bytes=len(data), expected_sha256=hashlib.sha256(data).hexdigest(),
             expected_size=len(data))
    assert dest.read_bytes() == data

    # The drift monitor's reference profile comes out of the stored object.
    from edgefleet.cloud.api.bundles import reference_profile

    profile = reference_profile(s3_cloud.server.sessions, s3_cloud.settings, "digits-cnn", 1)
    assert profile == Bundle.open(digits_bundle.root).reference_profile() and profile


def test_a_rollout_installs_from_the_bucket(s3_cloud: Cloud, mosquitto, devices_to_stop):
    devices = start_devices(s3_cloud, mosquitto, 3, running=devices_to_stop)
    plan = s3_cloud.deploy(kind="waves", waves=[100], success_threshold=1.0)
    assert sorted(d for wave in planned_waves(plan) for d in wave) == sorted(devices)
    done = s3_cloud.wait_state(plan["id"], "completed")
    assert done["counts"] == {"active": 3}
    assert all(device.downloads == [True] for device in devices.values())  # size and sha256 checked


def test_a_missing_or_replaced_object_is_a_clear_error(s3_cloud: Cloud, s3: S3Server):
    client = s3.client()
    signed = signed_download_url(_secret(s3_cloud), s3_cloud.server.url, "digits-cnn", 1, "pi-7", ttl=60)
    client.put_object(Bucket=s3_cloud.bucket, Key=KEY, Body=b"not the bundle")  # replaced behind the registry
    for response in (s3_cloud.client.get("/api/v1/bundles/digits-cnn/1/download"), httpx.get(signed)):
        assert response.status_code == 409, response.text
        assert "is not the one registered" in response.json()["detail"]

    client.delete_object(Bucket=s3_cloud.bucket, Key=KEY)
    for response in (s3_cloud.client.get("/api/v1/bundles/digits-cnn/1/download"), httpx.get(signed)):
        assert response.status_code == 404, response.text
        assert "missing from the s3 store" in response.json()["detail"]

    # the API keeps serving: the registry's listing still answers
    assert s3_cloud.client.get("/api/v1/bundles").status_code == 200


def test_an_unreachable_store_is_a_503_and_a_bad_store_url_is_refused(s3: S3Server, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from edgefleet.cloud.settings import load_settings
    from edgefleet.core.errors import EdgefleetError

    with pytest.raises(EdgefleetError, match=r"--store: expected s3://BUCKET\[/PREFIX\]"):
        load_settings(data_dir=tmp_path, bundle_store="/var/bundles")
    shown = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--help"], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0 and "s3://BUCKET/PREFIX" in shown.stdout, shown.stdout + shown.stderr
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    store = S3Store("no-such-bucket", "", s3.url)
    with pytest.raises(Exception) as raised:
        store.put("bundles/x/1.tar.gz", tmp_path / "absent.tar.gz", "00")
    assert isinstance(raised.value, FileNotFoundError)  # the local file: nothing was sent
    source = tmp_path / "x.tar.gz"
    source.write_bytes(b"x")
    from edgefleet.cloud.bundle_store import StoreError

    with pytest.raises(StoreError, match="NoSuchBucket"):
        store.put("bundles/x/1.tar.gz", source, "00")
