"""The CUSUM feed of a whole monitor run in a few statements (issue 17), with the results of feeding each
scope alone (cloud/drift_cusum_store.py, whose module docstring defines them).

Fed one scope at a time, a pass over 10,000 devices made about five queries per device (its newest
checkpoint, its new rows' earliest end, its rows, then the checkpoint rewrite) and parsed every payload
again: most of a pass was round trips. Here one run reads

1. the newest checkpoint of every scope it feeds (one windowed query per chunk of scope ids);
2. the (owner, id, end) of the rows that arrived since the checkpoint most scopes share (in steady state
   the previous run's top row: only this run's new rows), which gives each scope's earliest new end;
3. the windows themselves from the run's on-time read, already parsed: a scope whose base is its newest
   checkpoint and whose checkpoint ends inside its lookback needs only rows that read holds;

and writes the checkpoints back in one bulk insert and one delete per chunk of ids. A scope for which
any of that does not hold (its checkpoint is older than the shared one, a late window rewinds it to an
older checkpoint, it was quiet longer than its lookback, or it has only late results this run) is fed
by `CusumStore.feed` alone, as before: the batch is a faster path to the same sums, not another rule.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import groupby

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.drift import merge_windows
from edgefleet.cloud.drift_cusum_store import (
    CHECKPOINT_SECONDS,
    REPLAY_SECONDS,
    CusumCheckpoint,
    CusumStore,
    judge_steps,
    start_of,
)
from edgefleet.cloud.drift_sequential import ScopeDetectors

log = logging.getLogger(__name__)

CHUNK = 900  # scope ids or row ids per IN list: under every SQLite's bound-parameter limit


@dataclass
class Item:
    """One scope to feed: its on-time windows (objects with .counts, .at (the row's window end) and
    .row_id), None when it has only late results this run (then it goes the one-scope way)."""

    scope: object
    profile: Mapping
    windows: list | None
    lookback: float
    slot_seconds: float


def _key(scope) -> tuple:
    return (scope.scope, scope.scope_id, scope.model_name, scope.model_version)


def chunks(values: list, size: int = CHUNK):
    for start in range(0, len(values), size):
        yield values[start:start + size]


def latest_checkpoints(session: Session, items: list[Item]) -> dict[tuple, CusumCheckpoint]:
    """The newest checkpoint (by step end, then id) of every scope of `items`."""
    found: dict[tuple, CusumCheckpoint] = {}
    wanted = {_key(item.scope) for item in items}
    by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, scope_id in sorted({(key[0], key[1]) for key in wanted}):
        by_kind[kind].append(scope_id)
    rank = func.row_number().over(
        partition_by=(CusumCheckpoint.scope, CusumCheckpoint.scope_id, CusumCheckpoint.model_name,
                      CusumCheckpoint.model_version),
        order_by=(CusumCheckpoint.step_end.desc(), CusumCheckpoint.id.desc())).label("rank")
    for kind, ids in by_kind.items():
        for chunk in chunks(ids):
            ranked = (select(CusumCheckpoint.id, rank)
                      .where(CusumCheckpoint.scope == kind, CusumCheckpoint.scope_id.in_(chunk)).subquery())
            newest = select(ranked.c.id).where(ranked.c.rank == 1)
            for checkpoint in session.scalars(select(CusumCheckpoint).where(CusumCheckpoint.id.in_(newest))):
                key = (checkpoint.scope, checkpoint.scope_id, checkpoint.model_name, checkpoint.model_version)
                if key in wanted:
                    found[key] = checkpoint
    return found


def _earliest_new(session: Session, pivot: int, top: int) -> dict[tuple, list[tuple[int, float]]]:
    """(row id, window end) of every row above `pivot` up to `top`, per device scope and per fleet scope."""
    rows = session.execute(select(TelemetryRecord.device_id, TelemetryRecord.fleet, TelemetryRecord.model_name,
                                  TelemetryRecord.model_version, TelemetryRecord.id, TelemetryRecord.window_end)
                           .where(TelemetryRecord.id > pivot, TelemetryRecord.id <= top))
    new: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for device, fleet, name, version, row_id, end in rows:
        new[("device", device, name, version)].append((row_id, end))
        new[("fleet", fleet, name, version)].append((row_id, end))
    return new


def feed_batch(store: CusumStore, session: Session, items: list[Item], *, top: int,
               now: float) -> dict[object, dict | None]:
    """Feeds every item's scope once; returns scope -> report section (None: no magnitude facts, or its
    detectors failed, which is logged), as `CusumStore.feed` would for each scope alone."""
    latest = latest_checkpoints(session, [item for item in items if item.windows is not None])
    row_ids = Counter(checkpoint.row_id for checkpoint in latest.values())
    pivot = row_ids.most_common(1)[0][0] if row_ids else top
    new = _earliest_new(session, pivot, top) if latest else {}
    sections: dict[object, dict | None] = {}
    saves: list[tuple[tuple, float, ScopeDetectors]] = []
    for item in items:
        key, scope = _key(item.scope), item.scope
        checkpoint = latest.get(key)
        fast = item.windows is not None and (checkpoint is None or (
            checkpoint.row_id >= pivot and checkpoint.step_end >= now - item.lookback))
        first_new = -math.inf
        if fast and checkpoint is not None:
            ends = [end for row_id, end in new.get(key, ()) if row_id > checkpoint.row_id]
            first_new = (math.nextafter(checkpoint.step_end, math.inf) if not ends
                         else store._step_of(scope, min(ends), item.slot_seconds))
            fast = checkpoint.step_end < first_new  # else a late window rewinds it: the one-scope way
        try:
            if not fast:
                sections[scope] = store.feed(session, scope, item.profile, top=top, now=now, lookback=item.lookback,
                                             slot_seconds=item.slot_seconds)
                continue
            sections[scope] = _feed_one(store, item, checkpoint, first_new, now, saves)
        except Exception:  # noqa: BLE001 - one scope's detectors must not stop the others
            log.exception("%s %s (%s v%s): sequential detectors failed", scope.scope, scope.scope_id,
                          scope.model_name, scope.model_version)
            sections[scope] = None
    save_all(session, saves, top)
    return sections


def _feed_one(store: CusumStore, item: Item, base: CusumCheckpoint | None, first_new: float, now: float,
              saves: list) -> dict | None:
    """CusumStore.feed for a scope whose base is its newest checkpoint (or none) and whose rows after it are
    all in `item.windows`; the checkpoint to write goes to `saves`."""
    after = start_of(item.scope, now, item.lookback, item.slot_seconds) if base is None else base.step_end
    windows = sorted((w for w in item.windows if w.at > after), key=lambda w: (w.at, w.row_id))
    steps = []
    for end, group in groupby(windows, key=lambda w: store._step_of(item.scope, w.at, item.slot_seconds)):
        if end > now:
            break
        merged = merge_windows(w.counts for w in group)
        steps.append((end, merged.samples, merged.features))
    judged = judge_steps(item.profile, base, steps, first_new=first_new, now=now, lookback=item.lookback)
    if judged is None:
        return None
    section, detectors = judged
    if not steps:
        return section
    saves.append((_key(item.scope), steps[-1][0], detectors))
    return section


def save_all(session: Session, saves: list[tuple[tuple, float, ScopeDetectors]], top: int) -> None:
    """CusumStore._save for every fed scope whose base was its newest checkpoint: of the checkpoints in
    the new one's bucket the first stays, and those older than REPLAY_SECONDS before it go."""
    if not saves:
        return
    ends = {key: end for key, end, _ in saves}
    low = min(math.floor(end / CHECKPOINT_SECONDS) * CHECKPOINT_SECONDS for end in ends.values())
    near = session.execute(select(CusumCheckpoint.id, CusumCheckpoint.scope, CusumCheckpoint.scope_id,
                                  CusumCheckpoint.model_name, CusumCheckpoint.model_version,
                                  CusumCheckpoint.step_end)
                           .where((CusumCheckpoint.step_end >= low) | (
                               CusumCheckpoint.step_end < max(ends.values()) - REPLAY_SECONDS))
                           .order_by(CusumCheckpoint.step_end, CusumCheckpoint.id))
    in_bucket: dict[tuple, list[int]] = defaultdict(list)
    doomed: list[int] = []
    for row_id, *key, step_end in near:
        end = ends.get(tuple(key))
        if end is None:
            continue
        if step_end < end - REPLAY_SECONDS:
            doomed.append(row_id)
        elif math.floor(end / CHECKPOINT_SECONDS) * CHECKPOINT_SECONDS <= step_end <= end:
            in_bucket[tuple(key)].append(row_id)
    doomed += [row_id for ids in in_bucket.values() for row_id in ids[1:]]
    for chunk in chunks(doomed):
        session.execute(delete(CusumCheckpoint).where(CusumCheckpoint.id.in_(chunk)))
    names = ("scope", "scope_id", "model_name", "model_version")
    session.execute(insert(CusumCheckpoint), [
        {**dict(zip(names, key, strict=True)), "step_end": end, "row_id": top,
         "window_samples": detectors.window_samples, "state": detectors.state()}
        for key, end, detectors in saves])
