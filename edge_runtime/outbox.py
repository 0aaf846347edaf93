"""The on-disk outbox: every message a device sends waits here, in SQLite, until the broker acknowledges it.

    outbox = Outbox(data_dir / "outbox.sqlite")
    seq = outbox.append(topic, lambda seq, dropped: replace(window, seq=seq, dropped=dropped).to_payload())
    for entry in outbox.peek(20): ...          # oldest first; the transport publishes them (QoS 1)
    outbox.ack(entry.seq)                      # only when the broker has acknowledged that publish

Sequence numbers are per device and strictly increasing for the life of the file: the highest seq ever
assigned is persisted, so a restart continues after it even when the outbox was empty. The cloud
deduplicates on (device, seq), so a reused seq would make it discard a new window as a duplicate.

Durability: WAL with synchronous=FULL, so every commit is on disk before append()/ack() return. With
synchronous=NORMAL a power cut may roll back the last commits; a window that was already published and
acknowledged would then get its seq assigned again to a different window after reboot, which the cloud
drops as a duplicate: a silent loss. FULL costs one fsync per append (one per telemetry window) and one
per ack batch (`ack_many`), cheap at telemetry rates. A killed process (SIGKILL) loses nothing with either.

Bounded: when the stored payloads exceed `max_bytes`, the oldest entries are dropped, a warning is
logged, and the drop is accumulated in a notice (count and seq range) that the next rendered message
carries in its `dropped` field; the notice is cleared once a message carries it. If a dropped entry
itself carried a notice, that notice goes back into the pending one, so no drop is ever unreported.
A dropped entry may already be on its way to the broker, so a notice counts at most that many losses.

One process owns the file; inside it one connection, guarded by a lock, serves every thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.telemetry import Dropped

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    notice_windows INTEGER NOT NULL DEFAULT 0,   -- the drop notice this payload carries, if any
    notice_first INTEGER,
    notice_last INTEGER
);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,                    -- highest seq ever assigned
    dropped_windows INTEGER NOT NULL,             -- the pending drop notice
    dropped_first INTEGER,
    dropped_last INTEGER
);
INSERT OR IGNORE INTO state VALUES (1, 0, 0, NULL, NULL);
"""


class OutboxError(EdgefleetError):
    """The outbox cannot take a message (too large, bad payload) or its file is unusable."""


@dataclass(frozen=True)
class Entry:
    seq: int
    topic: str
    payload: bytes


def _merge(a: Dropped, windows: int, first: int | None, last: int | None) -> Dropped:
    if windows <= 0:
        return a
    firsts = [s for s in (a.first_seq, first) if s is not None]
    lasts = [s for s in (a.last_seq, last) if s is not None]
    return Dropped(a.windows + windows, min(firsts) if firsts else None, max(lasts) if lasts else None)


