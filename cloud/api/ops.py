"""Operational limits and webhooks (issue 14).

    GET    /ops/settings                                   the global limits and every override
    GET    /ops/settings/effective?fleet=F&model=M         what the ops monitor uses for that fleet and model
    PUT    /ops/settings/fleets/{fleet}                    set an override (any of the limits; a field left
    PUT    /ops/settings/models/{model}                      out inherits the less specific value; PUT
    PUT    /ops/settings/fleets/{fleet}/models/{model}       replaces the whole override)
    DELETE (the same three paths)                          remove it (404 if there is none)

    POST   /webhooks            {"url": "https://...", "secret": optional,   -> the webhook and its secret (once)
                                 "events": ["alert.opened", "alert.resolved"] (optional: both),
                                 "kinds": ["data_drift", "latency", ...] (optional: every kind)}
    GET    /webhooks                                        every webhook, without secrets
    DELETE /webhooks/{id}
    GET    /webhooks/{id}/deliveries?limit=N                the delivery log, newest first

The settings share their shape with the drift and performance settings (cloud/api/scoped_settings.py);
the global limits are `edgefleet cloud up --ops-*`. A PUT is validated as the monitor would resolve it on
top of the global limits: a value out of range is a 400 naming it, and nothing is stored. A webhook URL
must be http(s), at most 2048 characters; an unknown event or alert kind is a 422 (a typo would
otherwise subscribe to nothing, silently).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.api.deps import NotFoundError, SessionDep
from edgefleet.cloud.api.scoped_settings import SettingsKind, scoped_settings_router
from edgefleet.cloud.drift import GROUPS
from edgefleet.cloud.drift_sequential import SEQUENTIAL
from edgefleet.cloud.ops_monitor import KINDS
from edgefleet.cloud.ops_settings import LimitsResolver
from edgefleet.cloud.ops_tables import OpsSettingsRecord, Webhook, WebhookDelivery
from edgefleet.cloud.performance_monitor import KIND as ESTIMATED_ACCURACY
from edgefleet.cloud.slice_alerts import KIND as PERFORMANCE_DROP
from edgefleet.cloud.webhooks import EVENTS, newest_alert_id

ALERT_KINDS = (*GROUPS, SEQUENTIAL, ESTIMATED_ACCURACY, PERFORMANCE_DROP, *KINDS)


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_p99_ms: float | None = None
    max_error_rate: float | None = None
    min_requests: int | None = None
    max_cpu_load: float | None = None
    max_memory_used: float | None = None
    min_disk_free_bytes: int | None = None
    max_temperature_c: float | None = None
    max_nonfinite_share: float | None = None
    max_out_of_range_share: float | None = None
    stuck_min_samples: int | None = None
    lookback_seconds: float | None = None
    interval_seconds: float | None = None


def _write_limits(row: OpsSettingsRecord, values: dict) -> None:
    row.limits = {key: value for key, value in values.items() if value is not None}


OPS = SettingsKind(
    what="operational limits", record=OpsSettingsRecord, body=LimitsIn,
    global_values=lambda settings: settings.ops_limits().to_dict(),
    resolver=lambda session, settings: LimitsResolver.load(session, settings.ops_limits()),
    read=lambda row: dict(row.limits or {}), write=_write_limits,
    check=lambda settings, values: settings.ops_limits().with_values(values))
router = APIRouter(tags=["operations"])
router.include_router(scoped_settings_router("/ops/settings", OPS, ["operations"]))


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    secret: str | None = Field(default=None, min_length=16, max_length=128)
    events: list[Literal["alert.opened", "alert.resolved"]] | None = Field(default=None, min_length=1, max_length=2)
    kinds: list[str] | None = Field(default=None, min_length=1, max_length=len(ALERT_KINDS))

    @field_validator("kinds")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - set(ALERT_KINDS))
        if unknown:
            raise ValueError(f"unknown alert kinds {unknown}; expected some of {list(ALERT_KINDS)}")
        return sorted(set(value)) if value else None

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
            raise ValueError("must be an http(s) URL without spaces")
        return value


@router.post("/webhooks", status_code=status.HTTP_201_CREATED)
def add_webhook(body: WebhookIn, session: SessionDep) -> dict:
    newest = newest_alert_id(session)
    hook = Webhook(url=body.url, secret=body.secret or secrets.token_hex(32), cursor=newest, resolved_cursor=newest,
                   events=sorted(set(body.events)) if body.events else None, kinds=body.kinds)
    session.add(hook)
    session.commit()
    return {**_hook_out(hook), "secret": hook.secret}


def _hook_out(hook: Webhook) -> dict:
    return {"id": hook.id, "url": hook.url, "events": hook.events or list(EVENTS), "kinds": hook.kinds,
            "created_at": hook.created_at}


@router.get("/webhooks")
def list_webhooks(session: SessionDep) -> list[dict]:
    return [_hook_out(h) for h in session.scalars(select(Webhook).order_by(Webhook.id))]


def _hook(session: Session, hook_id: int) -> Webhook:
    hook = session.get(Webhook, hook_id)
    if hook is None:
        raise NotFoundError(f"no webhook {hook_id}")
    return hook


@router.delete("/webhooks/{hook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(hook_id: int, session: SessionDep) -> Response:
    hook = _hook(session, hook_id)
    for delivery in session.scalars(select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id)):
        session.delete(delivery)
    session.delete(hook)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/webhooks/{hook_id}/deliveries")
def deliveries(hook_id: int, session: SessionDep,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
    _hook(session, hook_id)
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id)
                           .order_by(WebhookDelivery.id.desc()).limit(limit))
    return [{"id": d.id, "alert_id": d.alert_id, "event": d.event, "state": d.state, "attempts": d.attempts,
             "last_status": d.last_status, "last_error": d.last_error, "history": d.history,
             "delivered_at": d.delivered_at, "next_attempt_at": d.next_attempt_at} for d in rows]
