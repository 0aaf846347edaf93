"""Where the registry keeps bundle archives: a local directory (the default) or an S3 bucket (any S3 API:
AWS, MinIO, Ceph), so that API replicas on several machines serve the same files.

Both stores hold an archive under its key, `bundles/<name>/<version>.tar.gz` (BundleRecord.path), and
answer the same few questions: put, delete, what is stored (size and the sha256 given at upload), a byte
range, a whole copy to a local file. The S3 store also makes presigned GET URLs: a device's signed
download is redirected to the bucket, which then serves the bytes (and Range) itself, so the API carries
no bundle traffic. S3 credentials come from the usual AWS variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, or a profile), read by boto3.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from edgefleet.core.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.cloud.settings import CloudSettings

CHUNK = 1 << 20  # bytes per read when the API streams an object itself


class StoreError(EdgefleetError):
    """The store cannot be reached or refused an operation."""


@dataclass(frozen=True)
class Stored:
    size: int
    sha256: str | None  # as given to put(); None for an object that did not come through put()


class BundleStore:
    """The interface; `local` tells the API whether it can hand the file to Starlette's FileResponse."""

    kind = "base"

    def put(self, key: str, source: Path, sha256: str) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def stat(self, key: str) -> Stored | None:
        """None: nothing stored under key."""
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end (inclusive) of the object."""
        raise NotImplementedError

    def copy_to(self, key: str, dest: Path) -> None:
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        return None

    def presigned_url(self, key: str, ttl: int) -> str | None:
        return None


class LocalStore(BundleStore):
    """Files under data_dir; put() moves the verified upload into place (same filesystem: atomic)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def local_path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, source: Path, sha256: str) -> None:
        final = self.local_path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, final)  # replaces only an orphan of a crashed upload

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def stat(self, key: str) -> Stored | None:
        path = self.local_path(key)
        return Stored(path.stat().st_size, None) if path.is_file() else None

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with self.local_path(key).open("rb") as handle:
            handle.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := handle.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def copy_to(self, key: str, dest: Path) -> None:
        shutil.copyfile(self.local_path(key), dest)


class S3Store(BundleStore):
    """Objects under s3://bucket/prefix/<key>; the sha256 rides along as object metadata."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str, endpoint: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4",
                        s3={"addressing_style": "path"} if endpoint else None)
        self.client = boto3.client("s3", endpoint_url=endpoint, config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, call, **kwargs):  # noqa: ANN001, ANN202 - a boto3 method and its result
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)}") from err
            raise StoreError(f"S3 {what} of s3://{self.bucket}/{self._key(key)} failed: {code or err}") from err
        except BotoCoreError as err:
            raise StoreError(f"S3 {what} of s3://{self.bucket}/{self._key(key)} failed: {err}") from err

    def put(self, key: str, source: Path, sha256: str) -> None:
        with source.open("rb") as body:
            self._call("upload", key, self.client.put_object, Body=body, ContentType="application/gzip",
                       Metadata={"sha256": sha256})
        source.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object)

    def stat(self, key: str) -> Stored | None:
        try:
            head = self._call("stat", key, self.client.head_object)
        except FileNotFoundError:
            return None
        return Stored(int(head["ContentLength"]), (head.get("Metadata") or {}).get("sha256"))

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        body = self._call("read", key, self.client.get_object, Range=f"bytes={start}-{end}")["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def copy_to(self, key: str, dest: Path) -> None:
        self._call("download", key, lambda **kw: self.client.download_file(kw["Bucket"], kw["Key"], str(dest)))

    def presigned_url(self, key: str, ttl: int) -> str:
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                  ExpiresIn=ttl)


def parse_store_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket[/prefix]; EdgefleetError for anything else."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise EdgefleetError(f"--store: expected s3://BUCKET[/PREFIX], got {url!r}")
    return parsed.netloc, parsed.path.strip("/")


def make_store(data_dir: Path, store_url: str | None, endpoint: str | None) -> BundleStore:
    if not store_url:
        return LocalStore(data_dir)
    bucket, prefix = parse_store_url(store_url)
    return S3Store(bucket, prefix, endpoint)


@functools.lru_cache(maxsize=8)
def _cached_store(data_dir: Path, store_url: str | None, endpoint: str | None) -> BundleStore:
    return make_store(data_dir, store_url, endpoint)


def store_for(settings: CloudSettings) -> BundleStore:
    """The settings' store, one per (data_dir, store, endpoint) in a process (boto3 clients are thread-safe)."""
    return _cached_store(settings.data_dir, settings.bundle_store, settings.s3_endpoint)
