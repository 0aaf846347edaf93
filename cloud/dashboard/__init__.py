"""The fleet dashboard: server-rendered pages the cloud serves at `/`, beside its JSON API.

pages.py reads (fleet, device, alerts, rollouts), actions.py takes the forms, session.py signs people in
with an API token once and guards every POST (Origin and CSRF), queries.py holds the bounded queries,
charts.py draws inline SVG. No JavaScript: templates autoescape everything a device or bundle supplies,
and a Content-Security-Policy without script-src keeps any that slipped through from running.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from edgefleet.cloud.dashboard import actions, pages
from edgefleet.cloud.dashboard.session import DashboardRefusal, SessionStore, current


def mount_dashboard(app: FastAPI) -> None:
    """Adds the dashboard's routes, its session store and its error pages to the app."""
    app.state.dashboard_sessions = SessionStore()
    app.include_router(pages.router)
    app.include_router(actions.router)

    async def refused(request: Request, err: Exception) -> Response:
        assert isinstance(err, DashboardRefusal)
        return pages.render(request, "error.html", current(request), status=err.status, message=str(err))

    async def sign_in(request: Request, err: Exception) -> Response:
        assert isinstance(err, pages.SignInRequired)
        return RedirectResponse("/login" if err.path == "/" else f"/login?{urlencode({'next': err.path})}",
                                status_code=303)

    app.add_exception_handler(DashboardRefusal, refused)
    app.add_exception_handler(pages.SignInRequired, sign_in)

