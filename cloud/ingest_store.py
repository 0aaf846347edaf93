"""The ingest's database writes: validated device messages into the tables, inside the caller's transaction.

`store(session, messages)` writes telemetry windows once per (device, seq), applies presence (birth and
death, ordered by connection stamp) and OTA statuses, and adds every message's reason to the
ingest_counters table. The messages were validated (cloud/ingest.py), so their values fit the columns;
if the transaction fails anyway, the caller retries smaller parts (see cloud/ingest.py).

Several ingest workers write at once (role `ingest`, cloud/roles.py), so every write is safe against a
concurrent one: a window another worker committed meanwhile is skipped by the insert itself (ON CONFLICT
DO NOTHING on (device, seq), counted as a duplicate), counters are added in the database (count = count +
n; read-modify-write lost increments between two workers), and rows are updated in one order (device id,
reason) so two workers never wait on each other in a cycle.

On PostgreSQL a batch's windows go in as one INSERT ... SELECT FROM json_to_recordset(<one JSON text>)
with ON CONFLICT DO NOTHING, which both stores and deduplicates: a multi-row VALUES list of 1,000 windows
has 14,000 parameters, and converting such a query cost psycopg more than PostgreSQL took to run it (one
array parameter per column was half as costly; psycopg then spent its time quoting the payload arrays,
which json.dumps does in C).

With psycopg 3 the windows go in by COPY instead, inside a savepoint: PostgreSQL parsed the JSON text (7.5 us
of its 20 us per window in that INSERT), where COPY's text rows cost it a fraction of that. The savepoint
first touches the devices (the UPDATE's RETURNING tells which are registered, so a batch of windows needs no
look-up of its own), then COPYs the windows of registered devices sorted by (device, seq), so two workers
inserting the same keys wait on each other in one order. COPY has no ON CONFLICT: a batch holding a window
stored already (a redelivery, or another worker's copy committed meanwhile) fails on the (device, seq) key,
the savepoint is rolled back with its touches, and the batch goes in by the INSERT ... ON CONFLICT DO NOTHING
above, which touches only the devices of the windows it inserted: the same dedupe and counts, only that rare
batch costs twice. bench_ingest: PostgreSQL's CPU per window 30-32 -> 22-25 us.

Telemetry has no foreign key to devices (schema 0008: its per-row check was about 5 of PostgreSQL's 21.5 us
per window), so a window of an unregistered device is kept out by this module: every window stored is of a
device whose row this transaction holds locked until its commit. By COPY, the devices' UPDATE locks the
rows it returns (FOR NO KEY UPDATE); by the INSERT, the look-up of the batch's devices locks them FOR KEY
SHARE, the lock the foreign key's check took. A device deleted meanwhile is therefore either gone before
the lock (the UPDATE or the look-up waits for the DELETE's commit, then finds no row: its windows are
counted as unknown_device) or deleted after this commit, where the trigger on devices (db.py,
TELEMETRY_DEVICE_GUARD) sees the stored windows and refuses the DELETE, as the foreign key did.
bench_ingest: PostgreSQL's CPU per message 21.5-24 -> 16.5-19 us.
SQLite has one writer at a time: there the store begins with the write lock (BEGIN IMMEDIATE), so a DELETE
by another connection waits for its commit, then meets the trigger, or commits before the look-up.

Row ids follow commit order, which the drift monitor relies on (it reads the rows above the highest id
it saw: late windows and the CUSUM feeds, cloud/drift_monitor.py). A sequence hands out ids at insert,
so two workers' transactions could commit in the other order, and a row with a lower id would appear
after the monitor passed it. On PostgreSQL each store therefore begins with one transaction-level
advisory lock (INGEST_ORDER_LOCK), held until its commit: the workers' parsing and checking stay in
parallel, their writes take turns. Taken first, before any row lock, it cannot join a lock cycle.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, NamedTuple

from sqlalchemy import ARRAY, String, any_, bindparam, insert, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from edgefleet.cloud.db import DeploymentDevice, Device, DeviceStatus, IngestCounter, TelemetryRecord
from edgefleet.core.ota import Status
from edgefleet.core.presence import Presence
from edgefleet.core.telemetry import TelemetryWindow

log = logging.getLogger("edgefleet.cloud.ingest")

# pg_advisory_xact_lock's key for the ingest's writes (any fixed 64-bit number no other lock uses: the ASCII
# of "efINGEST"). Held from the start of a store to its commit, so telemetry row ids follow commit order.
INGEST_ORDER_LOCK = 0x6566494E47455354


class Checked(NamedTuple):
    """One device message after validation: what to store, or (message None) the reason it is refused (a
    tuple, made for every message at C speed)."""

    device: str
    payload: bytes
    message: TelemetryWindow | Status | Presence | None
    reason: str = ""


def store(session: Session, messages: list[Checked]) -> Counter:
    """Writes `messages` in `session` and returns the counts by reason (also added to ingest_counters)."""
    if _postgres(session):  # the writes of concurrent workers take turns, so ids follow commit order
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INGEST_ORDER_LOCK})
    else:
        _begin_writing(session)
    tally: Counter[str] = Counter(m.reason for m in messages if m.message is None)
    windows = [(m.message, m.payload) for m in messages if isinstance(m.message, TelemetryWindow)]
    statuses = [(m.message, m.payload) for m in messages if isinstance(m.message, Status)]
    presence = [(m.device, m.message) for m in messages if isinstance(m.message, Presence)]
    devices = {m.device for m in messages if m.message is not None}
    copied = _copy_windows(session, windows, tally) if windows and _copies(session) else None
    if copied is not None:  # the devices the copy touched are known; only the others are looked up
        known = copied | _known_devices(session, devices - copied)
    else:
        known = _known_devices(session, devices)
        fresh = _without_duplicates(session, [(w, raw) for w, raw in windows if w.device in known], tally)
        tally["unknown_device"] += sum(1 for w, _ in windows if w.device not in known)
        stored = _store_windows(session, fresh)
        tally["duplicate"] += len(fresh) - stored
        tally["accepted"] += stored
    for device, message in presence:
        if device not in known:
            tally["unknown_device"] += 1
            continue
        tally[_presence(session, device, message)] += 1
    tally["unknown_device"] += sum(1 for s, _ in statuses if s.device not in known)
    _store_statuses(session, [(s, raw) for s, raw in statuses if s.device in known], tally)
    _add_counts(session, tally)
    return tally


def _begin_writing(session: Session) -> None:
    """On SQLite, takes the database's write lock before the devices are looked up (BEGIN IMMEDIATE), so no
    other connection can delete a device between the look-up and the windows' insert. The driver begins
    its transactions lazily, at the first write: one already begun (by a write of the caller's) holds the
    lock already."""
    raw = session.connection().connection.dbapi_connection
    if not raw.in_transaction:
        session.execute(text("BEGIN IMMEDIATE"))


def _known_devices(session: Session, ids: set[str]) -> set[str]:
    if not ids:
        return set()
    if _postgres(session):  # one array parameter, not one per id; locked until the commit (module docstring)
        return set(session.scalars(select(Device.id).where(Device.id == any_(bindparam(
            "ids", sorted(ids), type_=ARRAY(String)))).order_by(Device.id).with_for_update(key_share=True)))
    return set(session.scalars(select(Device.id).where(Device.id.in_(ids))))


def _without_duplicates(session: Session, windows: list[tuple[TelemetryWindow, bytes]],
                        tally: Counter) -> list[tuple[TelemetryWindow, bytes]]:
    """Drops windows that repeat within the batch, and (except on PostgreSQL, where the insert itself skips
    them) those whose (device, seq) is stored already."""
    if not windows:
        return []
    keys = [(w.device, w.seq) for w, _ in windows]
    stored = set() if _postgres(session) else set(session.execute(
        select(TelemetryRecord.device_id, TelemetryRecord.seq).where(
            tuple_(TelemetryRecord.device_id, TelemetryRecord.seq).in_(keys))
    ).all())
    fresh, seen = [], set(stored)
    for window, key in zip(windows, keys, strict=True):
        if key in seen:
            tally["duplicate"] += 1
            continue
        seen.add(key)
        fresh.append(window)
    return fresh


def _record(window: TelemetryWindow, raw: bytes) -> dict:
    """A row for the bulk insert; the payload is stored as it came (it was validated)."""
    return {
        "device_id": window.device, "fleet": window.fleet, "seq": window.seq, "model_name": window.model_name,
        "model_version": window.model_version, "window_start": window.start, "window_end": window.end,
        "requests": window.requests, "samples": window.samples, "errors": window.errors,
        "dropped_windows": window.dropped.windows, "payload": raw.decode(), "received_at": time.time(),
    }


def _store_windows(session: Session, windows: list[tuple[TelemetryWindow, bytes]]) -> int:
    """Inserts the windows but those whose (device, seq) is stored already, and touches (_touch) the devices
    of those inserted; returns how many it inserted."""
    if not windows:
        return 0
    rows = sorted((_record(w, raw) for w, raw in windows), key=lambda row: (row["device_id"], row["seq"]))
    inserted = _insert_windows(session, rows)
    _touch(session, [w for w, _ in windows if (w.device, w.seq) in inserted])
    return len(inserted)


def _copies(session: Session) -> bool:
    """Whether the windows can go in by COPY: PostgreSQL through psycopg 3."""
    return _postgres(session) and session.get_bind().dialect.driver == "psycopg"


def _copy_windows(session: Session, windows: list[tuple[TelemetryWindow, bytes]], tally: Counter) -> set[str] | None:
    """PostgreSQL: in a savepoint, touches the windows' devices (which tells the known ones: RETURNING) and
    COPYs the windows of known devices, repeats within the batch left out; counts them as `store` would and
    returns the known devices. None, with nothing written or counted, when a window is stored already (the
    key refuses the COPY): the caller then stores the batch by the INSERT that skips those."""
    from psycopg.errors import UniqueViolation  # the postgres extra; imported only when it serves

    candidates, repeats, seen = [], [], set()
    for window, raw in windows:
        key = (window.device, window.seq)
        (repeats if key in seen else candidates).append((window, raw))
        seen.add(key)
    try:  # the devices first: only windows of the rows this UPDATE locked go in (module docstring)
        with session.begin_nested():
            known = _touch_postgres(session, _touch_rows([w for w, _ in candidates]))
            rows = sorted((_record(w, raw) for w, raw in candidates if w.device in known),
                          key=lambda row: (row["device_id"], row["seq"]))  # one lock order for every worker
            if rows:
                _copy_rows(session, rows)
    except UniqueViolation:
        log.debug("ingest: a batch of %d window(s) holds one stored already; inserting it skipping those",
                  len(windows))
        return None
    tally["accepted"] += len(rows)
    tally["unknown_device"] += sum(1 for w, _ in windows if w.device not in known)
    tally["duplicate"] += sum(1 for w, _ in repeats if w.device in known)
    return known


def _copy_rows(session: Session, rows: list[dict]) -> None:
    """COPY of the rows into telemetry (psycopg 3's copy, its text rows made in C); raises UniqueViolation
    if one's (device, seq) is stored already."""
    names = list(rows[0])
    cursor = session.connection().connection.dbapi_connection.cursor()
    with cursor, cursor.copy(f"COPY {TelemetryRecord.__tablename__} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(tuple(row.values()))


def _insert_windows(session: Session, rows: list[dict]) -> set[tuple[str, int]]:
    """Inserts the rows but those whose (device, seq) is stored already; returns the keys it inserted."""
    if not _postgres(session):
        return set(session.execute(
            _insert(session, TelemetryRecord).on_conflict_do_nothing(index_elements=["device_id", "seq"])
            .returning(TelemetryRecord.device_id, TelemetryRecord.seq), rows).all())
    table, names = TelemetryRecord.__table__, list(rows[0])
    dialect = session.get_bind().dialect
    columns = ", ".join(f"{name} {table.c[name].type.compile(dialect=dialect)}" for name in names)
    statement = text(f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM json_to_recordset(CAST(:rows AS "
                     f"json)) AS r({columns}) ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq")
    return set(session.execute(statement, {"rows": json.dumps(rows, allow_nan=False)}).all())


def _touch(session: Session, windows: list[TelemetryWindow]) -> None:
    """Each device's last_seen, and the model it serves: that of its newest window (a window holds one
    model version, and the device closes the old version's window when an update swaps models)."""
    rows = _touch_rows(windows)
    if not rows:
        return
    if not _postgres(session):  # one executemany: ORM bulk UPDATE by primary key, in device id order
        session.execute(update(Device), rows)
        return
    _touch_postgres(session, rows)


def _touch_rows(windows: list[TelemetryWindow]) -> list[dict]:
    """One row per device, from its newest window, in device id order."""
    latest: dict[str, TelemetryWindow] = {}
    for window in windows:
        if window.device not in latest or window.end >= latest[window.device].end:
            latest[window.device] = window
    return [{"id": device, "last_seen": w.end, "model_name": w.model_name, "model_version": w.model_version}
            for device, w in sorted(latest.items())]


def _touch_postgres(session: Session, rows: list[dict]) -> set[str]:
    """_touch on PostgreSQL; returns the ids of the devices it updated (those registered)."""
    # One statement from one JSON text (an executemany of one UPDATE per device cost more than
    # the windows' insert) whose subquery locks the rows in device id order before any is updated (the
    # order every writer of device rows keeps, so none waits on another in a cycle): a row reaches the
    # UPDATE only through the subquery's LockRows, which locks as the sort hands rows out, whatever join
    # the planner picks. A separate SELECT ... FOR NO KEY UPDATE cost a round trip and a scan more.
    # FOR NO KEY UPDATE, the lock the UPDATE itself takes: FOR UPDATE would also wait on the key-share
    # locks that inserts referencing a device take (a new deployment's 10,000 rows, in rollout order) and
    # deadlock with them.
    if not rows:
        return set()
    return set(session.scalars(text(
        "UPDATE devices SET last_seen = v.last_seen, model_name = v.model_name, "
        "model_version = v.model_version FROM (SELECT d.id, r.last_seen, r.model_name, "
        "r.model_version FROM devices d JOIN json_to_recordset(CAST(:rows AS json)) AS "
        "r(id varchar, last_seen float8, model_name varchar, model_version integer) ON d.id = r.id "
        "ORDER BY d.id FOR NO KEY UPDATE OF d) AS v WHERE devices.id = v.id RETURNING devices.id"),
        {"rows": json.dumps(rows, allow_nan=False)}))


def _presence(session: Session, device: str, presence: Presence) -> str:
    """Birth and death (last will) keep a device's online state and model version.

    Both carry their connection's stamp. A birth applies only if its connection is newer than the last
    presence message applied, a death if it is at least as new (a death ends its own connection), so
    the state is right whatever order the broker delivers retained births and deaths in.
    """
    kind, stamp = presence.kind, presence.connection
    if stamp is not None:
        stored = session.scalar(select(Device.presence_stamp).where(Device.id == device))
        if stored is not None and (stamp < stored or (kind == "birth" and stamp == stored)):
            return f"{kind}_stale"
    values: dict = {"online": kind == "birth", "last_seen": time.time(), "presence_stamp": stamp}
    if presence.model_name is not None:
        values.update(model_name=presence.model_name, model_version=presence.model_version)
    if presence.agent_version is not None:
        values["agent_version"] = presence.agent_version
    if presence.kind == "birth":  # a birth says what runs now; one without a backend says nothing more
        values.update(backend=presence.backend, runtime=presence.runtime)
    session.execute(update(Device).where(Device.id == device).values(**values))
    return kind


def _store_statuses(session: Session, statuses: list[tuple[Status, bytes]], tally: Counter) -> None:
    """Stores new (device, seq) statuses and applies each, in seq order, to its deployment's device row."""
    if not statuses:
        return
    keys = [(s.device, s.seq) for s, _ in statuses]
    seen = set(session.execute(select(DeviceStatus.device_id, DeviceStatus.seq)
                               .where(tuple_(DeviceStatus.device_id, DeviceStatus.seq).in_(keys))).all())
    fresh = []
    for (status, raw), key in zip(statuses, keys, strict=True):
        if key in seen:
            tally["status_duplicate"] += 1
            continue
        seen.add(key)
        fresh.append((status, raw))
    if not fresh:
        return
    stamp = time.time()
    session.execute(insert(DeviceStatus), [
        {"device_id": s.device, "fleet": s.fleet, "seq": s.seq, "deployment_id": s.deployment, "command_id": s.command,
         "state": s.state, "reason": s.reason, "at": s.at, "payload": raw.decode(), "received_at": stamp}
        for s, raw in fresh])
    _apply_statuses(session, [s for s, _ in fresh], stamp, tally)


def _apply_statuses(session: Session, statuses: list[Status], stamp: float, tally: Counter) -> None:
    """Moves each status's row of its deployment to the newest status that answers one of the row's two
    commands, in two statements for the whole batch: the rows are read and locked in device id order (the
    order the rollout engine stamps them in, cloud/rollout.py, so the two never deadlock; the lock also
    keeps another ingest worker from applying an older status over a newer one meanwhile), then updated
    from one JSON text. Per status it counts what applying the batch's statuses one by one in seq order
    would: `status` (applied), `status_stale` (a newer one was applied already) or `status_unmatched`.

    One SELECT and one UPDATE per status cost two round trips each, and under load (a busy process, a
    shared machine) each round trip waits for its thread's turn: statuses were applied 60-100 per second,
    slower than a 10,000-device deploy's resend interval allowed, so delivered commands were sent again."""
    keys = sorted({(s.deployment, s.device) for s in statuses}, key=lambda k: (k[1], k[0]))
    columns = (DeploymentDevice.id, DeploymentDevice.deployment_id, DeploymentDevice.device_id,
               DeploymentDevice.command_id, DeploymentDevice.rollback_command_id, DeploymentDevice.status_seq)
    if _postgres(session):
        wanted = text("SELECT d.id, d.deployment_id, d.device_id, d.command_id, d.rollback_command_id, d.status_seq "
                      "FROM deployment_devices d JOIN json_to_recordset(CAST(:keys AS json)) AS k(deployment_id "
                      "varchar, device_id varchar) ON d.deployment_id = k.deployment_id AND d.device_id = "
                      "k.device_id ORDER BY d.device_id, d.id FOR NO KEY UPDATE OF d")
        found = session.execute(wanted, {"keys": json.dumps([{"deployment_id": d, "device_id": v}
                                                             for d, v in keys])}).all()
    else:
        found = session.execute(select(*columns).where(
            tuple_(DeploymentDevice.deployment_id, DeploymentDevice.device_id).in_(keys))).all()
    rows = {(r.deployment_id, r.device_id): r for r in found}
    newest: dict[int, Status] = {}  # row id -> the newest status that applies to it
    applied = 0
    for status in sorted(statuses, key=lambda s: (s.device, s.seq)):
        row = rows.get((status.deployment, status.device))
        if row is None or status.command not in (row.command_id, row.rollback_command_id):
            tally["status_unmatched"] += 1  # stored, but about no command of ours (an old or a foreign deployment)
            continue
        if row.status_seq is not None and status.seq <= row.status_seq:
            tally["status_stale"] += 1  # a newer status of this device was applied already
            continue
        newest[row.id] = status
        applied += 1
    tally["status"] += applied
    if not newest:
        return
    values = [{"id": i, "state": s.state, "reason": s.reason, "seq": s.seq} for i, s in sorted(newest.items())]
    if _postgres(session):
        session.execute(text("UPDATE deployment_devices SET state = v.state, reason = v.reason, status_seq = v.seq, "
                             "updated_at = :stamp FROM json_to_recordset(CAST(:rows AS json)) AS v(id integer, "
                             "state varchar, reason text, seq integer) WHERE deployment_devices.id = v.id"),
                        {"rows": json.dumps(values), "stamp": stamp})
    else:  # one writer at a time: an executemany by primary key, in device id order
        session.execute(update(DeploymentDevice), [
            {"id": v["id"], "state": v["state"], "reason": v["reason"], "status_seq": v["seq"], "updated_at": stamp}
            for v in values])
    log.debug("ingest: applied %d status(es) to %d deployment row(s)", applied, len(newest))


def _add_counts(session: Session, tally: Counter) -> None:
    for reason, count in sorted(tally.items()):
        if count:
            added = _insert(session, IngestCounter).values(reason=reason, count=count)
            session.execute(added.on_conflict_do_update(index_elements=["reason"],
                                                        set_={"count": IngestCounter.count + added.excluded.count}))


def _insert(session: Session, table: type) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (PostgreSQL and SQLite, the two the cloud runs on)."""
    return postgresql.insert(table) if _postgres(session) else sqlite.insert(table)


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
