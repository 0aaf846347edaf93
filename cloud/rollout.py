"""The rollout engine: moves every open deployment along, one step per tick (every 0.5 s by default).

Everything it knows is in the database (Deployment, DeploymentDevice, which the ingest updates from the
devices' status messages), so a restarted cloud resumes where it stopped. Per deployment and tick:

1. pending -> running, wave 1.
2. running: send an install command (core.ota, QoS 1, to `edgefleet/v1/<fleet>/<device>/cmd`) to every
   device of waves 1..current that has none yet, and re-send it (same id) to a device that has answered
   with no status for `resend_interval_seconds`, at most `max_resends` times (a broker restarted without
   persistence loses the commands it queued for offline devices); then apply `rollout_plan.decide`:
   advance to the next wave, pause for approval, complete, or abort (a timeout names the devices that
   never answered); with quality gates, the first wave is judged once done (cloud/quality_gates.py)
   and a failing gate aborts it like a rule. A restart gives the current wave its whole timeout again
   (statuses queued at the broker while the cloud was down arrive only now).
3. paused: abort if a sent wave's failures go over the limit (late rollbacks count).
4. aborted (by a rule or through the API), mode "switch": send `op: rollback`, naming the deployment's
   bundle, to each device this deployment moved: its install reached the switch (it reported switching,
   health_check or active) and it has not reported failed or rolled_back. A device that never answered,
   or is still before its switch, gets none; it is watched until its command can no longer be acted on
   (the download URL's lifetime plus the download timeout and health window after the last send) and
   rolled back if it reports the switch meanwhile. A rollback that no status answers is re-sent like an
   install. The device itself refuses a rollback whose bundle is not the one it serves (core.ota).
   Shadow and canary deployments switch nothing, so they send no rollback.

A command's id is committed before it is published and `sent_at` after the broker acknowledged it; a
command whose publish may not have happened is republished with the same id (devices ignore an id they
have seen); an id is claimed only where none is stored, so two engines never give one device two ids.
Installs go out only while the deployment is still running (checked in the same transaction
that claims the ids, and again just before publishing), so an abort never races a later wave out.

Many engines (role `rollouts` on PostgreSQL): each deployment is moved by the engine holding its lease
(cloud/leases.py, "rollouts/deployment/<id>", renewed every tick); an engine killed with -9 leaves it to
another one lease period later. Every transition is a compare-and-set on the state and wave the engine
read, so even an engine that lost its lease mid-tick (stalled past the period) cannot start a wave twice or
undo another's step: its UPDATE matches no row, and the transition's log line is written only by the
engine whose UPDATE changed the row.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import paho.mqtt.client as mqtt
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.api.bundles import reference_profile
from edgefleet.cloud.db import BundleRecord, Deployment, DeploymentDevice, Device
from edgefleet.cloud.leases import Leases
from edgefleet.cloud.mqtt_client import broker_address, new_client
from edgefleet.cloud.quality_gates import ProfileFor, judge_first_wave
from edgefleet.cloud.rollout_plan import (
    FAILED_STATES,
    MOVED_STATES,
    OPEN_STATES,
    Decision,
    Strategy,
    decide,
    failure,
    tally,
)
from edgefleet.cloud.settings import CloudSettings
from edgefleet.cloud.signed_urls import download_secret, signed_download_url
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.ota import BundleRef, Command, authorize_rollback
from edgefleet.core.signing import SigningKey
from edgefleet.core.topics import topic

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10.0  # seconds to wait for the broker's PUBACK of one batch of commands
SEND_CHUNK = 500  # install commands published, and stamped sent, per transaction
PENDING_LIMIT = 60.0  # seconds a publish is held unstamped (see RolloutEngine._publish) before it is redone


class RolloutEngine:
    name = "rollouts"

    def __init__(
        self,
        sessions: sessionmaker,
        settings: CloudSettings,
        mqtt_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        public_url: Callable[[], str | None] | None = None,
        client_id: str = "edgefleet-rollouts",
        interval_seconds: float | None = None,
        profile_for: ProfileFor | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.host, self.port = broker_address(mqtt_url)
        self.sessions = sessions
        self.settings = settings
        self.public_url = public_url or (lambda: settings.public_url or f"http://{settings.host}:{settings.port}")
        self.interval = interval_seconds or settings.rollout_interval_seconds
        self.leases = leases
        self._leased: set[str] = set()  # the deployment leases held after the last tick
        # (row id, command id) -> a publish not yet stamped sent, and when it was queued (see _publish)
        self._held: dict[tuple[int, str], tuple[mqtt.MQTTMessageInfo, float]] = {}
        self.profile_for = profile_for or (lambda name, version: reference_profile(sessions, settings, name, version))
        # Loaded now, so that a bad key file fails the start rather than a deployment.
        self.rollback_key = SigningKey.load(settings.rollback_key) if settings.rollback_key else None
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._client = new_client(client_id, username, password, mqtt_url=mqtt_url, ca=settings.mqtt_ca)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    # network thread ------------------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho
        if reason_code.is_failure:
            log.error("rollouts: broker refused the connection: %s", reason_code)
            return
        self.connected.set()
        log.info("rollouts: connected to %s:%s", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("rollouts: disconnected (%s); paho reconnects", reason_code)

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._started_at = time.time()
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = PUBLISH_TIMEOUT + 5) -> None:
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the engine
                log.exception("rollouts: tick failed")
            self._stopping.wait(self.interval)

    # one step of every open deployment -----------------------------------------------------------------
    def tick(self) -> None:
        with self.sessions() as session:
            ids = list(session.scalars(select(Deployment.id).where(or_(
                Deployment.state.in_(OPEN_STATES),
                and_(Deployment.state == "aborted", Deployment.rollback.is_(True),
                     Deployment.rollback_done.is_(False)),
            )).order_by(Deployment.created_at)))
        if self.leases is not None:
            names = {f"rollouts/deployment/{i}": i for i in ids}
            held = self.leases.acquire(names)
            self.leases.release(self._leased - set(names))  # finished: nothing left to hold
            self._leased = held
            ids = [i for i in ids if f"rollouts/deployment/{i}" in held]
        for deployment_id in ids:
            if self._stopping.is_set():
                return
            try:
                self.advance(deployment_id)
            except Exception:  # noqa: BLE001 - one broken deployment must not stop the others
                log.exception("rollouts: deployment %s: step failed", deployment_id)

    def advance(self, deployment_id: str) -> None:
        deployment, rows = self._load(deployment_id)
        strategy = Strategy.model_validate(deployment.strategy)
        now = time.time()
        if deployment.state == "pending":
            if self._transition(deployment_id, ("pending",), 0, state="running", current_wave=1, wave_started_at=now):
                log.info("deployment %s: running, wave 1 of %d", deployment_id, len(deployment.wave_sizes))
            deployment, rows = self._load(deployment_id)
        if deployment.state == "running":
            if self._send_installs(deployment, rows, strategy):
                deployment, rows = self._load(deployment_id)
            self._decide(deployment, rows, strategy, now)
            deployment, rows = self._load(deployment_id)
        elif deployment.state == "paused":
            reason = failure(strategy, tally(((r.wave, r.state) for r in rows), deployment.wave_sizes),
                             deployment.current_wave)
            if reason and self._transition(deployment_id, ("paused",), deployment.current_wave, state="aborted",
                                           reason=reason, finished_at=now):
                log.warning("deployment %s aborted while paused: %s", deployment_id, reason)
            deployment, rows = self._load(deployment_id)
        if deployment.state == "aborted" and deployment.rollback and not deployment.rollback_done:
            self._send_rollbacks(deployment, rows, strategy, now)

    def _decide(self, deployment: Deployment, rows: list[DeploymentDevice], strategy: Strategy, now: float) -> None:
        tallies = tally(((r.wave, r.state) for r in rows), deployment.wave_sizes)
        started = max(deployment.wave_started_at or now, self._started_at)
        silent = [r.device_id for r in rows if r.wave <= deployment.current_wave and r.state == "pending"]
        decision = decide(strategy, tallies, deployment.current_wave, approved=deployment.approved,
                          timed_out=now >= started + strategy.wave_timeout_seconds, silent=silent)
        if strategy.quality_gates is not None and deployment.current_wave == 1 \
                and decision.action in ("advance", "pause", "complete"):
            decision = self._gate(deployment, rows, strategy, started, now, decision)
        did, wave = deployment.id, deployment.current_wave
        if decision.action == "advance":
            if self._transition(did, ("running",), wave, current_wave=wave + 1, wave_started_at=now):
                log.info("deployment %s: wave %d done, starting wave %d of %d", did, wave, wave + 1, len(tallies))
        elif decision.action == "pause":
            if self._transition(did, ("running",), wave, state="paused", reason=decision.reason):
                log.info("deployment %s paused: %s", did, decision.reason)
        elif decision.action == "complete":
            if self._transition(did, ("running",), wave, state="completed", reason=None, finished_at=now):
                log.info("deployment %s completed: %s", did, decision.reason)
        elif decision.action == "abort":
            if self._transition(did, ("running",), wave, state="aborted", reason=decision.reason, finished_at=now):
                log.warning("deployment %s aborted: %s", did, decision.reason)

    def _gate(self, deployment: Deployment, rows: list[DeploymentDevice], strategy: Strategy, started: float,
              now: float, decision: Decision) -> Decision:
        """The first wave is done by its statuses; its quality gates (cloud/quality_gates.py) decide whether
        the rollout goes on. A failing verdict aborts here, stored in the same transaction as the abort."""
        if deployment.gate_verdict is not None:
            return decision  # judged and passed (a failure ended the deployment)
        gates, did = strategy.quality_gates, deployment.id
        if deployment.gate_started_at is None:
            if self._transition(did, ("running",), 1, gate_started_at=now):
                log.info("deployment %s: wave 1 done; quality gates observe it for %g s", did,
                         gates.observation_seconds)
            return Decision("wait")
        begun = deployment.gate_started_at
        with self.sessions() as session:
            verdict = judge_first_wave(
                session, gates, self.profile_for, candidate=(deployment.bundle_name, deployment.bundle_version),
                canary=[r.device_id for r in rows if r.wave == 1 and r.state == "active"],
                control=[r.device_id for r in rows if r.wave > 1], started=begun, now=now,
                deadline=max(begun + gates.observation_seconds, started + strategy.wave_timeout_seconds))
        if verdict.action == "wait":
            return Decision("wait")
        if verdict.action == "fail":
            if self._transition(did, ("running",), 1, state="aborted", reason=verdict.reason,
                                gate_verdict=verdict.record, finished_at=now):
                log.warning("deployment %s aborted: %s", did, verdict.reason)
            return Decision("wait")
        if not self._transition(did, ("running",), 1, gate_verdict=verdict.record):
            return Decision("wait")
        log.info("deployment %s: quality gates %s: %s", did, verdict.record["outcome"],
                 "; ".join(f"{r['gate']}: {r['text']}" for r in verdict.record["results"]))
        return decision

    # commands ------------------------------------------------------------------------------------------
    def _send_installs(self, deployment: Deployment, rows: list[DeploymentDevice], strategy: Strategy) -> bool:
        """Sends the install commands due in waves 1..current, and re-sends those no status answered;
        True if it changed any row.

        Rows are claimed and stamped in device id order, the order the ingest applies statuses in
        (cloud/ingest_store.py), so the two never wait on each other in a cycle; and they are published and
        stamped SEND_CHUNK at a time, each chunk's `sent_at` in its own short transaction right after the
        broker's acks, so a status the ingest applies meanwhile waits for a few hundred rows, not the
        whole fleet, and a chunk acknowledged is never published again for want of its stamp."""
        now = time.time()
        due = sorted((r for r in rows if r.wave <= deployment.current_wave
                      and (r.sent_at is None or _resend_due(r, strategy, now))), key=lambda r: r.device_id)
        base_url = self.public_url()
        if not due or not self.connected.is_set() or not base_url:  # not connected, or the API not yet bound
            return False
        with self.sessions.begin() as session:
            claimed = session.execute(update(Deployment).where(Deployment.id == deployment.id,
                                                               Deployment.state == "running")
                                      .values(updated_at=time.time())).rowcount
            if not claimed:
                return False
            wanted = {row.id: _command_id() for row in due if row.command_id is None}
            if wanted:  # one statement for all; a row another engine claimed since we read keeps its id
                table = DeploymentDevice.__table__
                session.execute(update(table).where(table.c.id == bindparam("row_id"), table.c.command_id.is_(None))
                                .values(command_id=bindparam("new_id")),
                                [{"row_id": i, "new_id": c} for i, c in wanted.items()])
                stored = dict(session.execute(select(DeploymentDevice.id, DeploymentDevice.command_id)
                                              .where(DeploymentDevice.id.in_(list(wanted)))).all())
                for row in due:
                    if row.id in wanted:
                        row.command_id = stored.get(row.id)
                # another engine's id: that engine sends it
                due = [row for row in due if row.id not in wanted or row.command_id == wanted[row.id]]
        with self.sessions() as session:
            bundle = session.scalar(select(BundleRecord).where(BundleRecord.name == deployment.bundle_name,
                                                               BundleRecord.version == deployment.bundle_version))
        if bundle is None:
            raise EdgefleetError(f"bundle {deployment.bundle_name} v{deployment.bundle_version} left the registry")
        total, again = 0, []
        for start in range(0, len(due), SEND_CHUNK):
            chunk = due[start:start + SEND_CHUNK]
            with self.sessions() as session:
                if session.scalar(select(Deployment.state).where(Deployment.id == deployment.id)) != "running":
                    return True  # aborted meanwhile: the ids stay unsent, and unsent devices get no rollback
                devices = {d.id: d for d in session.scalars(select(Device).where(
                    Device.id.in_([r.device_id for r in chunk])))}
            sent = self._publish([(row, devices[row.device_id].fleet,
                                   self._install(deployment, bundle, devices[row.device_id], row.command_id,
                                                 strategy, base_url)) for row in chunk])
            if sent:
                with self.sessions.begin() as session:
                    session.execute(update(DeploymentDevice), [
                        {"id": row.id, "sent_at": stamp} if row.sent_at is None else
                        {"id": row.id, "resent_at": stamp, "resends": (row.resends or 0) + 1} for row, stamp in sent])
                self._settle(sent)
            total += len(sent)
            again += [row.device_id for row, _ in sent if row.sent_at is not None]
        if total:
            log.info("deployment %s: sent install to %d device(s)%s", deployment.id, total,
                     f", again to {', '.join(again)} (no status yet)" if again else "")
        return True

    def _install(self, deployment: Deployment, bundle: BundleRecord, device: Device, command_id: str,
                 strategy: Strategy, base_url: str) -> Command:
        name, version = bundle.name, bundle.version
        url = signed_download_url(download_secret(self.settings, self.sessions), base_url, name, version, device.id,
                                  self.settings.download_url_ttl_seconds)
        authorization = None
        if device.model_name == name and device.model_version is not None and device.model_version >= version:
            if self.rollback_key is None:
                log.warning("deployment %s: %s runs %s v%d, not older than v%d, and no rollback key is set: "
                            "it will refuse the install", deployment.id, device.id, name, device.model_version,
                            version)
            else:
                validity = timedelta(seconds=self.settings.download_url_ttl_seconds)
                authorization = authorize_rollback(self.rollback_key, name, version, validity)
        return Command(
            id=command_id, op="install", deployment=deployment.id,
            bundle=BundleRef(name, version, url, bundle.sha256, bundle.size), max_bytes=bundle.size,
            timeout_seconds=strategy.download_timeout_seconds, health_window_seconds=strategy.health_window_seconds,
            latency_budget_ms=strategy.latency_budget_ms, mode=strategy.mode,
            canary_fraction=strategy.canary_fraction if strategy.mode == "canary" else 0.0,
            rollback_authorization=authorization, issued_at=time.time(),
        )

    def _send_rollbacks(self, deployment: Deployment, rows: list[DeploymentDevice], strategy: Strategy,
                        now: float) -> None:
        """Rollback, naming the deployment's bundle, to each device this deployment moved (see the module
        docstring), re-sent like installs while the device answers nothing; marks the rollback done once
        no device is undecided and every rollback was answered or re-sent max_resends times."""
        moved = strategy.mode == "switch"
        due = [r for r in rows if moved and r.state in MOVED_STATES
               and (r.rollback_sent_at is None or _rollback_resend_due(r, strategy, now))]
        if due:
            if not self.connected.is_set():
                return
            with self.sessions.begin() as session:
                for row in due:
                    if row.rollback_command_id is None:
                        row.rollback_command_id = _command_id()
                        session.execute(update(DeploymentDevice).where(DeploymentDevice.id == row.id)
                                        .values(rollback_command_id=row.rollback_command_id))
            with self.sessions() as session:
                fleets = dict(session.execute(select(Device.id, Device.fleet)
                                              .where(Device.id.in_([r.device_id for r in due]))).all())
            reason = deployment.reason or "deployment aborted"
            undo = BundleRef(deployment.bundle_name, deployment.bundle_version)
            commands = [(row, fleets[row.device_id], Command(id=row.rollback_command_id, op="rollback",
                                                             deployment=deployment.id, bundle=undo, reason=reason,
                                                             issued_at=time.time()))
                        for row in due]
            sent = self._publish(commands)
            if sent:
                with self.sessions.begin() as session:
                    session.execute(update(DeploymentDevice), [
                        {"id": row.id, "rollback_sent_at": stamp} if row.rollback_sent_at is None else
                        {"id": row.id, "rollback_resent_at": stamp, "rollback_resends": (row.rollback_resends or 0) + 1}
                        for row, stamp in sent])
                self._settle(sent)
                log.warning("deployment %s: sent rollback to %d device(s)", deployment.id, len(sent))
            if len(sent) < len(due):
                return
        horizon = self.settings.download_url_ttl_seconds + strategy.download_timeout_seconds \
            + strategy.health_window_seconds
        undecided = [r for r in rows if moved and r.sent_at is not None and r.rollback_sent_at is None
                     and r.state not in (*FAILED_STATES, *MOVED_STATES)
                     and now < (r.resent_at or r.sent_at) + horizon]
        unanswered = [r for r in rows if moved and r.rollback_sent_at is not None and r.state in MOVED_STATES
                      and (r.rollback_resends or 0) < strategy.max_resends]
        if undecided or unanswered:
            return  # a late install may still reach its switch, a lost rollback may need sending again
        with self.sessions.begin() as session:
            session.execute(update(Deployment).where(Deployment.id == deployment.id)
                            .values(rollback_done=True, updated_at=time.time()))

    def _publish(self, commands: list[tuple[DeploymentDevice, str, Command]]) -> list[tuple[DeploymentDevice, float]]:
        """Publishes each command (QoS 1) and returns the rows whose command the broker acknowledged.

        Each publish is held (`_held`) until the caller stored its `sent_at` (`_settle`): a command still in
        paho's queue when PUBLISH_TIMEOUT ran out (a loaded machine, a slow broker), or one acknowledged
        whose stamp failed (SQLite busy, a deadlock victim), is waited for or counted as sent on the next
        call instead of being published again (each such copy reached the device as a second command).
        One held for PENDING_LIMIT seconds without being settled is published anew."""
        now = time.monotonic()
        self._held = {k: v for k, v in self._held.items() if now - v[1] < PENDING_LIMIT}
        pending = []
        for row, fleet, command in commands:
            key = (row.id, command.id)
            earlier = self._held.get(key)
            if earlier is not None:
                pending.append((row, key, earlier))
                continue
            info = self._client.publish(topic(fleet, row.device_id, "cmd"), command.to_payload(), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("rollouts: publishing to %s failed: %s", row.device_id, mqtt.error_string(info.rc))
                continue
            self._held[key] = (info, time.monotonic())
            pending.append((row, key, self._held[key]))
        deadline = time.monotonic() + PUBLISH_TIMEOUT
        acknowledged = []
        for row, _key, (info, _queued) in pending:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as err:
                log.warning("rollouts: command to %s not acknowledged: %s", row.device_id, err)
                continue
            if info.is_published():
                acknowledged.append((row, time.time()))
        return acknowledged

    def _settle(self, sent: list[tuple[DeploymentDevice, float]]) -> None:
        """The rows' `sent_at` (or resend) is stored: their publishes need holding no longer."""
        rows = {row.id for row, _ in sent}
        self._held = {key: value for key, value in self._held.items() if key[0] not in rows}

    # database ------------------------------------------------------------------------------------------
    def _load(self, deployment_id: str) -> tuple[Deployment, list[DeploymentDevice]]:
        with self.sessions() as session:
            deployment = session.get(Deployment, deployment_id)
            rows = list(session.scalars(select(DeploymentDevice)
                                        .where(DeploymentDevice.deployment_id == deployment_id)
                                        .order_by(DeploymentDevice.rank)))
        return deployment, rows

    def _transition(self, deployment_id: str, from_states: tuple[str, ...], wave: int, **values: object) -> bool:
        """Compare-and-set: applies `values` only if the deployment is still in one of `from_states` and at
        `wave` (the state and wave the caller read)."""
        with self.sessions.begin() as session:
            changed = session.execute(update(Deployment).where(Deployment.id == deployment_id,
                                                               Deployment.state.in_(from_states),
                                                               Deployment.current_wave == wave)
                                      .values(updated_at=time.time(), **values)).rowcount
        return changed == 1


def _resend_due(row: DeploymentDevice, strategy: Strategy, now: float) -> bool:
    """An install went out, no status of the device answered it, and the resend interval has passed."""
    return (row.state == "pending" and row.status_seq is None and (row.resends or 0) < strategy.max_resends
            and now >= (row.resent_at or row.sent_at) + strategy.resend_interval_seconds)


def _rollback_resend_due(row: DeploymentDevice, strategy: Strategy, now: float) -> bool:
    """A rollback went out and the device still reports only the install's switch (no rollback status)."""
    return ((row.rollback_resends or 0) < strategy.max_resends
            and now >= (row.rollback_resent_at or row.rollback_sent_at) + strategy.resend_interval_seconds)


def _command_id() -> str:
    return f"c-{secrets.token_hex(8)}"
