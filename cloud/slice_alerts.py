"""The per-slice accuracy alert: each slice's measured accuracy (from the labels that arrived) against the
accuracy the bundle says that slice should have, judged by the performance monitor on every run for each
device and fleet it judges (cloud/performance_monitor.py), on the same windows and settings.

A slice (core/slices.py) can fail while the totals look fine: a camera of thirty at night, a site with new
lighting. So each slice named in the windows of the lookback is judged on its own:

- measured accuracy: the slice's confusion counts added over the lookback (labels arrive late, so this is
  about predictions made up to the device's label retention earlier);
- reference: the slice's accuracy in the bundle's own metrics (`manifest["metrics"][split]["per_slice"]`,
  written at export or by the compression/evaluation report: split "eval" first, then "test", then any
  other); else the slice's own earlier measured accuracy (`earlier_accuracy`: its first `min_samples`
  labels in this scope and model version, from windows that ended before the lookback, read from the
  rows (a device not found yet goes on from its run of them, cloud/slice_runs.py: only its rows stored
  since the last pass are read); for a fleet summed from shard partials, from the shards' records of those
  windows, cloud/performance_baselines.py, the same labels without reading a row; fixed once found,
  so a slow decline never becomes the new normal; a slice that was already bad from its first labels is
  judged against that); else, like the label-free alert, the accuracy its calibration data measured for
  the whole model (`reference_accuracy` of GET .../performance); a slice with none is not judged. The
  alert says which;
- an alert of kind "performance_drop" opens when the measured accuracy is more than `drop` below the
  reference on at least `min_samples` labels, naming the slice ("accuracy on slice night 0.710 vs 0.930
  reference ..."), and closes when it is back within `drop / 2` on at least `min_samples` labels (fewer:
  no verdict, an open alert stays open). One open alert per (scope, model version, slice); webhooks send
  it like every alert (alert.opened, alert.resolved).

`_other` (names beyond a window's bound, core/slices.py) is a mix of names, not a slice, and regression
slices have no accuracy: neither is judged here.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import Alert, TelemetryRecord
from edgefleet.core.canonical import format_time
from edgefleet.core.labels import LabelCounts, merge_labels
from edgefleet.core.slices import OTHER
from edgefleet.core.telemetry import TelemetryError, TelemetryWindow, parse_telemetry

log = logging.getLogger(__name__)
KIND = "performance_drop"
PREFERRED_SPLITS = ("eval", "test")
BASELINE_ROWS = 2000  # stored windows read at most, oldest first, to find a slice's first labels
SCOPES_PER_QUERY = 10_000  # scopes whose earlier labels one query looks for (bind parameters: SQLite's 32,766)


def slice_references(manifest: Mapping | None) -> dict[str, tuple[float, str]]:
    """{slice: (accuracy, "bundle metrics <split>")} from a manifest's per-slice metrics; a free-form part
    of a signed manifest, so read defensively: a slice of the wrong shape is left out."""
    metrics = (manifest or {}).get("metrics")
    if not isinstance(metrics, Mapping):
        return {}
    splits = [s for s in PREFERRED_SPLITS if s in metrics] + [s for s in metrics if s not in PREFERRED_SPLITS]
    found: dict[str, tuple[float, str]] = {}
    for split in splits:
        per_slice = metrics[split].get("per_slice") if isinstance(metrics[split], Mapping) else None
        for name, values in (per_slice.items() if isinstance(per_slice, Mapping) else ()):
            accuracy = values.get("accuracy") if isinstance(values, Mapping) else None
            if name not in found and isinstance(accuracy, int | float) and not isinstance(accuracy, bool) \
                    and 0 <= accuracy <= 1:
                found[str(name)] = (float(accuracy), f"bundle metrics {split}")
    return found


def earlier_accuracy(session: Session, key: tuple, part: str, before: float,
                     min_samples: int) -> tuple[float, str] | None:
    """(accuracy, source) of the slice's first `min_samples` labels or more in the scope's windows of this
    model version that ended at or before `before` (the oldest BASELINE_ROWS windows), None with fewer."""
    return earlier_accuracies(session, {key: ({part}, before, min_samples)}).get((key, part))


def earlier_accuracies(session: Session, wanted: Mapping[tuple, tuple[set[str], float, int]], *,
                       top: int | None = None, reads: dict | None = None) -> dict[tuple, tuple[float, str]]:
    """earlier_accuracy of many scopes at once: `wanted` maps a scope key to (its slices, before,
    min_samples); returns {(key, slice): (accuracy, source)} for those found. One query per (scope kind,
    model version, before) and SCOPES_PER_QUERY scopes, each scope's oldest BASELINE_ROWS windows ranked in
    the database (a query per device made a pass of 100,000 devices 3.5x as long). Many scopes a query:
    PostgreSQL reads a list of 500 device ids with a scan of the table, as it reads one of 10,000.
    `top`: only rows with an id up to it. `reads`: filled with a `Read` of every scope one of whose slices
    was not found (so every row of it was read: cloud/slice_runs.py goes on from there)."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for key, (_, before, _) in wanted.items():
        groups[(key[0], key[3], key[4], before)].append(key)
    found: dict[tuple, tuple[float, str]] = {}
    read: dict[tuple, Read] = {}
    for (scope, name, version, before), keys in groups.items():
        owner = TelemetryRecord.device_id if scope == "device" else TelemetryRecord.fleet
        by_owner = {key[1]: key for key in keys}
        owners = sorted(by_owner)
        for start in range(0, len(owners), SCOPES_PER_QUERY):
            rank = func.row_number().over(partition_by=owner, order_by=(TelemetryRecord.window_end,
                                                                        TelemetryRecord.id))
            ranked = select(owner.label("owner"), TelemetryRecord.id, TelemetryRecord.window_end,
                            TelemetryRecord.payload, rank.label("rank")).where(
                owner.in_(owners[start:start + SCOPES_PER_QUERY]), TelemetryRecord.model_name == name,
                TelemetryRecord.model_version == version, TelemetryRecord.window_end <= before,
                *(() if top is None else (TelemetryRecord.id <= top,))).subquery()
            rows = session.execute(select(ranked.c.owner, ranked.c.window_end, ranked.c.id, ranked.c.payload).where(
                ranked.c.rank <= BASELINE_ROWS).order_by(ranked.c.owner, ranked.c.window_end, ranked.c.id))
            runs: dict[tuple, tuple[list[LabelCounts], int, float]] = {}  # ties by arrival, on every database
            for owner_id, end, row_id, payload in rows:
                key = by_owner[owner_id]
                parts, _, min_samples = wanted[key]
                if reads is not None:
                    if key not in read:
                        read[key] = Read()
                    read[key].row(end, row_id)
                todo = [p for p in parts if runs.get((key, p), ((), 0))[1] < min_samples]
                if not todo:
                    continue
                try:
                    window = parse_telemetry(payload, max_bytes=len(payload))
                except TelemetryError:
                    continue  # the drift monitor logs these
                for part in todo:
                    labels = baseline_labels(window, part)
                    if labels is not None:
                        items, count, _ = runs.get((key, part), ([], 0, 0.0))
                        runs[(key, part)] = ([*items, labels], count + labels.count, end)
                if reads is not None:
                    read[key].add(end, row_id, window, min_samples)
            for (key, part), (items, _, until) in runs.items():
                if (baseline := baseline_of(items, until, wanted[key][2])) is not None:
                    found[(key, part)] = baseline
    if reads is not None:
        parts_found = Counter(key for key, _ in found)
        reads.update({key: read.get(key) or Read() for key, (parts, _, _) in wanted.items()
                      if parts_found[key] < len(parts)})
    return found


