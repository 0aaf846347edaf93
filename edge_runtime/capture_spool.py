"""The capture spool: captured samples wait here, in SQLite next to the outbox, until the cloud acknowledges them.

    spool = CaptureSpool(data_dir / "capture.sqlite", max_bytes=64 * 2**20)
    spool.append(sample_id, payload)        # False (and nothing stored) when the budget or the disk is full
    for sample_id, payload in spool.batch(max_bytes=4 * 2**20): ...
    spool.delete(acknowledged_ids)          # only what the cloud said it has

Unlike the outbox, a full spool refuses the *new* sample rather than dropping the oldest: samples are a
sample of traffic, and keeping the ones already captured (perhaps half uploaded) costs nothing in
coverage. A disk with less than RESERVE_BYTES free after the sample is the same refusal ("disk_full"):
the reserve is what SQLite needs to delete uploaded samples again (with WAL, a delete writes pages before it
frees any), so a full disk never wedges the spool; a write SQLite still refuses (SQLITE_FULL) is counted
the same way, never an exception on the request path. The WAL is checkpointed every WAL_PAGES pages, so
it stays small beside the samples.

Recovery: a sample is deleted only after the cloud acknowledged its id, so a kill -9 at any point leaves
it here and the next uploader sends it again; the cloud deduplicates on (device, sample id), so the
resend costs at most the one batch that was in flight. WAL with synchronous=NORMAL: a killed process
loses nothing; a power cut may lose the last samples appended, which is acceptable for samples (the
outbox, whose sequence numbers must never repeat, uses FULL).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from edgefleet.core.errors import EdgefleetError

log = logging.getLogger(__name__)
RESERVE_BYTES = 256 * 1024  # free space kept on the spool's file system for deletes and checkpoints
WAL_PAGES = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    sample_id TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
)
"""


class SpoolError(EdgefleetError):
    """The spool's file cannot be opened or used."""


class CaptureSpool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise SpoolError(f"the capture spool's max_bytes must be positive, got {max_bytes}")
        self.path, self.max_bytes = Path(path), int(max_bytes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self._db.execute(_SCHEMA)
            self._bytes = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM samples").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise SpoolError(f"cannot open the capture spool {self.path}: {err}") from err

    def append(self, sample_id: str, payload: bytes) -> str | None:
        """Stores one sample; returns None, or why it was not stored: "spool_full" (over max_bytes) or
        "disk_full" (the file system refused the write)."""
        with self._lock:
            if self._bytes + len(payload) > self.max_bytes:
                return "spool_full"
            if self._room() < len(payload) + RESERVE_BYTES:
                return "disk_full"
            try:
                self._db.execute("INSERT OR IGNORE INTO samples (sample_id, size, created, payload) "
                                 "VALUES (?, ?, ?, ?)", (sample_id, len(payload), time.time(), payload))
            except sqlite3.OperationalError as err:  # SQLITE_FULL, or the directory went away
                log.warning("capture spool %s refused a sample: %s", self.path, err)
                return "disk_full"
            self._bytes += len(payload)
        return None

    def _room(self) -> int:
        """Bytes a new sample can take: the file system's free space and the pages uploads freed in the file."""
        disk = os.statvfs(self.path.parent)
        free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        page = self._db.execute("PRAGMA page_size").fetchone()[0]
        return disk.f_bavail * disk.f_frsize + free_pages * page

    def batch(self, max_bytes: int, max_count: int = 1000) -> list[tuple[str, bytes]]:
        """The oldest samples whose payloads add up to at most max_bytes (always at least one, if any)."""
        with self._lock:  # sizes first: only the payloads that fit are read into memory
            rows = self._db.execute("SELECT id, size FROM samples ORDER BY id LIMIT ?", (max_count,)).fetchall()
            picked, total = [], 0
            for row_id, size in rows:
                if picked and total + size > max_bytes:
                    break
                picked.append(row_id)
                total += size
            if not picked:
                return []
            found = self._db.execute("SELECT sample_id, payload FROM samples WHERE id BETWEEN ? AND ? ORDER BY id",
                                     (picked[0], picked[-1])).fetchall()
        return [(sample_id, bytes(payload)) for sample_id, payload in found]

    def delete(self, sample_ids: Iterable[str]) -> int:
        """Deletes the named samples in one transaction; returns how many there were. On a full disk the
        WAL is checkpointed (its frames are then reused) and the delete tried once more."""
        ids = list(sample_ids)
        if not ids:
            return 0
        with self._lock:
            try:
                deleted, freed = self._delete(ids)
            except sqlite3.OperationalError as err:
                log.warning("capture spool %s: deleting uploaded samples failed (%s); checkpointing and retrying",
                            self.path, err)
                self._db.execute("PRAGMA wal_checkpoint(RESTART)")
                try:
                    deleted, freed = self._delete(ids)
                except sqlite3.OperationalError as again:
                    raise SpoolError(f"cannot delete uploaded samples from {self.path}: {again}") from again
            self._bytes -= freed
        return deleted

    def _delete(self, ids: list[str]) -> tuple[int, int]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            freed = deleted = 0
            for sample_id in ids:
                row = self._db.execute("SELECT size FROM samples WHERE sample_id = ?", (sample_id,)).fetchone()
                if row:
                    self._db.execute("DELETE FROM samples WHERE sample_id = ?", (sample_id,))
                    freed, deleted = freed + row[0], deleted + 1
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return deleted, freed

    def clear(self) -> int:
        """Deletes every sample (the fleet's privacy switch turned on); returns how many there were."""
        with self._lock:
            count = self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            self._db.execute("DELETE FROM samples")
            self._bytes = 0
            if count:
                self._db.execute("VACUUM")  # the bytes leave the disk, not only the table
        return count

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
