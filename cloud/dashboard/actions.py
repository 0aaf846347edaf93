"""The dashboard's forms (POST): sign in, sign out, acknowledge an alert, approve or abort a rollout.

Each checks Origin and the CSRF token first (session.checked_form), then the role: acknowledge, approve
and abort need an admin session (403 for a viewer, whose session only reads). Approve and abort call
the API's own handlers, so the dashboard and `/api/v1` change a deployment the same way. Every action
answers with a 303 to a page.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import update

from edgefleet.cloud.api.deployments import abort_deployment, approve_deployment
from edgefleet.cloud.api.deps import ConflictError, SessionDep
from edgefleet.cloud.auth import token_identity
from edgefleet.cloud.dashboard.pages import SessionAuth
from edgefleet.cloud.dashboard.session import (
    COOKIE,
    LOGIN_COOKIE,
    DashboardRefusal,
    Session,
    checked_form,
    cookie_options,
    local_path,
    store,
)
from edgefleet.cloud.db import Alert

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


@router.post("/login")
async def login(request: Request) -> RedirectResponse:
    form = await checked_form(request, request.cookies.get(LOGIN_COOKIE))
    identity = token_identity(request.app.state.sessions, form.get("token", "").strip())
    if identity is None:
        log.info("dashboard sign-in refused: not a valid token")
        return _redirect("/login?m=bad-token")
    name, role = identity
    response = _redirect(local_path(form.get("next", "/")))
    response.set_cookie(COOKIE, store(request).open(name, role), **cookie_options(request))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    log.info("dashboard: %s token %r signed in", role, name)
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionAuth) -> RedirectResponse:
    await checked_form(request, session.csrf)
    store(request).close(request.cookies.get(COOKIE))
    response = _redirect("/login?m=signed-out")
    response.delete_cookie(COOKIE, path="/")
    return response


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(request: Request, alert_id: int, session: SessionAuth, db: SessionDep) -> RedirectResponse:
    await _admin_post(request, session)
    done = db.execute(update(Alert).where(Alert.id == alert_id, Alert.acknowledged_at.is_(None))
                      .values(acknowledged_at=time.time(), acknowledged_by=session.name)).rowcount
    db.commit()
    return _redirect(f"/alerts?m={'acknowledged' if done else 'conflict'}")


async def _admin_post(request: Request, session: Session) -> None:
    await checked_form(request, session.csrf)
    if not session.admin:
        raise DashboardRefusal(f"token {session.name!r} is a viewer (read-only): acknowledging, approving and "
                               f"aborting need an admin token")


@router.post("/rollouts/{deployment_id}/approve")
async def approve(request: Request, deployment_id: str, session: SessionAuth, db: SessionDep) -> RedirectResponse:
    await _admin_post(request, session)
    try:
        approve_deployment(deployment_id, db, session.name)
    except ConflictError:
        return _redirect("/rollouts?m=conflict")
    return _redirect("/rollouts?m=approved")


@router.post("/rollouts/{deployment_id}/abort")
async def abort(request: Request, deployment_id: str, session: SessionAuth, db: SessionDep) -> RedirectResponse:
    await _admin_post(request, session)
    try:
        abort_deployment(deployment_id, db, session.name, None)
    except ConflictError:
        return _redirect("/rollouts?m=conflict")
    return _redirect("/rollouts?m=aborted")
