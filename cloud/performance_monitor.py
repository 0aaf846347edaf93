"""The label-free accuracy alert: every interval, each device and fleet's estimated accuracy over the
lookback (core/calibration.py, from the confidence histograms its windows carry) against the accuracy
its calibration expects on data like the held-out set.

An alert of kind "estimated_accuracy" opens when the estimate falls more than `drop` below that
expectation on at least `min_samples` predictions, and closes when it is back within `drop / 2` (the
gap keeps a scope that hovers at the threshold from opening and closing on every run). Its details hold
the measured accuracy of the labels that arrived in the same lookback, when any did, so the two can be
read side by side. A model exported without labels has no calibration and is never judged here.

It reads the same stored windows and settings as the drift monitor (lookback, interval and min_samples
are the drift monitor's global ones) and keeps no state of its own besides the alerts: a restarted cloud
goes on where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.cloud.db import Alert, TelemetryRecord
from edgefleet.cloud.periodic import PeriodicWorker
from edgefleet.core.calibration import calibration_of, estimated_accuracy
from edgefleet.core.labels import merge_labels
from edgefleet.core.telemetry import TelemetryError, parse_telemetry

log = logging.getLogger(__name__)
KIND = "estimated_accuracy"
ProfileFor = Callable[[str, int], "Mapping | None"]


class PerformanceMonitor(PeriodicWorker):
    name = "performance-monitor"
    run_at_start = False

    def __init__(self, sessions: sessionmaker, profile_for: ProfileFor, *, drop: float = 0.05,
                 lookback_seconds: float = 300.0, interval_seconds: float = 10.0, min_samples: int = 100,
                 clock: Callable[[], float] = time.time) -> None:
        if not 0 < drop < 1 or lookback_seconds <= 0 or interval_seconds <= 0 or min_samples < 1:
            raise ValueError("drop must be in (0, 1), lookback and interval positive, min_samples at least 1")
        self._sessions, self._profile_for, self._clock = sessions, profile_for, clock
        self.drop, self.lookback_seconds, self.interval_seconds = drop, lookback_seconds, interval_seconds
        self.min_samples = min_samples
        self._profiles: dict[tuple[str, int], Mapping | None] = {}
        super().__init__()

    def run_once(self, now: float | None = None) -> list[dict]:
        """Judges every scope with windows in the lookback; returns one record per scope judged."""
        now = self._clock() if now is None else float(now)
        with self._sessions() as session:
            rows = session.scalars(select(TelemetryRecord).where(
                TelemetryRecord.window_end > now - self.lookback_seconds, TelemetryRecord.window_end <= now)).all()
            scopes: dict[tuple[str, str, str, str, int], list] = defaultdict(list)
            for row in rows:
                try:
                    window = parse_telemetry(row.payload, max_bytes=len(row.payload))
                except TelemetryError:
                    continue  # the drift monitor logs these
                for scope, scope_id in (("device", row.device_id), ("fleet", row.fleet)):
                    scopes[(scope, scope_id, row.fleet, row.model_name, row.model_version)].append(window)
            judged = [record for key, windows in scopes.items()
                      if (record := self._judge(session, key, windows, now)) is not None]
            session.commit()
        return judged

    def _judge(self, session: Session, key: tuple, windows: list, now: float) -> dict | None:
        scope, scope_id, fleet, name, version = key
        calibration = calibration_of(self._profile(name, version))
        counts = [w.confidence for w in windows if w.confidence]
        if calibration is None or not counts or len({len(c) for c in counts}) != 1:
            return None
        merged = [sum(column) for column in zip(*counts, strict=True)]
        estimate = estimated_accuracy(merged, calibration)
        samples = sum(merged)
        if estimate is None or samples < self.min_samples:
            return None
        expected = float(calibration["expected_accuracy"])
        labels = merge_labels([w.labels for w in windows])
        record = {"scope": scope, "scope_id": scope_id, "model": {"name": name, "version": version},
                  "estimated_accuracy": estimate, "expected_accuracy": expected, "samples": samples,
                  "measured_accuracy": labels.correct / labels.count if labels and labels.confusion else None,
                  "labels": labels.count if labels else 0, "threshold": self.drop,
                  "window_start": min(w.start for w in windows), "window_end": max(w.end for w in windows)}
        alert = session.scalars(select(Alert).where(
            Alert.status == "open", Alert.scope == scope, Alert.scope_id == scope_id, Alert.kind == KIND,
            Alert.model_name == name, Alert.model_version == version)).first()
        if alert is None and expected - estimate > self.drop:
            measured = record["measured_accuracy"]
            said = f"; measured on {record['labels']} labels: {measured:.3f}" if measured is not None else \
                "; no labels yet"
            message = (f"estimated accuracy on {scope} {scope_id} ({name} v{version}, {samples} samples) is "
                       f"{estimate:.3f}, {expected - estimate:.3f} below the {expected:.3f} its calibration expects "
                       f"(threshold {self.drop:g}), estimated without labels{said}")
            session.add(Alert(scope=scope, scope_id=scope_id, fleet=fleet, model_name=name, model_version=version,
                              kind=KIND, message=message, details=record, status="open", opened_at=now))
            log.warning("alert opened: %s", message)
        elif alert is not None and expected - estimate <= self.drop / 2:
            alert.status, alert.closed_at = "closed", now
            log.info("alert %s closed: estimated accuracy %.3f is back within %.3g of %.3f", alert.id, estimate,
                     self.drop / 2, expected)
        return record

    def _profile(self, name: str, version: int) -> Mapping | None:
        if (name, version) not in self._profiles or self._profiles[(name, version)] is None:
            try:
                self._profiles[(name, version)] = self._profile_for(name, version)
            except Exception:  # noqa: BLE001 - a broken stored bundle: that model is not judged
                log.exception("%s: the reference profile of %s v%s cannot be read", self.name, name, version)
                self._profiles[(name, version)] = None
        return self._profiles[(name, version)]
