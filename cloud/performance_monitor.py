"""The label-free accuracy alert: every interval, each device and fleet's estimated accuracy over the
lookback (core/calibration.py, from the confidence histograms its windows carry) against the accuracy
its calibration expects on data like the held-out set.

An alert of kind "estimated_accuracy" opens when the estimate falls more than `drop` below that
expectation on at least `min_samples` predictions, and closes when it is back within `drop / 2` (the
gap keeps a scope that hovers at the threshold from opening and closing on every run). Its details hold
the measured accuracy of the labels that arrived in the same lookback, when any did, so the two can be
read side by side. A model exported without labels has no calibration and is never judged here.
On the same windows and settings, each slice's measured accuracy is judged against its reference
(cloud/slice_alerts.py, alerts of kind "performance_drop").

`drop` is set globally (`cloud up --performance-drop`) and per fleet or model (PUT
/api/v1/performance/settings/..., cloud/performance_settings.py). It reads the same stored windows as the
drift monitor, with the drift monitor's lookback and min_samples resolved for each fleet and model (its
interval is the drift monitor's global one), and keeps no state of its own besides the alerts: a
restarted cloud goes on where it stopped. (In memory only, rebuilt by a restarted worker's first pass: the
earlier accuracies found, and the runs of the devices whose slices have none yet, cloud/slice_runs.py, so
that a pass reads only their rows stored since the last instead of all their older rows; and the windows
the last pass parsed, cloud/decoded_rows.py, so that a pass reads and parses only the payloads stored
since.) An override
that fails validation is logged and the global value used, so one bad row never stops the monitor. A
pass pauses Python's cyclic garbage collector, as the drift monitor's does (cloud/gc_pause.py).

With `shards` (role `monitor` on PostgreSQL, cloud/leases.py) a run judges the devices of the shards this
worker holds, and the fleets only while it holds the "fleets" lease, like the drift monitor, and the same
way: every worker writes, per fleet, model version and shard it holds, the totals of that shard's windows
(cloud/performance_partials.py), and the fleet holder judges each fleet on the sum of those few rows, one
window-like total, instead of reading every device's rows; no fleet result (logged) while a shard's last
pass is older than a lease period and two intervals. A worker holding every shard reads every row itself
(`fleet_partials`: as the drift monitor's, True forces the partials, False the rows). The records of
fleets summed from partials say over which shard passes (`shard_passes`: the oldest and newest pass time).
A fleet slice judged against its own earlier accuracy gets it the same way: each worker writing partials
keeps its shards' runs of each such slice's first labelled windows, and the fleet holder cuts the fleet's
run from them (cloud/performance_baselines.py) instead of reading the fleet's older rows.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.cloud import slice_alerts
from edgefleet.cloud.db import Alert, BundleRecord, TelemetryRecord
from edgefleet.cloud.decoded_rows import WHO, DecodedRows
from edgefleet.cloud.drift import DriftThresholds
from edgefleet.cloud.drift_fleet_partials import log_stale
from edgefleet.cloud.drift_settings import MonitorSettings, SettingsResolver
from edgefleet.cloud.drift_windows import Share
from edgefleet.cloud.gc_pause import paused_gc
from edgefleet.cloud.leases import ShardLeases, shard_of
from edgefleet.cloud.performance_baselines import fleet_baseline
from edgefleet.cloud.performance_baselines import record as record_baselines
from edgefleet.cloud.performance_partials import fleet_totals, shard_totals
from edgefleet.cloud.performance_partials import write as write_partials
from edgefleet.cloud.performance_settings import PerformanceResolver, PerformanceSettings
from edgefleet.cloud.periodic import PeriodicWorker
from edgefleet.cloud.slice_alerts import KIND as SLICE_KIND
from edgefleet.cloud.slice_alerts import (
    judge_slices,
    judged_slices,
    looked_up,
    open_alerts,
    open_or_close,
    slice_references,
)
from edgefleet.cloud.slice_runs import EarlierRuns, Seen
from edgefleet.core.calibration import calibration_of, estimated_accuracy
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.labels import LabelCounts, merge_labels
from edgefleet.core.slices import OTHER, SliceCounts
from edgefleet.core.telemetry import TelemetryError, parse_telemetry

log = logging.getLogger(__name__)
KIND = "estimated_accuracy"
ProfileFor = Callable[[str, int], "Mapping | None"]


@dataclass(frozen=True, slots=True)
class LabelledWindow:
    """What a pass reads of a TelemetryWindow, the only part kept from pass to pass: a parsed window with
    its feature histograms took 2.4-33 KB in memory (tracemalloc, 1-64 features), this part 1.2-1.4 KB."""

    start: float
    end: float
    confidence: tuple[int, ...]
    labels: LabelCounts | None
    slices: tuple[SliceCounts, ...]


def _parse(row) -> LabelledWindow | None:  # noqa: ANN001 - a row of WHO and the payload
    try:
        window = parse_telemetry(row.payload, max_bytes=len(row.payload))  # the ingest checked the size
    except TelemetryError:
        return None
    return LabelledWindow(window.start, window.end, window.confidence, window.labels, window.slices)


class PerformanceMonitor(PeriodicWorker):
    name = "performance-monitor"
    run_at_start = False

    def __init__(self, sessions: sessionmaker, profile_for: ProfileFor, *, drop: float = 0.05,
                 lookback_seconds: float = 300.0, interval_seconds: float = 10.0, min_samples: int = 100,
                 drift: MonitorSettings | None = None, clock: Callable[[], float] = time.time,
                 shards: ShardLeases | None = None, fleet_partials: bool | None = None,
                 remember_runs: bool = True) -> None:
        """`drift`: the drift monitor's global settings, whose per-fleet overrides then apply here too
        (lookback_seconds, interval_seconds and min_samples are ignored); without it, those three.
        `fleet_partials`: as the drift monitor's (True: through the shards' partials even on SQLite).
        `remember_runs`: False looks a device whose slice has no earlier accuracy yet up in full on every
        pass (the way of before, cloud/slice_runs.py; the tests' reference)."""
        if fleet_partials and shards is None:
            raise ValueError("fleet_partials needs shards: the partials are per device shard")
        drift = drift or MonitorSettings(DriftThresholds(min_samples=min_samples), lookback_seconds, interval_seconds)
        self.base, self.drift = PerformanceSettings(drop), drift  # PerformanceSettingsError if drop is out of range
        self._sessions, self._profile_for, self._clock, self._shards = sessions, profile_for, clock, shards
        self._fleet_partials, self._stale_shards = fleet_partials, []
        self.interval_seconds = drift.interval_seconds
        self._profiles: dict[tuple[str, int], Mapping | None] = {}
        self._slice_references: dict[tuple[str, int], dict] = {}  # bundles are immutable: read once
        self._baselines: dict[tuple, tuple[float, str]] = {}  # (scope key, slice) -> its earlier accuracy, once found
        self._runs = EarlierRuns() if remember_runs else None  # devices' earlier windows read so far
        self._windows: DecodedRows[LabelledWindow] = DecodedRows()  # each payload parsed once (decoded_rows.py)
        super().__init__()

    def run_once(self, now: float | None = None) -> list[dict]:
        """Judges every scope with windows in the lookback; returns one record per scope judged, then one per
        (scope, slice) judged (those say their "slice")."""
        now = self._clock() if now is None else float(now)
        with paused_gc(), self._sessions() as session:  # as the drift monitor's (cloud/gc_pause.py)
            drops = PerformanceResolver.load(session, self.base)
            drift = SettingsResolver.load(session, self.drift)
            top = session.scalar(select(func.max(TelemetryRecord.id))) or 0  # read first: committed up to it
            query = select(*WHO).where(
                TelemetryRecord.window_end > now - drift.longest_lookback(), TelemetryRecord.window_end <= now)
            mine = Share.of(self._shards, self._fleet_partials, TelemetryRecord.device_id)
            query = query if mine.where is None else query.where(mine.where)
            scopes: dict[tuple[str, str, str, str, int], list] = defaultdict(list)
            by_shard: dict[tuple[str, str, int, int], list] = defaultdict(list)
            firsts: dict[tuple, list] = defaultdict(list)  # (fleet, model, version, shard, slice) -> entries
            references: dict[tuple[str, int], dict] = {}
            held: dict[str, int] = {}  # device id -> its shard
            rows: dict[tuple, list] = defaultdict(list)  # device scope -> (end, row id, window or None)
            self._windows.start_run()
            read = [row for row in session.execute(query).all()
                    if row.window_end > now - self._resolve(drift, row.fleet, row.model_name).lookback_seconds]
            parsed = self._windows.read(session, read, _parse)
            for row in read:
                ours = mine.shards is None  # the device is in this worker's shards
                if not ours:
                    if row.device_id not in held:
                        held[row.device_id] = shard_of(row.device_id, self._shards.shards)
                    ours = held[row.device_id] in mine.shards
                device = ("device", row.device_id, row.fleet, row.model_name, row.model_version)
                window = parsed.get(row.id)
                if window is None:  # refused: the drift monitor logs these
                    if ours:  # a window all the same, among the device's BASELINE_ROWS (cloud/slice_runs.py)
                        rows[device].append((row.window_end, row.id, None))
                    continue
                if ours:
                    scopes[device].append(window)
                    rows[device].append((row.window_end, row.id, window))
                    if mine.partials:
                        by_shard[(row.fleet, row.model_name, row.model_version, held[row.device_id])].append(window)
                        self._first_labels(session, row, window, held[row.device_id], firsts, references)
                if mine.fleets and not mine.from_partials:
                    scopes[("fleet", row.fleet, row.fleet, row.model_name, row.model_version)].append(window)
            passes = None
            if mine.partials:
                write_partials(session, mine.shards, shard_totals(by_shard), now, self._shards.leases.holder)
                record_baselines(session, firsts, lambda fleet, model: self._resolve(
                    drift, fleet, model).thresholds.min_samples, now)
            if mine.from_partials:
                passes = self._fleets_from_partials(session, now, scopes)
            alerts = open_alerts(session, (KIND, SLICE_KIND))
            judged = [record for key, windows in scopes.items()
                      if (record := self._judge(session, key, windows, now, self._resolve(drops, key[2], key[3]).drop,
                                                self._resolve(drift, key[2], key[3]).thresholds.min_samples,
                                                alerts))
                      is not None]
            parts = self._look_up_baselines(session, scopes, rows, now, top, drift, mine.from_partials)
            for key, windows in scopes.items():
                judged += judge_slices(session, key, windows, now, self._resolve(drops, key[2], key[3]).drop,
                                       self._resolve(drift, key[2], key[3]).thresholds.min_samples,
                                       self._references(session, key[3], key[4]),
                                       (calibration_of(self._profile(key[3], key[4])) or {}).get("measured_accuracy"),
                                       before=now - self._resolve(drift, key[2], key[3]).lookback_seconds,
                                       baselines=self._baselines,
                                       alerts=alerts.get((key[0], key[1], key[3], key[4]), []),
                                       earlier=fleet_baseline if mine.from_partials and key[0] == "fleet"
                                       else looked_up, parts=parts[key])
            session.commit()
            self._windows.finish_run()
        if passes is not None:  # which shard passes the fleets were summed over: said in the records only
            judged = [{**r, "shard_passes": list(passes)} if r["scope"] == "fleet" else r for r in judged]
        return judged

    def _look_up_baselines(self, session: Session, scopes: Mapping, rows: Mapping, now: float, top: int,
                           drift: SettingsResolver, fleets_from_partials: bool) -> dict[tuple, dict]:
        """Each scope's judged slices (judged_slices); the earlier accuracies the scopes' slices need and
        this monitor has not found yet, looked up for all of them at once (slice_alerts.earlier_accuracies:
        not a query per device) into `_baselines`, a device's from its run where it has one (cloud/
        slice_runs.py: its rows new since the last pass only). Fleets summed from partials find theirs in
        the shards' runs instead (performance_baselines.fleet_baseline, in judge_slices). `rows`: each
        device scope's rows of this pass, (end, row id, window)."""
        parts, wanted, seen = {}, {}, {}
        for key, windows in scopes.items():
            settings = self._resolve(drift, key[2], key[3])
            parts[key] = judged_slices(windows, settings.thresholds.min_samples)
            if key in rows:
                seen[key] = Seen(now - settings.lookback_seconds, settings.thresholds.min_samples, rows[key])
            if fleets_from_partials and key[0] == "fleet":
                continue
            references = self._references(session, key[3], key[4])
            missing = {p for p in parts[key] if p not in references and (key, p) not in self._baselines}
            if missing:
                wanted[key] = (missing, now - settings.lookback_seconds, settings.thresholds.min_samples)
        if self._runs is not None:
            self._baselines.update(self._runs.look_up(session, wanted, seen, now, top))
        elif wanted:
            self._baselines.update(slice_alerts.earlier_accuracies(session, wanted, top=top))
        return parts

    def _fleets_from_partials(self, session: Session, now: float, scopes: dict) -> tuple[float, float] | None:
        """Adds to `scopes` every fleet summed from the shards' partials (this run's own are written already)
        as one window-like Totals; returns the oldest and newest shard pass summed, None when a shard's is
        missing or stale (then no fleet scope: logged)."""
        stale_after = self._shards.leases.period + 2 * self.interval_seconds
        sums = fleet_totals(session, self._shards.shards, now, stale_after)
        self._stale_shards = log_stale(log, self.name, sums.stale, self._stale_shards, self._shards.shards,
                                       stale_after)
        if sums.stale:
            return None
        for (fleet, name, version), total in sums.fleets.items():
            if total is not None:  # None: logged by fleet_totals
                scopes[("fleet", fleet, fleet, name, version)] = [total]
        return sums.passes

    def _first_labels(self, session: Session, row, window, shard: int, firsts: dict,  # noqa: ANN001
                      references: dict) -> None:
        """Adds the window's labels of each slice that may need an earlier accuracy (none in the bundle) to
        `firsts`, for the shards' runs of the slice's first labels (cloud/performance_baselines.py);
        `references`: the bundles' per-slice references of this pass (looked up once a pass, uploaded or not)."""
        model = (row.model_name, row.model_version)
        if model not in references:
            references[model] = self._references(session, *model)
        for part in window.slices:
            if part.slice != OTHER and part.slice not in references[model] and part.labels is not None \
                    and part.labels.confusion:
                firsts[(row.fleet, row.model_name, row.model_version, shard, part.slice)].append(
                    (row.window_end, row.id, part.labels))

    def _resolve(self, resolver: SettingsResolver | PerformanceResolver, fleet: str, model: str):  # noqa: ANN202
        try:
            return resolver.for_scope(fleet, model)
        except EdgefleetError as err:
            log.warning("%s: the settings of %s/%s are ignored: %s", self.name, fleet, model, err)
            return resolver.base

    def _judge(self, session: Session, key: tuple, windows: list, now: float, drop: float,
               min_samples: int, alerts: Mapping[tuple, list[Alert]]) -> dict | None:
        scope, scope_id, _, name, version = key
        calibration = calibration_of(self._profile(name, version))
        counts = [w.confidence for w in windows if w.confidence]
        if calibration is None or not counts or len({len(c) for c in counts}) != 1:
            return None
        merged = [sum(column) for column in zip(*counts, strict=True)]
        estimate = estimated_accuracy(merged, calibration)
        samples = sum(merged)
        if estimate is None or samples < min_samples:
            return None
        expected = float(calibration["expected_accuracy"])
        labels = merge_labels([w.labels for w in windows])
        record = {"scope": scope, "scope_id": scope_id, "model": {"name": name, "version": version},
                  "estimated_accuracy": estimate, "expected_accuracy": expected, "samples": samples,
                  "measured_accuracy": labels.correct / labels.count if labels and labels.confusion else None,
                  "labels": labels.count if labels else 0, "threshold": drop,
                  "window_start": min(w.start for w in windows), "window_end": max(w.end for w in windows)}
        alert = next((a for a in alerts.get((scope, scope_id, name, version), ()) if a.kind == KIND), None)
        measured = record["measured_accuracy"]
        said = f"; measured on {record['labels']} labels: {measured:.3f}" if measured is not None else "; no labels yet"
        message = (f"estimated accuracy on {scope} {scope_id} ({name} v{version}, {samples} samples) is "
                   f"{estimate:.3f}, {expected - estimate:.3f} below the {expected:.3f} its calibration expects "
                   f"(threshold {drop:g}), estimated without labels{said}")
        open_or_close(session, key, KIND, alert, expected - estimate, drop, now, record, message)
        return record

    def _profile(self, name: str, version: int) -> Mapping | None:
        if (name, version) not in self._profiles or self._profiles[(name, version)] is None:
            try:
                self._profiles[(name, version)] = self._profile_for(name, version)
            except Exception:  # noqa: BLE001 - a broken stored bundle: that model is not judged
                log.exception("%s: the reference profile of %s v%s cannot be read", self.name, name, version)
                self._profiles[(name, version)] = None
        return self._profiles[(name, version)]

    def _references(self, session: Session, name: str, version: int) -> dict:
        if (name, version) not in self._slice_references:
            manifest = session.scalar(select(BundleRecord.manifest).where(BundleRecord.name == name,
                                                                          BundleRecord.version == version))
            if manifest is None:
                return {}  # not uploaded (yet): asked again on the next run
            self._slice_references[(name, version)] = slice_references(manifest)
        return self._slice_references[(name, version)]
