"""Packing a bundle directory to .tar.gz and unpacking one without trusting it.

Unpacking reads the archive once, as a stream, and checks every member's header before a byte of it is
written (tarfile.extractall is never used). Each refusal has its reason code:

- `unsafe_path`: an absolute path, `..`, a backslash or control character, a name longer than
  MAX_PATH_BYTES or deeper than MAX_PATH_PARTS; a symlink, hardlink, device, FIFO or sparse file
- `path_conflict`: a path that clashes with an earlier member: `a` then `a/b`, a file and a directory
  both `a`, the same file twice
- `too_many_files`: more than MAX_MEMBERS members
- `too_many_directories`: more than MAX_DIRECTORIES directories (named, or implied by a file's path)
- `too_large`: more unpacked bytes than the cap (below), a metadata header over MAX_META_BYTES, or a file
  over its own limit (`file_limits`: the manifest's and the signature's)

The cap on unpacked bytes is the smallest of the caller's `max_bytes` (default MAX_UNPACKED_BYTES) and
MAX_RATIO times the archive's own size (never below RATIO_FLOOR): a 2 MB gzip bomb that claims 2 GB is
refused at its header. The decompressed stream is counted as well, so headers and padding are bounded
too. A first pass reads only the headers, so an archive refused for its limits, names or kinds costs at
most MAX_MEMBERS headers of reading and creates nothing (creating 4,096 empty files took seconds on a
loaded disk); the second pass writes. A refused archive leaves nothing behind.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from edgefleet.core.errors import BundleError, VerificationError

CHUNK = 1 << 20
MAX_MEMBERS = 4096  # files and directories; a bundle with every target compiled holds a few dozen
MAX_DIRECTORIES = 512
MAX_UNPACKED_BYTES = 8 << 30  # when the caller gives no max_bytes
MAX_RATIO = 64  # unpacked bytes per archive byte; model weights compress ~1.1x, zeros ~1000x
RATIO_FLOOR = 32 << 20  # small archives may unpack to this much whatever their ratio
MAX_META_BYTES = 64 << 10  # one pax or GNU long-name header
MAX_PATH_BYTES = 1024
MAX_PATH_PARTS = 32
MAX_NAME_BYTES = 255  # one path component (what Linux file systems take)
_STREAM_OVERHEAD = 4096  # header, pax header and padding bytes allowed per member in the decompressed stream


def pack(directory: Path, out_path: Path) -> Path:
    """Writes directory's files (sorted, no links, normalised owners) to a .tar.gz."""
    directory, out_path = Path(directory), Path(out_path)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
    with tarfile.open(out_path, "w:gz") as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(directory).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return out_path


def unsafe_path_reason(rel: str) -> str | None:
    """Why a relative posix path could leave (or break) the directory it is meant for; None when safe."""
    path = PurePosixPath(rel)
    if rel.startswith("/") or path.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        return "is an absolute path"
    if ".." in path.parts:
        return "escapes the bundle with '..'"
    if "\\" in rel:
        return "contains a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "contains a control character"
    encoded = rel.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES or len(path.parts) > MAX_PATH_PARTS:
        return f"is longer than {MAX_PATH_BYTES} bytes or deeper than {MAX_PATH_PARTS} directories"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in path.parts):
        return f"has a name longer than {MAX_NAME_BYTES} bytes"
    return None


def check_member_name(name: str) -> PurePosixPath:
    why = unsafe_path_reason(name)
    if why is not None:
        raise VerificationError("unsafe_path", f"archive member {name!r} {why}")
    return PurePosixPath(name)


