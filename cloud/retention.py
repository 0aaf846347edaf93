"""Retention: raw telemetry windows for N days, then hourly roll-ups, then daily ones; drift evaluations for
N days. History stops growing forever (a drift evaluation is ~1.3 KB, one per scope every 10 s).

Every `interval_seconds` (`run_once`):
1. raw windows (table telemetry) that ended more than `raw_days` ago are added into one roll-up per
   (device, model name, version, UTC hour) and deleted;
2. hourly roll-ups whose hour began more than `hourly_days` ago are added into daily ones and deleted;
3. drift evaluations computed more than `evaluations_days` ago are deleted (alerts keep their own copy of
   what they were raised on);
4. captured samples received longer ago than their fleet's `retention_days` (cloud/capture_store.py), or
   `captures_days` for a fleet without capture settings, are deleted.

A roll-up's payload is a telemetry message (core/telemetry.py) whose counts are the sums of its windows:
every histogram (latency, features, predictions, confidence, outputs, data quality), requests, samples
and errors add; the window spans the bucket; health is the newest window's. Because the bins are the
reference profile's for every window of a model version, drift evaluated on roll-ups gives exactly the
verdicts it gives on the raw windows of the same period (tests/cloud/test_retention.py). Labels add too
(confusion cells, or regression error histograms and sums), and so do slices (core/slices.py), keyed by
name inside the payload, so accuracy per slice over a rolled-up period is that of its raw windows
(tests/cloud/test_retention_slices.py). A roll-up keeps a window's bounds: at most MAX_SLICES names (the
ones with most samples; the others are added into `_other`) and MAX_CONFUSION_CELLS cells in the totals,
MAX_SLICE_CELLS per slice (`_bounded`: beyond them, the smallest cells are added into a kept cell of the
same kind, right or wrong, so counts and accuracy stay exact and only that part of the confusion is
approximate; logged). The outbox-overflow record is not kept. Each step runs in one transaction per
bucket: a crash leaves either the raw windows or their roll-up, never both and never neither.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.cloud.capture_store import CaptureDefaults, purge_captures
from edgefleet.cloud.db import DriftResult, TelemetryRecord
from edgefleet.cloud.ops_tables import TelemetryRollup
from edgefleet.cloud.periodic import PeriodicWorker
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.labels import MAX_CONFUSION_CELLS, LabelCounts, merge_labels
from edgefleet.core.slices import MAX_SLICE_CELLS, MAX_SLICES, OTHER, SliceCounts
from edgefleet.core.telemetry import (
    Dropped,
    FeatureCounts,
    OutputCounts,
    TelemetryError,
    TelemetryWindow,
    parse_telemetry,
)
from edgefleet.core.window_quality import QualityCounts

log = logging.getLogger(__name__)
DAY, HOUR = 86400.0, 3600.0


@dataclass(frozen=True)
class RetentionSettings:
    raw_days: float = 7.0
    hourly_days: float = 90.0
    evaluations_days: float = 30.0
    interval_seconds: float = 3600.0
    captures_days: float = 30.0

    def __post_init__(self) -> None:
        if min(self.raw_days, self.hourly_days, self.evaluations_days, self.interval_seconds, self.captures_days) <= 0:
            raise EdgefleetError("retention days and interval must be positive")
        if self.hourly_days < self.raw_days:
            raise EdgefleetError(f"hourly roll-ups ({self.hourly_days} days) cannot be kept shorter than raw windows "
                             f"({self.raw_days} days)")


def add_windows(windows: Iterable[TelemetryWindow], start: float, end: float) -> TelemetryWindow:
    """The windows (one device and model version, same bins) added into one spanning [start, end)."""
    windows = list(windows)
    first = windows[0]

    def rows(pick: Callable[[TelemetryWindow], tuple], key: Callable, make: Callable) -> tuple:
        totals: dict[str, np.ndarray] = {}
        for window in windows:
            for item in pick(window):
                counts = np.asarray(item.counts, np.int64)
                name = key(item)
                totals[name] = totals[name] + counts if name in totals else counts
        return tuple(make(name, tuple(tuple(r) for r in c.tolist())) for name, c in totals.items())

    def vector(pick: Callable[[TelemetryWindow], tuple]) -> tuple[int, ...]:
        present = [np.asarray(pick(w), np.int64) for w in windows if len(pick(w))]
        return tuple(np.sum(present, axis=0).tolist()) if present else ()

    newest = max(windows, key=lambda w: w.end)
    return TelemetryWindow(
        fleet=first.fleet, device=first.device, seq=0, model_name=first.model_name,
        model_version=first.model_version, start=start, end=end, requests=sum(w.requests for w in windows),
        samples=sum(w.samples for w in windows), errors=sum(w.errors for w in windows),
        latency_ms=vector(lambda w: w.latency_ms),
        features=rows(lambda w: w.features, lambda f: f.input, FeatureCounts),
        predictions=vector(lambda w: w.predictions), confidence=vector(lambda w: w.confidence),
        outputs=rows(lambda w: w.outputs, lambda o: o.output, OutputCounts),
        quality=rows(lambda w: w.quality, lambda q: q.input, QualityCounts),
        dropped=Dropped(), health=newest.health,
        labels=_bounded(merge_labels([w.labels for w in windows]), MAX_CONFUSION_CELLS),
        slices=add_slices([part for w in windows for part in w.slices]),
    )


def add_slices(parts: list[SliceCounts]) -> tuple[SliceCounts, ...]:
    """The slices of several windows added by name, within one window's bounds (module docstring)."""
    by_name: dict[str, list[SliceCounts]] = defaultdict(list)
    for part in parts:
        by_name[part.slice].append(part)
    named = sorted((n for n in by_name if n != OTHER), key=lambda n: -sum(p.samples for p in by_name[n]))
    if len(named) > MAX_SLICES:
        log.warning("retention: %d slice names in one roll-up; the %d with fewest samples are added into %r",
                    len(named), len(named) - MAX_SLICES, OTHER)
        for name in named[MAX_SLICES:]:
            by_name[OTHER] += by_name.pop(name)
    out = []
    for name, items in by_name.items():
        shapes = {len(p.confidence) for p in items if p.confidence}
        confidence = tuple(np.sum([p.confidence for p in items if p.confidence], axis=0).tolist()) \
            if len(shapes) == 1 else ()  # one model version: one shape (several: no estimate, never wrong)
        out.append(SliceCounts(name, sum(p.samples for p in items), confidence,
                               _bounded(merge_labels([p.labels for p in items]), MAX_SLICE_CELLS)))
    return tuple(out)