@dataclass
class Read:
    """What earlier_accuracies read of a scope: how many rows (at most BASELINE_ROWS), the last one's (end,
    row id), and per slice (`_other` never) the (end, row id, labels) of its labelled windows in (end, row
    id) order, until their labels reach min_samples."""

    rows: int = 0
    last: tuple[float, int] = (float("-inf"), 0)
    slices: dict[str, list] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def row(self, end: float, row_id: int) -> None:
        self.rows, self.last = self.rows + 1, (end, row_id)

    def add(self, end: float, row_id: int, window: TelemetryWindow, min_samples: int) -> None:
        for part, labels in labelled(window):
            if self.counts.get(part, 0) < min_samples:
                self.slices.setdefault(part, []).append((end, row_id, labels))
                self.counts[part] = self.counts.get(part, 0) + labels.count


def labelled(window: TelemetryWindow | None) -> tuple[tuple[str, LabelCounts], ...]:
    """The (slice, labels) of a window that an earlier accuracy counts (baseline_labels), `_other` left out."""
    if window is None or not window.slices:
        return ()
    return tuple([(item.slice, item.labels) for item in window.slices
                  if item.slice != OTHER and item.labels is not None and item.labels.confusion])


def judged_slices(windows: list[TelemetryWindow], min_samples: int) -> dict[str, LabelCounts]:
    """The slices of a scope's windows that are judged: their labels added up, with confusion cells and at
    least `min_samples` of them (`_other` never)."""
    parts: dict[str, list] = defaultdict(list)
    for window in windows:
        for part in window.slices:
            if part.slice != OTHER and part.labels is not None:
                parts[part.slice].append(part.labels)
    merged = {part: merge_labels(labels) for part, labels in parts.items()}
    return {part: m for part, m in sorted(merged.items())
            if m is not None and m.confusion and m.count >= min_samples}


def baseline_labels(window: TelemetryWindow, part: str) -> LabelCounts | None:
    """The labels a window gives the slice's earlier accuracy: the slice's, when they have confusion cells."""
    for item in window.slices:
        if item.slice == part and item.labels is not None and item.labels.confusion:
            return item.labels
    return None


