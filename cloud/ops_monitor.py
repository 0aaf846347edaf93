"""The operations monitor: p99 latency, error rate, device health and data quality of every device, against
its fleet's and model's limits (cloud/ops_settings.py), as alerts beside the drift monitor's.

Every interval (`run_once`), per (device, model name, version) with telemetry that ended in the lookback:

    latency       p99 of the merged latency histogram (the upper edge of the bin holding the 99th
                  percentile: a bound, never an underestimate) above max_p99_ms, over >= min_requests
    error_rate    errors / requests above max_error_rate, over >= min_requests
    device_health the newest window's health: load, memory, free disk or temperature beyond its limit
    data_quality  per input feature: non-finite share, share outside the reference range (a profile with
                  a range only), or stuck: the newest windows in a row whose every sample equals the last
                  value of the window before, holding >= stuck_min_samples samples, on a feature the
                  reference saw vary

An alert (table alerts, scope "device") opens when its check fails and none of its kind is open for that
device and model version, and closes on the first run whose check passes with enough data to judge. Data
quality alerts say "data quality", never "drift": a dead sensor or a NaN from a broken pre-processing step
is the pipeline, not the world. With `shards` (role `monitor` on PostgreSQL, cloud/leases.py) a run judges
only the devices of the shards this worker holds. In the background loop a (fleet, model)'s devices are
judged when its own `interval_seconds` has passed since they were last judged (or, never judged, since
the loop's first run), the loop ticking at the shortest interval in use, read after each run: a shorter
interval set while the loop waits takes effect after that wait. `run_once` called directly judges all. The drift
monitor lists the open ones as evidence in its own alerts (`quality_evidence`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.cloud.db import Alert, TelemetryRecord
from edgefleet.cloud.leases import ShardLeases
from edgefleet.cloud.ops_settings import LimitsResolver, OpsLimits, OpsSettingsError
from edgefleet.cloud.periodic import PeriodicWorker
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryError, TelemetryWindow, parse_telemetry

log = logging.getLogger(__name__)
KINDS = ("latency", "error_rate", "device_health", "data_quality")
ProfileFor = Callable[[str, int], "Mapping | None"]


def p99_ms(latency: tuple[int, ...] | np.ndarray) -> float | None:
    """The upper edge of the bin holding the 99th percentile (inf past the last edge); None: no requests."""
    counts = np.asarray(latency[:len(LATENCY_EDGES_MS) + 1], np.int64)
    total = int(counts.sum())
    if not total:
        return None
    index = int(np.searchsorted(np.cumsum(counts), math.ceil(0.99 * total)))
    return float(LATENCY_EDGES_MS[index]) if index < len(LATENCY_EDGES_MS) else math.inf


def quality_issues(windows: list[TelemetryWindow], profile: Mapping | None, limits: OpsLimits) -> list[dict]:
    """The data-quality problems of a device's windows (oldest first), one entry per feature and problem."""
    features = {f["input"]: f for f in (profile or {}).get("features", [])}
    issues = []
    for name in dict.fromkeys(q.input for w in windows for q in w.quality):
        entry = features.get(name, {})
        names = entry.get("names") or []
        with_input = [(w.samples, np.asarray(next(q.counts for q in w.quality if q.input == name), np.int64))
                      for w in windows if any(q.input == name for q in w.quality)]
        samples = sum(n for n, _ in with_input)
        if not samples or len({c.shape for _, c in with_input}) != 1:
            continue
        total = sum(c for _, c in with_input)
        low, high = entry.get("min"), entry.get("max")
        for f in range(total.shape[0]):
            label = names[f] if f < len(names) else f"{name}[{f}]"
            nonfinite, outside = total[f, 0] / samples, (total[f, 1] + total[f, 2]) / samples
            if nonfinite > limits.max_nonfinite_share:
                issues.append({"input": name, "feature": label, "problem": "nonfinite", "share": round(nonfinite, 4)})
            if low is not None and high is not None and outside > limits.max_out_of_range_share:
                issues.append({"input": name, "feature": label, "problem": "out_of_range", "share": round(outside, 4),
                               "below": int(total[f, 1]), "above": int(total[f, 2])})
            varies = low is None or high is None or f >= len(low) or low[f] is None or low[f] != high[f]
            stuck = 0
            for n, counts in reversed(with_input):  # the newest windows in a row that never moved
                if not n:
                    continue  # no traffic: says nothing either way
                if counts[f, 3] != n:
                    break
                stuck += n
            if varies and stuck >= limits.stuck_min_samples:
                issues.append({"input": name, "feature": label, "problem": "stuck", "samples": stuck})
    return issues


