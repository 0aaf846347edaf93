"""What a client needs to join: the MQTT broker devices connect to (the embedded one's bound port), and
the request size limits, so that a client can refuse an oversized upload before sending a byte."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edgefleet.cloud.api.deps import SettingsDep

router = APIRouter(tags=["info"])


@router.get("/info")
def info(request: Request, settings: SettingsDep) -> dict:
    broker = getattr(request.app.state, "broker_url", None) or settings.broker_url
    return {"mqtt_url": broker, "api": "v1",
            "limits": {"max_bundle_bytes": settings.max_bundle_bytes, "max_json_bytes": settings.max_json_bytes}}
