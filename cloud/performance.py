"""Model performance over time, from the telemetry the ingest stored: measured where labels arrived,
estimated without them.

    series = performance(session, profile_for, device="pi-07", since=t0, bucket_seconds=60)
    series = performance(session, profile_for, fleet="lab", model="digits-cnn", since=t0)

Each point is one (model version, time bucket) of a device or of a fleet (its devices' windows added, as
the drift monitor adds them), bucketed by window end:

- `samples`: predictions served in the bucket;
- `estimated_accuracy`: a classifier's expected accuracy from its confidence histogram and the
  calibration its profile holds (core/calibration.py), None for a model exported without labels;
- `labels`, `accuracy` (classifiers) or `mae`, `rmse` (regression): from the labels that *arrived* in
  the bucket's windows (core/labels.py). Labels come late, so a bucket's measured accuracy is about
  predictions made up to the device's retention earlier: the estimate reacts when inputs change, the
  measure when their labels come in.

With `by="slice"` each point is one (model version, slice, time bucket) instead, from the per-slice counts
the windows carry (core/slices.py: requests tagged `?slice=NAME` on the device, labels counted in the
slice of their prediction), and says its `slice`; `slices` lists the names seen. The estimate of a slice
reads the slice's own confidence histogram. Windows from agents before slices, and requests without a
slice, are in no slice's points (the totals keep them).

`reference_accuracy` is the calibration data's measured accuracy, the line both are compared with.
Nothing is stored twice: the points are computed from the stored payloads on each read (the drift
monitor reads them the same way), so a late backlog of windows shows up in the buckets it belongs to.
Periods that retention has rolled up (cloud/retention.py) are read from their hourly and daily roll-ups,
which keep labels and slices: a roll-up counts in the range when its bucket starts in [since, until) and
in the point of its bucket start, so a point narrower than the roll-up holds all of it in its first bucket.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.ops_tables import TelemetryRollup
from edgefleet.core.calibration import calibration_of, estimated_accuracy
from edgefleet.core.labels import LabelCounts, merge_labels
from edgefleet.core.telemetry import TelemetryError, parse_telemetry

log = logging.getLogger(__name__)

ProfileFor = Callable[[str, int], "Mapping | None"]
MAX_WINDOWS = 100_000  # windows one read may add up; beyond, the oldest are left out and `truncated` says so


@dataclass
class _Bucket:
    samples: int = 0
    windows: int = 0
    confidence: list[int] | None = None
    labels: list[LabelCounts | None] | None = None

    def add(self, samples: int, confidence: tuple[int, ...], labels: LabelCounts | None, windows: int) -> None:
        self.samples += samples
        self.windows += windows
        if confidence:
            self.confidence = list(confidence) if self.confidence is None or len(self.confidence) != len(
                confidence) else [a + b for a, b in zip(self.confidence, confidence, strict=True)]
        self.labels = (self.labels or []) + [labels]


def performance(session: Session, profile_for: ProfileFor, *, device: str | None = None, fleet: str | None = None,
                model: str | None = None, version: int | None = None, since: float = 0.0,
                until: float = math.inf, bucket_seconds: float = 60.0, by: str = "model") -> dict:
    """The points of one scope (module docstring), oldest first, with each model version's reference."""
    def scoped(query, table):  # noqa: ANN001, ANN202 - a select on either table
        for column, value in (("device_id", device), ("fleet", fleet), ("model_name", model),
                              ("model_version", version)):
            query = query.where(getattr(table, column) == value) if value is not None else query
        return query

    t, r = TelemetryRecord, TelemetryRollup
    query = scoped(select(t).where(t.window_end > since), t)
    if math.isfinite(until):
        query = query.where(t.window_end <= until)
    raw = session.scalars(query.order_by(t.window_end.desc()).limit(MAX_WINDOWS + 1)).all()
    query = scoped(select(r).where(r.granularity.in_(("hour", "day")), r.bucket_start >= since), r)
    if math.isfinite(until):
        query = query.where(r.bucket_start < until)
    rolled = session.scalars(query.order_by(r.bucket_start.desc()).limit(MAX_WINDOWS + 1)).all()
    rows = [Stored(w.device_id, w.seq, w.model_name, w.model_version, w.window_end, w.payload, 1) for w in raw] + [
        Stored(w.device_id, 0, w.model_name, w.model_version, w.bucket_start, w.payload, w.windows) for w in rolled]
    rows.sort(key=lambda row: -row.at)
    truncated = len(rows) > MAX_WINDOWS
    return {"bucket_seconds": bucket_seconds, "truncated": truncated, "by": by,
            **points(rows[:MAX_WINDOWS], profile_for, bucket_seconds, by_slice=by == "slice")}


