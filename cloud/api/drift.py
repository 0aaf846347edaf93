"""Reading what the drift monitor and the ingest wrote: drift results, alerts, ingest counters."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.api.deps import SessionDep
from edgefleet.cloud.api.devices import get_device
from edgefleet.cloud.db import Alert, DriftResult, IngestCounter
from edgefleet.core.topics import check_id

router = APIRouter(tags=["drift"])
Limit = Annotated[int, Query(ge=1, le=1000, description="Rows to return, newest first")]


class DriftOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    scope: str
    scope_id: str
    fleet: str
    model_name: str
    model_version: int
    window_start: float
    window_end: float
    samples: int
    verdict: str
    report: dict
    computed_at: float
    late_by: float | None = None  # a late evaluation of a past period: seconds after its last window ended


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    scope: str
    scope_id: str
    fleet: str
    model_name: str
    model_version: int
    kind: str
    message: str
    details: dict
    status: str
    opened_at: float
    closed_at: float | None
    late_by: float | None = None  # raised from late data: seconds from the drifting period's end to the alert


def _drift_rows(session: Session, scope: str, scope_id: str, limit: int) -> list[DriftResult]:
    query = (select(DriftResult).where(DriftResult.scope == scope, DriftResult.scope_id == scope_id)
             .order_by(DriftResult.computed_at.desc(), DriftResult.id.desc()).limit(limit))
    return list(session.scalars(query))


@router.get("/devices/{device_id}/drift", response_model=list[DriftOut])
def device_drift(device_id: str, session: SessionDep, limit: Limit = 20) -> list[DriftResult]:
    get_device(session, device_id)  # 404 for an unknown device
    return _drift_rows(session, "device", device_id, limit)


@router.get("/fleets/{fleet}/drift", response_model=list[DriftOut])
def fleet_drift(fleet: str, session: SessionDep, limit: Limit = 20) -> list[DriftResult]:
    return _drift_rows(session, "fleet", check_id(fleet, "fleet"), limit)


@router.get("/alerts", response_model=list[AlertOut])
def list_alerts(
    session: SessionDep,
    status: Literal["open", "closed", "all"] = "open",
    fleet: str | None = None,
    limit: Limit = 100,
) -> list[Alert]:
    query = select(Alert).order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)
    if status != "all":
        query = query.where(Alert.status == status)
    if fleet is not None:
        query = query.where(Alert.fleet == fleet)
    return list(session.scalars(query))


@router.get("/ingest", response_model=dict[str, int])
def ingest_counters(session: SessionDep) -> dict[str, int]:
    """How many telemetry messages the ingest accepted, dropped as duplicates or refused, by reason."""
    return {row.reason: row.count for row in session.scalars(select(IngestCounter).order_by(IngestCounter.reason))}
