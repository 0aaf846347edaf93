"""A fleet's window counts summed per device shard, so that no monitor worker reads every device's rows.

A fleet scope is all its devices' windows in the lookback, added per signal (cloud/drift_monitor.py). With
monitor workers splitting the 64 device shards (cloud/leases.py), each worker already reads and decodes its
own shards' rows; here it also writes, per (fleet, model name, version, shard) it has windows of, their
sum: the integer histogram counts, samples, the number of windows and the first start and last end. The
worker holding the "fleets" lease then adds up those few rows per fleet instead of reading the rows of
every device. Integer counts add up exactly in any order, so a fleet summed from partials written at the
same `now` is the fleet summed from the rows (tests/cloud/test_drift_fleet_partials.py).

Tables:

- `drift_fleet_partials`, keyed (fleet, model name, version, shard): the sums of the shard's last pass.
  Written with an upsert, so a retried pass, or the pass of the worker that took a shard over, replaces
  the row instead of adding to it; rows of the shard's older passes (a fleet that has no window in the
  shard any more) are deleted by the next pass of the shard.
- `drift_shard_passes`, keyed by shard: when (the pass's `now`) the shard's last pass ran and who ran it.
  A shard whose pass is recent and that wrote no partial of a fleet has no window of it; a partial of
  another pass than its shard's last is left over and ignored. Also the highest row id the pass read
  (`row_id`) and since when the shard's CUSUM step sums are whole (`steps_from`,
  cloud/drift_shard_steps.py).

Reading (`fleet_sums`): a fleet is summed only when every shard's last pass is at most `stale_after`
seconds older than the reader's `now`. Otherwise (a shard worker killed and its shard not yet taken over,
or no pass of it yet) the fleet gets no result in that pass, which is logged with the shards missing:
the fleet result waits for the shard, it is never silently made of some shards only. Taking a shard over
takes one lease period, so `stale_after` is the lease period plus two intervals. The shards' passes run at
their own `now`, up to an interval apart: a fleet result is the sum of each shard's last pass, and its
report says over which times (`shard_passes`: the oldest and newest pass time).

The accuracy monitor sums its fleets the same way with these helpers (`write_pass`, `current_partials`,
`log_stale`; its share of the work by `drift_windows.Share.of`), in tables of its own (cloud/performance_partials.py).

Recovery: all of it is in the database and rewritten by every pass; nothing is kept in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from sqlalchemy import JSON, Float, Integer, String, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.db import Base
from edgefleet.cloud.drift import CountsMismatch, WindowCounts, merge_windows
from edgefleet.cloud.drift_windows import LogOnce, Scope, Scopes, Window

log = logging.getLogger(__name__)

Key = tuple[str, str, int]  # (fleet, model name, model version)


class PartialColumns:
    """A partials table's columns, but for its sums (each monitor that writes partials has its own table)."""

    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    computed_at: Mapped[float] = mapped_column(Float)
    windows: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)


class FleetPartial(PartialColumns, Base):
    """The sum of one shard's windows of one fleet and model version in its last pass (at `computed_at`);
    `counts` None: the shard's windows could not be added up (shapes that differ)."""

    __tablename__ = "drift_fleet_partials"
    counts: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class PassColumns:
    """A shard pass table's columns (each monitor that writes partials has its own table: its own timing)."""

    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    computed_at: Mapped[float] = mapped_column(Float)
    holder: Mapped[str] = mapped_column(String(128))


class ShardPass(PassColumns, Base):
    """When the last drift monitor pass over a device shard ran (its `now`), and which worker ran it."""

    __tablename__ = "drift_shard_passes"
    row_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # every row up to it was read
    steps_from: Mapped[float | None] = mapped_column(Float, nullable=True)  # CUSUM step sums whole after it


@dataclass(frozen=True)
class Sum:
    """Windows added up: what a fleet evaluation needs of them (drift_monitor.Window's fields)."""

    counts: WindowCounts
    start: float
    end: float
    windows: int


