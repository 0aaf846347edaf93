"""A fleet's CUSUM steps summed per device shard, so that the holder of the "fleets" lease feeds a fleet's
sequential detectors without reading every device's rows (issue 17).

A fleet's step is all its devices' windows ending in one slot of the fleet's interval, added up
(cloud/drift_cusum_store.py). What a step gives the detectors (`judge_steps`) is its sample count and its
feature histograms: each CUSUM update reads the step's summed integer counts of its signal, and a new
scope's thresholds are sized by the median of its steps' sample counts. All of it is integer sums of the
windows' counts, so a step is, exactly and in any order, the sum over the 64 device shards of each shard's
sum of that step: nothing of a step is lost by adding per shard first.

Table `drift_cusum_partials`, keyed (fleet, model name, version, shard, step end): the shard's windows of
that step added up (samples and feature counts), with `row_id` (every row of the shard up to it is in the
sum), `newest` (the highest row id in it) and `fed` (`newest` when the fleet's CUSUMs were fed the step;
NULL: not since its last window came, which a shard's write sets).

Writing (every shard worker pass, `write_steps`, for model versions with sequential signals): the shard's
rows above the row id of its last pass (`drift_shard_passes.row_id`, in the database: a restart or a
take-over continues where the last pass was, whoever ran it) are added to the steps they end in, late
ones included; a window is added only if its id is above its step row's `row_id`, and the row is written
with an upsert, so a pass run twice adds nothing twice. A shard with no pass that says its row id, or
whose last pass is older than the fleet sums' `stale_after` (one worker held everything and wrote no
sums), starts again: its steps are dropped and rebuilt from its rows of the longest lookback, and its
`steps_from` (in drift_shard_passes) says since when its steps are whole; a step that starts before it is
not written. Steps older than REPLAY_SECONDS and two checkpoints before now are deleted.

Feeding (the fleet holder, `feed_fleets`, for every fleet summed from the partials), as `CusumStore.feed`
does from the rows: the earliest new step is the earliest one not `fed` (a partial index keeps those);
the base is the latest checkpoint, or the newest before that step when a late window fell in a step
already fed; the steps after the base, up to now, are summed over the shards and fed, and marked `fed`
(unless a window came in the meantime: `newest` moved). The checkpoint's `row_id` is the lowest row id of
the shards' last passes. A fleet whose base is older than a shard's `steps_from` (a shard started again)
is fed from its rows, as before, and its steps marked fed: after that, the steps cover it. A fleet
without a checkpoint starts at the first whole slot of its lookback, on both paths (`start_of`), so the
two give the same sums.

Known limits: a window refused when its payload is parsed counts as new on the rows' path only (it moves
that path's earliest new step); a fleet whose interval setting changes has steps of two slot widths
until REPLAY_SECONDS have passed. Two workers passing one shard at once around a hand-over may each
write a step from the same stored sum: the row of the later write wins, which holds every window of the
lower of the two passes' row ids, and a window between them waits for the next late window of its step.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace

from sqlalchemy import JSON, Float, Index, Integer, String, bindparam, delete, func, select, text, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.db import Base, TelemetryRecord
from edgefleet.cloud.drift import CountsMismatch, WindowCounts, merge_windows
from edgefleet.cloud.drift_cusum_batch import Item, chunks, feed_batch, latest_checkpoints, save_all
from edgefleet.cloud.drift_cusum_store import (
    CHECKPOINT_SECONDS,
    REPLAY_SECONDS,
    CusumStore,
    _checkpoint,
    _key,
    judge_steps,
    slot_end,
    start_of,
)
from edgefleet.cloud.drift_fleet_partials import FleetSums, ShardPass, counts_from_json, counts_to_json, upsert
from edgefleet.cloud.drift_sequential import SEQUENTIAL, ScopeDetectors
from edgefleet.cloud.drift_windows import WHO, WindowReader
from edgefleet.cloud.leases import shard_of

log = logging.getLogger(__name__)

KEYS = ["fleet", "model_name", "model_version", "shard", "step_end"]


class CusumPartial(Base):
    """One shard's windows of one fleet step (module docstring)."""

    __tablename__ = "drift_cusum_partials"
    __table_args__ = (Index("ix_drift_cusum_partials_step_end", "step_end"),
                      Index("ix_drift_cusum_partials_unfed", "fleet", "step_end", postgresql_where=text("fed IS NULL"),
                            sqlite_where=text("fed IS NULL")))
    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_end: Mapped[float] = mapped_column(Float, primary_key=True)
    slot_seconds: Mapped[float] = mapped_column(Float)
    row_id: Mapped[int] = mapped_column(Integer)
    newest: Mapped[int] = mapped_column(Integer)
    fed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    windows: Mapped[int] = mapped_column(Integer)
    counts: Mapped[dict] = mapped_column(JSON)  # samples and feature counts (drift_fleet_partials.counts_to_json)
    computed_at: Mapped[float] = mapped_column(Float)


