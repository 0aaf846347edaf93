"""The dashboard's pages (GET): fleet, device, alerts, rollouts, and the sign-in form (the registry's are in
registry.py, live rollout progress in live.py).

Every page but the sign-in form needs a session (`SessionAuth`); without one a GET is redirected to
/login. Pages only read (edgefleet.cloud.dashboard.queries); forms post to edgefleet.cloud.dashboard.actions.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from edgefleet.cloud.api.bundles import reference_profile
from edgefleet.cloud.api.deployments import deployment_view, get_deployment
from edgefleet.cloud.api.deps import NotFoundError, SessionDep, SessionsDep, SettingsDep
from edgefleet.cloud.api.devices import get_device
from edgefleet.cloud.dashboard import charts, queries
from edgefleet.cloud.dashboard.session import (
    LOGIN_COOKIE,
    DashboardRefusal,
    Session,
    cookie_options,
    current,
    local_path,
)
from edgefleet.cloud.rollout_plan import OPEN_STATES
from edgefleet.core.ota import FINAL_STATES
from edgefleet.core.presence import RUNTIME_TEXTS

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                                   autoescape=True, undefined=jinja2.StrictUndefined))
templates.env.filters["when"] = lambda at: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else "never"
templates.env.filters["evidence"] = lambda details: json.dumps(details, indent=1, sort_keys=True)[:4000]


# What an action redirects with (?m=code): fixed texts, so a link cannot put words on the page.
FLASH = {"approved": "Deployment approved.", "aborted": "Deployment aborted.", "acknowledged": "Alert acknowledged.",
         "signed-out": "Signed out.", "conflict": "Nothing changed: it is not open any more.",
         "bad-token": "That token is not valid."}


def flash(request: Request) -> str | None:
    return FLASH.get(request.query_params.get("m", ""))


class SignInRequired(Exception):  # noqa: N818 - a control-flow signal, answered with a redirect to /login
    def __init__(self, path: str) -> None:
        self.path = path


def require_session(request: Request) -> Session:
    session = current(request)
    if session is None:
        if request.method != "GET":
            raise DashboardRefusal("not signed in")
        raise SignInRequired(request.url.path)
    return session


SessionAuth = Annotated[Session, Depends(require_session)]


CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
# the rollout page's live progress (edgefleet.cloud.dashboard.live): this site's own script file, no inline one
CSP_LIVE = f"{CSP}; script-src 'self'; connect-src 'self'"


def render(request: Request, name: str, session: Session | None, status: int = 200, *, live: bool = False,
           **context: object) -> Response:
    context = {"session": session, "flash": flash(request), **context}
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Content-Security-Policy"] = CSP_LIVE if live else CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - the form field's name
    csrf = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, csrf=csrf, next=local_path(next))
    response.set_cookie(LOGIN_COOKIE, csrf, max_age=600, **cookie_options(request))
    return response


@router.get("/", response_class=HTMLResponse)
def fleet(request: Request, session: SessionAuth, db: SessionDep, q: Annotated[str, Query(max_length=64)] = "",
          fleet: Annotated[str, Query(max_length=64)] = "", online: Annotated[str, Query(max_length=3)] = "",
          page: Annotated[int, Query(ge=1, le=1_000_000)] = 1) -> Response:
    result = queries.fleet_page(db, search=q, fleet=fleet, online=online, page=page)

    def query(number: int) -> str:
        return urlencode({k: v for k, v in (("q", q), ("fleet", fleet), ("online", online)) if v} | {"page": number})

    return render(request, "fleet.html", session, page=result, q=q, fleet=fleet, online=online, query=query)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device(request: Request, device_id: str, session: SessionAuth, db: SessionDep, sessions: SessionsDep,
           settings: SettingsDep) -> Response:
    try:
        record = get_device(db, device_id)
    except NotFoundError as err:
        raise DashboardRefusal(str(err), 404) from err
    runtime = record.runtime if isinstance(record.runtime, dict) else {}
    drift = queries.drift_series(db, device_id)
    alerts = queries.device_alerts(db, device_id)
    markers = [(a.opened_at, f"alert {a.id}: {a.kind} ({a.status})", str(a.id)) for a in alerts
               if not drift.times or a.opened_at >= drift.times[0]]
    drift_chart = charts.line_chart("Drift (PSI per signal)", drift.times, drift.signals, threshold=drift.threshold,
                                    markers=markers)
    points = queries.telemetry_series(db, device_id)
    times = [p.at for p in points]
    latency = charts.line_chart("Latency (ms, bin upper edge)", times,
                                {"p50": [p.p50 for p in points], "p99": [p.p99 for p in points]}, unit="")
    traffic = charts.line_chart("Requests and errors per window", times,
                                {"requests": [p.requests for p in points], "errors": [p.errors for p in points]})
    accuracy = queries.accuracy_series(db, device_id, points[0].at - 1 if points else time.time() - 3600,
                                       lambda name, version: reference_profile(sessions, settings, name, version))
    accuracy_chart = charts.line_chart(accuracy.title, accuracy.times, accuracy.series, threshold=accuracy.reference,
                                       threshold_name="reference")
    return render(request, "device.html", session, device=record, drift=drift_chart, latency=latency,
                  traffic=traffic, accuracy=accuracy_chart, alerts=alerts, ota=queries.ota_history(db, device_id),
                  runtime_facts=" · ".join(f"{key} {runtime[key]}" for key in RUNTIME_TEXTS if runtime.get(key)),
                  fallbacks=runtime.get("fallbacks") or [])


@router.get("/alerts", response_class=HTMLResponse)
def alerts(request: Request, session: SessionAuth, db: SessionDep,
           status: Annotated[str, Query(pattern="^(open|closed|all)$")] = "open") -> Response:
    return render(request, "alerts.html", session, alerts=queries.alerts(db, status))


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts(request: Request, session: SessionAuth, db: SessionDep) -> Response:
    return render(request, "rollouts.html", session, deployments=queries.deployments(db), open_states=OPEN_STATES)


@router.get("/rollouts/{deployment_id}", response_class=HTMLResponse)
def rollout(request: Request, deployment_id: str, session: SessionAuth, db: SessionDep) -> Response:
    try:
        view = deployment_view(db, get_deployment(db, deployment_id))
    except NotFoundError as err:
        raise DashboardRefusal(str(err), 404) from err
    return render(request, "rollout.html", session, live=True, d=view, open_states=OPEN_STATES,
                  finished_of={w.wave: sum(n for state, n in w.counts.items() if state in FINAL_STATES)
                               for w in view.waves})