def counts_to_json(counts: WindowCounts) -> dict:
    def listed(array):
        return None if array is None else np.asarray(array).tolist()

    return {"samples": int(counts.samples), "features": {k: listed(v) for k, v in counts.features.items()},
            "predictions": listed(counts.predictions), "confidence": listed(counts.confidence),
            "outputs": {k: listed(v) for k, v in counts.outputs.items()}}


def counts_from_json(data: Mapping) -> WindowCounts:
    def array(values):
        return None if values is None else np.asarray(values, dtype=np.int64)

    return WindowCounts(int(data["samples"]), {k: array(v) for k, v in data["features"].items()},
                        array(data["predictions"]), array(data["confidence"]),
                        {k: array(v) for k, v in data["outputs"].items()})


def shard_sums(groups: Mapping[tuple[str, str, int, int], list]) -> dict[tuple[str, str, int, int], Sum | None]:
    """(fleet, model name, version, shard) -> the sum of its windows (objects with .counts, .start, .end),
    None when they do not add up."""
    sums: dict[tuple[str, str, int, int], Sum | None] = {}
    for key, windows in groups.items():
        try:
            counts = merge_windows([w.counts for w in windows])
        except (CountsMismatch, ValueError) as err:
            log.warning("fleet %s (%s v%s), shard %s: windows do not add up: %s", *key, err)
            sums[key] = None
            continue
        sums[key] = Sum(counts, min(w.start for w in windows), max(w.end for w in windows), len(windows))
    return sums


def upsert(session: Session, table, rows: list[dict], keys: list[str]) -> None:  # noqa: ANN001 - a Table
    """INSERT ... ON CONFLICT (keys) DO UPDATE of `rows` (all of the same columns), 500 a statement."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=keys, set_={c: statement.excluded[c] for c in rows[0] if c not in keys})
    for start in range(0, len(rows), 500):
        session.execute(statement, rows[start:start + 500])


def write(session: Session, shards: Iterable[int], sums: Mapping[tuple[str, str, int, int], Sum | None],
          now: float, holder: str, row_id: int | None = None, steps_from: Mapping[int, float] | None = None
          ) -> None:
    """Stores this pass's sums of `shards` (the shards this worker holds and read up to row `row_id`) at
    `now`; the shards' older partials go. Idempotent: the same pass written twice leaves the same rows."""
    write_pass(session, FleetPartial, ShardPass, shards, [
        {"fleet": f, "model_name": m, "model_version": v, "shard": s, "computed_at": now,
         "windows": 0 if total is None else total.windows,
         "window_start": 0.0 if total is None else total.start, "window_end": 0.0 if total is None else total.end,
         "counts": None if total is None else counts_to_json(total.counts)}
        for (f, m, v, s), total in sorted(sums.items(), key=lambda item: item[0])], now, holder,
        lambda shard: {"row_id": row_id, "steps_from": (steps_from or {}).get(shard)})


def write_pass(session: Session, partial, passes, shards: Iterable[int], rows: list[dict], now: float,  # noqa: ANN001
               holder: str, extra: Callable[[int], dict] | None = None) -> None:
    """One pass of `shards` at `now`: its partial `rows` (of the model `partial`, keyed (fleet, model name,
    version, shard)) upserted, the shards' partials of older passes deleted, and the shards' rows of the
    pass table `passes` (a PassColumns model) set to this pass, with `extra(shard)`'s columns."""
    shards = sorted(set(shards))
    if not shards:
        return
    upsert(session, partial.__table__, rows, ["fleet", "model_name", "model_version", "shard"])
    session.execute(delete(partial).where(partial.shard.in_(shards), partial.computed_at != now))
    upsert(session, passes.__table__, [{"shard": s, "computed_at": now, "holder": holder,
                                        **(extra(s) if extra else {})} for s in shards], ["shard"])


