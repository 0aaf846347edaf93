"""Deployments: plan a staged rollout of a registry bundle to devices, watch it, approve or abort it.

Creating one only plans it (its waves and the devices in each, recorded in DeploymentDevice rows); the
rollout engine (`edgefleet.cloud.rollout`) sends the commands. Every number is checked before anything
is stored: a non-finite or out-of-range strategy field is a 400 naming the field and its bounds
(Strategy.checked), a version outside the registry's integer range or a wrong type a 422. Approve and
abort change the deployment's state with a compare-and-set, so they never race the engine into an
inconsistent state.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from edgefleet.cloud.api.bundles import get_bundle
from edgefleet.cloud.api.deps import ConflictError, NotFoundError, SessionDep, SettingsDep
from edgefleet.cloud.auth import AdminAuth
from edgefleet.cloud.db import Deployment, DeploymentDevice, Device
from edgefleet.cloud.rollout_plan import OPEN_STATES, RolloutError, Strategy, rollout_order, tally, wave_sizes
from edgefleet.cloud.shadow_report import shadow_agreement
from edgefleet.core.bounded_json import SQL_INTEGER_MAX
from edgefleet.core.topics import check_id

log = logging.getLogger(__name__)
MAX_VERSION = SQL_INTEGER_MAX
router = APIRouter(tags=["deployments"])


class TargetIn(BaseModel):
    """Which devices: those in `fleet` and in `group` (each optional), or exactly the listed `devices`
    (which must then also match fleet and group, if given)."""

    model_config = ConfigDict(extra="forbid")
    fleet: str | None = None
    group: str | None = None
    devices: list[str] | None = Field(default=None, max_length=10_000)


class BundleRefIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=0, le=MAX_VERSION)  # the registry's column is a 32-bit integer


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: TargetIn
    bundle: BundleRefIn
    strategy: Strategy = Strategy()


class AbortIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=2000)
    rollback: bool = True  # send rollback to the devices this deployment moved


class WaveOut(BaseModel):
    wave: int  # 1-based
    size: int
    devices: list[str]  # in rollout order
    counts: dict[str, int]  # devices by state
    status: Literal["waiting", "current", "done"]


class DeviceRolloutOut(BaseModel):
    device: str
    wave: int
    state: str
    reason: str | None
    command: str | None
    sent_at: float | None
    resends: int  # how often the install went out again because no status answered it
    rollback_command: str | None
    rollback_sent_at: float | None
    rollback_resends: int
    updated_at: float


class DeploymentSummary(BaseModel):
    id: str
    bundle: BundleRefIn
    state: str
    current_wave: int  # 1-based; 0 before the first wave is sent
    wave_count: int
    device_count: int
    reason: str | None
    created_at: float
    updated_at: float
    finished_at: float | None


class DeploymentOut(DeploymentSummary):
    target: dict
    strategy: dict
    approved: bool
    rollback: bool
    counts: dict[str, int]  # all devices by state
    waves: list[WaveOut]
    devices: list[DeviceRolloutOut]
    # Quality gates (cloud/quality_gates.py): when wave 1's observation began, and the stored verdict
    # (outcome, canary and control devices, each gate's figures); None until judged or without gates.
    gates_started_at: float | None = None
    gates: dict | None = None
    shadow: dict | None = None  # mode "shadow": the candidate's agreement with the serving model


def _summary(deployment: Deployment) -> dict:
    return {"id": deployment.id, "bundle": BundleRefIn(name=deployment.bundle_name, version=deployment.bundle_version),
            "state": deployment.state, "current_wave": deployment.current_wave,
            "wave_count": len(deployment.wave_sizes), "device_count": sum(deployment.wave_sizes),
            "reason": deployment.reason, "created_at": deployment.created_at, "updated_at": deployment.updated_at,
            "finished_at": deployment.finished_at}


def deployment_view(session: Session, deployment: Deployment) -> DeploymentOut:
    rows = list(session.scalars(select(DeploymentDevice).where(DeploymentDevice.deployment_id == deployment.id)
                                .order_by(DeploymentDevice.rank)))
    tallies = tally(((row.wave, row.state) for row in rows), deployment.wave_sizes)
    waves = []
    for wave in tallies:
        if wave.wave < deployment.current_wave or deployment.state == "completed":
            state = "done"
        elif wave.wave == deployment.current_wave:
            state = "current"
        else:
            state = "waiting"
        waves.append(WaveOut(wave=wave.wave, size=wave.size, counts=wave.counts, status=state,
                             devices=[row.device_id for row in rows if row.wave == wave.wave]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    devices = [DeviceRolloutOut(device=row.device_id, wave=row.wave, state=row.state, reason=row.reason,
                                command=row.command_id, sent_at=row.sent_at, resends=row.resends or 0,
                                rollback_command=row.rollback_command_id, rollback_resends=row.rollback_resends or 0,
                                rollback_sent_at=row.rollback_sent_at, updated_at=row.updated_at) for row in rows]
    shadow = shadow_agreement(session, deployment.id) if deployment.strategy.get("mode") == "shadow" else None
    return DeploymentOut(**_summary(deployment), target=deployment.target, strategy=deployment.strategy,
                         approved=deployment.approved, rollback=deployment.rollback, counts=counts, waves=waves,
                         devices=devices, gates_started_at=deployment.gate_started_at, gates=deployment.gate_verdict,
                         shadow=shadow)


def get_deployment(session: Session, deployment_id: str) -> Deployment:
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFoundError(f"no deployment {deployment_id!r}")
    return deployment


def select_devices(session: Session, target: TargetIn) -> list[Device]:
    """The target's devices; raises for an empty target, unknown or mismatching devices, or no match."""
    if target.fleet is None and target.group is None and not target.devices:
        raise RolloutError("target needs at least one of fleet, group or devices")
    query = select(Device).order_by(Device.id)
    if target.fleet is not None:
        query = query.where(Device.fleet == check_id(target.fleet, "fleet"))
    if target.group is not None:
        query = query.where(Device.group == check_id(target.group, "group"))
    if target.devices:
        wanted = list(dict.fromkeys(target.devices))
        known = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(wanted)))}
        unknown = [d for d in wanted if d not in known]
        if unknown:
            raise NotFoundError(f"unknown device(s): {', '.join(unknown)}")
        matching = {d.id for d in session.scalars(query.where(Device.id.in_(wanted)))}
        outside = [d for d in wanted if d not in matching]
        if outside:
            scope = " and ".join(f"{k} {v!r}" for k, v in (("fleet", target.fleet), ("group", target.group)) if v)
            raise RolloutError(f"device(s) {', '.join(outside)} are not in {scope}")
        return [known[d] for d in wanted]
    devices = list(session.scalars(query))
    if not devices:
        scope = " and ".join(f"{k} {v!r}" for k, v in (("fleet", target.fleet), ("group", target.group)) if v)
        raise RolloutError(f"no registered device is in {scope}")
    return devices


