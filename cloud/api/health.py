"""Liveness for load balancers and scripts: no auth, answers whether the database does."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from edgefleet.cloud.api.deps import SessionDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(session: SessionDep) -> JSONResponse:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as err:
        log.warning("health check: database unavailable: %s", err)
        return JSONResponse({"status": "degraded", "db": False}, status_code=503)
    return JSONResponse({"status": "ok", "db": True})
