"""download() against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

from __future__ import annotations

import os
import socket
import tarfile
import time
from pathlib import Path

import pytest

from edgefleet.core.errors import VerificationError
from edgefleet.edge_runtime.download import CHUNK, DownloadError, download
from tests.edge_runtime.ota_attack_kit import (
    ArtifactServer,
    Endless,
    File,
    Redirect,
    Silent,
    Stall,
    Status,
    Trickle,
    TrickleHeaders,
    self_signed_tls,
    sha256,
)

pytestmark = pytest.mark.timeout(60)

DATA = os.urandom(300_000) + b"the end"  # several chunks, not a multiple of CHUNK
MAX = 1 << 20


@pytest.fixture
def server():
    with ArtifactServer() as running:
        yield running


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "incoming" / "bundle.tar.gz"


def partial_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def refused(reason: str, *args, **kwargs) -> DownloadError:
    with pytest.raises(DownloadError) as caught:
        download(*args, **kwargs)
    assert caught.value.reason == reason, str(caught.value)
    assert isinstance(caught.value, VerificationError)
    return caught.value


def test_whole_file_is_checked_and_renamed(server, dest):
    server.routes["/b"] = File(DATA)
    seen = []
    path = download(server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA), expected_size=len(DATA),
                    progress=lambda done, total: seen.append((done, total)))
    assert path == dest and dest.read_bytes() == DATA
    assert not partial_of(dest).exists()
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) >= len(DATA) // CHUNK
    assert server.ranges("/b") == [None]


def test_redirect_is_followed(server, dest):
    server.routes["/b"] = File(DATA)
    server.routes["/moved"] = Redirect("/b")
    assert download(server.url("/moved"), dest, max_bytes=MAX, expected_sha256=sha256(DATA)).read_bytes() == DATA


def test_a_file_already_in_place_is_not_fetched_again(server, dest):
    dest.parent.mkdir(parents=True)
    dest.write_bytes(DATA)
    assert download(server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA)) == dest
    assert server.requests == []


def test_resume_after_the_server_drops_the_connection(server, dest):
    half = len(DATA) // 2
    server.routes["/b"] = File(DATA, drop_after=half)
    error = refused("http_error", server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA))
    assert f"closed after {half} of {len(DATA)} bytes" in str(error)
    assert partial_of(dest).stat().st_size == half and not dest.exists()

    seen = []
    download(server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA), expected_size=len(DATA),
             progress=lambda done, total: seen.append(done))
    assert dest.read_bytes() == DATA and not partial_of(dest).exists()
    assert server.ranges("/b") == [None, f"bytes={half}-"]
    assert seen[0] > half  # the second call continued, it did not start over


def test_a_server_ignoring_the_range_means_starting_over(server, dest):
    dest.parent.mkdir(parents=True)
    partial_of(dest).write_bytes(b"stale bytes from another file")
    server.routes["/b"] = File(DATA, ignore_range=True)
    download(server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA))
    assert dest.read_bytes() == DATA
    assert server.ranges("/b") == ["bytes=29-"]


def test_416_on_a_whole_partial_checks_it(server, dest):
    dest.parent.mkdir(parents=True)
    partial_of(dest).write_bytes(DATA)
    server.routes["/b"] = File(DATA)
    download(server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA))
    assert dest.read_bytes() == DATA
    assert server.ranges("/b") == [f"bytes={len(DATA)}-"]


def test_416_on_a_stale_partial_starts_over(server, dest):
    dest.parent.mkdir(parents=True)
    partial_of(dest).write_bytes(DATA + b"more than the server has")
    server.routes["/b"] = File(DATA)
    download(server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA))
    assert dest.read_bytes() == DATA
    assert server.ranges("/b") == [f"bytes={len(DATA) + 24}-", None]


def test_a_damaged_partial_is_fetched_once_more_from_zero(server, dest):
    """A power cut can leave garbage in the partial file: the resumed file fails its hash, one fresh try."""
    dest.parent.mkdir(parents=True)
    damaged = bytearray(DATA[:100_000])
    damaged[5_000] ^= 0xFF
    partial_of(dest).write_bytes(bytes(damaged))
    server.routes["/b"] = File(DATA)
    download(server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA))
    assert dest.read_bytes() == DATA
    assert server.ranges("/b") == ["bytes=100000-", None]


def test_endless_data_is_cut_off_at_max_bytes(server, dest):
    server.routes["/b"] = Endless()
    on_disk = []

    def watch(done: int, total: int | None) -> None:
        on_disk.append(partial_of(dest).stat().st_size)

    started = time.monotonic()
    error = refused("too_large", server.url("/b"), dest, max_bytes=MAX, progress=watch)
    assert f"more than {MAX} bytes" in str(error)
    assert time.monotonic() - started < 10
    assert max(on_disk) <= MAX + CHUNK
    assert not partial_of(dest).exists() and not dest.exists()
    assert server.routes["/b"].sent < 64 * MAX  # the server was not drained either


def test_an_announced_size_over_the_limit_is_refused_before_any_byte(server, dest):
    server.routes["/b"] = Endless(announce=10 * MAX)
    error = refused("too_large", server.url("/b"), dest, max_bytes=MAX, progress=lambda *a: pytest.fail("wrote"))
    assert f"announces {10 * MAX} bytes" in str(error)
    assert not partial_of(dest).exists()
    error = refused("too_large", server.url("/b"), dest, max_bytes=MAX, expected_size=MAX + 1)
    assert "the limit is" in str(error) and len(server.requests) == 1  # this one never asked the server


def test_a_stalled_server_is_given_up_on(server, dest):
    server.routes["/b"] = Stall(DATA, after=1000)
    started = time.monotonic()
    error = refused("stalled", server.url("/b"), dest, max_bytes=MAX, stall_seconds=0.5, timeout_seconds=20)
    assert 0.5 <= time.monotonic() - started < 0.5 + 2.0
    assert "nothing received for 0.5 s" in str(error)
    assert partial_of(dest).stat().st_size == 1000  # kept: the next attempt resumes


def test_a_server_that_never_answers_is_given_up_on(server, dest):
    server.routes["/b"] = Silent()
    started = time.monotonic()
    error = refused("stalled", server.url("/b"), dest, max_bytes=MAX, stall_seconds=0.5, timeout_seconds=20)
    assert time.monotonic() - started < 0.5 + 2.0 and "before the response headers" in str(error)


def test_a_trickle_under_the_stall_limit_hits_the_total_timeout(server, dest):
    server.routes["/b"] = Trickle(DATA, interval=0.05)
    started = time.monotonic()
    error = refused("timeout", server.url("/b"), dest, max_bytes=MAX, stall_seconds=1.0, timeout_seconds=1.5)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 1.5 + 2.0, elapsed
    assert "took longer than 1.5 s" in str(error)


def test_headers_trickled_under_the_stall_limit_hit_the_total_timeout(server, dest):
    server.routes["/b"] = TrickleHeaders(interval=0.05)
    started = time.monotonic()
    error = refused("timeout", server.url("/b"), dest, max_bytes=MAX, stall_seconds=1.0, timeout_seconds=1.5)
    assert time.monotonic() - started < 1.5 + 2.0 and "took longer than 1.5 s" in str(error)


def test_https_to_a_server_with_an_untrusted_certificate_is_refused(tmp_path, dest):
    with ArtifactServer(tls=self_signed_tls(tmp_path)) as server:
        server.routes["/b"] = File(DATA)
        error = refused("http_error", server.url("/b"), dest, max_bytes=MAX, stall_seconds=5)
    assert server.url("/b").startswith("https://") and "CERTIFICATE_VERIFY_FAILED" in str(error)
    assert not dest.exists()


def test_https_with_the_private_ca_given_downloads(tmp_path, dest):
    with ArtifactServer(tls=self_signed_tls(tmp_path)) as server:  # `[cloud] ca` in device.toml
        server.routes["/b"] = File(DATA)
        path = download(server.url("/b"), dest, max_bytes=MAX, ca=tmp_path / "server.crt")
    assert path.read_bytes() == DATA


@pytest.mark.parametrize("code", [403, 404, 500, 503])
def test_http_errors(server, dest, code):
    server.routes["/b"] = Status(code)
    assert f"HTTP {code}" in str(refused("http_error", server.url("/b"), dest, max_bytes=MAX))
    assert not dest.exists()


def test_a_closed_port_is_an_http_error(dest):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused("http_error", f"http://127.0.0.1:{port}/b", dest, max_bytes=MAX, stall_seconds=2)


def test_a_different_file_than_announced_is_refused(server, dest):
    other = DATA[::-1]
    server.routes["/b"] = File(other)
    error = refused("hash_mismatch", server.url("/b"), dest, max_bytes=MAX, expected_sha256=sha256(DATA))
    assert f"expected {sha256(DATA)[:16]}" in str(error)
    assert not dest.exists() and not partial_of(dest).exists()


def test_a_size_other_than_announced_is_refused(server, dest):
    server.routes["/b"] = File(DATA)
    error = refused("size_mismatch", server.url("/b"), dest, max_bytes=MAX, expected_size=len(DATA) - 1)
    assert f"announces {len(DATA)} bytes; expected {len(DATA) - 1}" in str(error)
    server.routes["/e"] = Endless()  # no Content-Length: caught while streaming
    error = refused("size_mismatch", server.url("/e"), dest, max_bytes=MAX, expected_size=1000)
    assert "more than the expected 1000 bytes" in str(error)
    assert not dest.exists() and not partial_of(dest).exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/b", "file:///etc/passwd", "http://", "no url at all",
                                 "http://127.0.0.1:99999/b", "http://127.0.0.1/a b"])
def test_bad_urls(dest, url):
    refused("bad_url", url, dest, max_bytes=MAX)
    assert not dest.parent.exists()


def test_a_redirect_to_another_scheme_is_refused(server, dest):
    server.routes["/b"] = Redirect("file:///etc/passwd")
    refused("bad_url", server.url("/b"), dest, max_bytes=MAX)


@pytest.mark.parametrize(("kind", "reason"), [(tarfile.DIRTYPE, "too_many_directories"),
                                            (tarfile.REGTYPE, "too_many_files")])
def test_a_padded_bundle_is_downloaded_then_refused_by_install_in_bounded_work(server, dest, digits_bundle, tmp_path,
                                                                               kind, reason):
    """A signed bundle padded with 200,000 empty directories took 447 s to install on a device (200,000
    empty files: 118 s to refuse). The device downloads it (2 MB), and the install refuses it from the
    archive's headers, creating nothing."""
    from edgefleet.core.signing import TrustStore
    from edgefleet.edge_runtime.slots import SlotStore
    from edgefleet.edge_runtime.updater import UNPACKED_RATIO
    from tests.core.hostile_archives import gz, padding, tar_of

    data = gz(tar_of(digits_bundle.root), padding(200_000, kind))
    server.routes["/padded.tar.gz"] = File(data)
    path = download(server.url("/padded.tar.gz"), dest, max_bytes=len(data), expected_sha256=sha256(data))
    store = SlotStore(tmp_path / "models", TrustStore.from_paths([digits_bundle.public_key]))
    started = time.process_time()
    with pytest.raises(VerificationError) as caught:
        store.install(path, max_bytes=len(data) * UNPACKED_RATIO)  # as the updater asks
    seconds = time.process_time() - started
    assert caught.value.reason == reason, str(caught.value)
    assert seconds < 1.0, f"{seconds:.2f} s of CPU to refuse"  # measured: 0.02 s (dirs), 0.18 s (files)
    assert store.slots() == [] and list(store.slots_dir.iterdir()) == []
