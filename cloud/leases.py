"""Leases in the database: how monitor and rollout workers share work on one PostgreSQL without a
coordinator of our own.

A lease is a row of `leases` (name, holder, expires_at). It is taken or renewed by one statement,

    INSERT ... ON CONFLICT (name) DO UPDATE SET holder = me, expires_at = now + period
        WHERE leases.holder = me OR leases.expires_at < now  RETURNING name

so a free or expired lease goes to the first worker that asks, a live one stays with its holder, and the
database's row lock serialises two workers asking at once. `now` is the database's clock, never a
worker's: workers on machines whose clocks disagree still agree on who holds what.

Why a table rather than advisory locks: an advisory lock belongs to one database connection, so it would
pin a connection per worker outside the pool, and it is held for as long as that connection looks alive
(a frozen worker, or a half-open TCP connection, keeps it for the kernel's keepalive time, minutes). A
lease expires after its period whatever happened to its holder, can be read by anyone (which worker holds
which shard is a SELECT), and works through the same pooled sessions as everything else. The price is a
renewal write every period / 3 per worker, a few rows.

A holder stops trusting a lease one period after the renewal that granted it was sent (its own monotonic
clock), so when renewals fail (the database unreachable) it stops working on the lease before anyone
else can take it over. A killed worker's leases are free one period after its last renewal.

On SQLite the cloud is one process (cloud/roles.py refuses the roles on SQLite): every lease is held by
that process and nothing is written.

`ShardLeases` splits a role's work: S fixed device shards (sha256 of the device id mod S, the same in
Python and SQL), each leased to one worker, plus named singletons (the fleet-level scopes). Every worker
keeps a membership lease; it aims at ceil(S / live workers) shards, gives back those above its share so
that a new worker gets some, and takes free or expired ones below it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable

from sqlalchemy import BigInteger, Float, String, cast, delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.cloud.db import Base

log = logging.getLogger(__name__)

SHARDS = 64  # fixed: a device's shard never changes, whatever the number of workers
DEFAULT_PERIOD = 15.0


class LeaseRecord(Base):
    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float, index=True)  # the database's clock, epoch seconds


def new_holder(role: str) -> str:
    """A holder name unique to this process and start: host, pid and a random part (a restarted worker
    with the same pid must not inherit the leases of the killed one before they expire)."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def shard_of(device_id: str, shards: int = SHARDS) -> int:
    """The device's shard: the first 4 bytes of sha256(device id), big-endian, mod `shards`."""
    return int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:4], "big") % shards


def shard_sql(column: ColumnElement, shards: int = SHARDS) -> ColumnElement:
    """shard_of as a PostgreSQL expression over a device id column."""
    digest = func.sha256(func.convert_to(column, literal_column("'UTF8'")))
    value = sum((cast(func.get_byte(digest, i), BigInteger) * 256 ** (3 - i) for i in range(1, 4)),
                cast(func.get_byte(digest, 0), BigInteger) * 256 ** 3)
    return func.mod(value, shards)


_DB_NOW = literal_column("extract(epoch from clock_timestamp())")


class Leases:
    """Take, renew, release and read leases as `holder`, for `period` seconds."""

    def __init__(self, sessions: sessionmaker, holder: str, period: float = DEFAULT_PERIOD) -> None:
        if period <= 0:
            raise ValueError(f"lease period must be positive, got {period}")
        self.sessions, self.holder, self.period = sessions, holder, float(period)
        self.single_process = sessions.kw["bind"].dialect.name == "sqlite"

    def acquire(self, names: Iterable[str]) -> set[str]:
        """Takes or renews each of `names` that is free, expired or already ours; returns those now ours."""
        names = sorted(set(names))
        if self.single_process or not names:
            return set(names)
        statement = insert(LeaseRecord).values([{"name": n, "holder": self.holder,
                                                 "expires_at": _DB_NOW + self.period} for n in names])
        statement = statement.on_conflict_do_update(
            index_elements=[LeaseRecord.name],
            set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
            where=(LeaseRecord.holder == self.holder) | (LeaseRecord.expires_at < _DB_NOW),
        ).returning(LeaseRecord.name)
        with self.sessions.begin() as session:
            return set(session.scalars(statement))

    def release(self, names: Iterable[str]) -> None:
        """Gives back those of `names` we hold, so another worker can take them at once."""
        names = list(names)
        if self.single_process or not names:
            return
        with self.sessions.begin() as session:
            session.execute(delete(LeaseRecord).where(LeaseRecord.name.in_(names), LeaseRecord.holder == self.holder))

    def live(self, prefix: str) -> dict[str, str]:
        """name -> holder of the unexpired leases whose name starts with `prefix`."""
        if self.single_process:
            return {}
        with self.sessions() as session:
            rows = session.execute(select(LeaseRecord.name, LeaseRecord.holder)
                                   .where(LeaseRecord.name.startswith(prefix), LeaseRecord.expires_at >= _DB_NOW))
            return dict(rows.all())


