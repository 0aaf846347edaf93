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
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import TelemetryRecord
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

    def add(self, samples: int, confidence: tuple[int, ...], labels: LabelCounts | None) -> None:
        self.samples += samples
        self.windows += 1
        if confidence:
            self.confidence = list(confidence) if self.confidence is None or len(self.confidence) != len(
                confidence) else [a + b for a, b in zip(self.confidence, confidence, strict=True)]
        self.labels = (self.labels or []) + [labels]


def performance(session: Session, profile_for: ProfileFor, *, device: str | None = None, fleet: str | None = None,
                model: str | None = None, version: int | None = None, since: float = 0.0,
                until: float = math.inf, bucket_seconds: float = 60.0, by: str = "model") -> dict:
    """The points of one scope (module docstring), oldest first, with each model version's reference."""
    query = select(TelemetryRecord).where(TelemetryRecord.window_end > since)
    if math.isfinite(until):
        query = query.where(TelemetryRecord.window_end <= until)
    if device is not None:
        query = query.where(TelemetryRecord.device_id == device)
    if fleet is not None:
        query = query.where(TelemetryRecord.fleet == fleet)
    if model is not None:
        query = query.where(TelemetryRecord.model_name == model)
    if version is not None:
        query = query.where(TelemetryRecord.model_version == version)
    rows = session.scalars(query.order_by(TelemetryRecord.window_end.desc()).limit(MAX_WINDOWS + 1)).all()
    truncated = len(rows) > MAX_WINDOWS
    return {"bucket_seconds": bucket_seconds, "truncated": truncated, "by": by,
            **points(rows[:MAX_WINDOWS], profile_for, bucket_seconds, by_slice=by == "slice")}


def points(rows: Iterable[TelemetryRecord], profile_for: ProfileFor, bucket_seconds: float,
           by_slice: bool = False) -> dict:
    buckets: dict[tuple[str, int, float, str], _Bucket] = defaultdict(_Bucket)
    for row in rows:
        try:
            window = parse_telemetry(row.payload, max_bytes=len(row.payload))
        except TelemetryError as err:  # stored before a parser change: left out, said once per read
            log.warning("performance: device %s seq %s left out: %s", row.device_id, row.seq, err)
            continue
        start = math.floor(row.window_end / bucket_seconds) * bucket_seconds
        if not by_slice:
            buckets[(row.model_name, row.model_version, start, "")].add(window.samples, window.confidence,
                                                                        window.labels)
        for part in window.slices if by_slice else ():
            buckets[(row.model_name, row.model_version, start, part.slice)].add(part.samples, part.confidence,
                                                                                part.labels)
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
