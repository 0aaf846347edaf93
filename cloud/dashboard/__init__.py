"""The fleet dashboard: server-rendered pages the cloud serves at `/`, beside its JSON API.

pages.py reads (fleet, device with its backend, accuracy and OTA history, alerts, rollouts), registry.py
shows the bundles (model card, metrics, compression report and plot, compile targets, lineage), live.py
feeds the rollout page's live progress, actions.py takes the forms, session.py signs people in with an API token
once and guards every POST (Origin and CSRF), queries.py holds the bounded queries, charts.py draws
inline SVG. Templates autoescape everything a device or bundle supplies; the Content-Security-Policy
allows no script but on the rollout page, and there only the package's own file (static/rollout.js),
so markup that slipped through could not run.
"""

from __future__ import annotations

from collections import OrderedDict
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from edgefleet.cloud.dashboard import actions, live, pages, registry
from edgefleet.cloud.dashboard.session import DashboardRefusal, SessionStore, current


def mount_dashboard(app: FastAPI) -> None:
    """Adds the dashboard's routes, its session store and its error pages to the app."""
    app.state.dashboard_sessions = SessionStore()
    app.state.dashboard_plots = OrderedDict()  # registry.py: compression plots drawn, by archive sha256
    app.include_router(pages.router)
    app.include_router(registry.router)
    app.include_router(live.router)
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

