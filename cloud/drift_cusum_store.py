"""The sequential detectors' sums in the database, fed in event time (issue 14).

The CUSUMs of cloud/drift_sequential.py are a recursion over windows: their value is the whole past of
a scope. Kept in memory, a cloud restart reset them (a drift half-way to its alarm started again from 0)
and windows delivered after an outage were never fed. Here every scope's sums live in the
`drift_cusum_state` table as checkpoints, one row per (scope, event time), and each run feeds them the
scope's windows in event-time order.

Steps. A device's step is its window (windows ending at the same instant make one step); a fleet's step
is all its devices' windows ending in one slot of `slot_seconds` (the monitor's interval), added up as
the fleet's evaluation does, and a slot is fed only once it has ended (its end is not after now). A
step's position is its end: the window's end, or the slot's.

One run, per scope (`feed`):

1. the scope's latest checkpoint says which telemetry rows it has seen (`row_id`: every row up to it);
   the rows above it are new. Without a checkpoint the scope starts now, with the windows of the
   lookback (its past before the monitor knew it is not replayed: that would be unbounded); a fleet with
   the whole slots of its lookback (`start_of`), which its shards' step sums give exactly
   (cloud/drift_cusum_partials.py);
2. the base is the newest checkpoint that ends before the earliest new step. For rows that arrived in
   event order that is the latest checkpoint; for a late window (a backlog drained after an outage, a
   slow device in a fleet) it is the state just before the late window's time;
3. the checkpoints after the base are deleted (the history they describe is rewritten), the sums are
   restored from the base, and every window of the scope that ends after the base is fed, late ones at
   their place, in (end, row id) order;
4. alarms are reported only at steps at or after the earliest new step: the steps between the base and
   it got the same windows as before, so their alarms were reported then. An alarm at a step that ended
   before now - lookback is late: it carries `late_by` (seconds from that step's end to now), and the
   monitor marks its alert late like a late window verdict. A replayed step that alarmed before may
   alarm again; the alert is not duplicated while the first one is open;
5. a checkpoint is written after the fed steps; of each CHECKPOINT_SECONDS of event time only the first
   and the newest are kept, and checkpoints older than REPLAY_SECONDS before the newest are deleted.

Bounded: a scope keeps at most 2 * REPLAY_SECONDS / CHECKPOINT_SECONDS + 2 rows, and a replay starts at
most 2 * CHECKPOINT_SECONDS before the late window (a backlog fed in one run has one checkpoint, at its
end: a later late window inside it replays it whole), unless the late window is older than every checkpoint kept:
then it starts at the oldest one and the windows before it are not fed (logged; the monitor's late
period evaluation still judges them). A restart restores the latest checkpoint, so the alarm comes at
the same window as without the restart. The calibration window size is stored with the sums, so the
thresholds after a restart are the same too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from itertools import groupby

from sqlalchemy import JSON, Float, Index, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.db import Base, TelemetryRecord
from edgefleet.cloud.drift import INSUFFICIENT, merge_windows
from edgefleet.cloud.drift_sequential import ScopeDetectors

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 600.0  # one checkpoint kept per this much event time: a replay starts at most this early
REPLAY_SECONDS = 86_400.0  # a late window older than this before the newest checkpoint is not replayed


class CusumCheckpoint(Base):
    """The sums of one scope's CUSUMs after its step ending at `step_end`, with every telemetry row up to
    `row_id` seen; `window_samples` is the window size its thresholds were calibrated for."""

    __tablename__ = "drift_cusum_state"
    __table_args__ = (Index("ix_drift_cusum_state_scope", "scope", "scope_id", "model_name", "model_version",
                            "step_end"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # "device" or "fleet"
    scope_id: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    step_end: Mapped[float] = mapped_column(Float)
    row_id: Mapped[int] = mapped_column(Integer)
    window_samples: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict] = mapped_column(JSON)  # signal -> Cusum.state()
    saved_at: Mapped[float] = mapped_column(Float, default=time.time)


WindowOf = Callable[[TelemetryRecord, Mapping], "object | None"]  # the monitor's parser: a _Window or None


class CusumStore:
    """Feeds scopes' CUSUMs from the telemetry table and keeps their sums in CusumCheckpoint rows."""

    def __init__(self, window_of: WindowOf) -> None:
        self._window_of = window_of

    def feed(self, session: Session, scope, profile: Mapping, *, top: int, now: float, lookback: float,
             slot_seconds: float) -> dict | None:
        """One run for one scope (module docstring); returns the report section (with "late_by" when its
        alarm is late, "steps" fed and "replayed_from" when a late window rewound the sums), or None for a
        profile without magnitude facts."""
        key = _key(scope)
        latest = _checkpoint(session, key, newest=True)
        rows = _rows(session, scope, top)
        if latest is None:
            base, first_new = None, -math.inf
            rows = rows.where(TelemetryRecord.window_end > start_of(scope, now, lookback, slot_seconds))
        else:
            earliest = session.scalar(rows.with_only_columns(func.min(TelemetryRecord.window_end))
                                      .where(TelemetryRecord.id > latest.row_id))
            first_new = (math.nextafter(latest.step_end, math.inf) if earliest is None
                         else self._step_of(scope, earliest, slot_seconds))
            base = latest if latest.step_end < first_new else _checkpoint(session, key, newest=True,
                                                                          before=first_new)
            if base is None:
                base = _checkpoint(session, key, newest=False)
                log.warning("%s %s (%s v%s): windows from %.0f are older than the CUSUM's oldest checkpoint "
                            "(%.0f): not fed to it", scope.scope, scope.scope_id, scope.model_name,
                            scope.model_version, earliest, base.step_end)
            rows = rows.where(TelemetryRecord.window_end > base.step_end)
        steps = self._steps(session.scalars(rows.order_by(TelemetryRecord.window_end, TelemetryRecord.id)).all(),
                            scope, profile, now, slot_seconds)
        judged = judge_steps(profile, base, steps, first_new=first_new, now=now, lookback=lookback)
        if judged is None:
            return None
        section, detectors = judged
        if not steps:
            return section
        if base is not None and base is not latest:
            section["replayed_from"] = base.step_end
        self._save(session, key, base, steps[-1][0], top, detectors)
        return section

    @staticmethod
    def _step_of(scope, end: float, slot_seconds: float) -> float:
        return end if scope.scope == "device" else slot_end(end, slot_seconds)

    def _steps(self, rows, scope, profile: Mapping, now: float, slot_seconds: float) -> list[tuple[float, int, dict]]:
        """(step end, samples, feature counts) per step in event order; a fleet's unfinished slot waits."""
        windows = [(self._step_of(scope, row.window_end, slot_seconds), window) for row in rows
                   if (window := self._window_of(row, profile)) is not None]
        steps = []
        for end, group in groupby(windows, key=lambda item: item[0]):
            if end > now:
                break
            merged = merge_windows(window.counts for _, window in group)
            steps.append((end, merged.samples, merged.features))
        return steps

    @staticmethod
    def _save(session: Session, key: dict, base: CusumCheckpoint | None, end: float, top: int,
              detectors: ScopeDetectors) -> None:
        where = [getattr(CusumCheckpoint, name) == value for name, value in key.items()]
        if base is not None:  # the history after the base was rewritten
            session.execute(delete(CusumCheckpoint).where(*where, CusumCheckpoint.step_end > base.step_end))
        bucket = math.floor(end / CHECKPOINT_SECONDS) * CHECKPOINT_SECONDS
        in_bucket = session.scalars(select(CusumCheckpoint.id).where(
            *where, CusumCheckpoint.step_end >= bucket, CusumCheckpoint.step_end <= end)
            .order_by(CusumCheckpoint.step_end, CusumCheckpoint.id)).all()
        if len(in_bucket) > 1:  # the bucket's first stays (a rewind point), the new one replaces the newest
            session.execute(delete(CusumCheckpoint).where(CusumCheckpoint.id.in_(in_bucket[1:])))
        session.execute(delete(CusumCheckpoint).where(*where, CusumCheckpoint.step_end < end - REPLAY_SECONDS))
        session.add(CusumCheckpoint(**key, step_end=end, row_id=top, window_samples=detectors.window_samples,
                                    state=detectors.state()))
        session.flush()


