"""A fleet's accuracy counts summed per device shard, so that the accuracy monitor's fleet holder does not
read every device's rows (cloud/performance_monitor.py); the drift monitor's design, with its helpers
(cloud/drift_fleet_partials.py).

A fleet's label-free accuracy judgement needs, of all its windows in the lookback: the confidence
histogram counts added up (or the fact that they cannot be: histograms of different lengths, then the
fleet is not judged), the labels added up (core/labels.merge_labels), the first start and the last end;
its per-slice judgement (cloud/slice_alerts.judge_slices) needs each slice's labels added up. All of it
is integer counts (confusion cells, error histogram bins, label counts), which add up exactly in any order:
merge_labels of the shards' merges is merge_labels of every window (the regression error sums are added
with math.fsum per shard and then per fleet, which may differ in the last bit from one fsum of all; the
monitor reads none of them). So each worker writes, per (fleet, model name, version, shard) it holds, the
`Totals` of that shard's windows, and the holder of the "fleets" lease adds up at most 64 rows per fleet
into one window-like `Totals` that the monitor judges exactly as it judged the fleet's windows.

Tables: `performance_fleet_partials` (keyed like drift_fleet_partials, the sums in one JSON column, None
when the shard's labels do not add up: error histograms of different lengths) and
`performance_shard_passes`, the accuracy monitor's own pass times: it runs on its own timer, apart from
the drift monitor, so the drift monitor's passes say nothing about its partials. Writing, reading and the
staleness rule are drift_fleet_partials' (`write_pass`, `current_partials`): a fleet is summed only when
every shard's last pass is at most the lease period plus two intervals old, else it gets no result that
pass (logged with the shards missing), never a result of some shards only.

Recovery: everything is in the database and rewritten by every pass; nothing is kept in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import JSON
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.db import Base
from edgefleet.cloud.drift_fleet_partials import FleetSums, PartialColumns, PassColumns, current_partials, write_pass
from edgefleet.core.labels import LabelCounts, merge_labels
from edgefleet.core.slices import OTHER, SliceCounts
from edgefleet.core.telemetry import TelemetryWindow

log = logging.getLogger(__name__)

Key = tuple[str, str, int, int]  # (fleet, model name, model version, shard)


class PerformancePartial(PartialColumns, Base):
    """The totals of one shard's windows of one fleet and model version in its last pass (at `computed_at`);
    `sums` None: the shard's labels could not be added up."""

    __tablename__ = "performance_fleet_partials"
    sums: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class PerformanceShardPass(PassColumns, Base):
    """When the last accuracy monitor pass over a device shard ran (its `now`), and which worker ran it."""

    __tablename__ = "performance_shard_passes"


@dataclass(frozen=True)
class Totals:
    """Windows added up, read by the monitor like one window (.start, .end, .confidence, .labels, .slices):
    `confidence` () when none had one or when they differ in length (`mismatch`); `slices` the judged
    slices (not OTHER, with labels) with their labels added up, by name."""

    windows: int
    start: float
    end: float
    confidence: tuple[int, ...]
    mismatch: bool
    labels: LabelCounts | None
    slices: tuple[SliceCounts, ...]

    @classmethod
    def of(cls, window: TelemetryWindow) -> Totals:
        return cls(1, window.start, window.end, tuple(window.confidence), False, window.labels,
                   tuple(s for s in window.slices if s.slice != OTHER and s.labels is not None))

    def to_json(self) -> dict:
        return {"confidence": list(self.confidence), "mismatch": self.mismatch,
                "labels": None if self.labels is None else self.labels.to_dict(),
                "slices": {s.slice: s.labels.to_dict() for s in self.slices}}

    @classmethod
    def from_json(cls, data: Mapping, windows: int, start: float, end: float) -> Totals:
        return cls(windows, start, end, tuple(int(n) for n in data["confidence"]), bool(data["mismatch"]),
                   labels_from_dict(data["labels"]),
                   tuple(SliceCounts(name, 0, (), labels_from_dict(labels)) for name, labels in data["slices"].items()))


