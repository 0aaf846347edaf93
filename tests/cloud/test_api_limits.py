"""Hostile requests to a real cloud over real HTTP (CloudServer's uvicorn on a free port, SQLite, Mosquitto as
the external broker; `edgefleet cloud up` as a process where its memory is measured). Each must get a 4xx
with one line, cost bounded work, and leave the server serving (checked after every refusal)."""

from __future__ import annotations

import hashlib
import sqlite3
import tarfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from edgefleet.cloud.api.errors import INTERNAL_ERROR
from edgefleet.core.api_client import CloudClient
from edgefleet.core.archive import pack
from edgefleet.core.errors import EdgefleetError
from tests.cloud.api_kit import (
    GZIP,
    Cloud,
    chunked,
    padded_archive,
    raw_request,
    signed_copy,
    spaces,
    tar_gz,
)
from tests.cloud.cloud_process import cloud_up

JSON = "application/json"
MiB = 1 << 20


pytestmark = pytest.mark.usefixtures("clean_environment")



# --- bodies that are not JSON within limits ----------------------------------------------------------
BAD_BODIES = {
    "NaN": (b'{"fleet": NaN}', JSON, 400, "request body holds NaN: only finite numbers are accepted"),
    "-Infinity": (b'{"fleet": "lab", "id": -Infinity}', JSON, 400, "holds -Infinity"),
    "1e999": (b'{"fleet": 1e999}', JSON, 400, "the number 1e999, too large for a double"),
    "2**63": (b'{"fleet": 9223372036854775808}', JSON, 400, "outside the 64-bit range"),
    "10**400": (b'{"fleet": 1' + b"0" * 400 + b"}", JSON, 400, "holds a 401-digit integer"),
    "invalid UTF-8 as text/plain": (b'{"fleet": "\xff\xfe"}', "text/plain", 415,
                                    "send the request body as JSON with Content-Type application/json, "
                                    "not text/plain"),
    "invalid UTF-8 as JSON": (b'{"fleet": "\xff\xfe"}', JSON, 400, "request body is not UTF-8 text (byte 11)"),
    "nested 50,000 deep": (b"[" * 50_000 + b"]" * 50_000, JSON, 400,
                           "request body nests arrays/objects 50000 deep; the limit is 16"),
    "not JSON": (b'{"fleet": ', JSON, 400, "request body is not JSON: Expecting value"),
    "a number for a name": (b'{"fleet": 5}', JSON, 422, "body.fleet: Input should be a valid string"),
    "a missing field": (b"{}", JSON, 422, "body.fleet: Field required"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_a_body_that_is_not_json_within_limits_gets_one_4xx_line(cloud: Cloud, case: str):
    body, content_type, status, message = BAD_BODIES[case]
    response = cloud.client.post("/api/v1/devices", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail and "\n" not in detail
    assert cloud.client.get("/api/v1/devices").json() == []  # nothing registered ...
    registered = cloud.client.post("/api/v1/devices", json={"id": "pi-1", "fleet": "lab"})
    assert registered.status_code == 201  # ... and the server serves


def test_every_json_route_parses_with_the_same_limits(cloud: Cloud):
    """The deployments route (another router) gets the same refusals: the guard runs before every route."""
    nan = cloud.client.post("/api/v1/deployments", content=b'{"bundle": {"name": "digits-cnn", "version": NaN}}',
                            headers={"Content-Type": JSON})
    assert nan.status_code == 400 and "holds NaN" in nan.json()["detail"]
    plain = cloud.client.post("/api/v1/deployments", content=b"\xff", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["detail"]
    cloud.assert_serving()


# --- auth before the body, size caps ------------------------------------------------------------------
ANONYMOUS = {"no token": {}, "wrong token": {"Authorization": "Bearer not-a-token"},
             "basic auth": {"Authorization": "Basic YWRtaW46eA=="}}


@pytest.mark.parametrize("who", sorted(ANONYMOUS))
@pytest.mark.parametrize("route", ["/api/v1/devices", "/api/v1/deployments", "/api/v1/bundles"])
def test_an_anonymous_body_is_refused_before_a_byte_of_it_is_read(cloud: Cloud, route: str, who: str):
    """Only the request head is sent, announcing 500 MB (or a chunked body): the 401 must come anyway,
    which it can only if the server decided from the headers."""
    for framing in ({"Content-Length": str(500 * MiB)}, {"Transfer-Encoding": "chunked"}):
        answer = raw_request(cloud.server.url, "POST", route,
                             {**ANONYMOUS[who], **framing, "Content-Type": JSON}, timeout=10)
        assert answer.status == 401, answer.body
        assert answer.headers["connection"] == "close"  # no body was sent: answering at all shows it did not wait
        assert answer.headers["www-authenticate"] == "Bearer" and "token" in answer.detail
    cloud.assert_serving()


def test_a_body_outside_the_api_is_never_read(cloud: Cloud):
    """No route outside /api/v1 takes a body: /healthz answers and closes, whatever is announced. No body is
    ever sent, so an answer at all (before the client's timeout) shows the server did not wait for one; the
    time it took is not asserted (a loaded CI host)."""
    for method, status in (("GET", 200), ("POST", 405)):
        answer = raw_request(cloud.server.url, method, "/healthz", {"Content-Length": str(MiB),
                                                                     "Content-Type": "text/plain"}, timeout=10)
        assert answer.status == status and answer.headers["connection"] == "close"
    cloud.assert_serving()


def test_bodies_over_the_cap_get_413_by_length_and_while_streaming(cloud: Cloud):
    auth = {"Authorization": f"Bearer {cloud.token}", "Content-Type": JSON}
    declared = raw_request(cloud.server.url, "POST", "/api/v1/devices",
                           {**auth, "Content-Length": str(2 * MiB)}, timeout=10)  # no body sent at all
    assert declared.status == 413  # answered although the announced body never came
    assert declared.detail == (f"request body of {2 * MiB} bytes is larger than the limit of {MiB} bytes for a "
                               f"JSON request body (max_json_bytes)")

    streamed = cloud.client.post("/api/v1/devices", content=spaces(3 * MiB, 64 * 1024), headers=auth)  # chunked
    assert streamed.status_code == 413
    assert streamed.json()["detail"] == (f"request body is larger than the limit of {MiB} bytes for a JSON request "
                                         f"body (max_json_bytes)")

    upload = raw_request(cloud.server.url, "POST", "/api/v1/bundles",
                         {**auth, "Content-Type": "application/gzip", "Transfer-Encoding": "chunked"},
                         chunked(spaces(cloud.settings.max_bundle_bytes + 4 * MiB)), timeout=60)
    assert upload.status == 413 and "limit of" in upload.detail and "(max_bundle_bytes)" in upload.detail
    assert cloud.stored_files() == []
    cloud.assert_serving()


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


@pytest.mark.slow
def test_a_large_anonymous_body_leaves_the_server_small(tmp_path: Path, mosquitto, digits_bundle):
    """`edgefleet cloud up` as a process; 300 MB streamed from a generator announcing 500 MB (once read
    whole: RSS 459 MB -> 1,959 MB), then the same past the cap with a token and no length. The server's
    RSS is sampled all along."""
    args = ("--data", str(tmp_path / "data"), "--mqtt-url", mosquitto.url, "--trust", str(digits_bundle.public_key))
    with cloud_up(tmp_path, *args) as (process, _lines, url, output):
        token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        baseline = peak = _rss(process.pid)
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.wait(0.02):
                peak = max(peak, _rss(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        anonymous = raw_request(url, "POST", "/api/v1/devices", {"Content-Type": JSON, "Content-Length":
                                                                 str(500 * MiB)}, spaces(300 * MiB), timeout=60)
        streamed = raw_request(url, "POST", "/api/v1/devices",
                               {"Authorization": f"Bearer {token}", "Content-Type": JSON,
                                "Transfer-Encoding": "chunked"}, chunked(spaces(300 * MiB)), timeout=60)
        time.sleep(0.5)  # the server has dropped what it lingered on
        sampling.set()
        sampler.join(5)
        assert anonymous.status == 401, anonymous
        assert streamed.status == 413, streamed
        assert anonymous.sent < 64 * MiB and streamed.sent < 64 * MiB  # cut off long before 300 MB
        assert peak - baseline < 48 * MiB, f"RSS grew from {baseline / MiB:.0f} to {peak / MiB:.0f} MiB"
        print(f"RSS {baseline / MiB:.0f} MiB -> peak {peak / MiB:.0f} MiB; 401 after {anonymous.seconds:.3f} s "
              f"({anonymous.sent / MiB:.0f} MiB sent), 413 after {streamed.seconds:.3f} s "
              f"({streamed.sent / MiB:.0f} MiB sent)")
        assert httpx.get(url + "/api/v1/devices", headers={"Authorization": f"Bearer {token}"},
                         timeout=10).json() == []


# --- hostile archives ----------------------------------------------------------------------------------
HOSTILE_ARCHIVES = {  # members in order, and what the refusal must name
    "file a, then a/b": ([("a", b"x"), ("a/b", b"y")], "'a/b'"),
    "directory a, then file a": ([("a", None), ("a", b"x")], "'a'"),
    "file a twice": ([("a", b"x"), ("a", b"y")], "'a'"),
    "manifest nested 50,000 deep": ([("manifest.json", b"[" * 50_000 + b"]" * 50_000)], "deep"),
    "a 20 MB manifest": ([("manifest.json", b" " * (20 * MiB))], "the limit is"),
    "signature nested 30,000 deep": ([("manifest.json", b'{"schema_version": 1}'),
                                      ("signature.json", b"[" * 30_000 + b"]" * 30_000)],
                                     "deep"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ARCHIVES))
def test_a_hostile_archive_gets_one_4xx_line(cloud: Cloud, tmp_path: Path, case: str):
    """Once FileExistsError and RecursionError came back as 500s."""
    members, named = HOSTILE_ARCHIVES[case]
    archive = tar_gz(tmp_path / "hostile.tar.gz", members)
    response = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]
    assert named in detail and "\n" not in detail, detail
    assert cloud.stored_files() == []
    cloud.assert_serving()


# --- padded bundles ------------------------------------------------------------------------------------
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("kind", ["directories", "listed files", "unlisted files"])
def test_a_signed_bundle_padded_with_200000_entries_is_refused_fast(cloud: Cloud, digits_bundle, tmp_path: Path,
                                                                     kind: str):
    """Once accepted after 220 s of server time (directories) or refused after 41 s (files). The archive's
    limits (members, directories, the manifest's size when it lists them all) must refuse it from the
    headers, before a directory is made."""
    count = 200_000
    if kind == "listed files":
        listed = {f"pad/p{index:06d}": {"sha256": EMPTY_SHA256, "size": 0} for index in range(count)}
        root = signed_copy(digits_bundle.root, tmp_path / "padded", digits_bundle.private_key, listed=listed)
    else:
        root = signed_copy(digits_bundle.root, tmp_path / "padded", digits_bundle.private_key)
    archive = padded_archive(root, tmp_path / "padded.tar.gz", count,
                             tarfile.DIRTYPE if kind == "directories" else tarfile.REGTYPE)
    started = time.monotonic()
    response = cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
    seconds = time.monotonic() - started
    assert 400 <= response.status_code < 500, response.text
    assert any(word in response.json()["detail"] for word in ("more than", "limit")), response.text
    assert seconds < 10, f"refused after {seconds:.1f} s"
    print(f"{kind}: {response.status_code} after {seconds:.2f} s: {response.json()['detail']}")
    assert cloud.stored_files() == [] and not any((cloud.settings.data_dir / "tmp").iterdir())
    cloud.assert_serving()


# --- the CLI's client -------------------------------------------------------------------------------------
def test_the_cli_client_turns_every_refusal_into_one_line(start_cloud, digits_bundle, tmp_path: Path):
    archive = pack(digits_bundle.root, tmp_path / "digits.tar.gz")
    small = start_cloud(max_bundle_bytes=archive.stat().st_size - 1)
    with pytest.raises(EdgefleetError, match=rf"is {archive.stat().st_size} bytes; the registry at .* takes at "
                                             rf"most {archive.stat().st_size - 1} bytes \(its max_bundle_bytes\)"):
        CloudClient(small.server.url, small.token).post_file("/api/v1/bundles", archive)
    assert small.stored_files() == []  # refused before a byte was sent

    cloud = start_cloud()
    client = CloudClient(cloud.server.url, cloud.token)
    assert client.post_file("/api/v1/bundles", archive)["version"] == 1  # streamed from disk
    with pytest.raises(EdgefleetError, match=r"^POST /api/v1/devices: 401 invalid admin token$"):
        CloudClient(cloud.server.url, "not-a-token").post_json("/api/v1/devices", {"fleet": "lab"})
    with pytest.raises(EdgefleetError, match=r"^POST /api/v1/devices: 422 body.fleet: Input should be a valid "):
        client.post_json("/api/v1/devices", {"fleet": 5})
    with pytest.raises(EdgefleetError, match=r"a number JSON cannot carry"):
        client.post_json("/api/v1/devices", {"fleet": "lab", "id": float("nan")})
    assert client.post_json("/api/v1/devices", {"id": "pi-1", "fleet": "lab"})["id"] == "pi-1"


# --- no traceback, ever ---------------------------------------------------------------------------------
def test_an_internal_error_is_one_fixed_line_and_the_server_keeps_serving(cloud: Cloud):
    """A database that lost a table (as after a bad manual migration): the route fails inside, the client
    gets a fixed line and no trace of the code, and every other route still serves."""
    with sqlite3.connect(cloud.settings.db_url.removeprefix("sqlite:///")) as db:
        db.execute("DROP TABLE drift_results")
    response = cloud.client.get("/api/v1/fleets/lab/drift")
    assert response.status_code == 500 and response.json() == {"detail": INTERNAL_ERROR}
    assert "Traceback" not in response.text and "sqlite" not in response.text.lower()
    assert httpx.get(cloud.server.url + "/healthz").json() == {"status": "ok", "db": True}
    cloud.assert_serving()
