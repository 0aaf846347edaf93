"""Signed download URLs: how a device fetches a bundle from the registry without holding an admin token.

    <base>/api/v1/bundles/<name>/<version>/download?device=<id>&expires=<unix seconds>&sig=<hex>

`sig` is HMAC-SHA256 over `name|version|device|expires` with a 32-byte secret the cloud makes on first
start and keeps in the database (table cloud_secrets), so every API replica and rollout worker on that
database signs and checks with the same one whatever its `--data` directory. A URL is good for one bundle,
names its device, and expires.

Upgrade: a cloud of an earlier release kept the secret in `<data>/download-url.key`; the first start on the
database takes that file's secret if there is one, so download URLs already sent keep working. Each process
reads the secret once (it never changes while the database lives); deleting the row and restarting every
process makes a new one, and outstanding URLs then stop working.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from sqlalchemy import String, Text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from edgefleet.cloud.db import Base
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.errors import EdgefleetError

log = logging.getLogger(__name__)

SECRET_BYTES = 32
SECRET_NAME = "download-url"


class CloudSecret(Base):
    """Secrets every cloud process of one database shares, by name; the value is hex."""
    __tablename__ = "cloud_secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


_cache: dict[str, bytes] = {}  # database URL -> secret
_cache_lock = threading.Lock()


class SignedUrlError(EdgefleetError):
    """A signed URL that does not grant the download: `reason` is "expired", "bad_signature" or "incomplete"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def download_secret(settings: CloudSettings, sessions: sessionmaker) -> bytes:
    """The signing secret of this database, made on first use (module docstring). Two processes racing to
    make it agree on one: the row's primary key lets one insert win, and the loser reads the winner's."""
    key = str(sessions.kw["bind"].url)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    secret = _stored(sessions)
    if secret is None:
        legacy = settings.download_secret_path
        secret = _read_secret(legacy) if legacy.exists() else secrets.token_bytes(SECRET_BYTES)
        try:
            with sessions.begin() as db:
                db.add(CloudSecret(name=SECRET_NAME, value=secret.hex()))
            log.info("made the download URL signing secret%s", f" (taken from {legacy})" if legacy.exists() else "")
        except IntegrityError:
            pass  # another process made it first: theirs it is
        secret = _stored(sessions)
        if secret is None:
            raise EdgefleetError("the download URL signing secret could not be stored in the database")
    with _cache_lock:
        _cache[key] = secret
    return secret


def _stored(sessions: sessionmaker) -> bytes | None:
    with sessions() as db:
        row = db.get(CloudSecret, SECRET_NAME)
        if row is None:
            return None
        try:
            secret = bytes.fromhex(row.value)
        except ValueError as err:
            raise EdgefleetError(f"the database's {SECRET_NAME} secret is not hex; delete its cloud_secrets row "
                                 f"to make a new one (outstanding download URLs stop working)") from err
    return secret


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


def signed_download_url(secret: bytes, base_url: str, name: str, version: int, device: str, ttl: float) -> str:
    """The URL `device` downloads bundle `name` v`version` from, valid for `ttl` seconds."""
    expires = int(time.time() + ttl)
    sig = download_signature(secret, name, version, device, expires)
    query = urlencode({"device": device, "expires": expires, "sig": sig})
    return f"{base_url.rstrip('/')}/api/v1/bundles/{quote(name)}/{int(version)}/download?{query}"


def check_download_signature(secret: bytes, name: str, version: int, device: str | None,
                             expires: int | None, sig: str | None, now: float | None = None) -> None:
    """Raises SignedUrlError unless (device, expires, sig) grant the download of `name` v`version` now."""
    if not device or expires is None or not sig:
        raise SignedUrlError("incomplete", "a signed download URL needs device, expires and sig")
    expected = download_signature(secret, name, version, device, expires)
    if not hmac.compare_digest(expected, sig.lower()):
        raise SignedUrlError("bad_signature", "the download URL's signature is not valid")
    if (time.time() if now is None else now) >= expires:
        raise SignedUrlError("expired", f"the download URL expired at {expires} (unix time); ask for a new command")
