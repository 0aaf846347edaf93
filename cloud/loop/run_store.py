"""The record of each retraining run (issue 15): one `loop_runs` row per run of a policy, one `loop_stages`
row per stage it reached, kept in the cloud's database so `edgefleet loop status` shows them from any machine.

    run = start_run(session, policy="digits-night", model="digits-cnn", fleet="lab", trigger={...}, document={...})
    put_stage(session, run.id, "train", {"state": "running", "inputs": {...}})
    put_stage(session, run.id, "train", {"state": "succeeded", "outputs": {...}, "metrics": {...}})
    finish_run(session, run.id, {"state": "succeeded", "bundle": {"name": ..., "version": 2}})

A stage's `started_at` is stamped by the cloud when it is first written, its `ended_at` when it reaches a
final state (succeeded, failed, stopped, skipped); a final stage is not written again (409), nor a stage of
a finished run. The runner (cloud/loop/runner.py) writes these through the API
(cloud/api/loop_runs.py), so a loop run on a laptop records into the remote cloud.
"""

from __future__ import annotations

import secrets

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.api.deps import ConflictError, NotFoundError
from edgefleet.cloud.db import Base, now

STAGES = ("dataset", "train", "compress", "compile", "evaluate", "push", "deploy")
STATES = ("running", "succeeded", "failed", "stopped", "skipped")
FINAL = ("succeeded", "failed", "stopped", "skipped")


class LoopRun(Base):
    __tablename__ = "loop_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    policy: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    fleet: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="running")
    trigger: Mapped[dict] = mapped_column(JSON)  # {"kind", "alert_id"?, "forced"}
    document: Mapped[dict] = mapped_column(JSON)  # the policy as the runner read it
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    bundle: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the resulting {"name", "version"}
    summary: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # before/after figures per device
    started_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class LoopStage(Base):
    __tablename__ = "loop_stages"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_loop_stage_run_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("loop_runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    inputs: Mapped[dict] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[float] = mapped_column(Float, default=now)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def start_run(session: Session, *, policy: str, model: str, fleet: str, trigger: dict, document: dict) -> LoopRun:
    run = LoopRun(id="r-" + secrets.token_hex(6), policy=policy, model_name=model, fleet=fleet, trigger=trigger,
                  document=document, state="running")
    session.add(run)
    session.commit()
    return run


def get_run(session: Session, run_id: str) -> LoopRun:
    run = session.get(LoopRun, run_id)
    if run is None:
        raise NotFoundError(f"no loop run {run_id!r}")
    return run


def put_stage(session: Session, run_id: str, name: str, body: dict) -> LoopStage:
    """Creates or updates one stage of a running run (module docstring)."""
    run = get_run(session, run_id)
    if run.state != "running":
        raise ConflictError(f"loop run {run_id} is {run.state}; its stages are final")
    stage = session.scalar(select(LoopStage).where(LoopStage.run_id == run_id, LoopStage.name == name))
    if stage is None:
        stage = LoopStage(run_id=run_id, name=name, position=STAGES.index(name), state=body["state"],
                          inputs={}, outputs={}, metrics={})
        session.add(stage)
    elif stage.state in FINAL:
        raise ConflictError(f"stage {name} of loop run {run_id} is already {stage.state}")
    stage.state = body["state"]
    for key in ("inputs", "outputs", "metrics"):
        if body.get(key):
            setattr(stage, key, {**(getattr(stage, key) or {}), **body[key]})
    if body.get("message") is not None:
        stage.message = body["message"]
    if stage.state in FINAL:
        stage.ended_at = now()
    session.commit()
    return stage


def finish_run(session: Session, run_id: str, body: dict) -> LoopRun:
    run = get_run(session, run_id)
    if run.state != "running":
        raise ConflictError(f"loop run {run_id} is already {run.state}")
    run.state, run.ended_at = body["state"], now()
    run.reason, run.bundle, run.summary = body.get("reason"), body.get("bundle"), body.get("summary")
    for stage in session.scalars(select(LoopStage).where(LoopStage.run_id == run_id, LoopStage.state == "running")):
        stage.state, stage.ended_at = "failed", run.ended_at
        stage.message = stage.message or f"the run ended ({run.state}) while this stage was running"
    session.commit()
    return run


def list_runs(session: Session, policy: str | None = None, limit: int = 50) -> list[LoopRun]:
    query = select(LoopRun).order_by(LoopRun.started_at.desc()).limit(limit)
    return list(session.scalars(query if policy is None else query.where(LoopRun.policy == policy)))


def runs_for_alert(session: Session, policy: str, alert_id: int) -> int:
    """How many runs of the policy an alert already triggered (the trigger fires once per alert)."""
    runs = session.scalars(select(LoopRun).where(LoopRun.policy == policy))
    return sum(1 for run in runs if (run.trigger or {}).get("alert_id") == alert_id)


def describe(session: Session, run: LoopRun) -> dict:
    stages = session.scalars(select(LoopStage).where(LoopStage.run_id == run.id).order_by(LoopStage.position))
    return {"id": run.id, "policy": run.policy, "model": run.model_name, "fleet": run.fleet, "state": run.state,
            "trigger": run.trigger, "reason": run.reason, "bundle": run.bundle, "summary": run.summary,
            "started_at": run.started_at, "ended_at": run.ended_at, "document": run.document,
            "stages": [{"name": s.name, "state": s.state, "inputs": s.inputs, "outputs": s.outputs,
                        "metrics": s.metrics, "message": s.message, "started_at": s.started_at,
                        "ended_at": s.ended_at,
                        "seconds": None if s.ended_at is None else round(s.ended_at - s.started_at, 3)}
                       for s in stages]}
