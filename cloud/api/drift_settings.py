"""The drift monitor's settings per fleet, per model, or per model in one fleet (cloud/drift_settings.py).

    GET    /drift/settings                                  the global values and every override
    GET    /drift/settings/effective?fleet=F&model=M        what the monitor uses for that fleet and model
    PUT    /drift/settings/fleets/{fleet}                   set an override (body: any of the six fields;
    PUT    /drift/settings/models/{model}                     a field left out inherits the less specific
    PUT    /drift/settings/fleets/{fleet}/models/{model}      value; PUT replaces the whole override)
    DELETE (the same three paths)                           remove it (404 if there is none)

A PUT is checked as the monitor would resolve it, on top of the global values: an out-of-range value
is a 422 naming the field (a fleet or model that is not an id: 400), and nothing is stored. The
monitor reads the table at the start of every run.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.api.deps import NotFoundError, SessionDep, SettingsDep
from edgefleet.cloud.db import DriftSettingsRecord, now
from edgefleet.cloud.drift_settings import FIELDS, SettingsResolver, record_values
from edgefleet.core.topics import check_id

router = APIRouter(prefix="/drift/settings", tags=["drift"])


class DriftSettingsIn(BaseModel):
    """One override; every field optional (None: inherit)."""

    model_config = ConfigDict(extra="forbid")

    min_samples: int | None = Field(default=None, ge=1, le=10**9)
    alpha: float | None = Field(default=None, gt=0, lt=1)
    psi_floor: float | None = Field(default=None, ge=0, le=1e6)
    noise_multiplier: float | None = Field(default=None, ge=0, le=1e6)
    lookback_seconds: float | None = Field(default=None, gt=0, le=366 * 86400)
    interval_seconds: float | None = Field(default=None, ge=0.05, le=86400)


class DriftSettingsOut(DriftSettingsIn):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    fleet: str | None  # None: any fleet
    model: str | None  # None: any model
    updated_at: float


class Effective(BaseModel):
    min_samples: int
    alpha: float
    psi_floor: float
    noise_multiplier: float
    lookback_seconds: float
    interval_seconds: float


def _out(row: DriftSettingsRecord) -> DriftSettingsOut:
    return DriftSettingsOut(fleet=row.fleet or None, model=row.model_name or None, updated_at=row.updated_at,
                            **record_values(row))


def _row(session: Session, fleet: str, model: str) -> DriftSettingsRecord | None:
    return session.scalars(select(DriftSettingsRecord).where(DriftSettingsRecord.fleet == fleet,
                                                              DriftSettingsRecord.model_name == model)).first()


@router.get("")
def list_settings(session: SessionDep, settings: SettingsDep) -> dict:
    """{"global": the values of `cloud up` / EDGEFLEET_DRIFT_*, "overrides": [every stored override]}."""
    rows = session.scalars(select(DriftSettingsRecord).order_by(DriftSettingsRecord.fleet,
                                                                DriftSettingsRecord.model_name)).all()
    return {"global": Effective(**settings.drift_monitor_settings().to_dict()).model_dump(),
            "overrides": [_out(row).model_dump() for row in rows]}


@router.get("/effective", response_model=Effective)
def effective(session: SessionDep, settings: SettingsDep, fleet: str = "", model: str = "") -> Effective:
    """What the monitor uses for a fleet and model (either may be left out: any)."""
    resolver = SettingsResolver.load(session, settings.drift_monitor_settings())
    return Effective(**resolver.for_scope(_key(fleet, "fleet"), _key(model, "model")).to_dict())


def _key(value: str, what: str) -> str:
    return check_id(value, what) if value else ""


def _put(session: Session, settings: SettingsDep, fleet: str, model: str, body: DriftSettingsIn) -> DriftSettingsOut:
    values = body.model_dump()
    settings.drift_monitor_settings().with_values(values)  # DriftSettingsError (400) before anything is stored
    row = _row(session, fleet, model) or DriftSettingsRecord(fleet=fleet, model_name=model)
    for name in FIELDS:
        setattr(row, name, values[name])
    row.updated_at = now()
    session.add(row)
    session.commit()
    return _out(row)


def _delete(session: Session, fleet: str, model: str) -> Response:
    row = _row(session, fleet, model)
    if row is None:
        where = " and ".join(f"{what} {name!r}" for what, name in (("fleet", fleet), ("model", model)) if name)
        raise NotFoundError(f"no drift settings for {where}")
    session.delete(row)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/fleets/{fleet}", response_model=DriftSettingsOut)
def put_fleet(fleet: str, body: DriftSettingsIn, session: SessionDep, settings: SettingsDep) -> DriftSettingsOut:
    return _put(session, settings, check_id(fleet, "fleet"), "", body)


@router.put("/models/{model}", response_model=DriftSettingsOut)
def put_model(model: str, body: DriftSettingsIn, session: SessionDep, settings: SettingsDep) -> DriftSettingsOut:
    return _put(session, settings, "", check_id(model, "model"), body)


@router.put("/fleets/{fleet}/models/{model}", response_model=DriftSettingsOut)
def put_fleet_model(fleet: str, model: str, body: DriftSettingsIn, session: SessionDep,
                    settings: SettingsDep) -> DriftSettingsOut:
    return _put(session, settings, check_id(fleet, "fleet"), check_id(model, "model"), body)


@router.delete("/fleets/{fleet}", status_code=status.HTTP_204_NO_CONTENT)
def delete_fleet(fleet: str, session: SessionDep) -> Response:
    return _delete(session, check_id(fleet, "fleet"), "")


@router.delete("/models/{model}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(model: str, session: SessionDep) -> Response:
    return _delete(session, "", check_id(model, "model"))


@router.delete("/fleets/{fleet}/models/{model}", status_code=status.HTTP_204_NO_CONTENT)
def delete_fleet_model(fleet: str, model: str, session: SessionDep) -> Response:
    return _delete(session, check_id(fleet, "fleet"), check_id(model, "model"))
