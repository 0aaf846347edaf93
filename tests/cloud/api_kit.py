"""What the API tests share: a started cloud with its admin client, signed variants of the digits bundle,
and a raw HTTP request that sends a body from a bounded generator while it reads the answer (as an
attacker's client would, and as httpx cannot: httpx writes the whole body before it reads)."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.bundle import Bundle, sign, write_manifest
from edgefleet.core.signing import SigningKey
from tests.cloud.cloud_process import cloud_servers

GZIP = {"Content-Type": "application/gzip"}


@dataclass
class Cloud:
    server: CloudServer
    client: httpx.Client  # sends the admin token

    @property
    def settings(self) -> CloudSettings:
        return self.server.settings

    @property
    def token(self) -> str:
        return self.client.headers["Authorization"].removeprefix("Bearer ")

    def stored_files(self) -> list[str]:
        """Everything an upload may leave in the data directory: the artifact store and the spool."""
        data = self.settings.data_dir
        return sorted(str(p.relative_to(data)) for folder in ("bundles", "tmp") if (data / folder).exists()
                      for p in (data / folder).rglob("*") if p.is_file())

    def assert_serving(self) -> None:
        """A valid request still gets its answer (after a refusal, the server must keep serving)."""
        response = self.client.get("/api/v1/bundles")
        assert response.status_code == 200, response.text


@contextmanager
def api_clouds(tmp_path: Path, broker_url: str, trusted_key: Path) -> Iterator[Callable[..., Cloud]]:
    """Yields start(**settings): a CloudServer on a free port with the external broker and the digits key
    trusted, and its admin client; all are stopped at the end."""
    with cloud_servers() as start_server:
        count = itertools.count()

        def start(**overrides: object) -> Cloud:
            options = {"data_dir": tmp_path / f"cloud-{next(count)}", "port": 0, "mqtt_url": broker_url,
                       "trusted_keys": [trusted_key], **overrides}
            server, client = start_server(options)
            assert server.new_admin_token, "a fresh database gets an admin token"
            return Cloud(server, client)

        yield start


def signed_variant(src: Path, dst: Path, private_key: Path, **changes: object) -> Path:
    """A .tar.gz of a copy of the bundle at src with manifest fields changed (None writes null), re-hashed
    and signed with the trusted key: only the registry's own rules can refuse it."""
    root = Path(shutil.copytree(src, dst))
    manifest = {**json.loads((root / "manifest.json").read_text()), **changes}
    write_manifest(root, manifest)
    sign(root, SigningKey.load(private_key))
    return Bundle.open(root).pack(dst.with_suffix(".tar.gz"))


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the end of the request head to the whole answer
    sent: int  # body bytes the client managed to send before the answer came

    @property
    def detail(self) -> str:
        return json.loads(self.body)["detail"]


def raw_request(base_url: str, method: str, path: str, headers: dict[str, str],
                body: Iterable[bytes] = (), timeout: float = 10.0) -> RawAnswer:
    """Sends the request head, then the body chunks from another thread, and reads the answer meanwhile.
    Returns once the whole answer (by its Content-Length) arrived; raises TimeoutError if none came."""
    url = urlsplit(base_url)
    head = "".join(f"{name}: {value}\r\n" for name, value in {"Host": url.netloc, **headers}.items())
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    sent = [0]
    stop = threading.Event()

    def pump() -> None:
        try:
            for chunk in body:
                if stop.is_set():
                    return
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:  # the server closed the connection: what a refusal does
            pass

    with sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode())
        started = time.monotonic()
        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        try:
            answer = _read_answer(sock, started)
        finally:
            stop.set()
        answer.sent = sent[0]
        sender.join(timeout)
    return answer


def _read_answer(sock: socket.socket, started: float) -> RawAnswer:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += _recv(sock)
    return RawAnswer(int(lines[0].split()[1]), headers, rest[:length], time.monotonic() - started, 0)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection before a whole answer")
    return chunk


def spaces(total: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """`total` bytes of spaces (valid JSON whitespace), a chunk at a time: never all in memory."""
    block = b" " * chunk
    for start in range(0, total, chunk):
        yield block[: min(chunk, total - start)]


def chunked(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks in HTTP/1.1 chunked transfer coding (for a raw request with Transfer-Encoding: chunked)."""
    for chunk in chunks:
        yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    yield b"0\r\n\r\n"
