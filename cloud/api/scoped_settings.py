"""One API shape for every monitor's settings per fleet and model (drift, operations, performance), so the
three cannot drift apart:

    GET    <prefix>                                   {"global": the `cloud up` values, "overrides": [...]}
    GET    <prefix>/effective?fleet=F&model=M         what the monitor uses for that fleet and model
    PUT    <prefix>/fleets/{fleet}                    set an override (a field left out inherits the less
    PUT    <prefix>/models/{model}                      specific value; PUT replaces the whole override)
    PUT    <prefix>/fleets/{fleet}/models/{model}
    DELETE (the same three paths)                     remove it (404 if there is none)

A PUT is checked as the monitor would resolve it, on top of the global values, before anything is
stored: a value the body model refuses is a 422 naming the field, one the monitor's own check refuses a
400 with its message; a fleet or model that is not an id is a 400. Monitors read the table every run.

(No `from __future__ import annotations` here: FastAPI reads the route functions' annotations, and the
body model is a closure variable that a string annotation could not name.)
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.api.deps import NotFoundError, SessionDep, SettingsDep
from edgefleet.cloud.db import now
from edgefleet.cloud.scoped_settings import ScopedResolver
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.topics import check_id


@dataclass(frozen=True)
class SettingsKind:
    """How one monitor's settings are stored, validated and resolved."""

    what: str  # "drift settings": names them in messages
    record: type  # the table: fleet, model_name, updated_at, and the values
    body: type[BaseModel]  # the PUT body, every field optional (None: inherit)
    global_values: Callable[[CloudSettings], dict]
    resolver: Callable[[Session, CloudSettings], ScopedResolver]
    read: Callable[[Any], dict]  # the values a row stores
    write: Callable[[Any, dict], None]  # stores the body's values in a row
    check: Callable[[CloudSettings, dict], object]  # raises the monitor's EdgefleetError (400) if invalid


def _key(value: str, what: str) -> str:
    return check_id(value, what) if value else ""


def scoped_settings_router(prefix: str, kind: SettingsKind, tags: list[str]) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=tags)
    body_model = kind.body
    table = kind.record

    def row_of(session: Session, fleet: str, model: str) -> Any:
        return session.scalars(select(table).where(table.fleet == fleet, table.model_name == model)).first()

    def out(row: Any) -> dict:
        return {"fleet": row.fleet or None, "model": row.model_name or None, "updated_at": row.updated_at,
                **kind.read(row)}

    def put(session: Session, settings: CloudSettings, fleet: str, model: str, body: BaseModel) -> dict:
        values = body.model_dump()
        kind.check(settings, values)  # before anything is stored
        row = row_of(session, fleet, model) or table(fleet=fleet, model_name=model)
        kind.write(row, values)
        row.updated_at = now()
        session.add(row)
        session.commit()
        return out(row)

    def delete(session: Session, fleet: str, model: str) -> Response:
        row = row_of(session, fleet, model)
        if row is None:
            where = " and ".join(f"{what} {name!r}" for what, name in (("fleet", fleet), ("model", model)) if name)
            raise NotFoundError(f"no {kind.what} for {where}")
        session.delete(row)
        session.commit()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("")
    def list_settings(session: SessionDep, settings: SettingsDep) -> dict:
        rows = session.scalars(select(table).order_by(table.fleet, table.model_name)).all()
        return {"global": kind.global_values(settings), "overrides": [out(row) for row in rows]}

    @router.get("/effective")
    def effective(session: SessionDep, settings: SettingsDep, fleet: str = "", model: str = "") -> dict:
        """What the monitor uses for a fleet and model (either may be left out: any)."""
        return kind.resolver(session, settings).for_scope(_key(fleet, "fleet"), _key(model, "model")).to_dict()

    @router.put("/fleets/{fleet}")
    def put_fleet(fleet: str, body: body_model, session: SessionDep, settings: SettingsDep) -> dict:
        return put(session, settings, check_id(fleet, "fleet"), "", body)

    @router.put("/models/{model}")
    def put_model(model: str, body: body_model, session: SessionDep, settings: SettingsDep) -> dict:
        return put(session, settings, "", check_id(model, "model"), body)

    @router.put("/fleets/{fleet}/models/{model}")
    def put_fleet_model(fleet: str, model: str, body: body_model, session: SessionDep,
                        settings: SettingsDep) -> dict:
        return put(session, settings, check_id(fleet, "fleet"), check_id(model, "model"), body)

    @router.delete("/fleets/{fleet}", status_code=status.HTTP_204_NO_CONTENT)
    def delete_fleet(fleet: str, session: SessionDep) -> Response:
        return delete(session, check_id(fleet, "fleet"), "")

    @router.delete("/models/{model}", status_code=status.HTTP_204_NO_CONTENT)
    def delete_model(model: str, session: SessionDep) -> Response:
        return delete(session, "", check_id(model, "model"))

    @router.delete("/fleets/{fleet}/models/{model}", status_code=status.HTTP_204_NO_CONTENT)
    def delete_fleet_model(fleet: str, model: str, session: SessionDep) -> Response:
        return delete(session, check_id(fleet, "fleet"), check_id(model, "model"))

    return router
