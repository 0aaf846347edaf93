"""The bundle registry: upload a signed .tar.gz, list and describe what is stored, download it, read
reference profiles.

An upload is authenticated and capped at `max_bundle_bytes` (by its Content-Length and while it streams)
by the request guard (edgefleet.cloud.request_guard) before a byte is read, streamed to a temporary file
under data_dir (never held in memory), unpacked with the archive's limits and verified against the
trusted keys (which checks the manifest's structure too), then against the registry's own rules
(edgefleet.cloud.registry_rules: versions only go up unless the signed manifest is a rollback build).
Only a bundle that passes all of it is stored, as `bundles/<name>/<version>.tar.gz` with a BundleRecord; anything that
fails leaves no file and no row behind.

The download (with HTTP Range, so a device can resume) takes either the admin token or a signed URL
(`edgefleet.cloud.signed_urls`): it sits on `download_router`, which the API mounts without the admin
dependency, and authorises each request itself.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from edgefleet.cloud.api.deps import (
    ConflictError,
    NotFoundError,
    SessionDep,
    SessionsDep,
    SettingsDep,
    TrustDep,
    UnsupportedMediaTypeError,
)
from edgefleet.cloud.api.ranges import ranged_response
from edgefleet.cloud.auth import AdminAuth, require_admin
from edgefleet.cloud.bundle_store import BundleStore, Stored, StoreError, store_for
from edgefleet.cloud.db import BundleRecord
from edgefleet.cloud.registry_rules import MAX_STORED_VERSION, check_newer, check_storable
from edgefleet.cloud.settings import CloudSettings
from edgefleet.cloud.signed_urls import SignedUrlError, check_download_signature, download_secret
from edgefleet.core import bounded_json
from edgefleet.core.bounded_json import JsonLimitError
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import BundleError, EdgefleetError
from edgefleet.core.signing import TrustStore

log = logging.getLogger(__name__)
router = APIRouter(tags=["bundles"])
download_router = APIRouter(tags=["bundles"])  # mounted without the admin dependency: see download_access
_optional_bearer = HTTPBearer(auto_error=False, description="An admin API token, or none with a signed URL")

ACCEPTED_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream")
WRITE_BATCH = 1 << 20  # bytes collected from the socket before one write to disk (in a worker thread)
PRESIGNED_TTL = 300  # seconds a redirect to the S3 store stays good: the device follows it at once
UNPACKED_RATIO = 4  # an archive may unpack to this many times max_bundle_bytes (models compress little)
# A version in a URL: one the registry could hold (a larger one once reached SQLite and came back a 500).
BundleVersion = Annotated[int, PathParam(ge=1, le=MAX_STORED_VERSION, description="The bundle's version")]


class BundleOut(BaseModel):
    name: str
    version: int
    sha256: str  # of the stored .tar.gz
    size: int
    uploaded_at: float
    label: str | None
    metrics: dict


def bundle_view(record: BundleRecord) -> BundleOut:
    manifest = record.manifest or {}
    return BundleOut(name=record.name, version=record.version, sha256=record.sha256, size=record.size,
                     uploaded_at=record.uploaded_at, label=manifest.get("label"), metrics=manifest.get("metrics", {}))


class ArtifactOut(BaseModel):
    target: str | None
    backend: str | None
    path: str | None
    size: int | None
    precision: str | None


class BundleDetail(BundleOut):
    created_at: str | None
    interface: dict
    artifacts: list[ArtifactOut]
    lineage: dict
    model_card: dict | None


def get_bundle(session: Session, name: str, version: int) -> BundleRecord:
    record = session.scalar(select(BundleRecord).where(BundleRecord.name == name, BundleRecord.version == version))
    if record is None:
        raise NotFoundError(f"no bundle {name} v{version} in the registry")
    return record


def bundle_detail(record: BundleRecord) -> BundleDetail:
    manifest = record.manifest or {}
    files = manifest.get("files") or {}
    artifacts = [ArtifactOut(target=a.get("target"), backend=a.get("backend"), path=a.get("path"),
                             size=a.get("size", (files.get(a.get("path")) or {}).get("size")),
                             precision=a.get("precision"))
                 for a in manifest.get("artifacts") or []]
    interface = manifest.get("interface") or {}
    return BundleDetail(**bundle_view(record).model_dump(), created_at=manifest.get("created_at"),
                        interface={"inputs": interface.get("inputs", []), "outputs": interface.get("outputs", []),
                                   "task": interface.get("task")},
                        artifacts=artifacts, lineage=manifest.get("lineage") or {},
                        model_card=manifest.get("model_card"))


@router.get("/bundles", response_model=list[BundleOut])
def list_bundles(session: SessionDep, name: str | None = None) -> list[BundleOut]:
    query = select(BundleRecord).order_by(BundleRecord.name, BundleRecord.version)
    if name is not None:
        query = query.where(BundleRecord.name == name)
    return [bundle_view(record) for record in session.scalars(query)]


@router.get("/bundles/{name}/{version}", response_model=BundleDetail)
def read_bundle(name: str, version: BundleVersion, session: SessionDep) -> BundleDetail:
    """The manifest's summary: identity, interface, artifacts, metrics, lineage, model card."""
    return bundle_detail(get_bundle(session, name, version))