def unpack(archive: Path, dest: Path, *, max_bytes: int | None = None,
           file_limits: Mapping[str, int] | None = None) -> Path:
    """Extracts a bundle archive into dest (created; must not exist or be empty) within the module's
    limits; `file_limits` caps single files by path (manifest.json: a few MB).

    Two passes over the stream: the first reads only the headers (member data is decompressed and
    skipped) and refuses the archive before anything is created; the second writes, checking again."""
    archive, dest = Path(archive), Path(dest)
    try:
        info = archive.stat()
    except OSError as err:
        raise BundleError(f"{archive} is not a readable bundle archive: {err}") from err
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{archive} is not a bundle archive (not a regular file)")
    archive_size = info.st_size
    limits = _Limits.of(archive_size, max_bytes, file_limits or {})
    _one_pass(archive, limits, None)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        _one_pass(archive, limits, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _one_pass(archive: Path, limits: _Limits, dest: Path | None) -> None:
    with contextlib.ExitStack() as stack:
        stream = _Counted(_decompressed(archive, stack), limits)
        try:
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|", tarinfo=_GuardedTarInfo))
        except (tarfile.TarError, *_CORRUPT) as err:
            raise BundleError(f"{archive} is not a readable bundle archive: {err}") from err
        _Extraction(tar, dest, limits).run()


def fsync_dir(directory: Path) -> None:
    """Makes a rename or a new file in `directory` durable (the directory entry itself is synced)."""
    if os.name != "posix":  # pragma: no cover - directories cannot be opened for fsync elsewhere
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the limits and the stream ----------------------------------------------------------------------
_CORRUPT = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)  # what a damaged stream raises


@dataclass(frozen=True)
class _Limits:
    archive_size: int
    absolute: int  # the caller's max_bytes, or MAX_UNPACKED_BYTES
    by_ratio: int  # MAX_RATIO times the archive's size, at least RATIO_FLOOR
    file_limits: Mapping[str, int]

    @classmethod
    def of(cls, archive_size: int, max_bytes: int | None, file_limits: Mapping[str, int]) -> _Limits:
        absolute = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
        return cls(archive_size, absolute, max(RATIO_FLOOR, MAX_RATIO * archive_size), file_limits)

    @property
    def data_cap(self) -> int:
        """Unpacked bytes of all files together."""
        return min(self.absolute, self.by_ratio)

    @property
    def stream_cap(self) -> int:
        return self.data_cap + _STREAM_OVERHEAD * (MAX_MEMBERS + 8)

    def too_large(self, total: int) -> VerificationError:
        """The refusal for `total` bytes, naming the caller's limit when that one is broken too."""
        if total <= self.absolute:
            return VerificationError(
                "too_large", f"bundle archive of {self.archive_size} bytes unpacks to more than {self.by_ratio} "
                             f"bytes ({MAX_RATIO} times its size): a compression bomb")
        return VerificationError("too_large", f"bundle archive unpacks to more than {self.absolute} bytes")


def _decompressed(archive: Path, stack: contextlib.ExitStack) -> BinaryIO:
    raw = stack.enter_context(archive.open("rb"))
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic.startswith(b"BZh"):
        return stack.enter_context(bz2.BZ2File(raw))
    if magic.startswith(b"\xfd7zXZ\x00"):
        return stack.enter_context(lzma.LZMAFile(raw))
    return raw


class _Counted:
    """The decompressed archive as tarfile reads it, refused once it passes the stream cap."""

    def __init__(self, inner: BinaryIO, limits: _Limits) -> None:
        self.inner, self.limits, self.count = inner, limits, 0

    def read(self, size: int = -1) -> bytes:
        room = self.limits.stream_cap + 1 - self.count
        data = self.inner.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.limits.stream_cap:
            raise self.limits.too_large(self.count)
        return data


class _GuardedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses, before tarfile reads them into memory, oversized metadata headers and the
    sparse formats (whose maps an attacker sizes); tarfile's documented hook is _proc_member."""

    def _proc_member(self, tarfile_: tarfile.TarFile):  # noqa: ANN202 - tarfile's signature
        meta = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)
        if self.type in meta and self.size > MAX_META_BYTES:
            raise VerificationError("too_large", f"archive metadata header of {self.size} bytes; the limit is "
                                                 f"{MAX_META_BYTES}")
        if self.type == tarfile.GNUTYPE_SPARSE:
            self._refuse_sparse()
        return super()._proc_member(tarfile_)

    def _refuse_sparse(self, *_args: object) -> None:
        raise VerificationError("unsafe_path", f"archive member {self.name!r} is a sparse file")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