def labels_from_dict(data: Mapping | None) -> LabelCounts | None:
    """LabelCounts.to_dict read back (from this module's own rows: no bound on the confusion's size, a
    fleet's may exceed one window's)."""
    if data is None:
        return None
    return LabelCounts(int(data["count"]),
                       confusion=tuple(tuple(int(v) for v in cell) for cell in data.get("confusion", ())),
                       errors=tuple(int(n) for n in data.get("errors", ())),
                       abs_error_sum=float(data.get("abs_error_sum", 0.0)),
                       squared_error_sum=float(data.get("squared_error_sum", 0.0)))


def add_up(items: list[Totals]) -> Totals:
    """The totals of several totals (windows or shards); ValueError when labels do not add up (error
    histograms of different lengths)."""
    counts = [t.confidence for t in items if t.confidence]
    mismatch = any(t.mismatch for t in items) or len({len(c) for c in counts}) > 1
    confidence = () if mismatch or not counts else tuple(sum(column) for column in zip(*counts, strict=True))
    parts: dict[str, list[LabelCounts]] = {}
    for item in items:
        for part in item.slices:
            parts.setdefault(part.slice, []).append(part.labels)
    slices = []
    for name in sorted(parts):
        merged = merge_labels(parts[name])
        if merged is not None:  # no labels counted: nothing to judge (judge_slices skips it too)
            slices.append(SliceCounts(name, 0, (), merged))
    return Totals(sum(t.windows for t in items), min(t.start for t in items), max(t.end for t in items),
                  confidence, mismatch, merge_labels([t.labels for t in items]), tuple(slices))


def shard_totals(groups: Mapping[Key, list[TelemetryWindow]]) -> dict[Key, Totals | None]:
    """(fleet, model name, version, shard) -> the totals of its windows, None (logged) when they do not add up."""
    sums: dict[Key, Totals | None] = {}
    for key, windows in groups.items():
        try:
            sums[key] = add_up([Totals.of(w) for w in windows])
        except ValueError as err:
            log.warning("fleet %s (%s v%s), shard %s: labels do not add up: %s", *key, err)
            sums[key] = None
    return sums


def write(session: Session, shards: Iterable[int], sums: Mapping[Key, Totals | None], now: float,
          holder: str) -> None:
    """Stores this pass's totals of `shards` (the shards this worker holds and read) at `now`; the shards'
    older partials go. Idempotent: the same pass written twice leaves the same rows."""
    write_pass(session, PerformancePartial, PerformanceShardPass, shards, [
        {"fleet": f, "model_name": m, "model_version": v, "shard": s, "computed_at": now,
         "windows": 0 if total is None else total.windows,
         "window_start": 0.0 if total is None else total.start, "window_end": 0.0 if total is None else total.end,
         "sums": None if total is None else total.to_json()}
        for (f, m, v, s), total in sorted(sums.items(), key=lambda item: item[0])], now, holder)


def fleet_totals(session: Session, shards: int, now: float, stale_after: float) -> FleetSums:
    """Every fleet's totals over the last pass of every shard (None: they do not add up, logged); no fleet
    and the stale shards when a shard's last pass is missing or stale."""
    parts, stale, passes = current_partials(session, PerformancePartial, PerformanceShardPass, shards, now,
                                            stale_after)
    fleets: dict[tuple[str, str, int], Totals | None] = {}
    for key, rows in parts.items():
        try:
            if any(row.sums is None for row in rows):
                raise ValueError("a shard's labels do not add up")
            fleets[key] = add_up([Totals.from_json(row.sums, row.windows, row.window_start, row.window_end)
                                  for row in rows])
        except ValueError as err:
            log.warning("fleet %s (%s v%s): not judged, its shards' labels do not add up: %s", *key, err)
            fleets[key] = None
    return FleetSums(fleets, stale, passes)
