"""Retraining runs over HTTP (cloud/loop/run_store.py holds the rules), behind the admin token:

- `POST /api/v1/loop/runs` {"policy", "model", "fleet", "trigger", "document"}: a new running run (201).
- `PUT /api/v1/loop/runs/{id}/stages/{name}` {"state", "inputs"?, "outputs"?, "metrics"?, "message"?}:
  creates or updates a stage (409 once it or its run is final).
- `PUT /api/v1/loop/runs/{id}` {"state", "reason"?, "bundle"?, "summary"?}: ends the run.
- `GET /api/v1/loop/runs?policy=&limit=`: newest first, with their stages; `GET /api/v1/loop/runs/{id}`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.cloud.api.deps import SessionDep
from edgefleet.cloud.loop import run_store
from edgefleet.core.topics import ID_PATTERN, check_id

router = APIRouter(tags=["loop"])
ID = ID_PATTERN.pattern
StageName = Literal["dataset", "train", "compress", "compile", "evaluate", "push", "deploy"]


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(pattern=ID)
    model: str = Field(min_length=1, max_length=128)
    fleet: str = Field(pattern=ID)
    trigger: dict = Field(default_factory=dict)
    document: dict = Field(default_factory=dict)


class StageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["running", "succeeded", "failed", "stopped", "skipped"]
    inputs: dict | None = None
    outputs: dict | None = None
    metrics: dict | None = None
    message: str | None = Field(default=None, max_length=8192)


class RunEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["succeeded", "failed", "stopped"]
    reason: str | None = Field(default=None, max_length=8192)
    bundle: dict | None = None
    summary: dict | None = None


@router.post("/loop/runs", status_code=status.HTTP_201_CREATED)
def post_run(body: RunIn, session: SessionDep) -> dict:
    run = run_store.start_run(session, policy=body.policy, model=body.model, fleet=body.fleet, trigger=body.trigger,
                              document=body.document)
    return run_store.describe(session, run)


@router.put("/loop/runs/{run_id}/stages/{name}")
def put_stage(run_id: str, name: StageName, body: StageIn, session: SessionDep) -> dict:
    run_store.put_stage(session, check_id(run_id, "run id"), name, body.model_dump())
    return run_store.describe(session, run_store.get_run(session, run_id))


@router.put("/loop/runs/{run_id}")
def end_run(run_id: str, body: RunEnd, session: SessionDep) -> dict:
    run = run_store.finish_run(session, check_id(run_id, "run id"), body.model_dump())
    return run_store.describe(session, run)


@router.get("/loop/runs")
def get_runs(session: SessionDep, policy: str | None = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict]:
    runs = run_store.list_runs(session, None if policy is None else check_id(policy, "policy"), limit)
    return [run_store.describe(session, run) for run in runs]


@router.get("/loop/runs/{run_id}")
def get_run(run_id: str, session: SessionDep) -> dict:
    return run_store.describe(session, run_store.get_run(session, check_id(run_id, "run id")))