class _Extraction:
    """One pass over the members: each header is checked against the limits, then the member is written
    (unless dest is None: the headers-only pass)."""

    def __init__(self, tar: tarfile.TarFile, dest: Path | None, limits: _Limits) -> None:
        self.tar, self.dest, self.limits = tar, dest, limits
        self.kinds: dict[PurePosixPath, str] = {}  # path -> "file" or "dir", named or implied
        self.members = self.directories = self.total = 0

    def run(self) -> None:
        while True:
            try:
                member = self.tar.next()
            except (tarfile.TarError, *_CORRUPT) as err:
                raise BundleError(f"bundle archive is corrupt: {err}") from err
            if member is None:
                return
            self._one(member)

    def _one(self, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise VerificationError("too_many_files", f"bundle archive has more than {MAX_MEMBERS} members")
        rel = check_member_name(member.name)
        if member.issym() or member.islnk():
            kind = "symlink" if member.issym() else "hardlink"
            raise VerificationError(
                "unsafe_path", f"archive member {member.name!r} is a {kind} (to {member.linkname!r})"
            )
        if not (member.isdir() or member.isfile()):
            raise VerificationError("unsafe_path", f"archive member {member.name!r} is not a regular file")
        if rel == PurePosixPath("."):
            if member.isdir():
                return  # "./", the archive's root
            raise VerificationError("unsafe_path", f"archive member {member.name!r} names the bundle itself")
        self._claim(rel, "dir" if member.isdir() else "file", member.name)
        if member.isfile():
            self._count(member, rel)
        if self.dest is None:
            return
        target = self.dest / rel
        try:
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                self._copy(member, target)
        except OSError as err:
            raise BundleError(f"cannot unpack archive member {member.name!r}: {err}") from err

    def _claim(self, rel: PurePosixPath, kind: str, name: str) -> None:
        """Records rel and its parent directories, refusing clashes with what came before."""
        for parent in reversed(rel.parents[:-1]):  # outermost first, without "."
            seen = self.kinds.get(parent)
            if seen == "file":
                raise VerificationError("path_conflict", f"archive member {name!r} is inside {str(parent)!r}, "
                                                         "which is a file")
            if seen is None:
                self._add_directory(parent)
        seen = self.kinds.get(rel)
        if seen is not None and (kind == "file" or seen == "file"):
            what = "appears twice" if seen == kind else "is both a file and a directory"
            raise VerificationError("path_conflict", f"archive member {name!r} {what}")
        if seen is None:
            if kind == "dir":
                self._add_directory(rel)
            else:
                self.kinds[rel] = "file"

    def _add_directory(self, rel: PurePosixPath) -> None:
        self.directories += 1
        if self.directories > MAX_DIRECTORIES:
            raise VerificationError("too_many_directories",
                                    f"bundle archive has more than {MAX_DIRECTORIES} directories")
        self.kinds[rel] = "dir"

    def _count(self, member: tarfile.TarInfo, rel: PurePosixPath) -> None:
        limit = self.limits.file_limits.get(str(rel))
        if limit is not None and member.size > limit:
            raise VerificationError("too_large", f"{rel} in the archive is {member.size} bytes; the limit is {limit}")
        self.total += member.size
        if self.total > self.limits.data_cap:
            raise self.limits.too_large(self.total)

    def _copy(self, member: tarfile.TarInfo, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        source = self.tar.extractfile(member)
        if source is None:  # pragma: no cover - isfile() members always have data
            raise BundleError(f"archive member {member.name!r} has no data")
        with source, target.open("xb") as out:
            try:
                shutil.copyfileobj(source, out, CHUNK)
            except (tarfile.TarError, *_CORRUPT) as err:  # a damaged stream, or a full disk
                raise BundleError(f"cannot unpack archive member {member.name!r}: {err}") from err