def download_access(
    request: Request,
    name: str,
    version: BundleVersion,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_optional_bearer)],
    device: Annotated[str | None, Query(description="Signed URL: the device it was made for")] = None,
    expires: Annotated[int | None, Query(description="Signed URL: unix time it expires at")] = None,
    sig: Annotated[str | None, Query(description="Signed URL: hex HMAC-SHA256")] = None,
) -> str:
    """Who downloads: "device <id>" for a valid signed URL (403 for an expired or wrong one), otherwise the
    admin token's name (401 without one)."""
    if device is None and expires is None and sig is None:
        return require_admin(request, credentials)
    try:
        secret = download_secret(request.app.state.settings, request.app.state.sessions)
        check_download_signature(secret, name, version, device, expires, sig)
    except SignedUrlError as err:
        log.info("download of %s v%s refused (%s): %s", name, version, err.reason, err)
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(err)) from err
    return f"device {device}"


@download_router.get("/bundles/{name}/{version}/download", response_class=FileResponse)
def download_bundle(request: Request, name: str, version: BundleVersion, sessions: SessionsDep, settings: SettingsDep,
                    who: Annotated[str, Depends(download_access)]) -> Response:
    """The stored .tar.gz; honours `Range: bytes=...` (206 with Content-Range) so a download can resume.

    From an S3 store a device's signed download is redirected (307) to a presigned GET of the object, which
    the store serves with Range itself; an admin's download (and any with s3_redirect off) is streamed by
    the API. The database session is closed before the file streams: a fleet downloading at once must not
    hold a pooled connection per slow download (100 devices exhausted the pool when it did)."""
    with sessions() as session:
        record = get_bundle(session, name, version)
    store = store_for(settings)
    headers = {"X-Bundle-SHA256": record.sha256}
    log.debug("download of %s v%d by %s", name, version, who)
    path = store.local_path(record.path)
    if path is not None:
        if not path.is_file():
            raise NotFoundError(f"bundle {name} v{version} is in the registry but its archive {path} is missing")
        return FileResponse(path, media_type="application/gzip", filename=f"{name}-{version}.tar.gz", headers=headers)
    stored = _checked_object(store, record)
    if who.startswith("device ") and settings.s3_redirect:
        return RedirectResponse(store.presigned_url(record.path, PRESIGNED_TTL), status.HTTP_307_TEMPORARY_REDIRECT,
                                headers=headers)
    return ranged_response(request, store, record.path, stored.size, f"{name}-{version}.tar.gz", headers)


def _checked_object(store: BundleStore, record: BundleRecord) -> Stored:
    """The object's size and sha256, which must be the record's: 404 for a missing object, 409 for one that
    was replaced or cut short (the device would only find out after the whole transfer)."""
    stored = store.stat(record.path)  # StoreError: a 503 (cloud/api/errors.py)
    what = f"bundle {record.name} v{record.version}"
    if stored is None:
        raise NotFoundError(f"{what} is in the registry but its archive is missing from the {store.kind} store")
    if stored.size != record.size or stored.sha256 != record.sha256:
        raise ConflictError(f"{what}: the stored archive ({stored.size} bytes, sha256 {stored.sha256 or 'unknown'}) "
                            f"is not the one registered ({record.size} bytes, sha256 {record.sha256}); upload it again "
                            f"under a new version")
    return stored