class Outbox:
    def __init__(self, path: Path, max_bytes: int = 16 * 2**20) -> None:
        if max_bytes <= 0:
            raise OutboxError(f"max_bytes must be positive, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
            self._setup()
        except (sqlite3.DatabaseError, OutboxError) as err:
            if self._db is not None:
                self._db.close()
            if isinstance(err, OutboxError):
                raise
            raise OutboxError(f"cannot open the outbox {self.path}: {err}") from err

    def _setup(self) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"the outbox {self.path} cannot use WAL (journal_mode is {mode})")
        db.execute("PRAGMA synchronous=FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxError(f"the outbox {self.path} has schema version {version}; this edgefleet reads "
                              f"up to {SCHEMA_VERSION}")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):  # not executescript(): it would COMMIT first
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # Never below an entry that exists (guards a state row older than its entries).
            db.execute("UPDATE state SET last_seq = MAX(last_seq, COALESCE((SELECT MAX(seq) FROM entries), 0))")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._bytes = db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]

    # writing -----------------------------------------------------------------------------------------
    def append(self, topic: str, render: Callable[[int, Dropped], bytes]) -> int:
        """Assigns the next seq, stores `render(seq, pending drop notice)` under it and returns the seq.

        render runs inside the write transaction, so keep it quick (serialise, nothing more). If it raises
        or returns something unusable, nothing is stored, the seq is not used and the notice stays pending."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                last, windows, first, last_dropped = db.execute(
                    "SELECT last_seq, dropped_windows, dropped_first, dropped_last FROM state").fetchone()
                seq = last + 1
                notice = Dropped(windows, first, last_dropped)
                payload = render(seq, notice)
                if not isinstance(payload, (bytes, bytearray, memoryview)):
                    raise OutboxError(f"render must return bytes, got {type(payload).__name__}")
                payload = bytes(payload)
                if len(payload) > self.max_bytes:
                    raise OutboxError(f"a payload of {len(payload)} bytes can never fit an outbox of "
                                      f"{self.max_bytes} bytes")
                db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (seq, topic, payload, len(payload), time.time(), windows, first, last_dropped))
                # The notice now travels inside this payload; what the bound drops next starts a new one.
                db.execute("UPDATE state SET last_seq = ?, dropped_windows = 0, dropped_first = NULL, "
                           "dropped_last = NULL", (seq,))
                total, dropped = self._enforce_bound(db, self._bytes + len(payload))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._bytes = total
        if dropped.windows:
            log.warning("outbox %s over %d bytes: dropped the %d oldest message(s) (seq %s-%s); the next "
                        "message reports it", self.path, self.max_bytes, dropped.windows, dropped.first_seq,
                        dropped.last_seq)
        return seq

    def _enforce_bound(self, db: sqlite3.Connection, total: int) -> tuple[int, Dropped]:
        """Deletes the oldest entries until the payloads fit; returns the new total and what this drop added."""
        added = Dropped()
        while total > self.max_bytes:
            rows = db.execute("SELECT seq, size, notice_windows, notice_first, notice_last FROM entries "
                              "ORDER BY seq LIMIT 64").fetchall()
            if not rows:  # cannot happen: the newest entry alone fits
                break
            for seq, size, windows, first, last in rows:
                if total <= self.max_bytes:
                    break
                db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
                total -= size
                added = _merge(added, 1, seq, seq)
                added = _merge(added, windows, first, last)  # a notice riding on a dropped entry is not lost
        if added.windows:
            pending = Dropped(*db.execute("SELECT dropped_windows, dropped_first, dropped_last FROM state").fetchone())
            merged = _merge(pending, added.windows, added.first_seq, added.last_seq)
            db.execute("UPDATE state SET dropped_windows = ?, dropped_first = ?, dropped_last = ?",
                       (merged.windows, merged.first_seq, merged.last_seq))
        return total, added

    def ack(self, seq: int) -> None:
        """Deletes the entry: the broker has it. Idempotent; an unknown or already deleted seq is a no-op."""
        self.ack_many((seq,))

    def ack_many(self, seqs: Iterable[int]) -> None:
        """Deletes several entries in one transaction (one fsync)."""
        seqs = [int(s) for s in seqs]
        if not seqs:
            return
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                freed = 0
                for seq in seqs:
                    row = db.execute("SELECT size FROM entries WHERE seq = ?", (seq,)).fetchone()
                    if row:  # no RETURNING: devices may ship SQLite older than 3.35
                        db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
                        freed += row[0]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._bytes -= freed

    # reading -----------------------------------------------------------------------------------------
    def peek(self, limit: int, after: int = 0) -> list[Entry]:
        """Up to `limit` entries with seq > `after`, oldest first; nothing is removed."""
        with self._lock:
            rows = self._conn().execute("SELECT seq, topic, payload FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                                        (after, max(0, int(limit)))).fetchall()
        return [Entry(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._conn().execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The highest seq ever assigned (0 before the first append)."""
        with self._lock:
            return self._conn().execute("SELECT last_seq FROM state").fetchone()[0]

    @property
    def dropped(self) -> Dropped:
        """The drop notice the next appended message will carry."""
        with self._lock:
            return Dropped(*self._conn().execute(
                "SELECT dropped_windows, dropped_first, dropped_last FROM state").fetchone())

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"the outbox {self.path} is closed")
        return self._db
