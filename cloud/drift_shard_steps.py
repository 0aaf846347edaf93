"""Each device shard's windows added up per fleet and event-time step, kept in the database, so that the
holder of the "fleets" lease needs no device's rows for a fleet's CUSUMs or late periods (issue 17).

Two kinds of step, one table each, the same columns (`_StepSum`), keyed (fleet, model name, version,
shard, step end):

- `drift_cusum_partials`: a fleet's CUSUM steps, one slot of the fleet's interval each, for model versions
  whose profile has sequential signals; samples and feature counts only (what a step feeds the CUSUMs),
  plus `fed` (cloud/drift_cusum_partials.py, which feeds them);
- `drift_period_partials`: a fleet's event-time periods ((p - 1) L, p L], L its lookback, the periods the
  monitor judges late windows in (cloud/drift_late_periods.py); every count of the windows, with their
  first start and last end.

A row holds every window of the shard in its step with a row id up to `row_id`; `newest` is the highest
row id in it. Integer counts add up exactly in any order, so a step summed over the 64 shards is the step
summed from the rows.

Writing (every pass of every worker that writes the fleet partials, `write_steps`): the shard's rows above
the row id of its last pass (`drift_shard_passes.row_id`, in the database: a restart or a take-over
continues where the last pass was, whoever ran it) are added to the steps they end in, late ones
included; a window is added only if its id is above its step row's `row_id`, and the row is written with
an upsert, so a pass run twice adds nothing twice. A shard with no pass that says its row id, or whose
last pass is older than the fleet sums' `stale_after` (one worker held everything and wrote no sums),
starts again: its steps are dropped and rebuilt from its rows of the longest lookback, and its
`steps_from` (in drift_shard_passes) says since when its steps are whole; a step that starts before it is
not written, and a reader needing it reads the rows instead. Steps older than REPLAY_SECONDS and two
checkpoints before now are deleted.

Known limits: a fleet whose interval or lookback setting changes has steps of two widths until they age
out (a reader takes only the steps of the width it uses). Two workers passing one shard at once around a
hand-over may each write a step from the same stored sum: the later write wins, and holds every window of
the lower of the two passes' row ids.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping

from sqlalchemy import JSON, Float, Index, Integer, String, delete, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.db import Base, TelemetryRecord
from edgefleet.cloud.decoded_rows import WHO
from edgefleet.cloud.drift import CountsMismatch, WindowCounts, merge_windows
from edgefleet.cloud.drift_cusum_batch import chunks
from edgefleet.cloud.drift_cusum_store import CHECKPOINT_SECONDS, REPLAY_SECONDS, slot_end
from edgefleet.cloud.drift_fleet_partials import ShardPass, counts_from_json, counts_to_json, upsert
from edgefleet.cloud.drift_windows import WindowReader
from edgefleet.cloud.leases import shard_of

log = logging.getLogger(__name__)

KEYS = ["fleet", "model_name", "model_version", "shard", "step_end"]


class _StepSum:
    """One shard's windows of one fleet step (module docstring)."""

    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_end: Mapped[float] = mapped_column(Float, primary_key=True)
    width: Mapped[float] = mapped_column(Float)  # the step's length: the fleet's interval or lookback
    row_id: Mapped[int] = mapped_column(Integer)
    newest: Mapped[int] = mapped_column(Integer)
    windows: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    counts: Mapped[dict] = mapped_column(JSON)  # drift_fleet_partials.counts_to_json
    computed_at: Mapped[float] = mapped_column(Float)


class CusumPartial(_StepSum, Base):
    """A fleet's CUSUM step of one shard; `fed`: `newest` when the fleet's CUSUMs were fed it, NULL when a
    window came since (cloud/drift_cusum_partials.py)."""

    __tablename__ = "drift_cusum_partials"
    __table_args__ = (Index("ix_drift_cusum_partials_step_end", "step_end"),
                      Index("ix_drift_cusum_partials_unfed", "fleet", "step_end", postgresql_where=text("fed IS NULL"),
                            sqlite_where=text("fed IS NULL")))
    fed: Mapped[int | None] = mapped_column(Integer, nullable=True)


class PeriodPartial(_StepSum, Base):
    """A fleet's event-time period of one shard (cloud/drift_late_periods.py)."""

    __tablename__ = "drift_period_partials"
    __table_args__ = (Index("ix_drift_period_partials_step_end", "step_end"),)


