"""Packing a bundle directory to .tar.gz and unpacking one without trusting it.

Unpacking never calls tarfile.extractall: each member is checked first, and regular files are copied
out by hand. A member whose path is absolute, contains `..`, or that is a symlink, hardlink, device or
FIFO is refused with a message naming it, and nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from edgefleet.core.errors import BundleError, VerificationError

CHUNK = 1 << 20


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


def check_member_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise VerificationError("unsafe_path", f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise VerificationError("unsafe_path", f"archive member {name!r} escapes the bundle with '..'")
    if "\\" in name:
        raise VerificationError("unsafe_path", f"archive member {name!r} contains a backslash")
    return path


def unpack(archive: Path, dest: Path, *, max_bytes: int | None = None) -> Path:
    """Extracts a bundle archive into dest (created; must not exist or be empty)."""
    archive, dest = Path(archive), Path(dest)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise BundleError(f"{archive} is not a readable bundle archive: {err}") from err
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tar:
            _extract_members(tar, dest, max_bytes)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _extract_members(tar: tarfile.TarFile, dest: Path, max_bytes: int | None) -> None:
    total = 0
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BundleError(f"bundle archive is corrupt: {err}") from err
    for member in members:
        rel = check_member_name(member.name)
        if member.issym() or member.islnk():
            kind = "symlink" if member.issym() else "hardlink"
            raise VerificationError(
                "unsafe_path", f"archive member {member.name!r} is a {kind} (to {member.linkname!r})"
            )
        if member.isdir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
            continue
        if not member.isfile():
            raise VerificationError("unsafe_path", f"archive member {member.name!r} is not a regular file")
        total += member.size
        if max_bytes is not None and total > max_bytes:
            raise VerificationError("too_large", f"bundle archive unpacks to more than {max_bytes} bytes")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isfile() members always have data
            raise BundleError(f"archive member {member.name!r} has no data")
        try:
            with source, target.open("xb") as out:
                shutil.copyfileobj(source, out, CHUNK)
        except FileExistsError as err:
            raise VerificationError("unsafe_path", f"archive member {member.name!r} appears twice") from err
        except (tarfile.TarError, OSError, EOFError) as err:
            raise BundleError(f"bundle archive is corrupt at {member.name!r}: {err}") from err


def fsync_dir(directory: Path) -> None:
    """Makes a rename or a new file in `directory` durable (the directory entry itself is synced)."""
    if os.name != "posix":  # pragma: no cover - directories cannot be opened for fsync elsewhere
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
