"""A fleet's CUSUMs fed from its shards' step sums, so that the holder of the "fleets" lease feeds them
without reading every device's rows (issue 17).

A fleet's step is all its devices' windows ending in one slot of the fleet's interval, added up
(cloud/drift_cusum_store.py). What a step gives the detectors (`judge_steps`) is its sample count and its
feature histograms: each CUSUM update reads the step's summed integer counts of its signal, and a new
scope's thresholds are sized by the median of its steps' sample counts. All of it is integer sums of the
windows' counts, so a step is, exactly and in any order, the sum over the 64 device shards of each shard's
sum of that step (`drift_cusum_partials`, written by every worker: cloud/drift_shard_steps.py).

Feeding (the fleet holder, `feed_fleets`, for every fleet summed from the fleet partials), as
`CusumStore.feed` does from the rows: the earliest new step is the earliest one not `fed` (a shard's
write sets it NULL; a partial index keeps those); the base is the latest checkpoint, or the newest before
that step when a late window fell in a step already fed; the steps after the base, up to now, are summed
over the shards and fed, and marked `fed` (unless a window came in the meantime: `newest` moved). The
checkpoint's `row_id` is the lowest row id of the shards' last passes. A fleet whose base is older than a
shard's `steps_from` (a shard started its steps again) is fed from its rows, as before, and its steps
marked fed: after that, the steps cover it. A fleet without a checkpoint starts at the first whole slot of
its lookback, on both paths (`start_of`), so the two give the same sums.

Known limit: a window refused when its payload is parsed counts as new on the rows' path only (it moves
that path's earliest new step, so which alarms are reported again after a rewind).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from edgefleet.cloud.drift import merge_windows
from edgefleet.cloud.drift_cusum_batch import Item, chunks, feed_batch, latest_checkpoints, save_all
from edgefleet.cloud.drift_cusum_store import CusumStore, _checkpoint, _key, judge_steps, start_of
from edgefleet.cloud.drift_fleet_partials import FleetSums, counts_from_json
from edgefleet.cloud.drift_sequential import SEQUENTIAL, ScopeDetectors
from edgefleet.cloud.drift_shard_steps import KEYS, CusumPartial

log = logging.getLogger(__name__)


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