class Stored(NamedTuple):
    """A stored window or roll-up: `at` places it in a bucket (a window's end, a roll-up's bucket start)."""

    device_id: str
    seq: int
    model_name: str
    model_version: int
    at: float
    payload: str
    windows: int  # raw windows it holds


def points(rows: Iterable[Stored], profile_for: ProfileFor, bucket_seconds: float, by_slice: bool = False) -> dict:
    buckets: dict[tuple[str, int, float, str], _Bucket] = defaultdict(_Bucket)
    for row in rows:
        try:
            window = parse_telemetry(row.payload, max_bytes=len(row.payload))
        except TelemetryError as err:  # stored before a parser change: left out, said once per read
            log.warning("performance: device %s seq %s left out: %s", row.device_id, row.seq, err)
            continue
        start = math.floor(row.at / bucket_seconds) * bucket_seconds
        if not by_slice:
            buckets[(row.model_name, row.model_version, start, "")].add(window.samples, window.confidence,
                                                                        window.labels, row.windows)
        for part in window.slices if by_slice else ():
            buckets[(row.model_name, row.model_version, start, part.slice)].add(part.samples, part.confidence,
                                                                                part.labels, row.windows)
    models: dict[tuple[str, int], Mapping | None] = {}
    out = []
    for (name, version, start, part), bucket in sorted(buckets.items(),
                                                       key=lambda item: (item[0][2], item[0][:2], item[0][3])):
        if (name, version) not in models:
            models[(name, version)] = calibration_of(_profile(profile_for, name, version))
        point = _point(name, version, start, bucket_seconds, bucket, models[(name, version)])
        out.append({"slice": part, **point} if by_slice else point)
    references = [{"model": {"name": name, "version": version},
                   "reference_accuracy": calibration.get("measured_accuracy") if calibration else None,
                   "calibrated_on": calibration.get("on") if calibration else None}
                  for (name, version), calibration in models.items()]
    return {"points": out, "models": references} | (
        {"slices": sorted({key[3] for key in buckets})} if by_slice else {})


def _point(name: str, version: int, start: float, width: float, bucket: _Bucket, calibration: Mapping | None) -> dict:
    labels = merge_labels(bucket.labels or [])
    point = {"model": {"name": name, "version": version}, "start": start, "end": start + width,
             "windows": bucket.windows, "samples": bucket.samples, "labels": labels.count if labels else 0,
             "estimated_accuracy": None}
    if calibration is not None and bucket.confidence:
        point["estimated_accuracy"] = estimated_accuracy(bucket.confidence, calibration)
    if labels is not None and labels.errors:
        point["mae"] = labels.abs_error_sum / labels.count
        point["rmse"] = math.sqrt(labels.squared_error_sum / labels.count)
    elif labels is not None or bucket.confidence:
        point["accuracy"] = labels.correct / labels.count if labels else None
    return point


def _profile(profile_for: ProfileFor, name: str, version: int) -> Mapping | None:
    try:
        return profile_for(name, version)
    except Exception:  # noqa: BLE001 - a broken stored bundle leaves its estimate out, not the whole answer
        log.exception("performance: the reference profile of %s v%s cannot be read", name, version)
        return None
