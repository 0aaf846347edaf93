"""What a client needs to join: the MQTT broker devices connect to (the embedded one's bound port)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edgefleet.cloud.api.deps import SettingsDep

router = APIRouter(tags=["info"])


@router.get("/info")
def info(request: Request, settings: SettingsDep) -> dict:
    broker = getattr(request.app.state, "broker_url", None) or settings.broker_url
    return {"mqtt_url": broker, "api": "v1"}
