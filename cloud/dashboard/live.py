"""Live rollout progress: the one place the dashboard runs script, and only its own.

GET /rollouts/<id>/progress answers the deployment's state, its waves (counts by state, devices finished)
and every device's state and reason as JSON; /static/dashboard/rollout.js (a file of this package, served
from here: nothing loaded from elsewhere) polls it every POLL_SECONDS while the deployment is open and
writes the numbers into the page with textContent, never as markup. The rollout page's CSP allows
exactly that: script-src 'self' and connect-src 'self', still no inline script; without script, a
<noscript> meta refresh reloads the page instead.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from edgefleet.cloud.api.deployments import DeploymentOut, deployment_view, get_deployment
from edgefleet.cloud.api.deps import NotFoundError, SessionDep
from edgefleet.cloud.dashboard.pages import SessionAuth
from edgefleet.cloud.dashboard.session import DashboardRefusal, Session
from edgefleet.cloud.rollout_plan import OPEN_STATES
from edgefleet.core.ota import FINAL_STATES

router = APIRouter(include_in_schema=False)
SCRIPT = Path(__file__).parent / "static" / "rollout.js"
POLL_SECONDS = 1.5


def actions(view: DeploymentOut, session: Session) -> dict[str, bool]:
    """Which buttons the session sees (the same rule as _rollout_actions.html)."""
    open_ = session.admin and view.state in OPEN_STATES
    return {"approve": open_ and (view.state == "paused" or (not view.approved and view.current_wave <= 1)),
            "abort": open_}


def progress(view: DeploymentOut, session: Session) -> dict:
    return {
        "id": view.id, "state": view.state, "approved": view.approved, "open": view.state in OPEN_STATES,
        "current_wave": view.current_wave, "wave_count": view.wave_count, "reason": view.reason or "",
        "waves": [{"wave": w.wave, "size": w.size, "status": w.status, "counts": dict(sorted(w.counts.items())),
                   "finished": sum(n for state, n in w.counts.items() if state in FINAL_STATES)} for w in view.waves],
        "devices": [{"device": d.device, "state": d.state, "reason": d.reason or ""} for d in view.devices],
        "actions": actions(view, session), "poll_seconds": POLL_SECONDS,
    }


@router.get("/rollouts/{deployment_id}/progress")
def rollout_progress(deployment_id: str, session: SessionAuth, db: SessionDep) -> JSONResponse:
    try:
        view = deployment_view(db, get_deployment(db, deployment_id))
    except NotFoundError as err:
        raise DashboardRefusal(str(err), 404) from err
    return JSONResponse(progress(view, session), headers={"Cache-Control": "no-store"})


@router.get("/static/dashboard/rollout.js")
def rollout_script() -> Response:
    return Response(SCRIPT.read_bytes(), media_type="text/javascript",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