def write_steps(session: Session, reader: WindowReader, recent: list, *, shards: set[int], top: int, now: float,
                lookback: float, stale_after: float, sequential: Callable[[str, int], Mapping | None],
                slot_of: Callable[[str, str], float], filter_of: Callable[[set[int]], object]) -> dict[int, float]:
    """Adds the rows of `shards` new since their last pass to their steps (module docstring); `recent` are
    this pass's rows (`WHO`) of the longest `lookback`, `sequential` gives a model version's profile when it
    has sequential signals. Returns each shard's `steps_from`, for its pass row."""
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
        session.execute(delete(CusumPartial).where(CusumPartial.shard.in_(sorted(fresh))))
        where = filter_of(fresh)
        query = select(*WHO).where(TelemetryRecord.window_end > now, TelemetryRecord.id <= top)
        rows += [r for r in [*recent, *session.execute(query if where is None else query.where(where))]
                 if shard_of(r.device_id) in fresh]
    profiles: dict[tuple[str, int], Mapping | None] = {}
    for row in rows:
        if (row.model_name, row.model_version) not in profiles:
            profiles[(row.model_name, row.model_version)] = sequential(row.model_name, row.model_version)
    rows = [row for row in rows if profiles[(row.model_name, row.model_version)] is not None]
    if rows:
        _add(session, reader, rows, profiles, steps_from, top, now, slot_of)
    session.execute(delete(CusumPartial).where(CusumPartial.shard.in_(sorted(shards)), CusumPartial.step_end
                                               < now - REPLAY_SECONDS - 2 * CHECKPOINT_SECONDS))
    return steps_from


def _add(session: Session, reader: WindowReader, rows: list, profiles: Mapping, steps_from: Mapping[int, float],
         top: int, now: float, slot_of: Callable[[str, str], float]) -> None:
    """Adds the windows of `rows` to the stored sums of their steps and writes them back."""
    windows = reader.read(session, rows, profiles)
    groups: dict[tuple, list] = defaultdict(list)
    slots: dict[tuple, float] = {}
    for row in rows:
        window = windows.get(row.id)
        if window is None:
            continue
        shard = shard_of(row.device_id)
        slot = slots.setdefault((row.fleet, row.model_name), slot_of(row.fleet, row.model_name))
        end = slot_end(row.window_end, slot)
        if end - slot >= steps_from[shard]:  # a step that began before its shard's sums are whole waits
            groups[(row.fleet, row.model_name, row.model_version, shard, end)].append(window)
    stored = {}
    for chunk in chunks(sorted({key[4] for key in groups})):
        for part in session.execute(select(CusumPartial.__table__).where(
                CusumPartial.shard.in_(sorted({key[3] for key in groups})), CusumPartial.step_end.in_(chunk))):
            stored[(part.fleet, part.model_name, part.model_version, part.shard, part.step_end)] = part
    written = []
    for key, items in sorted(groups.items(), key=lambda item: item[0]):
        part = stored.get(key)
        items = [w for w in items if part is None or w.row_id > part.row_id]  # not in its sum already
        if not items:
            continue
        counts = [WindowCounts(w.counts.samples, w.counts.features) for w in items]
        try:
            total = merge_windows(counts if part is None else [counts_from_json(part.counts), *counts])
        except CountsMismatch as err:  # the windows were checked against the profile: not expected
            log.warning("fleet %s (%s v%s), shard %s, step %s: windows do not add up: %s", *key, err)
            continue
        written.append({**dict(zip(KEYS, key, strict=True)), "slot_seconds": slots[key[:2]], "row_id": top,
                        "newest": max(w.row_id for w in items) if part is None else
                        max(part.newest, *(w.row_id for w in items)),
                        "windows": len(items) + (0 if part is None else part.windows),
                        "counts": counts_to_json(total), "computed_at": now, "fed": None})
    upsert(session, CusumPartial.__table__, written, KEYS)