def health_problems(window: TelemetryWindow | None, limits: OpsLimits) -> list[str] | None:
    """What is wrong with the newest health report (None: no report to judge)."""
    health = window.health if window is not None else None
    if health is None:
        return None
    checks = [("cpu_load", health.cpu_load, limits.max_cpu_load, ">"),
              ("memory_used", health.memory_used, limits.max_memory_used, ">"),
              ("temperature_c", health.temperature_c, limits.max_temperature_c, ">"),
              ("disk_free_bytes", health.disk_free_bytes, limits.min_disk_free_bytes, "<")]
    return [f"{name} {value:g} {op} limit {limit:g}" for name, value, limit, op in checks
            if value is not None and limit is not None and (value > limit if op == ">" else value < limit)]


def quality_evidence(session: Session, scope: str, scope_id: str, model_name: str, model_version: int) -> list[dict]:
    """The open data-quality alerts behind a drift alert of this scope: the device's own, or for a fleet
    every device's of that fleet and model version."""
    query = select(Alert).where(Alert.status == "open", Alert.kind == "data_quality", Alert.model_name == model_name,
                                Alert.model_version == model_version)
    query = query.where(Alert.scope_id == scope_id) if scope == "device" else query.where(Alert.fleet == scope_id)
    return [{"alert_id": a.id, "device": a.scope_id, "issues": a.details.get("issues", [])}
            for a in session.scalars(query.limit(50))]