@router.post("/bundles", status_code=status.HTTP_201_CREATED, response_model=BundleOut)
async def upload_bundle(
    request: Request, settings: SettingsDep, sessions: SessionsDep, trust: TrustDep, admin: AdminAuth
) -> BundleOut:
    """Takes the raw .tar.gz as the request body (Content-Type application/gzip or application/octet-stream)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_TYPES:
        raise UnsupportedMediaTypeError(
            f"send the bundle's .tar.gz as the raw body with Content-Type application/gzip or "
            f"application/octet-stream, not {content_type or 'no Content-Type'}")
    if not len(trust):
        raise EdgefleetError("the registry trusts no signing keys: start the cloud with --trust KEY.pub "
                             "(or set EDGEFLEET_TRUSTED_KEYS)")
    spool = settings.data_dir / "tmp"
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar.gz", dir=spool)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            sha256, size = await _receive(request, handle)
        record = await run_in_threadpool(store_bundle, sessions, settings, trust, path, sha256, size)
    finally:
        path.unlink(missing_ok=True)
    log.info("stored bundle %s v%d (%d bytes, by token %r)", record.name, record.version, record.size, admin)
    return bundle_view(record)


async def _receive(request: Request, handle: BinaryIO) -> tuple[str, int]:
    """Streams the body into handle; returns its sha256 and size. (The request guard's receive channel
    raises TooLargeError past max_bundle_bytes.)"""
    digest, size, pending = hashlib.sha256(), 0, bytearray()
    async for chunk in request.stream():
        size += len(chunk)
        pending += chunk
        if len(pending) >= WRITE_BATCH:
            await run_in_threadpool(_write, handle, digest, bytes(pending))
            pending.clear()
    if pending:
        await run_in_threadpool(_write, handle, digest, bytes(pending))
    return digest.hexdigest(), size


def _write(handle: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    handle.write(data)
    digest.update(data)


def store_bundle(
    sessions: sessionmaker, settings: CloudSettings, trust: TrustStore, archive: Path, sha256: str, size: int
) -> BundleRecord:
    """Verifies the archive and stores it with its record; raises (leaving nothing behind) otherwise."""
    with tempfile.TemporaryDirectory(prefix="verify-", dir=archive.parent) as scratch:
        bundle = Bundle.open(archive, unpack_to=Path(scratch) / "bundle",
                             max_bytes=settings.max_bundle_bytes * UNPACKED_RATIO)
        verified = bundle.verify(trust)  # also the manifest's structure: an int64 version, an interface, ...
        manifest = bundle.manifest
        name, version = check_storable(bundle.name, bundle.version)
        bundle.reference_profile()  # parsed within limits now, so the drift monitor never meets one it cannot read
    rel = (Path("bundles") / name / f"{version}.tar.gz").as_posix()
    store = store_for(settings)
    with sessions() as session:
        check_newer(session, manifest, name, version)
        record = BundleRecord(name=name, version=version, path=rel, sha256=sha256, size=size,
                              manifest=manifest)
        session.add(record)
        try:
            session.flush()  # claims (name, version): a concurrent upload of the same one fails here or waits
        except IntegrityError as err:
            session.rollback()
            raise ConflictError(f"bundle {name} v{version} is in the registry already") from err
        try:
            store.put(rel, archive, sha256)
        except StoreError as err:
            session.rollback()
            raise StoreError(f"bundle {name} v{version} was not stored: {err}") from err
        try:
            session.commit()
        except BaseException:
            store.delete(rel)
            raise
    log.info("bundle %s v%d verified (key %s)", name, version, verified.key_id)
    return record


def reference_profile(sessions: sessionmaker, settings: CloudSettings, name: str, version: int) -> dict | None:
    """The stored bundle's reference profile (profile.json), or None for an unknown bundle or one without.

    The file is read from the stored archive once and cached by the archive's hash (bundles are immutable);
    each call returns a fresh dict, parsed within bounded_json's depth and number limits. Raises
    BundleError if the stored archive no longer matches its manifest or the profile is not such JSON.
    """
    with sessions() as session:
        record = session.scalar(select(BundleRecord).where(BundleRecord.name == name, BundleRecord.version == version))
    if record is None:
        return None
    entry = (record.manifest or {}).get("reference_profile")
    if not entry:
        return None
    member = entry["path"]
    expected = record.manifest.get("files", {}).get(member, {}).get("sha256")
    text = _profile_text(store_for(settings), record.path, record.sha256, member, expected)
    what = f"{member} of bundle {name} v{version}"
    try:  # checked at upload already; parsed within the limits all the same (the file could have changed)
        profile = bounded_json.loads(text, max_bytes=len(text.encode()), what=what)
    except JsonLimitError as err:
        raise BundleError(str(err)) from err
    if not isinstance(profile, dict):
        raise BundleError(f"{what} must hold a JSON object")
    return profile


@functools.lru_cache(maxsize=64)
def _profile_text(store: BundleStore, key: str, archive_sha256: str, member: str, expected_sha256: str | None) -> str:
    """archive_sha256 is part of the key only, so that a different archive under the same key is reread."""
    archive = f"{key} in the {store.kind} store"
    try:
        with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
            local = store.local_path(key)
            if local is None:
                local = Path(scratch) / "bundle.tar.gz"
                store.copy_to(key, local)
            with tarfile.open(local, "r:gz") as tar:
                source = tar.extractfile(member)
                if source is None:
                    raise BundleError(f"{member} in {archive} is not a regular file")
                with source:
                    data = source.read()
    except (OSError, tarfile.TarError, KeyError, StoreError) as err:
        raise BundleError(f"cannot read {member} from the stored bundle {archive}: {err}") from err
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise BundleError(f"{member} in the stored bundle {archive} does not match its manifest")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleError(f"{member} in the stored bundle {archive} is not UTF-8 text") from err