def feed_fleets(store: CusumStore, session: Session, items: list[Item], *, top: int, seen: int | None,
                steps_from: float | None, now: float) -> dict[object, dict | None]:
    """Feeds each fleet item's CUSUMs from its shards' step sums (module docstring); returns scope -> report
    section as `CusumStore.feed` would."""
    sections: dict[object, dict | None] = {}
    latest = latest_checkpoints(session, items) if seen is not None else {}
    first = _first_unfed(session, items) if seen is not None else {}
    plans = []
    for item in items:
        key, checkpoint = _key(item.scope), latest.get(tuple(_key(item.scope).values()))
        fleet = (item.scope.fleet, item.scope.model_name, item.scope.model_version)
        base, first_new = None, -math.inf
        if checkpoint is not None:
            first_new = first.get(fleet, math.nextafter(checkpoint.step_end, math.inf))
            base = checkpoint if checkpoint.step_end < first_new else (
                _checkpoint(session, key, newest=True, before=first_new) or _checkpoint(session, key, newest=False))
        after = start_of(item.scope, now, item.lookback, item.slot_seconds) if base is None else base.step_end
        if seen is None or steps_from is None or after < steps_from:  # the steps do not reach back to it
            sections[item.scope] = _from_rows(store, session, item, top, now)
            continue
        plans.append((item, checkpoint, base, first_new, after))
    steps = _steps(session, [(item.scope, after) for item, _, _, _, after in plans], now)
    saves, fed = [], []
    for item, checkpoint, base, first_new, _after in plans:
        scope = item.scope
        try:
            mine = steps.get((scope.fleet, scope.model_name, scope.model_version), {})
            summed = [(end, merge_windows([counts_from_json(p.counts) for p in mine[end]])) for end in sorted(mine)]
            judged = judge_steps(item.profile, base, [(end, total.samples, total.features) for end, total in summed],
                                 first_new=first_new, now=now, lookback=item.lookback)
            sections[scope] = None if judged is None else judged[0]
            fed += [part for end in sorted(mine) for part in mine[end]]
            if judged is None or not summed:
                continue
            if base is not checkpoint:  # a late window rewound the sums: CusumStore's one-scope save
                judged[0]["replayed_from"] = base.step_end
                store._save(session, _key(scope), base, summed[-1][0], seen, judged[1])
            else:
                saves.append((tuple(_key(scope).values()), summed[-1][0], judged[1]))
        except Exception:  # noqa: BLE001 - one scope's detectors must not stop the others
            log.exception("fleet %s (%s v%s): sequential detectors failed", scope.scope_id, scope.model_name,
                          scope.model_version)
            sections[scope] = None
    save_all(session, saves, seen)
    _mark_fed(session, fed)
    return sections


def _from_rows(store: CusumStore, session: Session, item: Item, top: int, now: float) -> dict | None:
    """`CusumStore.feed`, then the fleet's steps up to now marked fed: the rows held all their windows."""
    scope = item.scope
    try:
        section = store.feed(session, scope, item.profile, top=top, now=now, lookback=item.lookback,
                             slot_seconds=item.slot_seconds)
        session.execute(update(CusumPartial).where(
            CusumPartial.fleet == scope.fleet, CusumPartial.model_name == scope.model_name,
            CusumPartial.model_version == scope.model_version, CusumPartial.step_end <= now,
            CusumPartial.newest <= top).values(fed=CusumPartial.newest).execution_options(synchronize_session=False))
        return section
    except Exception:  # noqa: BLE001 - one scope's detectors must not stop the others
        log.exception("fleet %s (%s v%s): sequential detectors failed", scope.scope_id, scope.model_name,
                      scope.model_version)
        return None


