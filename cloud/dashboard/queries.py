"""What the dashboard's pages read: each a bounded query (LIMIT, indexed filters), never a whole table.

The fleet page asks for one page of devices (LIMIT/OFFSET over the devices' primary key order) and the
open alerts of just those devices; a device page reads its newest telemetry windows and drift results
(at most SERIES_LIMIT each) and turns them into series for the charts, and its OTA history: the newest
OTA_LIMIT deployments it was part of and the newest OTA_LIMIT status messages it sent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import (
    Alert,
    Deployment,
    DeploymentDevice,
    Device,
    DeviceStatus,
    DriftResult,
    TelemetryRecord,
)
from edgefleet.cloud.performance import performance
from edgefleet.core.telemetry import LATENCY_EDGES_MS

PAGE_SIZE = 50
SERIES_LIMIT = 120  # telemetry windows and drift results on a device page
MAX_SIGNALS = 8  # drift lines on one chart: the signals that moved most
OTA_LIMIT = 50  # deployments and status events on a device page
ACCURACY_POINTS = 60  # buckets on the accuracy chart


@dataclass(frozen=True)
class FleetPage:
    devices: list[Device]
    open_alerts: dict[str, int]  # device id -> open alerts
    per_minute: dict[str, float]  # device id -> requests per minute in its newest telemetry window
    total: int
    page: int
    pages: int
    fleets: list[str]


def fleet_page(session: Session, *, search: str = "", fleet: str = "", online: str = "", page: int = 1,
               size: int = PAGE_SIZE) -> FleetPage:
    query = select(Device)
    if search:
        # autoescape: '%' and '_' in the search are letters, not wildcards (ids may hold '_')
        query = query.where(or_(Device.id.contains(search, autoescape=True),
                                Device.model_name.contains(search, autoescape=True)))
    if fleet:
        query = query.where(Device.fleet == fleet)
    if online in ("yes", "no"):
        query = query.where(Device.online.is_(online == "yes"))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    pages = max(1, math.ceil(total / size))
    page = min(max(1, page), pages)
    devices = list(session.scalars(query.order_by(Device.fleet, Device.id).limit(size).offset((page - 1) * size)))
    ids = [d.id for d in devices]
    open_alerts = dict(session.execute(
        select(Alert.scope_id, func.count()).where(Alert.status == "open", Alert.scope == "device",
                                                   Alert.scope_id.in_(ids)).group_by(Alert.scope_id)).all())
    newest = select(func.max(TelemetryRecord.id)).where(TelemetryRecord.device_id.in_(ids)).group_by(
        TelemetryRecord.device_id)
    per_minute = {device: requests * 60.0 / max(end - start, 1e-3) for device, requests, start, end in session.execute(
        select(TelemetryRecord.device_id, TelemetryRecord.requests, TelemetryRecord.window_start,
               TelemetryRecord.window_end).where(TelemetryRecord.id.in_(newest)))}
    fleets = list(session.scalars(select(Device.fleet).distinct().order_by(Device.fleet).limit(200)))
    return FleetPage(devices, open_alerts, per_minute, total, page, pages, fleets)


def histogram_quantile(counts: list[int], q: float) -> float | None:
    """The upper edge (ms) of the latency bin holding quantile q; None for no requests. A value beyond the
    last edge reports that edge (the histogram cannot say more)."""
    finite = counts[: len(LATENCY_EDGES_MS) + 1]  # the last column counts NaN
    total = sum(finite)
    if total == 0:
        return None
    target, seen = q * total, 0
    for index, count in enumerate(finite):
        seen += count
        if seen >= target:
            return LATENCY_EDGES_MS[min(index, len(LATENCY_EDGES_MS) - 1)]
    return LATENCY_EDGES_MS[-1]


@dataclass(frozen=True)
class TelemetryPoint:
    at: float  # the window's end
    requests: int
    errors: int
    p50: float | None
    p99: float | None


def telemetry_series(session: Session, device_id: str) -> list[TelemetryPoint]:
    rows = session.execute(
        select(TelemetryRecord.window_end, TelemetryRecord.requests, TelemetryRecord.errors, TelemetryRecord.payload)
        .where(TelemetryRecord.device_id == device_id)
        .order_by(TelemetryRecord.window_start.desc()).limit(SERIES_LIMIT)).all()
    points = []
    for end, requests, errors, payload in reversed(rows):
        latency = json.loads(payload).get("latency_ms") or []
        points.append(TelemetryPoint(end, requests, errors, histogram_quantile(latency, 0.5),
                                     histogram_quantile(latency, 0.99)))
    return points


@dataclass(frozen=True)
class DriftSeries:
    times: list[float]  # each result's computed_at
    signals: dict[str, list[float | None]]  # signal -> PSI per result (None where the signal was absent)
    threshold: float | None  # the PSI threshold
    verdicts: list[str]


def drift_series(session: Session, device_id: str) -> DriftSeries:
    results = list(reversed(session.scalars(
        select(DriftResult).where(DriftResult.scope == "device", DriftResult.scope_id == device_id)
        .order_by(DriftResult.computed_at.desc(), DriftResult.id.desc()).limit(SERIES_LIMIT)).all()))
    signals: dict[str, list[float | None]] = {}
    threshold = None
    for index, result in enumerate(results):
        for group in ("data_drift", "prediction_drift"):
            for name, stats in ((result.report.get(group) or {}).get("signals") or {}).items():
                psi = stats.get("psi")
                line = signals.setdefault(name, [None] * len(results))
                line[index] = psi if isinstance(psi, int | float) and math.isfinite(psi) else None
                if threshold is None and isinstance(stats.get("psi_threshold"), int | float):
                    threshold = float(stats["psi_threshold"])
    top = sorted(signals, key=lambda name: -max((v for v in signals[name] if v is not None), default=0.0))
    kept = {name: signals[name] for name in sorted(top[:MAX_SIGNALS])}
    return DriftSeries([r.computed_at for r in results], kept, threshold, [r.verdict for r in results])


def device_alerts(session: Session, device_id: str, limit: int = 50) -> list[Alert]:
    return list(session.scalars(
        select(Alert).where(Alert.scope == "device", Alert.scope_id == device_id)
        .order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)))


def alerts(session: Session, status: str, limit: int = 200) -> list[Alert]:
    query = select(Alert).order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)
    if status in ("open", "closed"):
        query = query.where(Alert.status == status)
    return list(session.scalars(query))


def deployments(session: Session, limit: int = 50) -> list[Deployment]:
    return list(session.scalars(select(Deployment).order_by(Deployment.created_at.desc(), Deployment.id).limit(limit)))


@dataclass(frozen=True)
class OtaHistory:
    deployments: list[tuple[Deployment, DeploymentDevice]]  # newest first: the plan and this device's row in it
    events: list[DeviceStatus]  # newest first: each install step the device reported


def ota_history(session: Session, device_id: str, limit: int = OTA_LIMIT) -> OtaHistory:
    deployments = [tuple(row) for row in session.execute(
        select(Deployment, DeploymentDevice).join(DeploymentDevice, DeploymentDevice.deployment_id == Deployment.id)
        .where(DeploymentDevice.device_id == device_id)
        .order_by(Deployment.created_at.desc(), Deployment.id).limit(limit))]
    events = list(session.scalars(select(DeviceStatus).where(DeviceStatus.device_id == device_id)
                                  .order_by(DeviceStatus.received_at.desc(), DeviceStatus.id.desc()).limit(limit)))
    return OtaHistory(deployments, events)


@dataclass(frozen=True)
class AccuracySeries:
    title: str
    times: list[float]  # each bucket's end
    series: dict[str, list[float | None]]
    reference: float | None  # the calibration data's measured accuracy of the newest model version


def accuracy_series(session: Session, device_id: str, since: float,
                    profile_for: Callable[[str, int], Mapping | None]) -> AccuracySeries:
    """The device's performance (cloud/performance.py) since `since` (the oldest telemetry window its page
    shows, so it reads as many windows as the latency chart), in at most ACCURACY_POINTS buckets: accuracy
    measured from the labels that arrived and estimated without them, or MAE for a regression model."""
    span = max(0.0, time.time() - since)
    found = performance(session, profile_for, device=device_id, since=since,
                        bucket_seconds=max(10.0, math.ceil(span / ACCURACY_POINTS)))
    points = found["points"]
    times = [p["end"] for p in points]
    if any("mae" in p for p in points):
        return AccuracySeries("Error from labels (MAE, RMSE)", times,
                              {"MAE": [p.get("mae") for p in points], "RMSE": [p.get("rmse") for p in points]}, None)
    references = [m["reference_accuracy"] for m in found["models"] if m["reference_accuracy"] is not None]
    return AccuracySeries("Accuracy: measured from labels, estimated without them", times,
                          {"measured": [p.get("accuracy") for p in points],
                           "estimated": [p.get("estimated_accuracy") for p in points]},
                          references[-1] if references else None)