def judge_steps(profile: Mapping, base: CusumCheckpoint | None, steps: list[tuple[float, int, dict]], *,
                first_new: float, now: float, lookback: float) -> tuple[dict, ScopeDetectors] | None:
    """Restore a scope's CUSUMs from `base` (None: start them, sized by the steps' median window), feed
    them `steps` in order and return the drift section (alarms before the lookback marked `late_by`) with
    the detectors to save; None when there is nothing to judge or the profile has no sequential signal."""
    if base is None and not steps:
        return None
    samples = base.window_samples if base is not None else _median([s for _, s, _ in steps])
    detectors = ScopeDetectors(profile, samples)
    if not detectors.detectors:
        return None
    if base is not None:
        detectors.restore(base.state)
    section = detectors.feed(((end, features) for end, _, features in steps), report_from=first_new)
    if not steps:
        return {**section, "verdict": INSUFFICIENT, "steps": 0}, detectors
    alarms = [e["at"] for e in section["signals"].values() if e["alarm"]]
    section["steps"] = len(steps)
    section["late_by"] = (now - min(alarms)) if alarms and min(alarms) <= now - lookback else None
    return section, detectors


def slot_end(end: float, slot_seconds: float) -> float:
    """The end of the fleet step (slot) a window ending at `end` belongs to."""
    return math.ceil(end / slot_seconds) * slot_seconds


def start_of(scope, now: float, lookback: float, slot_seconds: float) -> float:
    """Where the CUSUMs of a scope without a checkpoint start: its windows ending after this are fed. A
    device's lookback; a fleet's first whole slot in its lookback (a step is never a slot cut in part)."""
    return now - lookback if scope.scope == "device" else slot_end(now - lookback, slot_seconds)


def _key(scope) -> dict:
    return {"scope": scope.scope, "scope_id": scope.scope_id, "model_name": scope.model_name,
            "model_version": scope.model_version}


def _checkpoint(session: Session, key: dict, *, newest: bool, before: float = math.inf) -> CusumCheckpoint | None:
    """The scope's newest (or oldest) checkpoint ending before `before`."""
    where = [getattr(CusumCheckpoint, name) == value for name, value in key.items()]
    order = (CusumCheckpoint.step_end.desc(), CusumCheckpoint.id.desc()) if newest else (
        CusumCheckpoint.step_end, CusumCheckpoint.id)
    return session.scalars(select(CusumCheckpoint).where(*where, CusumCheckpoint.step_end < before)
                           .order_by(*order).limit(1)).first()


def _rows(session: Session, scope, top: int):
    """The select of the scope's telemetry rows up to `top`."""
    owner = TelemetryRecord.device_id if scope.scope == "device" else TelemetryRecord.fleet
    return select(TelemetryRecord).where(owner == scope.scope_id, TelemetryRecord.model_name == scope.model_name,
                                         TelemetryRecord.model_version == scope.model_version,
                                         TelemetryRecord.id <= top)


def _median(values: list[int]) -> int:
    return int(sorted(values)[len(values) // 2]) if values else 1