def _first_unfed(session: Session, items: list[Item]) -> dict[tuple, float]:
    """(fleet, model name, version) -> the end of its earliest step with windows not yet fed."""
    first: dict[tuple, float] = {}
    for chunk in chunks(sorted({item.scope.fleet for item in items})):
        query = (select(CusumPartial.fleet, CusumPartial.model_name, CusumPartial.model_version,
                        func.min(CusumPartial.step_end))
                 .where(CusumPartial.fleet.in_(chunk), CusumPartial.fed.is_(None))
                 .group_by(CusumPartial.fleet, CusumPartial.model_name, CusumPartial.model_version))
        first.update({(fleet, name, version): end for fleet, name, version, end in session.execute(query)})
    return first


def _steps(session: Session, wanted: list[tuple[object, float]], now: float) -> dict[tuple, dict[float, list]]:
    """(fleet, model name, version) -> step end -> its shards' sums, of the steps after each fleet's base
    up to now."""
    if not wanted:
        return {}
    after = {(scope.fleet, scope.model_name, scope.model_version): end for scope, end in wanted}
    steps: dict[tuple, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for chunk in chunks(sorted({fleet for fleet, _, _ in after})):
        for part in session.execute(select(CusumPartial.__table__).where(
                CusumPartial.fleet.in_(chunk), CusumPartial.step_end > min(after.values()),
                CusumPartial.step_end <= now).order_by(CusumPartial.step_end, CusumPartial.shard)):
            key = (part.fleet, part.model_name, part.model_version)
            if key in after and part.step_end > after[key]:
                steps[key][part.step_end].append(part)
    return steps


def _mark_fed(session: Session, fed: list) -> None:
    if not fed:
        return
    table = CusumPartial.__table__
    statement = (update(table).where(*(table.c[name] == bindparam(f"k_{name}") for name in KEYS),
                                     table.c.newest == bindparam("k_newest"))  # not if a window came since
                 .values(fed=bindparam("k_newest")))
    session.execute(statement, [{**{f"k_{name}": getattr(part, name) for name in KEYS}, "k_newest": part.newest}
                                for part in fed])


def has_sequential(profile: Mapping) -> bool:
    """Whether the profile has sequential signals (features with magnitude facts)."""
    return bool(ScopeDetectors(profile, 1).detectors)


def feed_run(store: CusumStore, session: Session, evaluated: list, scopes: Mapping, *, now: float, top: int,
             settings_of: Callable[[str, str], object], summed: FleetSums | None = None) -> None:
    """Feeds each evaluated scope's CUSUMs once and puts the section in its on-time result, or its newest
    late one when it has none this run: the fleets `summed` from the shards' partials from their step sums
    (`feed_fleets`), the other scopes with their windows (cloud/drift_cusum_batch.py)."""
    target: dict = {}
    for scope, result in evaluated:  # on-time results come first; late ones by period, oldest first
        base = replace(scope, period_end=None)
        if base not in target or target[base].late_by is not None:
            target[base] = result
    profiles = {replace(scope, period_end=None): profile for scope, (profile, _) in scopes.items()}
    items, from_steps = [], []
    for base in target:
        settings = settings_of(base.fleet, base.model_name)
        fleet_summed = summed is not None and base.scope == "fleet" and base.period_end is None and base in scopes
        if fleet_summed and not has_sequential(profiles[base]):
            continue  # nothing to feed
        windows = None if fleet_summed or base not in scopes else scopes[base][1]
        (from_steps if fleet_summed else items).append(
            Item(base, profiles[base], windows, settings.lookback_seconds, settings.interval_seconds))
    sections = feed_batch(store, session, items, top=top, now=now)
    if from_steps:
        sections.update(feed_fleets(store, session, from_steps, top=top, seen=summed.seen,
                                    steps_from=summed.steps_from, now=now))
    for base, result in target.items():
        if sections.get(base) is not None:
            result.report = {**result.report, SEQUENTIAL: sections[base]}
