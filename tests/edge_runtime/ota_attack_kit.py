"""Test kit for downloads, slots and OTA attacks.

- `ArtifactServer`: a real HTTP server on 127.0.0.1 (ThreadingHTTPServer in a thread) whose routes
  misbehave on demand: `File` (Range support, can drop the connection mid-way or ignore ranges),
  `Endless`, `Stall`, `Trickle`, `TrickleHeaders`, `Silent`, `Status`, `Redirect`. Every request is
  logged with its Range. With `tls=self_signed_tls(dir)` it speaks HTTPS with a certificate nobody trusts.
- `Releases`: version 1 (the digits fixture), 2 and 3 of the digits bundle, re-signed with the fixture's
  key. The three model.onnx files differ (2 and 3 carry a doc_string tag of equal length, so they differ
  in content but not in size), so mixing files between versions is detectable,
  each as a directory and a .tar.gz; plus `derive()` for attacker-made variants.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shutil
import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.core import archive
from edgefleet.core.bundle import DEFAULT_VALIDITY, sign, write_manifest
from edgefleet.core.signing import SigningKey, TrustStore

MAX_WAIT = 30.0  # no handler blocks longer than this, whatever the test does


# the server ------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        kit = self.server.kit
        kit.requests.append({"path": self.path, "range": self.headers.get("Range")})
        route = kit.routes.get(self.path)
        if route is None:
            Status(404)(self, kit)
            return
        try:
            route(self, kit)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    kit: ArtifactServer


class ArtifactServer:
    """with ArtifactServer() as server: server.routes["/a"] = File(data); download(server.url("/a"), ...)"""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, object] = {}
        self.requests: list[dict] = []
        self.stopping = threading.Event()
        self.scheme = "https" if tls else "http"
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.kit = self
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                         daemon=True)

    def __enter__(self) -> ArtifactServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=MAX_WAIT)

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def ranges(self, path: str) -> list[str | None]:
        return [r["range"] for r in self.requests if r["path"] == path]


def _head(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()


@dataclass
class File:
    data: bytes
    ignore_range: bool = False
    drop_after: int | None = None  # the next `drops` responses close the connection after this many bytes
    drops: int = 1

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        size, start = len(self.data), 0
        wanted = handler.headers.get("Range")
        if wanted and not self.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
            if start >= size:
                _head(handler, 416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                return
            status, extra = 206, {"Content-Range": f"bytes {start}-{size - 1}/{size}"}
        else:
            status, extra = 200, {}
        body = self.data[start:]
        _head(handler, status, {**extra, "Content-Length": str(len(body))})
        if self.drop_after is not None and self.drops > 0:
            self.drops -= 1
            handler.wfile.write(body[: self.drop_after])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)


@dataclass
class Endless:
    """Zeros forever (close-delimited, or under a false Content-Length)."""

    announce: int | None = None
    sent: int = 0

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        headers = {"Connection": "close"}
        if self.announce is not None:
            headers["Content-Length"] = str(self.announce)
        _head(handler, 200, headers)
        handler.close_connection = True
        chunk = bytes(64 * 1024)
        while not kit.stopping.is_set() and self.sent < 1 << 32:
            handler.wfile.write(chunk)
            self.sent += len(chunk)


@dataclass
class Stall:
    """Announces all of data, sends the first `after` bytes, then nothing."""

    data: bytes
    after: int

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        _head(handler, 200, {"Content-Length": str(len(self.data))})
        handler.wfile.write(self.data[: self.after])
        handler.wfile.flush()
        kit.stopping.wait(MAX_WAIT)
        handler.close_connection = True


@dataclass
class Trickle:
    """One byte every `interval` seconds: never a stall, never done."""

    data: bytes
    interval: float

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        _head(handler, 200, {"Content-Length": str(len(self.data))})
        for i in range(len(self.data)):
            handler.wfile.write(self.data[i : i + 1])
            handler.wfile.flush()
            if kit.stopping.wait(self.interval):
                break
        handler.close_connection = True


@dataclass
class Silent:
    """Accepts the request and never answers."""

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        kit.stopping.wait(MAX_WAIT)
        handler.close_connection = True


@dataclass
class TrickleHeaders:
    """A status line, then one header line every `interval` seconds: the body never starts."""

    interval: float

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(10_000):
            handler.wfile.write(f"X-Slow-{i}: x\r\n".encode())
            handler.wfile.flush()
            if kit.stopping.wait(self.interval):
                break
        handler.close_connection = True


@dataclass
class Status:
    code: int

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        _head(handler, self.code, {"Content-Length": "0"})


@dataclass
class Redirect:
    location: str
    code: int = 302

    def __call__(self, handler: BaseHTTPRequestHandler, kit: ArtifactServer) -> None:
        _head(handler, self.code, {"Location": self.location, "Content-Length": "0"})


# releases ----------------------------------------------------------------------------------------------


def self_signed_tls(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1 (which no client trusts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def retag_model(model: bytes, tag: str) -> bytes:
    """A different but equally valid model.onnx: appends ModelProto.doc_string (field 6, a length-delimited
    string); protobuf keeps the last occurrence of a field, so the graph is untouched."""
    text = tag.encode()
    assert len(text) < 128
    return model + bytes([6 << 3 | 2, len(text)]) + text


def derive(source: Path, dest: Path, key: SigningKey, *, version: int | None = None, name: str | None = None,
           model_tag: str | None = None, validity: timedelta = DEFAULT_VALIDITY) -> Path:
    """Copies a bundle directory, edits its identity (and model bytes), rewrites the manifest and signs it."""
    shutil.copytree(source, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if version is not None:
        manifest["version"] = version
    if name is not None:
        manifest["name"] = name
    if model_tag is not None:
        model = dest / "model.onnx"
        model.write_bytes(retag_model(model.read_bytes(), model_tag))
    write_manifest(dest, manifest)
    sign(dest, key, validity)
    return dest


def pack(directory: Path, out: Path) -> Path:
    return archive.pack(directory, out)


@dataclass
class Releases:
    workdir: Path
    key: SigningKey
    trust: TrustStore
    dirs: dict[int, Path] = field(default_factory=dict)
    archives: dict[int, Path] = field(default_factory=dict)

    @classmethod
    def build(cls, digits_bundle, workdir: Path) -> Releases:
        key = SigningKey.load(digits_bundle.private_key)
        releases = cls(workdir, key, TrustStore.from_paths([digits_bundle.public_key]))
        releases.dirs[1] = Path(shutil.copytree(digits_bundle.root, workdir / "v1"))
        releases.dirs[2] = derive(digits_bundle.root, workdir / "v2", key, version=2, model_tag="digits v2")
        releases.dirs[3] = derive(digits_bundle.root, workdir / "v3", key, version=3, model_tag="digits v3")
        for version, directory in releases.dirs.items():
            releases.archives[version] = pack(directory, workdir / f"digits-v{version}.tar.gz")
        return releases

    def data(self, version: int) -> bytes:
        return self.archives[version].read_bytes()
