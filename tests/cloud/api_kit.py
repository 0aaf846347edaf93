"""What the API tests share: a started cloud with its admin client, signed variants of the digits bundle,
and a raw HTTP request that sends a body from a bounded generator while it reads the answer (as an
attacker's client would, and as httpx cannot: httpx writes the whole body before it reads)."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import shutil
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.archive import pack
from edgefleet.core.bundle import MANIFEST, SIGNATURE, write_manifest
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


def signed_copy(src: Path, dst: Path, private_key: Path, *, listed: Mapping[str, dict] | None = None,
                contents: Mapping[str, bytes] | None = None, **changes: object) -> Path:
    """A copy of the bundle at src with files rewritten (`contents`), manifest fields changed (None writes
    null) and `listed` added to its files table, re-hashed and signed with the trusted key: only the
    checks after the signature can refuse it. (Written by hand: the library's sign() reads the manifest
    back and would refuse it.)"""
    root = Path(shutil.copytree(src, dst))
    for rel, data in (contents or {}).items():
        (root / rel).write_bytes(data)
    manifest = write_manifest(root, json.loads((root / MANIFEST).read_text()))
    manifest = {**manifest, "files": {**manifest["files"], **(listed or {})}, **changes}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (root / SIGNATURE).write_text(json.dumps(SigningKey.load(private_key).sign_manifest(manifest)))
    return root


def signed_variant(src: Path, dst: Path, private_key: Path, **changes: object) -> Path:
    """signed_copy(...) packed as a .tar.gz next to it."""
    return pack(signed_copy(src, dst, private_key, **changes), dst.with_suffix(".tar.gz"))


def padded_archive(root: Path, out: Path, count: int, kind: bytes) -> Path:
    """root's files as a .tar.gz, then `count` empty members `pad/p000000`, ... of kind tarfile.DIRTYPE or
    REGTYPE. The padding headers are stamped from one template (tarfile takes 8 s for 200,000)."""
    template = tarfile.TarInfo("pad/p000000")
    template.type, template.mode = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644
    blank = bytearray(template.tobuf(tarfile.USTAR_FORMAT))
    blank[148:156] = b" " * 8  # the checksum field counts as spaces while the checksum is computed
    with gzip.open(out, "wb", compresslevel=1) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode = len(data), 0o644
            archive.write(info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
        for start in range(0, count, 10_000):
            block = bytearray()
            for index in range(start, min(count, start + 10_000)):
                header = bytearray(blank)
                header[:11] = b"pad/p%06d" % index
                header[148:156] = b"%06o\0 " % sum(header)
                block += header
            archive.write(block)
        archive.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    return out


def tar_gz(out: Path, members: Iterable[tuple[str, bytes | None]]) -> Path:
    """A .tar.gz of the members in order: (name, data) is a file, (name, None) a directory."""
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out


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