def baseline_of(found: list[LabelCounts], until: float, min_samples: int) -> tuple[float, str] | None:
    """(accuracy, source) of a slice's first labels `found` (the last window ending at `until`), None when
    they are fewer than `min_samples`. The source names the last window's end in UTC (alert messages are
    read by people)."""
    merged = merge_labels(found)
    if merged is None or merged.count < min_samples:
        return None
    last = format_time(datetime.fromtimestamp(until, timezone.utc))
    return merged.correct / merged.count, f"its own earlier labels, {merged.count} up to {last}"


def open_or_close(session: Session, key: tuple, kind: str, alert: Alert | None, gap: float, drop: float,
                  now: float, record: dict, message: str) -> None:
    """The rule both accuracy alerts share: opens an alert of `kind` when the gap (reference minus measured
    or estimated accuracy) exceeds `drop` and none is open; closes the open one once the gap is back within
    drop / 2 (the margin keeps a scope that hovers at the threshold from flapping)."""
    scope, scope_id, fleet, name, version = key
    if alert is None and gap > drop:
        session.add(Alert(scope=scope, scope_id=scope_id, fleet=fleet, model_name=name, model_version=version,
                          kind=kind, message=message, details=record, status="open", opened_at=now))
        log.warning("alert opened: %s", message)
    elif alert is not None and gap <= drop / 2:
        alert.status, alert.closed_at = "closed", now
        log.info("alert %s closed (%s of %s %s): the gap %.3f is back within %.3g", alert.id, kind, scope, scope_id,
                 gap, drop / 2)


def open_alerts(session: Session, kinds: tuple[str, ...]) -> dict[tuple, list[Alert]]:
    """The open alerts of `kinds` by (scope, scope id, model name, version): read once a run, not once a
    scope (two queries a device made most of a 100,000-device pass)."""
    found: dict[tuple, list[Alert]] = defaultdict(list)
    for alert in session.scalars(select(Alert).where(Alert.status == "open", Alert.kind.in_(kinds))):
        found[(alert.scope, alert.scope_id, alert.model_name, alert.model_version)].append(alert)
    return found


def looked_up(session: Session, key: tuple, part: str, before: float, min_samples: int) -> None:  # noqa: ARG001
    """judge_slices' `earlier` for scopes whose baselines the caller looked up for the whole pass
    (earlier_accuracies): one not in `baselines` was not found."""
    return None


def judge_slices(session: Session, key: tuple, windows: list[TelemetryWindow], now: float, drop: float,
                 min_samples: int, references: Mapping[str, tuple[float, str]], overall: float | None, *,
                 before: float, baselines: dict, alerts: list[Alert] | None = None,
                 earlier: Callable | None = None, parts: Mapping[str, LabelCounts] | None = None) -> list[dict]:
    """Opens or closes the scope's per-slice alerts (module docstring); returns one record per slice judged.
    `references`: slice_references of the model's manifest; `overall`: its calibration's measured accuracy;
    `before`: the start of the lookback (earlier labels end by then); `baselines`: the caller's memory of
    earlier_accuracy per (key, slice), kept once found; `alerts`: the scope's open alerts (open_alerts),
    read here when None; `earlier`: what finds a baseline (earlier_accuracy's arguments and answer), by
    default earlier_accuracy (the fleet holder of shard workers: performance_baselines.fleet_baseline;
    `looked_up` when the caller found them with earlier_accuracies); `parts`: judged_slices of the
    windows, when the caller has them."""
    scope, scope_id, fleet, name, version = key
    parts = judged_slices(windows, min_samples) if parts is None else parts
    if alerts is None:
        alerts = list(session.scalars(select(Alert).where(
            Alert.status == "open", Alert.scope == scope, Alert.scope_id == scope_id, Alert.kind == KIND,
            Alert.model_name == name, Alert.model_version == version)))
    by_slice = {(alert.details or {}).get("slice"): alert for alert in alerts if alert.kind == KIND}
    records = []
    for part, merged in parts.items():
        if part not in references and (key, part) not in baselines:
            found = (earlier or earlier_accuracy)(session, key, part, before, min_samples)
            if found is not None:
                baselines[(key, part)] = found
        reference, source = references.get(part) or baselines.get((key, part)) or (overall,
                                                                                    "calibration data, whole model")
        if reference is None:
            continue
        measured = merged.correct / merged.count
        record = {"scope": scope, "scope_id": scope_id, "model": {"name": name, "version": version},
                  "slice": part, "measured_accuracy": measured, "reference_accuracy": reference,
                  "reference": source, "labels": merged.count, "threshold": drop,
                  "window_start": min(w.start for w in windows), "window_end": max(w.end for w in windows)}
        records.append(record)
        message = (f"accuracy on slice {part} {measured:.3f} vs {reference:.3f} reference ({source}) on {scope} "
                   f"{scope_id} ({name} v{version}, {merged.count} labels): {reference - measured:.3f} below, "
                   f"threshold {drop:g}")
        open_or_close(session, key, KIND, by_slice.get(part), reference - measured, drop, now, record, message)
    return records
