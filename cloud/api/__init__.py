"""The cloud's HTTP API: one router per resource, every /api/v1 route behind the admin token except the
bundle download, which also takes a signed URL and authorises each request itself, and the enrollment of
a device, which takes an enrollment token."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from edgefleet.cloud.api import (
    bundles,
    captures,
    datasets,
    deployments,
    devices,
    drift,
    drift_settings,
    enrollment,
    feedback,
    health,
    info,
    loop_runs,
    ops,
    performance,
    performance_settings,
    windows,
)
from edgefleet.cloud.auth import require_admin

API_PREFIX = "/api/v1"


def api_routers() -> list[APIRouter]:
    """The routers create_app mounts: /healthz without auth, everything under /api/v1 with it (the download
    checks the admin token or a signed URL in its own dependency)."""
    v1 = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_admin)])
    v1.include_router(captures.router)
    v1.include_router(datasets.router)
    v1.include_router(loop_runs.router)
    for module in (devices, enrollment, bundles, deployments, drift, drift_settings, performance, feedback, ops,
                   windows, info):
        v1.include_router(module.router)
    v1.include_router(performance_settings.router)
    signed = APIRouter(prefix=API_PREFIX)
    signed.include_router(bundles.download_router)
    signed.include_router(captures.device_router)  # behind the device's own credentials (cloud/device_auth.py)
    signed.include_router(enrollment.enroll_router)  # behind an enrollment token, checked by its route
    return [health.router, v1, signed]