def current_partials(session: Session, partial, passes, shards: int, now: float, stale_after: float  # noqa: ANN001
                     ) -> tuple[dict[Key, list], list[int], tuple[float, float] | None]:
    """The rows of the model `partial` written by the last pass of their shard (the pass table `passes`),
    by fleet and model version, and the oldest and newest pass time; none, and the shards, when a shard's
    last pass is missing or more than `stale_after` seconds older than `now` (then no fleet may be summed)."""
    found = dict(session.execute(select(passes.shard, passes.computed_at)).all())
    stale = [s for s in range(shards) if found.get(s) is None or found[s] < now - stale_after]
    if stale:
        return {}, stale, None
    parts: dict[Key, list] = {}
    for row in session.execute(select(partial)).scalars():
        if row.shard < shards and row.computed_at == found[row.shard]:  # else left over from an older pass
            parts.setdefault((row.fleet, row.model_name, row.model_version), []).append(row)
    used = [found[s] for s in range(shards)]
    return parts, [], (min(used), max(used))


def log_stale(logger: logging.Logger, name: str, stale: list[int], before: list[int], shards: int,
              stale_after: float) -> list[int]:
    """Logs the stale shards a fleet pass waits for when they changed since `before`; returns them."""
    if stale != before:  # logged when it changes, not every pass
        if stale:
            logger.warning("%s: fleet scopes not evaluated: no pass of device shard(s) %s%s (%d of %d) within "
                           "%.3gs; waiting for their workers or a take-over", name, stale[:8],
                           "..." if len(stale) > 8 else "", len(stale), shards, stale_after)
        else:
            logger.warning("%s: fleet scopes evaluated again: every shard passed", name)
    return stale


@dataclass(frozen=True)
class FleetSums:
    """What the partials give: each fleet's sum (None: it did not add up; a performance_partials.Totals for
    the accuracy monitor), the shards whose last pass is missing or stale (then no fleet is summed), and the
    oldest and newest pass time summed; for the drift monitor, the highest row id every shard's last pass
    read and the time after which every shard's CUSUM steps are whole (None: a shard's pass did not say)."""

    fleets: dict[Key, Sum | None]
    stale: list[int]
    passes: tuple[float, float] | None
    seen: int | None = None
    steps_from: float | None = None


def fleet_sums(session: Session, shards: int, now: float, stale_after: float) -> FleetSums:
    """Every fleet's windows summed over the last pass of every shard (module docstring)."""
    parts, stale, passes = current_partials(session, FleetPartial, ShardPass, shards, now, stale_after)
    fleets: dict[Key, Sum | None] = {}
    for key, rows in parts.items():
        if any(row.counts is None for row in rows):
            fleets[key] = None
            continue
        items = [Sum(counts_from_json(row.counts), row.window_start, row.window_end, row.windows) for row in rows]
        try:
            counts = merge_windows([item.counts for item in items])
        except CountsMismatch as err:
            log.warning("fleet %s (%s v%s): shard sums do not add up: %s", *key, err)
            fleets[key] = None
            continue
        fleets[key] = Sum(counts, min(i.start for i in items), max(i.end for i in items),
                          sum(i.windows for i in items))
    if stale:
        return FleetSums(fleets, stale, passes)
    marks = {row.shard: row for row in session.execute(select(ShardPass.shard, ShardPass.row_id,
                                                              ShardPass.steps_from))}
    seen = [marks[s].row_id for s in range(shards)]
    steps_from = [marks[s].steps_from for s in range(shards)]
    return FleetSums(fleets, [], passes, None if None in seen else min(seen),
                     None if None in steps_from else max(steps_from))


def fleet_scopes(sums: FleetSums, profile_of: Callable[[str, int], Mapping | None], log_once: LogOnce) -> Scopes:
    """The fleet scopes of `sums` (every shard passed in time), one summed window each; a fleet whose model
    version has no profile is left out, one whose shards' windows do not add up is left out and logged."""
    scopes: Scopes = {}
    for (fleet, model_name, version), total in sums.fleets.items():
        profile = profile_of(model_name, version)
        if profile is None:
            continue
        if total is None:
            log_once(f"fleet {fleet} ({model_name} v{version}): not evaluated, its shards' windows "
                     "do not add up (counts of another shape)")
            continue
        scope = Scope("fleet", fleet, fleet, model_name, version)
        scopes[scope] = (profile, [Window(total.counts, total.start, total.end, windows=total.windows)])
    return scopes
