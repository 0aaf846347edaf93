"""Drift alerts from a monitor pass's results (cloud/drift_monitor.py, steps 5 and 6 of its docstring).

    update_alerts(session, results, now, close_after=3)

For each result and each kind it reports ("data_drift", "prediction_drift", "sequential_drift"): a
drift verdict opens an alert when that scope, kind and model version has none open (a late result opens
one marked late, with the delay); an on-time "ok" closes the open one once the last `close_after`
on-time results of the scope, all written after the one that opened it, were ok. Late results never
close an alert. The open alerts of the pass's scopes are read in one query.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import Alert, DriftResult
from edgefleet.cloud.drift import DRIFT, GROUPS, cleared, summary
from edgefleet.cloud.drift_sequential import SEQUENTIAL, evidence_summary
from edgefleet.cloud.ops_monitor import quality_evidence

log = logging.getLogger("edgefleet.cloud.drift_monitor")  # the monitor's log, where operators look


def update_alerts(session: Session, results: list[DriftResult], now: float, close_after: int) -> None:
    """Opens and closes the alerts of one pass's results (module docstring); the caller commits."""
    alerts = _open_alerts(session, results)
    for result in results:
        _update(session, result, now, alerts, close_after)


def _open_alerts(session: Session, results: list[DriftResult]) -> dict[tuple, Alert]:
    """The open alerts of the run's scopes, read once (a query per scope and kind was a round trip per
    device), keyed (scope, scope_id, kind, model name, version); the oldest when there are two."""
    wanted = {(r.scope, r.scope_id) for r in results}
    alerts: dict[tuple, Alert] = {}
    for alert in session.scalars(select(Alert).where(Alert.status == "open").order_by(Alert.id)):
        key = (alert.scope, alert.scope_id, alert.kind, alert.model_name, alert.model_version)
        if (alert.scope, alert.scope_id) in wanted:
            alerts.setdefault(key, alert)
    return alerts


def _update(session: Session, result: DriftResult, now: float, open_alerts: dict[tuple, Alert],
            close_after: int) -> None:
    for kind in (*GROUPS, SEQUENTIAL):
        if kind not in result.report:
            continue  # no sequential section: a late result, or a profile without magnitude facts
        verdict = result.report[kind]["verdict"]
        late_by = result.report[kind].get("late_by") if kind == SEQUENTIAL else result.late_by
        key = (result.scope, result.scope_id, kind, result.model_name, result.model_version)
        alert = open_alerts.get(key)
        if verdict == DRIFT and alert is None:
            open_alerts[key] = _open(session, result, kind, now, late_by)
        elif result.late_by is not None:
            continue  # the past cannot close an alert: only on-time evaluations do
        elif (cleared(result.report[kind]) and alert is not None
              and _ok_streak(session, result, kind, alert, close_after)):
            alert.status, alert.closed_at = "closed", now
            del open_alerts[key]
            log.info("alert %s closed: %s %s (%s v%s) %s ok on %d consecutive runs", alert.id, result.scope,
                     result.scope_id, result.model_name, result.model_version, kind, close_after)


def _open(session: Session, result: DriftResult, kind: str, now: float, late_by: float | None) -> Alert:
    what = kind.replace("_", " ")
    late = "" if late_by is None else f"late ({late_by:.0f} s after its data, which arrived after the lookback): "
    message = (f"{late}{what} on {result.scope} {result.scope_id} ({result.model_name} v{result.model_version}, "
               f"{result.samples} samples): "
               f"{evidence_summary(result.report[kind]) if kind == SEQUENTIAL else summary(result.report, kind)}")
    details = {"drift_result_id": result.id, "window_start": result.window_start,
               "window_end": result.window_end, "samples": result.samples, **result.report[kind]}
    evidence = quality_evidence(session, result.scope, result.scope_id, result.model_name, result.model_version)
    if evidence:  # a dead sensor or NaNs behind the drift: the pipeline, maybe not the world
        details["data_quality"] = evidence
    alert = Alert(scope=result.scope, scope_id=result.scope_id, fleet=result.fleet,
                  model_name=result.model_name, model_version=result.model_version, kind=kind,
                  message=message, details=details, status="open", opened_at=now, late_by=late_by)
    session.add(alert)
    log.warning("alert opened: %s", message)
    return alert


def _ok_streak(session: Session, result: DriftResult, kind: str, alert: Alert, close_after: int) -> bool:
    """True if the last `close_after` on-time results of this scope (this run's included) were all ok for
    kind, all written after the result that opened the alert (a late alert's run wrote its on-time
    results first: they do not count)."""
    recent = session.scalars(
        select(DriftResult)
        .where(DriftResult.scope == result.scope, DriftResult.scope_id == result.scope_id,
               DriftResult.model_name == result.model_name, DriftResult.model_version == result.model_version,
               DriftResult.late_by.is_(None), DriftResult.id > (alert.details.get("drift_result_id") or 0))
        .order_by(DriftResult.id.desc())
        .limit(close_after)
    ).all()
    return len(recent) == close_after and all(cleared(r.report[kind]) for r in recent)