class ShardLeases:
    """The shards and singletons of one role (`role` names them: "monitor/shard/7", "monitor/fleets") that
    this worker holds, kept by a thread that renews and rebalances every period / 3."""

    def __init__(self, leases: Leases, role: str, singletons: tuple[str, ...] = (), shards: int = SHARDS) -> None:
        self.leases, self.role, self.shards = leases, role, shards
        self.singletons = tuple(f"{role}/{name}" for name in singletons)
        self._member = f"{role}/member/{leases.holder}"
        self._held: set[str] = set()
        self._valid_until = 0.0  # monotonic: the held set is trusted until then
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def everything(self) -> bool:
        """True where one process holds every lease without asking (SQLite)."""
        return self.leases.single_process

    # what a pass may work on -----------------------------------------------------------------------------
    def held_shards(self) -> set[int]:
        if self.everything:
            return set(range(self.shards))
        return {int(name.rsplit("/", 1)[1]) for name in self._trusted() if name.startswith(f"{self.role}/shard/")}

    def holds(self, singleton: str) -> bool:
        return self.everything or f"{self.role}/{singleton}" in self._trusted()

    def owns(self, device_id: str, held: set[int] | None = None) -> bool:
        return self.everything or shard_of(device_id, self.shards) in (self.held_shards() if held is None else held)

    def device_filter(self, column: ColumnElement, held: set[int]) -> ColumnElement | None:
        """A WHERE clause keeping the rows of the devices in `held` shards (None: no filter needed)."""
        if self.everything or len(held) == self.shards:
            return None
        return shard_sql(column, self.shards).in_(sorted(held)) if held else literal_column("false")

    def _trusted(self) -> set[str]:
        with self._lock:
            return set(self._held) if time.monotonic() < self._valid_until else set()

    # keeping them ----------------------------------------------------------------------------------------
    def refresh(self) -> set[str]:
        """One renewal and rebalancing step; returns the leases held after it."""
        if self.everything:
            return set()
        sent = time.monotonic()
        with self._lock:
            mine = set(self._held)
        kept = self.leases.acquire(mine | {self._member, *self.singletons})
        kept = kept - {self._member} if self._member in kept else set()  # our own row taken: hold nothing
        live = self.leases.live(f"{self.role}/")
        workers = {holder for name, holder in live.items() if name.startswith(f"{self.role}/member/")} or {"me"}
        share = math.ceil(self.shards / len(workers))
        shards = sorted((n for n in kept if n.startswith(f"{self.role}/shard/")),
                        key=lambda n: int(n.rsplit("/", 1)[1]))
        if len(shards) > share:
            extra = shards[share:]
            self.leases.release(extra)
            kept -= set(extra)
        elif len(shards) < share:
            taken = {name for name, holder in live.items() if holder != self.leases.holder}
            free = [f"{self.role}/shard/{i}" for i in range(self.shards)
                    if f"{self.role}/shard/{i}" not in taken and f"{self.role}/shard/{i}" not in kept]
            kept |= self.leases.acquire(free[:share - len(shards)])
        with self._lock:
            if kept - self._held or self._held - kept:
                log.info("%s leases: %d shards of %d with %d worker(s)%s", self.role,
                         sum(n.startswith(f"{self.role}/shard/") for n in kept), self.shards, len(workers),
                         "".join(f", {s.split('/', 1)[1]}" for s in self.singletons if s in kept))
            self._held, self._valid_until = kept, sent + self.leases.period
        return kept

    def start(self) -> None:
        if self.everything:
            return
        self._stop = threading.Event()
        self._refresh_logged()
        self._thread = threading.Thread(target=self._loop, name=f"{self.role}-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if not self.everything:
            with self._lock:
                held, self._held = self._held, set()
            try:
                self.leases.release(held | {self._member})  # the others take over at once, not a period later
            except Exception:  # noqa: BLE001 - stopping anyway; the leases expire by themselves
                log.exception("%s leases: release on stop failed", self.role)

    def _loop(self) -> None:
        while not self._stop.wait(self.leases.period / 3):
            self._refresh_logged()

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - the database may come back; until then the held set expires
            log.exception("%s leases: renewal failed", self.role)