def _check_free(session: Session, ids: list[str]) -> None:
    busy = session.execute(
        select(DeploymentDevice.device_id, Deployment.id, Deployment.state)
        .join(Deployment, Deployment.id == DeploymentDevice.deployment_id)
        .where(DeploymentDevice.device_id.in_(ids), Deployment.state.in_(OPEN_STATES))
        .order_by(DeploymentDevice.device_id)
    ).all()
    if busy:
        listed = ", ".join(f"{device} (deployment {dep}, {state})" for device, dep, state in busy[:10])
        raise ConflictError(f"{len(busy)} target device(s) are in an open deployment: {listed}; "
                            f"wait for it or abort it first")


def _check_downgrades(devices: list[Device], name: str, version: int, can_authorize: bool) -> None:
    newer = [d for d in devices if d.model_name == name and d.model_version is not None and d.model_version >= version]
    if newer and not can_authorize:
        listed = ", ".join(f"{d.id} (v{d.model_version})" for d in newer[:10])
        raise ConflictError(f"{len(newer)} device(s) run {name} at v{version} or newer: {listed}; "
                            f"installing v{version} there needs a signed rollback authorization: start the cloud "
                            f"with a rollback key (EDGEFLEET_ROLLBACK_KEY) or leave them out of the target")


@router.post("/deployments", status_code=status.HTTP_201_CREATED, response_model=DeploymentOut)
def create_deployment(body: DeploymentIn, session: SessionDep, settings: SettingsDep,
                      admin: AdminAuth) -> DeploymentOut:
    """Plans the rollout (waves and their devices) and returns it; the rollout engine starts it."""
    strategy = body.strategy.checked()
    bundle = get_bundle(session, body.bundle.name, body.bundle.version)
    devices = select_devices(session, body.target)
    ids = [d.id for d in devices]
    _check_free(session, ids)
    _check_downgrades(devices, bundle.name, bundle.version, settings.rollback_key is not None)
    deployment_id = f"d-{secrets.token_hex(6)}"
    order = rollout_order(deployment_id, ids)
    sizes = wave_sizes(strategy.waves, len(order))
    if strategy.quality_gates is not None and len(sizes) < 2:
        raise RolloutError(f"strategy.quality_gates need control devices: waves {list(strategy.waves)} of "
                           f"{len(order)} device(s) leave none after the first wave")
    stamp = time.time()
    deployment = Deployment(id=deployment_id, bundle_name=bundle.name, bundle_version=bundle.version,
                            target=body.target.model_dump(exclude_none=True), strategy=strategy.model_dump(mode="json"),
                            wave_sizes=sizes, state="pending", current_wave=0, created_by=admin,
                            created_at=stamp, updated_at=stamp)
    session.add(deployment)
    waves = [wave for wave, size in enumerate(sizes, start=1) for _ in range(size)]
    session.add_all(DeploymentDevice(deployment_id=deployment_id, device_id=device, wave=wave, rank=rank,
                                     state="pending", updated_at=stamp)
                    for rank, (device, wave) in enumerate(zip(order, waves, strict=True)))
    session.commit()
    log.info("deployment %s planned: %s v%d to %d device(s) in waves %s (by token %r)", deployment_id, bundle.name,
             bundle.version, len(order), sizes, admin)
    return deployment_view(session, deployment)