def _bounded(labels: LabelCounts | None, limit: int) -> LabelCounts | None:
    """`labels` with at most `limit` confusion cells, count and number right unchanged (module docstring)."""
    if labels is None or len(labels.confusion) <= limit:
        return labels
    cells = sorted(labels.confusion, key=lambda c: (c[0] != c[1], -c[2]))  # right ones first, largest first
    kept, rest = [list(c) for c in cells[:limit - 1]], cells[limit - 1:]
    right, wrong = (sum(n for t, p, n in rest if (t == p) == flag) for flag in (True, False))
    if right:
        kept[0][2] += right  # rest holds right cells only when every kept one is right
    if wrong:
        target = next((c for c in kept if c[0] != c[1]), None)
        if target is None:
            kept.append([*next(c for c in rest if c[0] != c[1])[:2], 0])
            target = kept[-1]
        target[2] += wrong
    log.warning("retention: %d confusion cells in one roll-up; the %d smallest are added into kept ones",
                len(cells), len(rest))
    return replace(labels, confusion=tuple(sorted(tuple(c) for c in kept)))


class Retention(PeriodicWorker):
    name = "retention"

    @property
    def interval_seconds(self) -> float:
        return self.settings.interval_seconds

    def __init__(self, sessions: sessionmaker, settings: RetentionSettings = RetentionSettings(),  # noqa: B008
                 clock: Callable[[], float] = time.time) -> None:
        self._sessions, self.settings, self._clock = sessions, settings, clock
        super().__init__()

    def run_once(self, now: float | None = None) -> dict[str, int]:
        """One pass; returns how many raw windows and hourly roll-ups were rolled up, evaluations deleted."""
        now = self._clock() if now is None else float(now)
        done = {"raw_windows": self._roll_raw(now - self.settings.raw_days * DAY),
                "hourly_rollups": self._roll_hourly(now - self.settings.hourly_days * DAY)}
        with self._sessions.begin() as session:
            result = session.execute(delete(DriftResult).where(
                DriftResult.computed_at < now - self.settings.evaluations_days * DAY))
            done["evaluations"] = result.rowcount or 0
            done["captures"] = purge_captures(session, now, CaptureDefaults(retention_days=self.settings.captures_days))
        if any(done.values()):
            log.info("%s: %s", self.name, done)
        return done

    def _roll_raw(self, cutoff: float) -> int:
        with self._sessions() as session:
            keys = session.execute(select(TelemetryRecord.id, TelemetryRecord.device_id, TelemetryRecord.model_name,
                                          TelemetryRecord.model_version, TelemetryRecord.window_end)
                                   .where(TelemetryRecord.window_end < cutoff)).all()
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for row_id, device, model, version, end in keys:
            buckets[(device, model, version, end // HOUR * HOUR)].append(row_id)
        for (_device, _model, _version, start), ids in buckets.items():
            with self._sessions.begin() as session:
                rows = session.scalars(select(TelemetryRecord).where(TelemetryRecord.id.in_(ids))).all()
                windows = [w for w in (_parsed(r.payload) for r in rows) if w is not None]
                if windows:
                    _add_rollup(session, "hour", start, HOUR, windows, rows[0].fleet, len(rows))
                session.execute(delete(TelemetryRecord).where(TelemetryRecord.id.in_(ids)))
        return len(keys)

    def _roll_hourly(self, cutoff: float) -> int:
        with self._sessions() as session:
            keys = session.execute(select(TelemetryRollup.id, TelemetryRollup.device_id, TelemetryRollup.model_name,
                                          TelemetryRollup.model_version, TelemetryRollup.bucket_start)
                                   .where(TelemetryRollup.granularity == "hour",
                                          TelemetryRollup.bucket_start < cutoff)).all()
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for row_id, device, model, version, start in keys:
            buckets[(device, model, version, start // DAY * DAY)].append(row_id)
        for (_device, _model, _version, start), ids in buckets.items():
            with self._sessions.begin() as session:
                rows = session.scalars(select(TelemetryRollup).where(TelemetryRollup.id.in_(ids))).all()
                windows = [w for w in (_parsed(r.payload) for r in rows) if w is not None]
                if windows:
                    _add_rollup(session, "day", start, DAY, windows, rows[0].fleet, sum(r.windows for r in rows))
                session.execute(delete(TelemetryRollup).where(TelemetryRollup.id.in_(ids)))
        return len(keys)


def _parsed(payload: str) -> TelemetryWindow | None:
    try:
        return parse_telemetry(payload, max_bytes=len(payload))
    except TelemetryError as err:
        log.warning("retention: a stored window no longer parses (%s); it is dropped from the roll-up", err)
        return None


def _add_rollup(session: Session, granularity: str, start: float, span: float, windows: list[TelemetryWindow],
                fleet: str, count: int) -> None:
    """Adds the windows into the bucket's roll-up, creating it or adding to the one a backlog made earlier."""
    first = windows[0]
    row = session.scalars(select(TelemetryRollup).where(
        TelemetryRollup.device_id == first.device, TelemetryRollup.model_name == first.model_name,
        TelemetryRollup.model_version == first.model_version, TelemetryRollup.granularity == granularity,
        TelemetryRollup.bucket_start == start)).first()
    if row is not None:
        earlier = _parsed(row.payload)
        windows = [earlier, *windows] if earlier is not None else windows
    total = replace(add_windows(windows, start, start + span), fleet=fleet)
    if row is None:
        row = TelemetryRollup(device_id=first.device, fleet=fleet, model_name=first.model_name,
                              model_version=first.model_version, granularity=granularity, bucket_start=start,
                              windows=0)
        session.add(row)
    row.windows += count
    row.requests, row.samples, row.errors = total.requests, total.samples, total.errors
    row.payload = total.to_payload().decode()
