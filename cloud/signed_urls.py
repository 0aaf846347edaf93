"""Signed download URLs: how a device fetches a bundle from the registry without holding an admin token.

    <base>/api/v1/bundles/<name>/<version>/download?device=<id>&expires=<unix seconds>&sig=<hex>

`sig` is HMAC-SHA256 over `name|version|device|expires` with a 32-byte secret the cloud makes on first
start and keeps in the data directory (mode 0600), next to the artifact store it guards: API replicas that
serve the same artifact store share it. A URL is good for one bundle, names its device, and expires.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.errors import EdgefleetError

log = logging.getLogger(__name__)

SECRET_BYTES = 32


class SignedUrlError(EdgefleetError):
    """A signed URL that does not grant the download: `reason` is "expired", "bad_signature" or "incomplete"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def download_secret(settings: CloudSettings) -> bytes:
    """The signing secret, made on first use. Two processes racing to make it agree on one: each writes a
    private temporary file and links it into place, and the loser reads the winner's."""
    path = settings.download_secret_path
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
        try:
            os.link(tmp, path)
            log.info("made the download URL signing secret %s", path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError as err:
        raise EdgefleetError(f"{path} is not a hex secret; delete it to make a new one "
                             f"(outstanding download URLs stop working)") from err
    if len(secret) < 16:
        raise EdgefleetError(f"{path} holds a secret of {len(secret)} bytes, too short; delete it to make a new one")
    return secret


def download_signature(secret: bytes, name: str, version: int, device: str, expires: int) -> str:
    message = f"{name}|{int(version)}|{device}|{int(expires)}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_download_url(settings: CloudSettings, base_url: str, name: str, version: int, device: str,
                        ttl: float) -> str:
    """The URL `device` downloads bundle `name` v`version` from, valid for `ttl` seconds."""
    expires = int(time.time() + ttl)
    sig = download_signature(download_secret(settings), name, version, device, expires)
    query = urlencode({"device": device, "expires": expires, "sig": sig})
    return f"{base_url.rstrip('/')}/api/v1/bundles/{quote(name)}/{int(version)}/download?{query}"


def check_download_signature(settings: CloudSettings, name: str, version: int, device: str | None,
                             expires: int | None, sig: str | None, now: float | None = None) -> None:
    """Raises SignedUrlError unless (device, expires, sig) grant the download of `name` v`version` now."""
    if not device or expires is None or not sig:
        raise SignedUrlError("incomplete", "a signed download URL needs device, expires and sig")
    expected = download_signature(download_secret(settings), name, version, device, expires)
    if not hmac.compare_digest(expected, sig.lower()):
        raise SignedUrlError("bad_signature", "the download URL's signature is not valid")
    if (time.time() if now is None else now) >= expires:
        raise SignedUrlError("expired", f"the download URL expired at {expires} (unix time); ask for a new command")
