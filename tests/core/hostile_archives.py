"""Hostile bundle archives, built in milliseconds and a few MB of memory: gzip bombs, padding with
hundreds of thousands of entries, clashing paths, oversized and deeply nested manifests.

A .tar.gz may hold several gzip members one after another (every gzip reader concatenates them), so a
bomb is one compressed MiB of zeros repeated: 2 GiB of zeros cost ~2 MB and no time to build.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import resource
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

BLOCK = 512
END = bytes(2 * BLOCK)  # the end-of-archive marker
MIB = 1 << 20
_ZERO_MIB_GZ = gzip.compress(bytes(MIB), 9)


def tar_of(root: Path, *, dir_entries: bool = False) -> bytes:
    """The raw tar of a bundle directory's files (and directories), without the end-of-archive marker."""
    buffer = io.BytesIO()
    tar = tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT)
    for path in sorted(Path(root).rglob("*")):
        if path.is_dir() and not dir_entries:
            continue
        tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return buffer.getvalue()[: tar.offset]


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", size: int | None = None,
          **pax: str) -> bytes:
    """One raw member: header (pax headers if given) and data padded to the block size."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if size is None else size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if pax:
        info.pax_headers = pax
    header = info.tobuf(tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT)
    return header + data + bytes(-len(data) % BLOCK)


def padding(count: int, kind: bytes) -> bytes:
    """`count` empty members pad/000000 ... (directories or empty files), as raw tar headers; built with
    numpy from one template header (200,000 TarInfo.tobuf calls take seconds)."""
    suffix = "/" if kind == tarfile.DIRTYPE else ""
    template = np.frombuffer(entry(f"pad/{0:06d}{suffix}", kind), dtype=np.uint8)
    rows = np.tile(template, (count, 1))
    digits = ((np.arange(count)[:, None] // 10 ** np.arange(5, -1, -1)) % 10).astype(np.uint8)
    rows[:, 4:10] = digits + ord("0")
    blank = template.astype(np.int64)
    blank[148:156] = ord(" ")
    checksum = blank.sum() + digits.astype(np.int64).sum(axis=1)
    for k in range(6):  # "%06o\0 ", as tarfile writes it
        rows[:, 148 + k] = ((checksum >> (3 * (5 - k))) & 7) + ord("0")
    rows[:, 154], rows[:, 155] = 0, ord(" ")
    return rows.tobytes()


def gz(*parts: bytes) -> bytes:
    """A .tar.gz of the raw members, with the end-of-archive marker."""
    return gzip.compress(b"".join(parts) + END, 1)


def zero_bomb(prefix: bytes, name: str, mebibytes: int) -> bytes:
    """A .tar.gz holding `prefix` then a member `name` of `mebibytes` MiB of zeros (~1 KB per MiB)."""
    header = entry(name, size=mebibytes * MIB)[:BLOCK]
    return gzip.compress(prefix + header) + _ZERO_MIB_GZ * mebibytes + gzip.compress(END)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def write_padded_manifest(path: Path, manifest: dict, pad_bytes: int) -> None:
    """manifest.json with a string of pad_bytes bytes added, written in chunks (never held in memory)."""
    text = json.dumps(manifest)
    with path.open("w") as out:
        out.write(text[:-1] + ', "padding": "')
        for _ in range(pad_bytes // MIB):
            out.write("x" * MIB)
        out.write('"}')


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """No file this process writes may grow past `limit` bytes (a write beyond it fails with EFBIG): a
    test that unpacks a bomb cannot fill the disk, however the code under test behaves."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def limit_file_size(limit: int):
    """A subprocess preexec_fn: the child may write no file larger than `limit` (it is killed by SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