class OpsMonitor(PeriodicWorker):
    name = "ops-monitor"

    def __init__(self, sessions: sessionmaker, profile_for: ProfileFor, limits: OpsLimits = OpsLimits(),  # noqa: B008
                 interval_seconds: float | None = None, clock: Callable[[], float] = time.time, *,
                 shards: ShardLeases | None = None) -> None:
        """interval_seconds: the global interval, in place of limits.interval_seconds."""
        if interval_seconds is not None:
            if not interval_seconds > 0:
                raise ValueError("interval_seconds must be positive")
            limits = limits.with_values({"interval_seconds": interval_seconds})
        self._sessions, self._profile_for, self.base, self._clock = sessions, profile_for, limits, clock
        self._shards = shards
        self._tick = limits.interval_seconds
        self._last_run: dict[tuple[str, str], float] = {}  # (fleet, model) -> when judged (monotonic)
        self._first_run: float | None = None  # the loop's first run (monotonic)
        self._profiles: dict[tuple[str, int], Mapping | None] = {}
        super().__init__()

    @property
    def interval_seconds(self) -> float:
        """The loop's tick: the shortest interval in use at the last run."""
        return self._tick

    def run_scheduled(self) -> list[Alert]:
        if self._first_run is None:
            self._first_run = time.monotonic()
            return self.run_once()
        return self.run_once(due_only=True)

    def run_once(self, now: float | None = None, *, due_only: bool = False) -> list[Alert]:
        """Judges every device with telemetry in its lookback (`due_only`: of the (fleet, model)s whose
        interval has passed since they were last judged); returns the alerts opened."""
        now = self._clock() if now is None else float(now)
        opened = []
        with self._sessions() as session:
            resolver = LimitsResolver.load(session, self.base)
            self._tick = resolver.shortest_interval()
            started, due = time.monotonic(), {}
            query = (select(TelemetryRecord).where(
                TelemetryRecord.window_end > now - resolver.longest_lookback(), TelemetryRecord.window_end <= now)
                .order_by(TelemetryRecord.window_end, TelemetryRecord.id))
            if self._shards is not None:
                where = self._shards.device_filter(TelemetryRecord.device_id, self._shards.held_shards())
                query = query if where is None else query.where(where)
            rows = session.scalars(query).all()
            groups: dict[tuple[str, str, str, int], list[TelemetryWindow]] = defaultdict(list)
            for row in rows:
                try:
                    limits = resolver.for_scope(row.fleet, row.model_name)
                except OpsSettingsError as err:
                    log.warning("%s: limits of %s/%s ignored: %s", self.name, row.fleet, row.model_name, err)
                    limits = self.base
                if row.window_end <= now - limits.lookback_seconds:
                    continue
                key = (row.fleet, row.model_name)
                if key not in due:
                    last = self._last_run.get(key, self._first_run)
                    due[key] = not due_only or last is None or started - last >= limits.interval_seconds - 1e-3
                if not due[key]:
                    continue
                try:
                    window = parse_telemetry(row.payload, max_bytes=len(row.payload))
                except TelemetryError:
                    continue
                groups[(row.device_id, row.fleet, row.model_name, row.model_version)].append(window)
            # the open alerts of this run's devices, read once (one query per device and kind took most of a
            # pass over 10,000 devices)
            open_alerts = {(a.scope_id, a.kind, a.model_name, a.model_version): a for a in session.scalars(
                select(Alert).where(Alert.status == "open", Alert.scope == "device", Alert.kind.in_(KINDS)))}
            for (device, fleet, model, version), windows in groups.items():
                try:
                    limits = resolver.for_scope(fleet, model)
                except OpsSettingsError:
                    limits = self.base
                verdicts = self._judge(windows, self._profile(model, version), limits)
                for kind, (failed, message, details) in verdicts.items():
                    alert = self._apply(session, open_alerts.get((device, kind, model, version)), device, fleet,
                                        model, version, kind, failed, message, details, now)
                    if alert is not None:
                        opened.append(alert)
            session.commit()
        self._last_run.update({key: started for key, judged in due.items() if judged})
        return opened

    def _judge(self, windows: list[TelemetryWindow], profile: Mapping | None,
               limits: OpsLimits) -> dict[str, tuple[bool | None, str, dict]]:
        """kind -> (failed: True/False, None when there is too little to judge; message; details)."""
        requests, errors = sum(w.requests for w in windows), sum(w.errors for w in windows)
        latency = p99_ms(np.sum([w.latency_ms for w in windows], axis=0))
        enough = requests >= limits.min_requests
        rate = errors / requests if requests else 0.0
        problems = health_problems(max(windows, key=lambda w: w.end), limits)
        issues = quality_issues(windows, profile, limits)
        judged_quality = any(w.quality for w in windows)
        return {
            "latency": (latency > limits.max_p99_ms if enough and latency is not None else None,
                        f"p99 latency {'unknown' if latency is None else format(latency, 'g')} ms over the limit "
                        f"{limits.max_p99_ms:g} ms ({requests} requests)",
                        {"p99_ms": latency if latency is None or math.isfinite(latency) else None,
                         "requests": requests, "limit_ms": limits.max_p99_ms}),
            "error_rate": (rate > limits.max_error_rate if enough else None,
                           f"error rate {rate:.1%} over the limit {limits.max_error_rate:.1%} ({errors} of "
                           f"{requests} requests)", {"errors": errors, "requests": requests, "rate": rate,
                                                     "limit": limits.max_error_rate}),
            "device_health": (None if problems is None else bool(problems),
                              "device health: " + "; ".join(problems or []), {"problems": problems or []}),
            "data_quality": (bool(issues) if judged_quality else None,
                             "data quality: " + "; ".join(_issue_text(i) for i in issues[:8]),
                             {"issues": issues}),
        }

    def _apply(self, session: Session, alert: Alert | None, device: str, fleet: str, model: str, version: int,
               kind: str, failed: bool | None, message: str, details: dict, now: float) -> Alert | None:
        """Opens an alert of `kind` for the device if it failed and `alert` (its open one) is None, closes
        `alert` if it passed."""
        if failed is None:
            return None
        if failed and alert is None:
            alert = Alert(scope="device", scope_id=device, fleet=fleet, model_name=model, model_version=version,
                          kind=kind, message=f"{message} on device {device} ({model} v{version})", details=details,
                          status="open", opened_at=now)
            session.add(alert)
            log.warning("alert opened: %s", alert.message)
            return alert
        if not failed and alert is not None:
            alert.status, alert.closed_at = "closed", now
        return None

    def _profile(self, name: str, version: int) -> Mapping | None:
        key = (name, version)
        if self._profiles.get(key) is None:
            try:
                self._profiles[key] = self._profile_for(name, version)
            except Exception:  # noqa: BLE001 - a broken bundle: quality is judged without its ranges
                log.exception("%s: reading the reference profile of %s v%s failed", self.name, name, version)
                return None
        return self._profiles[key]


def _issue_text(issue: dict) -> str:
    if issue["problem"] == "stuck":
        return f"{issue['feature']} stuck (constant over {issue['samples']} samples)"
    if issue["problem"] == "nonfinite":
        return f"{issue['feature']} {issue['share']:.1%} non-finite"
    return f"{issue['feature']} {issue['share']:.1%} outside the reference range"