@router.get("/deployments", response_model=list[DeploymentSummary])
def list_deployments(
    session: SessionDep,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeploymentSummary]:
    query = select(Deployment).order_by(Deployment.created_at.desc(), Deployment.id).limit(limit)
    if state is not None:
        query = query.where(Deployment.state == state)
    return [DeploymentSummary(**_summary(d)) for d in session.scalars(query)]


@router.get("/deployments/{deployment_id}", response_model=DeploymentOut)
def read_deployment(deployment_id: str, session: SessionDep) -> DeploymentOut:
    return deployment_view(session, get_deployment(session, deployment_id))


@router.post("/deployments/{deployment_id}/approve", response_model=DeploymentOut)
def approve_deployment(deployment_id: str, session: SessionDep, admin: AdminAuth) -> DeploymentOut:
    """Lets a deployment paused after its first wave go on; before that pause, approves it in advance."""
    deployment = get_deployment(session, deployment_id)
    resumed = session.execute(
        update(Deployment).where(Deployment.id == deployment_id, Deployment.state == "paused")
        .values(state="running", approved=True, reason=None, updated_at=time.time())).rowcount
    if not resumed:
        early = session.execute(
            update(Deployment).where(Deployment.id == deployment_id, Deployment.state.in_(("pending", "running")),
                                     Deployment.current_wave <= 1, Deployment.approved.is_(False))
            .values(approved=True, updated_at=time.time())).rowcount
        if not early:
            session.rollback()
            raise ConflictError(f"deployment {deployment_id} is {deployment.state}: nothing to approve")
    session.commit()
    session.refresh(deployment)
    log.info("deployment %s approved by token %r", deployment_id, admin)
    return deployment_view(session, deployment)


@router.post("/deployments/{deployment_id}/abort", response_model=DeploymentOut)
def abort_deployment(deployment_id: str, session: SessionDep, admin: AdminAuth,
                     body: Annotated[AbortIn | None, Body()] = None) -> DeploymentOut:
    """Stops the deployment: no more installs; the engine sends rollback to devices already updated."""
    body = body or AbortIn()
    deployment = get_deployment(session, deployment_id)
    stamp = time.time()
    reason = body.reason or f"aborted by {admin}"
    done = session.execute(
        update(Deployment).where(Deployment.id == deployment_id, Deployment.state.in_(OPEN_STATES))
        .values(state="aborted", reason=reason, rollback=body.rollback, rollback_done=not body.rollback,
                updated_at=stamp, finished_at=stamp)).rowcount
    if not done:
        session.rollback()
        raise ConflictError(f"deployment {deployment_id} is {deployment.state} already")
    session.commit()
    session.refresh(deployment)
    log.warning("deployment %s aborted by token %r: %s", deployment_id, admin, reason)
    return deployment_view(session, deployment)
