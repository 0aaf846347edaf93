"""Late windows, in event time (the drift monitor's step 6, cloud/drift_monitor.py): which periods got late
windows, and each such period's windows for its devices and its fleet.

Event time is cut into periods of one lookback L, ((p - 1) L, p L] by window end. A window that arrived
since the monitor's last run (a higher row id) but ended before now - L was in no evaluation; each
period such a window falls in is judged again with every window of that period stored so far.

With the fleet partials (cloud/drift_fleet_partials.py), no worker reads another shard's rows for it
(issue 17): every worker finds the late periods in its own shards' new rows (`late_periods`), judges its
own devices' periods from its own devices' rows, and marks each period for the fleet (`mark`: a row of
`drift_late_periods` per fleet, model version and period, an upsert, so a retried pass marks it once).
The fleet holder takes the marks (`fleet_scopes`: read and deleted in its pass's transaction, so a pass
that fails leaves them for the next) and sums each period's shard sums (`drift_period_partials`, kept by
every worker: cloud/drift_shard_steps.py), at most 64 rows per period. A period that starts before a
shard's `steps_from` (a shard started its sums again after it) is read from the fleet's rows, as
before. While a shard's pass is stale no fleet is judged and the marks wait.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from sqlalchemy import Float, Integer, String, bindparam, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.db import Base
from edgefleet.cloud.drift import CountsMismatch, merge_windows
from edgefleet.cloud.drift_fleet_partials import counts_from_json, upsert
from edgefleet.cloud.drift_shard_steps import PeriodPartial
from edgefleet.cloud.drift_windows import LogOnce, Scope, Scopes, Window

Period = tuple[str, str, int, float]  # (fleet, model name, version, period end)
MARK_KEYS = ["fleet", "model_name", "model_version", "period_end"]


class LatePeriod(Base):
    """A fleet period that got late windows in some shard's new rows, until the fleet holder judged it."""

    __tablename__ = "drift_late_periods"
    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_end: Mapped[float] = mapped_column(Float, primary_key=True)
    found_at: Mapped[float] = mapped_column(Float)


def late_periods(rows: Iterable, now: float, lookback_of: Callable[[str, str], float]) -> dict[Period, set[str]]:
    """The periods of the new rows (fleet, model name, version, device id, window end) that ended before
    their lookback, with the devices that sent late windows in each."""
    periods: dict[Period, set[str]] = defaultdict(set)
    for row in rows:
        lookback = lookback_of(row.fleet, row.model_name)
        if row.window_end > now - lookback:
            continue  # in the on-time evaluation of this run
        end = math.ceil(row.window_end / lookback) * lookback
        periods[(row.fleet, row.model_name, row.model_version, end)].add(row.device_id)
    return periods


def mark(session: Session, periods: Iterable[Period], now: float) -> None:
    upsert(session, LatePeriod.__table__, [dict(zip(MARK_KEYS, period, strict=True)) | {"found_at": now}
                                           for period in sorted(periods)], MARK_KEYS)


def clear(session: Session) -> None:
    """Drops every mark: the fleet holder reading every row finds the periods itself."""
    session.execute(delete(LatePeriod))


def fleet_scopes(session: Session, *, steps_from: float | None, lookback_of: Callable[[str, str], float],
                 profile_of: Callable[[str, int], Mapping | None], from_rows: Callable[[Period, float], Scopes],
                 log_once: LogOnce) -> Scopes:
    """Takes the marks and returns the fleet scope of each marked period (period_end set), oldest first."""
    marks = [tuple(row) for row in session.execute(select(LatePeriod.fleet, LatePeriod.model_name,
                                                          LatePeriod.model_version, LatePeriod.period_end))]
    if not marks:
        return {}
    table = LatePeriod.__table__
    session.execute(delete(table).where(*(table.c[k] == bindparam(f"m_{k}") for k in MARK_KEYS)),
                    [{f"m_{k}": v for k, v in zip(MARK_KEYS, period, strict=True)} for period in marks])
    scopes: Scopes = {}
    for period in sorted(marks, key=lambda p: (p[3], p[:3])):
        fleet, name, version, end = period
        lookback, profile = lookback_of(fleet, name), profile_of(name, version)
        if profile is None:
            continue
        if steps_from is None or end - lookback < steps_from:  # a shard's sums do not reach back to it
            scopes.update({replace(s, period_end=end): item for s, item in from_rows(period, lookback).items()
                           if s.scope == "fleet"})
            continue
        parts = session.execute(select(PeriodPartial.__table__).where(
            PeriodPartial.fleet == fleet, PeriodPartial.model_name == name, PeriodPartial.model_version == version,
            PeriodPartial.step_end == end, PeriodPartial.width == lookback)).all()
        if not parts:
            continue
        try:
            counts = merge_windows([counts_from_json(p.counts) for p in parts])
        except CountsMismatch as err:
            log_once(f"fleet {fleet} ({name} v{version}): late period ending {end} not evaluated, its shards' "
                     f"windows do not add up: {err}")
            continue
        scope = Scope("fleet", fleet, fleet, name, version, period_end=end)
        scopes[scope] = (profile, [Window(counts, min(p.window_start for p in parts),
                                          max(p.window_end for p in parts), windows=sum(p.windows for p in parts))])
    return scopes
