"""Downloading a bundle archive over HTTP(S) without trusting the server.

    path = download(url, data_dir / "incoming" / "digits-v3.tar.gz", max_bytes=cmd.max_bytes,
                    expected_sha256=ref.sha256, expected_size=ref.size, timeout_seconds=cmd.timeout_seconds)

The bytes go to `<dest>.partial` and become `<dest>` only when the transfer is complete, its size and
sha256 are the expected ones, and the file is fsynced; then it is renamed and the directory fsynced. A
server can waste at most `timeout_seconds` of the device's time and `max_bytes` (+ one read) of its disk:

- more than `max_bytes` (announced or streamed; an endless body is cut off there) -> "too_large"
- no byte for `stall_seconds` (a slow-retrieval attack, or a dead link)         -> "stalled"
- the whole call longer than `timeout_seconds` (a trickle just under the stall) -> "timeout"
- an HTTP status other than 200/206 (or 416 on resume), a refused connection or
  a body cut short                                                               -> "http_error"
- a size or sha256 different from the expected one                              -> "size_mismatch", "hash_mismatch"
- a URL (or a redirect) that is not http/https                                  -> "bad_url"

Resume: an existing partial file of N bytes is continued with `Range: bytes=N-`. A 206 appends, a 200 to
a range request means the server ignored it and the file starts over, a 416 means the partial is
already whole (it is checked) or stale (it is discarded). A partial that fails the final check after a
resume is discarded and fetched once more from byte 0 (a power cut can leave garbage at its end; the
server's file can change between attempts). Stalls, timeouts and cut connections keep the partial for
the next call; too_large and mismatches delete it.

Only the standard library (http.client): the device does not need httpx or requests.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urljoin, urlsplit

from edgefleet.core.archive import fsync_dir
from edgefleet.core.errors import VerificationError
from edgefleet.core.tls import client_context

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "edgefleet-edge/1"
REASONS = ("too_large", "stalled", "timeout", "http_error", "hash_mismatch", "size_mismatch", "bad_url")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)

Progress = Callable[[int, "int | None"], None]


class DownloadError(VerificationError):
    """A download was refused or failed; `reason` is one of REASONS."""


class _StartOver(Exception):
    """The partial file cannot be continued: discard it and request the whole file."""


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    expected_size: int | None
    deadline: float
    timeout_seconds: float
    stall_seconds: float
    tls: ssl.SSLContext  # verifying: the system's CA store or the given ca


def download(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    timeout_seconds: float = 60.0,
    stall_seconds: float = 10.0,
    progress: Progress | None = None,
    ca: Path | None = None,
) -> Path:
    """Fetches url into dest (see the module docstring); returns dest or raises DownloadError. ca: a PEM
    bundle to trust for https instead of the system's store (a cloud with a private CA's certificate)."""
    dest = Path(dest)
    partial = dest.with_suffix(dest.suffix + ".partial")
    _split(url)  # refuse a bad URL before touching the disk
    if expected_size is not None and expected_size > max_bytes:
        raise DownloadError("too_large", f"{url} is announced as {expected_size} bytes; the limit is {max_bytes}")
    if dest.is_file() and expected_sha256 and _matches(dest, expected_size, expected_sha256):
        log.info("%s is already downloaded and matches its sha256", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    limits = _Limits(max_bytes, expected_size, time.monotonic() + timeout_seconds, timeout_seconds, stall_seconds,
                     client_context(ca))
    fresh_retry_left = True
    for _attempt in range(4):  # at most: resume, start over (200/416/206 elsewhere), one fresh retry
        offset = _usable_partial(partial, limits)
        try:
            _fetch(url, partial, offset, limits, progress)
            _check_file(partial, expected_size, expected_sha256, url)
        except _StartOver as why:
            log.warning("download of %s: %s; starting over from byte 0", url, why)
            partial.unlink(missing_ok=True)
            continue
        except DownloadError as err:
            if err.reason in ("too_large", "hash_mismatch", "size_mismatch"):
                partial.unlink(missing_ok=True)
                if offset > 0 and fresh_retry_left and err.reason != "too_large":
                    log.warning("download of %s: resumed file refused (%s); fetching it once more from byte 0",
                                url, err)
                    fresh_retry_left = False
                    continue
            raise
        os.replace(partial, dest)
        fsync_dir(dest.parent)
        log.info("downloaded %s to %s (%d bytes)", url, dest, dest.stat().st_size)
        return dest
    raise DownloadError("http_error", f"{url}: the server keeps refusing to resume or restart the transfer")


# one request ---------------------------------------------------------------------------------------


def _fetch(url: str, partial: Path, offset: int, limits: _Limits, progress: Progress | None) -> None:
    """One GET (following redirects) that writes the body into partial, from offset (or from 0 on a 200)."""
    for _hop in range(MAX_REDIRECTS + 1):
        scheme, host, port, target = _split(url)
        with _Request(scheme, host, port, target, offset, limits, url) as request:
            response = request.response
            status = response.status
            if status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise DownloadError("http_error", f"{url} answered HTTP {status} without a Location")
                url = urljoin(url, location)
                log.info("download redirected (HTTP %d) to %s", status, url)
                continue
            if status == 416 and offset > 0:
                total = _match_int(_UNSATISFIED_RANGE, response.getheader("Content-Range"))
                if total is not None and total != offset:
                    raise _StartOver(f"the server has {total} bytes, the partial file {offset} (HTTP 416)")
                log.info("download of %s: the partial file is already whole (HTTP 416); checking it", url)
                return
            if status == 206 and offset > 0:
                start = _match_int(_CONTENT_RANGE, response.getheader("Content-Range"))
                if start != offset:
                    raise _StartOver(f"asked for bytes from {offset}, got a range starting at {start}")
                log.info("download of %s: resuming at byte %d", url, offset)
            elif status == 200:
                if offset > 0:
                    log.info("download of %s: the server ignored the range request; starting over", url)
                offset = 0
            else:
                raise DownloadError("http_error", f"{url} answered HTTP {status} {response.reason}".rstrip())
            request.stream_to(partial, offset, progress)
            return
    raise DownloadError("http_error", f"{url}: more than {MAX_REDIRECTS} redirects")


class _Request:
    """A GET on its own connection, bounded by the stall timeout per read and by a watchdog that shuts the
    socket at the deadline (so a server trickling its headers cannot hold the call beyond it)."""

    def __init__(self, scheme: str, host: str, port: int | None, target: str, offset: int, limits: _Limits,
                 url: str) -> None:
        self.url, self.limits, self.offset = url, limits, offset
        self.deadline_hit = threading.Event()
        self.deadline_bound = False  # the current read's timeout is the deadline, not the stall limit
        connect_timeout = max(0.001, min(limits.stall_seconds, self._remaining()))
        if scheme == "https":
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=connect_timeout, context=limits.tls)
        else:
            self.conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        self.target = target
        self.watchdog = threading.Timer(self._remaining(), self._on_deadline)
        self.watchdog.daemon = True
        self.response: http.client.HTTPResponse

    def __enter__(self) -> _Request:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Connection": "close"}
        if self.offset > 0:
            headers["Range"] = f"bytes={self.offset}-"
        self.watchdog.start()
        try:
            self.conn.request("GET", self.target, headers=headers)
            self._set_read_timeout()
            self.response = self.conn.getresponse()
        except BaseException as err:
            self.__exit__(None, None, None)
            self._reraise(err, "before the response headers")
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog.cancel()
        self.conn.close()

    def stream_to(self, partial: Path, offset: int, progress: Progress | None) -> None:
        limits, response = self.limits, self.response
        length = response.getheader("Content-Length")
        announced = offset + int(length) if length and length.isdigit() else None
        if announced is None and response.status == 206:
            total = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
            announced = int(total.group(3)) if total and total.group(3) != "*" else None
        if announced is not None and announced > limits.max_bytes:
            raise DownloadError("too_large", f"{self.url} announces {announced} bytes; the limit is {limits.max_bytes}")
        if announced is not None and limits.expected_size is not None and announced != limits.expected_size:
            raise DownloadError("size_mismatch",
                                f"{self.url} announces {announced} bytes; expected {limits.expected_size}")
        total = limits.expected_size if limits.expected_size is not None else announced
        received = offset
        with partial.open("r+b" if offset > 0 else "wb") as out:
            out.seek(offset)
            out.truncate()
            try:
                while True:
                    self._set_read_timeout()
                    chunk = response.read1(min(CHUNK, limits.max_bytes + 1 - received))
                    if self.deadline_hit.is_set():
                        raise self._timeout(received)
                    if not chunk:
                        break
                    if received + len(chunk) > limits.max_bytes:
                        raise DownloadError("too_large", f"{self.url} sent more than {limits.max_bytes} bytes; "
                                                         "the transfer was cut off there")
                    if limits.expected_size is not None and received + len(chunk) > limits.expected_size:
                        raise DownloadError("size_mismatch", f"{self.url} sent more than the expected "
                                                             f"{limits.expected_size} bytes")
                    out.write(chunk)
                    received += len(chunk)
                    if progress is not None:
                        progress(received, total)
            except DownloadError:
                raise
            except BaseException as err:
                out.flush()
                self._reraise(err, f"after {received} bytes")
            if announced is not None and received < announced:
                raise DownloadError("http_error", f"{self.url}: the connection closed after {received} of {announced}"
                                                  " bytes; the partial file is kept to resume")
            out.flush()
            os.fsync(out.fileno())

    # timeouts ------------------------------------------------------------------------------------------
    def _remaining(self) -> float:
        return self.limits.deadline - time.monotonic()

    def _set_read_timeout(self) -> None:
        remaining = self._remaining()
        if remaining <= 0:
            raise self._timeout(None)
        self.deadline_bound = remaining < self.limits.stall_seconds
        if self.conn.sock is not None:
            self.conn.sock.settimeout(min(self.limits.stall_seconds, remaining))

    def _on_deadline(self) -> None:
        self.deadline_hit.set()
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _timeout(self, received: int | None) -> DownloadError:
        where = "" if received is None else f" ({received} bytes received)"
        return DownloadError("timeout", f"{self.url}: the download took longer than "
                                        f"{self.limits.timeout_seconds:g} s{where}")

    def _reraise(self, err: BaseException, where: str) -> NoReturn:
        translated = self._translate(err, where)
        if translated is err:
            raise err
        raise translated from err

    def _translate(self, err: BaseException, where: str) -> BaseException:
        if isinstance(err, (DownloadError, _StartOver)) or not isinstance(err, Exception):
            return err
        if self.deadline_hit.is_set() or self._remaining() <= 0:
            return self._timeout(None)
        if isinstance(err, TimeoutError) and self.deadline_bound:
            return self._timeout(None)
        if isinstance(err, TimeoutError):  # socket.timeout is TimeoutError
            return DownloadError("stalled", f"{self.url}: nothing received for {self.limits.stall_seconds:g} s "
                                            f"{where}; a stalled or slow-retrieval server")
        if isinstance(err, http.client.InvalidURL):
            return DownloadError("bad_url", f"{self.url} is not a valid URL: {err}")
        if isinstance(err, (OSError, http.client.HTTPException)):
            return DownloadError("http_error", f"{self.url}: {type(err).__name__}: {err} {where}".rstrip())
        return err


# helpers -------------------------------------------------------------------------------------------


def _split(url: str) -> tuple[str, str, int | None, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except (ValueError, TypeError, AttributeError) as err:
        raise DownloadError("bad_url", f"{url!r} is not a valid URL: {err}") from err
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError("bad_url", f"{url!r} is not an http or https URL")
    if not parts.hostname:
        raise DownloadError("bad_url", f"{url!r} has no host")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise DownloadError("bad_url", f"{url!r} contains whitespace or control characters")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port, target


def _match_int(pattern: re.Pattern, header: str | None) -> int | None:
    match = pattern.match(header or "")
    return int(match.group(1)) if match else None


def _usable_partial(partial: Path, limits: _Limits) -> int:
    """The number of bytes to resume from; a partial that cannot be a prefix of the file is dropped."""
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        return 0
    ceiling = limits.max_bytes if limits.expected_size is None else limits.expected_size
    if size > ceiling:
        log.warning("discarding %s: %d bytes, more than the %d expected", partial, size, ceiling)
        partial.unlink()
        return 0
    return size


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: Path, expected_size: int | None, expected_sha256: str) -> bool:
    if expected_size is not None and path.stat().st_size != expected_size:
        return False
    return _digest(path) == expected_sha256.lower()


def _check_file(path: Path, expected_size: int | None, expected_sha256: str | None, url: str) -> None:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError("size_mismatch", f"{url} gave {size} bytes; expected {expected_size}")
    if expected_sha256:
        actual = _digest(path)
        if actual != expected_sha256.lower():
            raise DownloadError("hash_mismatch", f"{url} gave a file with sha256 {actual[:16]}...; "
                                                 f"expected {expected_sha256.lower()[:16]}...")
