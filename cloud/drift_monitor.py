"""The drift monitor: every few seconds, evaluates the telemetry of each device and each fleet, in event time.

One run (`run_once`):

1. reads the telemetry rows whose window ended in (now - lookback, now] and parses their payloads (the
   ingest stores each payload as it came, so every histogram of it, features, predictions, confidence
   and the per-output summary rows, is read back from there: no column per histogram, no migration);
   each payload is read and parsed once (cloud/drift_windows.py keeps the last run's windows);
2. groups them per (device, model name, version) and per (fleet, model name, version): a fleet is all
   of its devices' windows added together, which the shared bin edges make exact (many windows are
   summed per signal in one numpy call: integer sums, the same in any order);
3. evaluates each scope against the reference profile of its model version (cloud/drift.py), the scopes
   of one profile and thresholds at once (cloud/drift_batch.py; a batch that fails is evaluated again
   scope by scope), and writes one DriftResult row per scope, all in one statement (a COPY on PostgreSQL);
4. feeds each evaluated scope's new windows, late ones included, in event-time order to its sequential
   detectors (cloud/drift_sequential.py: CUSUMs of mean and spread per input feature with magnitude
   facts, their sums kept in the database by cloud/drift_cusum_store.py) and stores their evidence under
   the report's "sequential_drift" of the scope's on-time result (or, without one, its newest late one);
   an alarm at a step older than the lookback opens an alert marked late;
5. opens an Alert ("data_drift", "prediction_drift" or "sequential_drift"; cloud/drift_alerts.py) when a
   scope drifts and no alert of that scope, kind and model version is open; closes an open alert once its
   scope evaluated "ok" for that kind on `close_after` consecutive on-time runs ("insufficient" does not
   count, nor an "ok" that left a short row unjudged, nor a run without telemetry);
6. late data, in event time: a window that arrived since the last run (a higher row id) but ended before
   now - lookback was never in any evaluation (a backlog drained after an outage longer than the
   lookback). It is evaluated in the period it describes: event time is cut into periods of one lookback,
   ((p - 1) L, p L] by window end, and each period a late window falls in is evaluated again, with every
   window of that period stored so far, for its device and its fleet. Those results carry `late_by`
   (seconds from the period's last window end to the evaluation); a drift among them opens an alert
   marked late (`Alert.late_by`, "late" in its message). Late results never close an alert: only the
   present does. A backlog that drains over several runs re-evaluates its periods as they fill.

Settings (min_samples, alpha, psi_floor, noise_multiplier, lookback, interval) are resolved per (fleet,
model name) on every run (cloud/drift_settings.py): global values from the constructor, overrides from
the drift_settings table. In the background loop a scope is evaluated when its own interval has passed
since its last evaluation; the loop ticks at the shortest interval in use. `run_once` called directly
evaluates every scope.

Workers (role `monitor` on PostgreSQL, cloud/leases.py): with `shards`, a run evaluates only the device
scopes of the device shards this worker holds (the rows are filtered in SQL), and the fleet scopes only
while it holds the "fleets" lease. Every worker writes, per fleet, model version and shard it holds, the
sum of that shard's windows (cloud/drift_fleet_partials.py); the holder of the "fleets" lease sums those
few rows per fleet instead of reading every device's rows (a worker holding every shard and the
fleets writes none: it reads every row anyway). It waits (no fleet result that pass, logged)
while a shard's last pass is older than a lease period and two intervals: a fleet result is never made
of some shards only. A worker holding every shard reads every row itself, as one worker always did
(`fleet_partials=True` makes it go through the partials too, the tests' way to hold the two paths
together on SQLite; `fleet_partials=False` keeps the way of before, the fleet holder reading every
device's rows: one snapshot of the rows, at the price of reading them all). A fleet's CUSUMs (4.) and
late periods (6.) go the same way: every worker adds its shards' new rows to per-(fleet, model version,
shard) sums of each CUSUM step and each period (cloud/drift_shard_steps.py) and marks the periods its
shards' new rows made late (cloud/drift_late_periods.py); the fleet holder feeds each fleet's CUSUMs
(cloud/drift_cusum_partials.py) and judges each marked period from at most 64 rows per step or period.
It reads a fleet's rows only when a shard's sums do not reach back far enough (a shard that started its
sums again after a gap in its passes). A worker killed mid-run leaves its shards to the others one lease
period later; a scope that two workers evaluate around a hand-over gets two results, never none.

A run pauses Python's cyclic garbage collector (cloud/gc_pause.py): its automatic full collections
walked the kept windows several times a pass, a third of a 100,000-device pass.

Recovery: the monitor keeps in memory only the highest row id it has seen, when each scope ran last and
the windows its last run decoded (rebuilt from the payloads after a restart); the CUSUM sums, the shards'
step and period sums and the late periods marked for the fleet holder are in the database, so a restart
continues them where they were.
After a restart, its first run sees every row as seen, so windows that arrived while it was down with
an end older than the lookback are not evaluated late (the cloud's ingest was down too, so a device's
backlog normally arrives after the restart and is caught). Row ids follow commit order: an ingest writes
its batches one transaction at a time, and several ingest workers take turns through one advisory lock
(cloud/ingest_store.py).

Identity (device, fleet, model) comes from the stored row, which the ingest took from the MQTT topic
and checked, not from the payload. Windows whose counts do not fit the profile (a device reporting on
bins of another model version) and payloads that no longer parse are refused with a logged reason and
left out; nothing in one scope stops the others. Refusals and missing profiles are logged once each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.cloud.db import DriftResult, TelemetryRecord
from edgefleet.cloud.decoded_rows import WHO
from edgefleet.cloud.drift import (
    CountsMismatch,
    DriftThresholds,
    WindowCounts,
    check_against_profile,
    evaluate,
    merge_windows,
)
from edgefleet.cloud.drift_alerts import update_alerts
from edgefleet.cloud.drift_batch import evaluate_many
from edgefleet.cloud.drift_cusum_partials import feed_run, has_sequential
from edgefleet.cloud.drift_cusum_store import CusumStore
from edgefleet.cloud.drift_fleet_partials import FleetSums, fleet_scopes, fleet_sums, log_stale, shard_sums
from edgefleet.cloud.drift_fleet_partials import write as write_partials
from edgefleet.cloud.drift_late_periods import clear as clear_late
from edgefleet.cloud.drift_late_periods import fleet_scopes as late_fleet_scopes
from edgefleet.cloud.drift_late_periods import late_periods
from edgefleet.cloud.drift_late_periods import mark as mark_late
from edgefleet.cloud.drift_results import insert_results, new_result
from edgefleet.cloud.drift_settings import DriftSettingsError, MonitorSettings, SettingsResolver
from edgefleet.cloud.drift_shard_steps import write_steps
from edgefleet.cloud.drift_windows import Scope, Scopes, Share, Window, WindowReader
from edgefleet.cloud.gc_pause import paused_gc
from edgefleet.cloud.leases import SHARDS, ShardLeases, shard_of

log = logging.getLogger(__name__)

ProfileFor = Callable[[str, int], "Mapping | None"]
_LOG_ONCE_LIMIT = 10_000  # distinct refusal messages remembered before the memory is reset


class DriftMonitor:
    name = "drift-monitor"

    def __init__(
        self,
        sessions: sessionmaker,
        profile_for: ProfileFor,
        thresholds: DriftThresholds = DriftThresholds(),  # noqa: B008 - frozen, so one shared default is safe
        lookback_seconds: float = 300.0,
        interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
        *,
        close_after: int = 3,
        shards: ShardLeases | None = None,
        fleet_partials: bool | None = None,
    ) -> None:
        if lookback_seconds <= 0 or interval_seconds <= 0:
            raise ValueError("lookback_seconds and interval_seconds must be positive")
        if close_after < 1:
            raise ValueError(f"close_after must be at least 1, got {close_after}")
        self._sessions = sessions
        self._profile_for = profile_for
        self.base = MonitorSettings(thresholds, float(lookback_seconds), float(interval_seconds))
        self.close_after = close_after
        self._shards = shards
        if fleet_partials and shards is None:
            raise ValueError("fleet_partials needs shards: the partials are per device shard")
        # None: the fleet sums are written by every worker on PostgreSQL and read by a fleet holder that
        # does not hold every shard; True: always (on SQLite too)
        self._fleet_partials = fleet_partials
        self._stale_shards: list[int] = []  # the shards a fleet pass last waited for
        self._clock = clock
        self._profiles: dict[tuple[str, int], Mapping] = {}
        self._sequential: dict[tuple[str, int], bool] = {}  # whether a profile has sequential signals
        self._logged: set[str] = set()
        self._seen_id: int | None = None  # the highest telemetry row id an earlier run saw
        self._windows = WindowReader(self._log_once)  # each payload decoded once, kept while in the lookback
        self._last_run: dict[tuple[str, str], float] = {}  # (fleet, model name) -> time.monotonic() of its last run
        self._cusums = CusumStore(self._windows.window_of)
        self._tick = self.base.interval_seconds
        self._run_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def thresholds(self) -> DriftThresholds:
        return self.base.thresholds

    @property
    def lookback_seconds(self) -> float:
        return self.base.lookback_seconds

    @property
    def interval_seconds(self) -> float:
        return self.base.interval_seconds

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.name} is already running")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        log.info("%s started: every %.3gs over the last %.3gs", self.name, self.interval_seconds, self.lookback_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.3gs", self.name, timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(due_only=True)
            except Exception:  # noqa: BLE001 - the monitor must outlive any one bad run
                log.exception("%s: run failed; trying again in %.3gs", self.name, self._tick)
            self._stop.wait(self._tick)

    # one run ----------------------------------------------------------------------------------------------
    def run_once(self, now: float | None = None, *, due_only: bool = False) -> list[DriftResult]:
        """Evaluates every scope with telemetry in its lookback, and the past periods late windows fell in;
        returns the DriftResult rows written (on-time ones first). `due_only`: only the scopes whose own
        interval has passed since their last evaluation (the background loop)."""
        now = self._clock() if now is None else float(now)
        with self._run_lock, paused_gc(), self._sessions() as session:
            resolver = SettingsResolver.load(session, self.base)
            self._tick = resolver.shortest_interval()
            top = session.scalar(select(func.max(TelemetryRecord.id))) or 0
            mine = self._mine()
            self._windows.start_run()
            scopes = mine.keep(self._collect(session, now, top, resolver, mine))
            from_partials: FleetSums | None = None
            if mine.from_partials:
                from_partials = self._fleets_from_partials(session, now, scopes)
            if due_only:
                scopes = {scope: item for scope, item in scopes.items() if self._due(scope, resolver)}
            late = mine.keep(self._collect_late(session, now, top, resolver, mine, from_partials))
            self._seen_id = top
            self._windows.finish_run()
            ran_at = time.monotonic()
            for scope in scopes:
                self._last_run[(scope.fleet, scope.model_name)] = ran_at
            evaluated = self._evaluate_all([*scopes.items(), *late.items()], now, resolver)
            if from_partials is not None:
                for scope, result in evaluated:
                    if scope.scope == "fleet" and scope in scopes:
                        result.report = {**result.report, "shard_passes": list(from_partials.passes)}
            self._feed_sequential(session, evaluated, {**late, **scopes}, now, top, resolver, from_partials)
            results = [result for _, result in evaluated]
            insert_results(session, results)
            update_alerts(session, results, now, self.close_after)
            session.commit()
        return results

    def _settings(self, resolver: SettingsResolver, fleet: str, model_name: str) -> MonitorSettings:
        try:
            return resolver.for_scope(fleet, model_name)
        except DriftSettingsError as err:  # a row written around the API: the global settings instead
            self._log_once(f"drift settings of fleet {fleet} / model {model_name} ignored: {err}")
            return self.base

    def _widths(self, resolver: SettingsResolver, fleet: str, model_name: str) -> tuple[float, float]:
        """(interval, lookback) of a scope's settings: one look-up (a bad row is logged once, not twice)."""
        settings = self._settings(resolver, fleet, model_name)
        return settings.interval_seconds, settings.lookback_seconds

    def _due(self, scope: Scope, resolver: SettingsResolver) -> bool:
        """Whether the scope's own interval has passed since its last evaluation (on the monotonic clock:
        pacing is wall time, whatever clock stamps the results)."""
        last = self._last_run.get((scope.fleet, scope.model_name))
        interval = self._settings(resolver, scope.fleet, scope.model_name).interval_seconds
        return last is None or time.monotonic() - last >= interval - 1e-3

    def _mine(self) -> Share:
        return Share.of(self._shards, self._fleet_partials, TelemetryRecord.device_id)

    def _stale_after(self) -> float:
        return self._shards.leases.period + 2 * self._tick

    def _fleets_from_partials(self, session: Session, now: float, scopes: Scopes) -> FleetSums | None:
        """Adds to `scopes` every fleet scope summed from the shards' partials (this run's own are written
        already); returns the sums (the oldest and newest shard pass summed, the shards' CUSUM steps), None
        when a shard's pass is missing or stale (then no fleet scope: logged)."""
        stale_after = self._stale_after()
        sums = fleet_sums(session, self._shards.shards, now, stale_after)
        self._stale_shards = log_stale(log, self.name, sums.stale, self._stale_shards, self._shards.shards,
                                       stale_after)
        if sums.stale:
            return None
        scopes.update(fleet_scopes(sums, self._profile, self._log_once))
        return sums

    def _collect(self, session: Session, now: float, top: int, resolver: SettingsResolver, mine: Share) -> Scopes:
        """The windows of each scope that ended within its lookback of now (on-time evaluation)."""
        query = (select(*WHO)
                 .where(TelemetryRecord.window_end > now - resolver.longest_lookback(),
                        TelemetryRecord.window_end <= now, TelemetryRecord.id <= top)
                 .order_by(TelemetryRecord.id))
        recent = rows = session.execute(query if mine.where is None else query.where(mine.where)).all()
        lookbacks: dict[tuple[str, str], float] = {}  # one settings look-up per (fleet, model name) and run
        for row in rows:
            if (row.fleet, row.model_name) not in lookbacks:
                lookbacks[(row.fleet, row.model_name)] = self._settings(resolver, row.fleet,
                                                                        row.model_name).lookback_seconds
        rows = [row for row in rows if row.window_end > now - lookbacks[(row.fleet, row.model_name)]]
        if not mine.partials:
            return self._group(session, rows, mine)
        by_shard: dict[tuple[str, str, int, int], list[Window]] = defaultdict(list)
        scopes = self._group(session, rows, mine, by_shard)
        held = set(mine.shards if mine.shards is not None else range(SHARDS))
        steps_from = write_steps(  # the fleets' CUSUM steps and periods (cloud/drift_shard_steps.py)
            session, self._windows, recent, shards=held, top=top, now=now, lookback=resolver.longest_lookback(),
            stale_after=self._stale_after(), profile_of=self._profile, sequential=self._has_sequential,
            width_of=lambda fleet, name: self._widths(resolver, fleet, name),
            filter_of=lambda shards: self._shards.device_filter(TelemetryRecord.device_id, shards))
        write_partials(session, held, shard_sums(by_shard), now, self._shards.leases.holder, top, steps_from)
        return scopes

    def _collect_late(self, session: Session, now: float, top: int, resolver: SettingsResolver, mine: Share,
                      summed: FleetSums | None) -> Scopes:
        """For every window new since the last run that ended before its lookback: its period ((p-1)L, pL],
        evaluated with all the windows of that period, for its device and its fleet (cloud/drift_late_periods.py:
        with the fleet partials, each worker marks its shards' periods and the fleet holder sums them)."""
        def lookback_of(fleet: str, model_name: str) -> float:
            return self._settings(resolver, fleet, model_name).lookback_seconds

        def rows_of(period: tuple[str, str, int, float], lookback: float, where=None) -> Scopes:
            fleet, model_name, version, end = period
            query = (select(*WHO).where(
                TelemetryRecord.fleet == fleet, TelemetryRecord.model_name == model_name,
                TelemetryRecord.model_version == version, TelemetryRecord.window_end > end - lookback,
                TelemetryRecord.window_end <= end, TelemetryRecord.id <= top).order_by(TelemetryRecord.id))
            return self._group(session, session.execute(query if where is None else query.where(where)).all())

        periods = {}
        if self._seen_id is not None and top > self._seen_id:
            query = (select(TelemetryRecord.fleet, TelemetryRecord.model_name, TelemetryRecord.model_version,
                            TelemetryRecord.device_id, TelemetryRecord.window_end)
                     .where(TelemetryRecord.id > self._seen_id, TelemetryRecord.id <= top))
            # who and when only: the payloads of the few late periods are read below
            periods = late_periods(session.execute(query if mine.late_where is None else query.where(mine.late_where)),
                                   now, lookback_of)
        if mine.partials:
            mark_late(session, periods, now)
        scopes: Scopes = {}
        for period, devices in sorted(periods.items(), key=lambda item: item[0][3]):
            for scope, item in rows_of(period, lookback_of(*period[:2]), mine.late_where).items():
                if (scope.scope == "fleet" and mine.late_where is None) or scope.scope_id in devices:
                    scopes[replace(scope, period_end=period[3])] = item
        if mine.fleets and not mine.from_partials:
            clear_late(session)  # it found every period itself
        elif summed is not None:
            scopes.update(late_fleet_scopes(session, steps_from=summed.steps_from, lookback_of=lookback_of,
                                            profile_of=self._profile, from_rows=rows_of, log_once=self._log_once))
        return scopes

    def _group(self, session: Session, rows: Iterable, mine: Share | None = None,
               by_shard: dict[tuple[str, str, int, int], list[Window]] | None = None) -> Scopes:
        """The scopes of `rows` (the `WHO` columns of telemetry rows, in id order) with their windows: each
        window decoded from its payload once, then taken from the cache while its row is read. With `mine`,
        the device scopes of devices outside its shards are left out (their rows count for the fleet
        only: the worker holding the fleet scopes reads every device's rows, unless it sums the shards'
        partials); with `by_shard`, the windows of its shards' devices also go there per (fleet, model
        name, version, shard), and the fleet scopes are made from these rows only if `mine` says so."""
        scopes: Scopes = {}
        held: dict[str, int] = {}  # device id -> its shard
        fleets: dict[Scope, list[Window]] = defaultdict(list)
        profiles: dict[tuple[str, int], Mapping | None] = {}  # one look-up per model version and run
        kept = []
        for row in rows:
            key = (row.model_name, row.model_version)
            if key not in profiles:
                profiles[key] = self._profile(*key)
            if profiles[key] is not None:
                kept.append(row)
        windows = self._windows.read(session, kept, profiles)
        for row in kept:
            window = windows.get(row.id)
            if window is None:
                continue
            fleet = Scope("fleet", row.fleet, row.fleet, row.model_name, row.model_version)
            if mine is None or not mine.from_partials:
                fleets[fleet].append(window)
            if by_shard is not None or (mine is not None and mine.shards is not None):
                if row.device_id not in held:
                    held[row.device_id] = shard_of(row.device_id)
                shard = held[row.device_id]
                if mine is not None and mine.shards is not None and shard not in mine.shards:
                    continue
                if by_shard is not None:
                    by_shard[(row.fleet, row.model_name, row.model_version, shard)].append(window)
            device = Scope("device", row.device_id, row.fleet, row.model_name, row.model_version)
            scopes.setdefault(device, (profiles[(row.model_name, row.model_version)], []))[1].append(window)
        for scope, items in fleets.items():
            scopes[scope] = (profiles[(scope.model_name, scope.model_version)], items)
        return scopes

    def _profile(self, name: str, version: int) -> Mapping | None:
        """The reference profile, cached once found (a bundle version never changes); None is not cached,
        so a bundle registered later is picked up."""
        key = (name, version)
        if key in self._profiles:
            return self._profiles[key]
        try:
            profile = self._profile_for(name, version)
        except Exception:  # noqa: BLE001 - a broken bundle must not stop the other models
            log.exception("%s: reading the reference profile of %s v%s failed; skipping it", self.name, name, version)
            return None
        if profile is None:
            self._log_once(f"no reference profile for {name} v{version}: its telemetry is not checked for drift")
            return None
        self._profiles[key] = profile
        return profile

    def _evaluate_all(self, items: list[tuple[Scope, tuple[Mapping, list[Window]]]], now: float,
                      resolver: SettingsResolver) -> list[tuple[Scope, DriftResult]]:
        """The DriftResult of each scope that can be evaluated, in the order of `items`: the window tests of
        all scopes that share a profile and thresholds at once (cloud/drift_batch.py); a batch that fails
        is evaluated again one scope at a time, so that one bad scope stops no other."""
        merged: dict[int, WindowCounts] = {}
        batches: dict[tuple[int, DriftThresholds], list[int]] = defaultdict(list)
        for index, (scope, (profile, windows)) in enumerate(items):
            try:
                merged[index] = merge_windows(w.counts for w in windows)
                check_against_profile(merged[index], profile)
            except Exception as err:  # noqa: BLE001 - the scope-by-scope path logs it
                log.debug("%s %s: left to the one-scope path: %s", scope.scope, scope.scope_id, err)
                merged.pop(index, None)
                continue
            thresholds = self._settings(resolver, scope.fleet, scope.model_name).thresholds
            batches[(id(profile), thresholds)].append(index)
        reports: dict[int, dict] = {}
        for (_, thresholds), indexes in batches.items():
            try:
                batch = evaluate_many([merged[i] for i in indexes], items[indexes[0]][1][0], thresholds)
            except Exception:  # noqa: BLE001 - the one-scope path below finds and logs the culprit
                log.warning("%s: a batch of %d scopes failed; evaluating them one by one", self.name, len(indexes))
                continue
            reports.update(zip(indexes, batch, strict=True))
        evaluated = []
        for index, (scope, (profile, windows)) in enumerate(items):
            result = (self._result(scope, windows, merged[index], reports[index], now, resolver) if index in reports
                      else self._evaluate(scope, profile, windows, now, resolver))
            if result is not None:
                evaluated.append((scope, result))
        return evaluated

    def _evaluate(self, scope: Scope, profile: Mapping, windows: list[Window], now: float,
                  resolver: SettingsResolver) -> DriftResult | None:
        """One scope's DriftResult by cloud/drift.py's reference path, None (logged) if it cannot be had."""
        settings = self._settings(resolver, scope.fleet, scope.model_name)
        try:
            merged = merge_windows(w.counts for w in windows)
            report = evaluate(merged, profile, settings.thresholds)
        except CountsMismatch as err:  # windows were checked one by one; this is a second line of defence
            log.warning("%s %s (%s v%s): not evaluated: %s", scope.scope, scope.scope_id, scope.model_name,
                        scope.model_version, err)
            return None
        except Exception:  # noqa: BLE001 - one scope that cannot be evaluated must not stop the others
            log.exception("%s %s (%s v%s): evaluation failed", scope.scope, scope.scope_id, scope.model_name,
                          scope.model_version)
            return None
        return self._result(scope, windows, merged, report, now, resolver)

    def _result(self, scope: Scope, windows: list[Window], merged: WindowCounts, report: dict, now: float,
                resolver: SettingsResolver) -> DriftResult:
        settings = self._settings(resolver, scope.fleet, scope.model_name)
        report["windows"] = sum(w.windows for w in windows)
        report["lookback_seconds"] = settings.lookback_seconds
        if scope.period_end is not None:
            report["period"] = [scope.period_end - settings.lookback_seconds, scope.period_end]
        end = max(w.end for w in windows)
        return new_result(
            scope=scope.scope, scope_id=scope.scope_id, fleet=scope.fleet, model_name=scope.model_name,
            model_version=scope.model_version, window_start=min(w.start for w in windows), window_end=end,
            samples=merged.samples, verdict=report["verdict"], report=report, computed_at=now,
            late_by=None if scope.period_end is None else max(0.0, now - end),
        )

    def _feed_sequential(self, session: Session, evaluated: list[tuple[Scope, DriftResult]], scopes: Scopes,
                         now: float, top: int, resolver: SettingsResolver, summed: FleetSums | None = None) -> None:
        """The run's CUSUM feed (cloud/drift_cusum_partials.py's `feed_run`; the fleets `summed` from the
        shards' partials are fed from their shards' step sums)."""
        feed_run(self._cusums, session, evaluated, scopes, now=now, top=top, summed=summed,
                 settings_of=lambda fleet, name: self._settings(resolver, fleet, name))

    def _has_sequential(self, name: str, version: int) -> bool:
        """Whether the model version's profile has sequential signals (features with magnitude facts)."""
        if (name, version) not in self._sequential:
            profile = self._profile(name, version)
            if profile is None:
                return False
            self._sequential[(name, version)] = has_sequential(profile)
        return self._sequential[(name, version)]

    def _log_once(self, message: str, *, key: str | None = None) -> None:
        key = key or message
        if key in self._logged:
            return
        if len(self._logged) >= _LOG_ONCE_LIMIT:
            self._logged.clear()
        self._logged.add(key)
        log.warning("%s: %s", self.name, message)