def write_steps(session: Session, reader: WindowReader, recent: list, *, shards: set[int], top: int, now: float,
                lookback: float, stale_after: float, profile_of: Callable[[str, int], Mapping | None],
                sequential: Callable[[str, int], bool], width_of: Callable[[str, str], tuple[float, float]],
                filter_of: Callable[[set[int]], object]) -> dict[int, float]:
    """Adds the rows of `shards` new since their last pass to their steps and periods (module docstring);
    `recent` are this pass's rows (`WHO`) of the longest `lookback`; `width_of(fleet, model name)` gives
    the fleet's (interval, lookback). Returns each shard's `steps_from`, for its pass row."""
    passes = {p.shard: p for p in session.execute(select(ShardPass.__table__).where(
        ShardPass.shard.in_(sorted(shards))))}  # rows, not ORM objects: the upserts below and after go around them
    fresh = {s for s in shards if (p := passes.get(s)) is None or p.row_id is None or p.steps_from is None
             or p.computed_at < now - stale_after}
    steps_from = {s: now - lookback if s in fresh else passes[s].steps_from for s in shards}
    rows, going = [], shards - fresh
    if going:  # the rows of the shards that go on: above their last pass's row id
        where = filter_of(going)
        query = select(*WHO).where(TelemetryRecord.id > min(passes[s].row_id for s in going),
                                   TelemetryRecord.id <= top)
        rows += [r for r in session.execute(query if where is None else query.where(where))
                 if (s := shard_of(r.device_id)) in going and r.id > passes[s].row_id]
    if fresh:  # the shards that start again: their rows of the lookback, and any dated after now
        for table in (CusumPartial, PeriodPartial):
            session.execute(delete(table).where(table.shard.in_(sorted(fresh))))
        where = filter_of(fresh)
        query = select(*WHO).where(TelemetryRecord.window_end > now, TelemetryRecord.id <= top)
        rows += [r for r in [*recent, *session.execute(query if where is None else query.where(where))]
                 if shard_of(r.device_id) in fresh]
    profiles: dict[tuple[str, int], Mapping | None] = {}
    for row in rows:
        if (row.model_name, row.model_version) not in profiles:
            profiles[(row.model_name, row.model_version)] = profile_of(row.model_name, row.model_version)
    rows = [row for row in rows if profiles[(row.model_name, row.model_version)] is not None]
    if rows:
        _add(session, reader, rows, profiles, steps_from, top, now, sequential, width_of)
    for table in (CusumPartial, PeriodPartial):
        session.execute(delete(table).where(table.shard.in_(sorted(shards)),
                                            table.step_end < now - REPLAY_SECONDS - 2 * CHECKPOINT_SECONDS))
    return steps_from


def _add(session: Session, reader: WindowReader, rows: list, profiles: Mapping, steps_from: Mapping[int, float],
         top: int, now: float, sequential: Callable[[str, int], bool],
         width_of: Callable[[str, str], tuple[float, float]]) -> None:
    """Adds the windows of `rows` to the stored sums of their steps and periods and writes them back."""
    windows = reader.read(session, rows, profiles)
    steps: dict[tuple, list] = defaultdict(list)
    periods: dict[tuple, list] = defaultdict(list)
    widths: dict[tuple, tuple[float, float]] = {}
    for row in rows:
        window = windows.get(row.id)
        if window is None:
            continue
        shard = shard_of(row.device_id)
        slot, lookback = widths.setdefault((row.fleet, row.model_name), width_of(row.fleet, row.model_name))
        key = (row.fleet, row.model_name, row.model_version, shard)
        end = slot_end(row.window_end, slot)
        if end - slot >= steps_from[shard] and sequential(row.model_name, row.model_version):
            steps[(*key, end)].append(window)  # a step that began before its shard's sums are whole waits
        end = math.ceil(row.window_end / lookback) * lookback
        if end - lookback >= steps_from[shard]:
            periods[(*key, end)].append(window)
    _accumulate(session, CusumPartial, steps, {k: widths[k[:2]][0] for k in steps}, top, now, full=False)
    _accumulate(session, PeriodPartial, periods, {k: widths[k[:2]][1] for k in periods}, top, now, full=True)


def _accumulate(session: Session, table, groups: Mapping[tuple, list], widths: Mapping[tuple, float], top: int,
                now: float, *, full: bool) -> None:
    """Adds each group's windows to its stored step row (those not in it yet) and upserts the rows."""
    stored = {}
    for chunk in chunks(sorted({key[4] for key in groups})):
        for part in session.execute(select(table.__table__).where(
                table.shard.in_(sorted({key[3] for key in groups})), table.step_end.in_(chunk))):
            stored[(part.fleet, part.model_name, part.model_version, part.shard, part.step_end)] = part
    written = []
    for key, items in sorted(groups.items(), key=lambda item: item[0]):
        part = stored.get(key)
        items = [w for w in items if part is None or w.row_id > part.row_id]  # not in its sum already
        if not items:
            continue
        counts = [w.counts if full else WindowCounts(w.counts.samples, w.counts.features) for w in items]
        try:
            total = merge_windows(counts if part is None else [counts_from_json(part.counts), *counts])
        except CountsMismatch as err:  # the windows were checked against the profile: not expected
            log.warning("fleet %s (%s v%s), shard %s, step %s: windows do not add up: %s", *key, err)
            continue
        old = [] if part is None else [part]
        written.append({**dict(zip(KEYS, key, strict=True)), "width": widths[key], "row_id": top,
                        "newest": max([w.row_id for w in items] + [p.newest for p in old]),
                        "windows": len(items) + sum(p.windows for p in old),
                        "window_start": min([w.start for w in items] + [p.window_start for p in old]),
                        "window_end": max([w.end for w in items] + [p.window_end for p in old]),
                        "counts": counts_to_json(total), "computed_at": now,
                        **({"fed": None} if table is CusumPartial else {})})
    upsert(session, table.__table__, written, KEYS)
