"""Telemetry history read back at one resolution: the raw windows, or hourly or daily totals made from
whatever retention (cloud/retention.py) has left of them: raw windows, hourly roll-ups, daily roll-ups.

    raw   one row per stored window (only the last `retention_raw_days` days have them)
    hour  one row per (UTC hour, model version): hourly roll-ups plus the raw windows of that hour,
          bucketed by window end exactly as retention buckets them; a day already rolled up to a
          daily roll-up cannot be split again, so it has no hourly rows
    day   one row per (UTC day, model version): daily roll-ups plus hourly roll-ups plus raw windows

Counts add (requests, samples, errors, windows), so a range read at any resolution gives the totals of
the raw windows it was made from, before or after a roll-up (tests/cloud/test_window_history.py). A row
of a fleet adds up its devices; a device's row is that device's. Rows come oldest first, ordered by
(start, model name, version, device), in pages of at most MAX_LIMIT rows: `next_offset` says where the
next page starts (None: this was the last). `since` and `until` are Unix seconds; for hour and day
they are rounded down to the bucket, and a row is in the range when its bucket (or a raw window's end)
is in [since, until). A range that is empty, backwards, or longer than MAX_SPAN of its resolution is
refused with a HistoryError naming the limit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.ops_tables import TelemetryRollup
from edgefleet.cloud.retention import DAY, HOUR
from edgefleet.core.errors import EdgefleetError

RESOLUTIONS = ("raw", "hour", "day")
SECONDS = {"hour": HOUR, "day": DAY}
# the longest range one request may cover: raw rows are many (one per device every few seconds), and
# hour/day rows are computed per request from every row in the range
MAX_SPAN = {"raw": 31 * DAY, "hour": 366 * DAY, "day": 3660 * DAY}
DEFAULT_SPAN = {"raw": HOUR, "hour": 2 * DAY, "day": 90 * DAY}
MAX_LIMIT = 1000


class HistoryError(EdgefleetError):
    """A bad range or resolution (400; the message names the limit)."""


@dataclass(frozen=True)
class Scope:
    """Whose windows: one device, or every device of a fleet; optionally one model (and version)."""

    device: str | None = None
    fleet: str | None = None
    model: str | None = None
    version: int | None = None


def check_range(resolution: str, since: float | None, until: float | None, now: float) -> tuple[float, float]:
    """The [since, until) to read, defaults filled in and aligned to the resolution; HistoryError if bad."""
    if resolution not in RESOLUTIONS:
        raise HistoryError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    until = now if until is None else until
    since = until - DEFAULT_SPAN[resolution] if since is None else since
    if not (math.isfinite(since) and math.isfinite(until)):
        raise HistoryError("since and until must be finite Unix seconds")
    if resolution in SECONDS:
        since = since // SECONDS[resolution] * SECONDS[resolution]
    if since >= until:
        raise HistoryError(f"since ({since:.0f}) must be before until ({until:.0f})")
    if until - since > MAX_SPAN[resolution]:
        raise HistoryError(f"a {resolution} range may cover at most {MAX_SPAN[resolution] / DAY:g} days, got "
                           f"{(until - since) / DAY:.4g}; narrow since/until or use a coarser resolution")
    return since, until


def history(session: Session, scope: Scope, resolution: str, since: float, until: float, *, limit: int = 100,
            offset: int = 0) -> dict:
    """{"resolution", "since", "until", "rows": [...], "next_offset"} for a range check_range accepted."""
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise HistoryError(f"limit must be 1-{MAX_LIMIT} and offset at least 0, got {limit} and {offset}")
    if resolution == "raw":
        rows = _raw_rows(session, scope, since, until, limit + 1, offset)
    else:
        rows = _bucket_rows(session, scope, resolution, since, until)[offset:offset + limit + 1]
    more = len(rows) > limit
    return {"resolution": resolution, "since": since, "until": until, "rows": rows[:limit],
            "next_offset": offset + limit if more else None}


def _filtered(query, table, scope: Scope):  # noqa: ANN001, ANN202 - a select on either table
    if scope.device is not None:
        query = query.where(table.device_id == scope.device)
    if scope.fleet is not None:
        query = query.where(table.fleet == scope.fleet)
    if scope.model is not None:
        query = query.where(table.model_name == scope.model)
    if scope.version is not None:
        query = query.where(table.model_version == scope.version)
    return query


def _raw_rows(session: Session, scope: Scope, since: float, until: float, limit: int, offset: int) -> list[dict]:
    t = TelemetryRecord
    query = _filtered(select(t.device_id, t.model_name, t.model_version, t.window_start, t.window_end, t.requests,
                             t.samples, t.errors).where(t.window_end >= since, t.window_end < until), t, scope)
    query = query.order_by(t.window_end, t.model_name, t.model_version, t.device_id, t.id).offset(offset).limit(limit)
    return [_row(start, end, name, version, 1, requests, samples, errors, device)
            for device, name, version, start, end, requests, samples, errors in session.execute(query)]


def _bucket_rows(session: Session, scope: Scope, resolution: str, since: float, until: float) -> list[dict]:
    span = SECONDS[resolution]
    totals: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # windows, requests, samples, errors

    def add(key: tuple, windows: int, requests: int, samples: int, errors: int) -> None:
        total = totals[key]
        total[0] += windows
        total[1] += requests
        total[2] += samples
        total[3] += errors

    per_device = scope.device is not None
    t = TelemetryRecord
    raw = _filtered(select(t.device_id, t.model_name, t.model_version, t.window_end, t.requests, t.samples,
                           t.errors).where(t.window_end >= since, t.window_end < until), t, scope)
    for device, name, version, end, requests, samples, errors in session.execute(raw):
        add((end // span * span, name, version, device if per_device else None), 1, requests, samples, errors)
    r = TelemetryRollup
    granularities = ("hour",) if resolution == "hour" else ("hour", "day")
    rolled = _filtered(select(r.device_id, r.model_name, r.model_version, r.bucket_start, r.windows, r.requests,
                              r.samples, r.errors).where(r.granularity.in_(granularities), r.bucket_start >= since,
                                                         r.bucket_start < until), r, scope)
    for device, name, version, start, windows, requests, samples, errors in session.execute(rolled):
        add((start // span * span, name, version, device if per_device else None), windows, requests, samples,
            errors)
    return [_row(start, start + span, name, version, *counts, device)
            for (start, name, version, device), counts in sorted(totals.items(), key=lambda kv: (
                kv[0][0], kv[0][1], kv[0][2], kv[0][3] or ""))]


def _row(start: float, end: float, name: str, version: int, windows: int, requests: int, samples: int,
         errors: int, device: str | None) -> dict:
    row = {"start": start, "end": end, "model": {"name": name, "version": version}, "windows": windows,
           "requests": requests, "samples": samples, "errors": errors,
           "error_rate": errors / requests if requests else None}
    return {**row, "device": device} if device is not None else row
