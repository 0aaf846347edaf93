"""The per-slice accuracy alert: each slice's measured accuracy (from the labels that arrived) against the
accuracy the bundle says that slice should have, judged by the performance monitor on every run for each
device and fleet it judges (cloud/performance_monitor.py), on the same windows and settings.

A slice (core/slices.py) can fail while the totals look fine: a camera of thirty at night, a site with new
lighting. So each slice named in the windows of the lookback is judged on its own:

- measured accuracy: the slice's confusion counts added over the lookback (labels arrive late, so this is
  about predictions made up to the device's label retention earlier);
- reference: the slice's accuracy in the bundle's own metrics (`manifest["metrics"][split]["per_slice"]`,
  written at export or by the compression/evaluation report: split "eval" first, then "test", then any
  other), else, like the label-free alert, the accuracy its calibration data measured for the whole model
  (`reference_accuracy` of GET .../performance); a model with neither is not judged. The alert says which;
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
from collections import defaultdict
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import Alert
from edgefleet.core.labels import merge_labels
from edgefleet.core.slices import OTHER
from edgefleet.core.telemetry import TelemetryWindow

log = logging.getLogger(__name__)
KIND = "performance_drop"
PREFERRED_SPLITS = ("eval", "test")


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


def judge_slices(session: Session, key: tuple, windows: list[TelemetryWindow], now: float, drop: float,
                 min_samples: int, references: Mapping[str, tuple[float, str]],
                 overall: float | None) -> list[dict]:
    """Opens or closes the scope's per-slice alerts (module docstring); returns one record per slice judged.
    `references`: slice_references of the model's manifest; `overall`: its calibration's measured accuracy."""
    scope, scope_id, fleet, name, version = key
    parts: dict[str, list] = defaultdict(list)
    for window in windows:
        for part in window.slices:
            if part.slice != OTHER and part.labels is not None:
                parts[part.slice].append(part.labels)
    open_alerts = {(alert.details or {}).get("slice"): alert for alert in session.scalars(select(Alert).where(
        Alert.status == "open", Alert.scope == scope, Alert.scope_id == scope_id, Alert.kind == KIND,
        Alert.model_name == name, Alert.model_version == version))}
    records = []
    for part, labels in sorted(parts.items()):
        merged = merge_labels(labels)
        reference, source = references.get(part, (overall, "calibration data, whole model"))
        if merged is None or not merged.confusion or merged.count < min_samples or reference is None:
            continue
        measured = merged.correct / merged.count
        record = {"scope": scope, "scope_id": scope_id, "model": {"name": name, "version": version},
                  "slice": part, "measured_accuracy": measured, "reference_accuracy": reference,
                  "reference": source, "labels": merged.count, "threshold": drop,
                  "window_start": min(w.start for w in windows), "window_end": max(w.end for w in windows)}
        records.append(record)
        alert = open_alerts.get(part)
        if alert is None and reference - measured > drop:
            message = (f"accuracy on slice {part} {measured:.3f} vs {reference:.3f} reference ({source}) on {scope} "
                       f"{scope_id} ({name} v{version}, {merged.count} labels): {reference - measured:.3f} below, "
                       f"threshold {drop:g}")
            session.add(Alert(scope=scope, scope_id=scope_id, fleet=fleet, model_name=name, model_version=version,
                              kind=KIND, message=message, details=record, status="open", opened_at=now))
            log.warning("alert opened: %s", message)
        elif alert is not None and reference - measured <= drop / 2:
            alert.status, alert.closed_at = "closed", now
            log.info("alert %s closed: accuracy on slice %s %.3f is back within %.3g of %.3f", alert.id, part,
                     measured, drop / 2, reference)
    return records
