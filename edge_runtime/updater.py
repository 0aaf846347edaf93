"""The OTA updater: one install or rollback at a time, as a journaled state machine that survives kill -9.

(Crash recovery lives in update_recovery.py, health checks in health.py, slots in slots.py, downloads in
download.py, the job record, rollback refusals and failure codes in update_job.py.)

    updater = Updater(store, host, trust=trust, workdir=data_dir / "incoming", report=send_status,
                      fleet="lab", device="pi-07", make_predictor=load)
    updater.recover()                 # at start-up, before the first command
    updater.handle(parse_command(payload))

`handle` runs the command on a worker thread and reports a Status at every stage, in order:

    received -> downloading -> verifying -> self_testing -> switching -> health_check -> active
    (any stage before the switch fails to) failed          (the health window fails to) rolled_back

- downloading: `download` into workdir (max_bytes and timeout from the command; a `.partial` resumes).
- verifying: `store.install` (unpack limit UNPACKED_RATIO x max_bytes, as the cloud's upload check, and at
  least core/archive.py's RATIO_FLOOR: a small model whose manifest carries its evaluation reports, JSON that
  compresses ~10x, unpacked to more than 4x its archive and was refused),
  with the command's rollback_authorization; a version not newer than the current one is refused.
- self_testing: a Predictor on the new slot must pass `self_test()`, and after `warmup_runs` the p99
  of `golden_runs` timed single-example runs must be within the command's latency_budget_ms.
- switching: `store.activate` (atomic link rename) then `host.swap` (no request fails). The old
  predictor is kept open, so that a failed health window swaps back instantly.
- health_check: for health_window_seconds, the new model's live error rate (errors over requests that
  were not rejected as malformed) and p99 latency against HealthPolicy and the command's budget, then a
  self-test. Fewer than `min_requests` live requests are not judged; the final self-test still is.
- active: `store.clean()` keeps current, previous and the `keep` newest installs.
Before the switch a failure reports "failed" (reason: a short code, detail.message the text); the old
model never stopped serving and the new slot is deleted. In the health window it reports "rolled_back":
store.rollback() and a swap back to the old predictor. A second command while one runs is refused at
once with "failed", reason "busy". `op: rollback` swaps to the previous slot and reports rolled_back, only
if the current slot is the bundle the command names (else "failed": "not_current", "unnamed_rollback",
or "no_previous" without a previous slot). An archive that is not the bundle its command names fails
at verifying with "bundle_mismatch".

Mode "shadow"/"canary": switching starts the test on the host instead (the current slot is untouched)
and reports "active" with detail {"mode", "phase": "testing"}. After health_window_seconds the test
stops and a second status follows: "active" with {"phase": "report", "report": <shadow/canary report>}
if the candidate's errors and latency passed the health policy (its slot stays installed, not active),
or "rolled_back" with the reason (its slot is deleted; every request is the old model's again).

Journal and crash recovery: see update_recovery.py (`recover()` at start-up).

`make_predictor(path)` must return a Predictor without telemetry: the host enables telemetry on a model
when it starts answering users (shadow candidates get none).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.core.archive import RATIO_FLOOR
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.ota import BundleRef, Command, Status, check_rollback_authorization
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime.download import download
from edgefleet.edge_runtime.health import HealthPolicy, UpdateFailed, candidate_stats, golden_latency_p99, judge
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.slots import Slot, SlotStore
from edgefleet.edge_runtime.update_job import (
    Job,
    archive_name,
    as_failure,
    command_record,
    jsonable,
    partial_path,
    rollback_refusal,
)
from edgefleet.edge_runtime.update_recovery import Recovery

log = logging.getLogger(__name__)

__all__ = ["HealthPolicy", "UpdateFailed", "Updater"]

UNPACKED_RATIO = 4  # an archive may unpack to this many times the command's max_bytes (as the cloud checks)
DELETED = ".tmp-del-"  # the slot store's prefix for a deletion in progress (removed at its next start)


class _Stopped(Exception):
    """Updater.close() cut a health window short; the journal stays for recover()."""


class Updater(Recovery):
    def __init__(
        self,
        store: SlotStore,
        host: ModelHost,
        *,
        trust: TrustStore,
        workdir: Path,
        report: Callable[[Status], None],
        fleet: str,
        device: str,
        make_predictor: Callable[[Path], Predictor],
        health: HealthPolicy = HealthPolicy(),  # noqa: B008 - frozen, so one shared default is safe
        ca: Path | None = None,  # a PEM bundle for https downloads from a cloud with a private CA's certificate
    ) -> None:
        self.store, self.host, self.trust = store, host, trust
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._report_to = report
        self.fleet, self.device = fleet, device
        self.make_predictor = make_predictor
        self.health = health
        self.ca = ca
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    # commands --------------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        worker = self._worker
        return worker is not None and worker.is_alive()

    def handle(self, command: Command) -> bool:
        """Starts the command on the worker thread. Returns False, having reported "failed"/"busy", if an
        update is running already."""
        with self._lock:
            if self.busy:
                log.warning("command %s refused: an update is running", command.id)
                self._report(command, "failed", reason="busy",
                             detail={"message": "another update is in progress on this device"})
                return False
            work = self._install if command.op == "install" else self._rollback_command
            self._worker = threading.Thread(target=self._run, args=(work, command), name="ota-update", daemon=True)
            self._worker.start()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the running command (or recovery); True if none is running any more."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.busy

    def close(self, timeout: float = 10.0) -> None:
        """Stops a health window in progress without deciding (the journal stays for recover())."""
        self._stop.set()
        self.wait(timeout)

    def _run(self, work: Callable[..., None], *args: object) -> None:
        try:
            work(*args)
        except _Stopped:
            log.warning("update stopped during its health window; recover() will finish it")
        except Exception as err:  # noqa: BLE001 - the worker must report, never die silently
            log.exception("update failed unexpectedly")
            self._give_up(err)

    def _give_up(self, err: Exception) -> None:
        """After an unexpected error: serve whatever `current` names (always a whole slot), report failed."""
        job = self._job
        if job is None or job.record.get("stage") in ("active", "failed", "rolled_back"):
            return
        stage = job.record.get("stage")
        try:
            current = self.store.current()
            if current is not None:
                self._serve(current)
            self._final(job, "failed", reason=as_failure(err, stage).reason,
                        detail={"stage": stage, "message": f"{type(err).__name__}: {err}"})
        except Exception:  # noqa: BLE001 - the journal stays; recover() at the next start finishes it
            log.exception("could not settle update %s after an unexpected error", job.command.id)

    # install ---------------------------------------------------------------------------------------------
    def _install(self, command: Command) -> None:
        current = self.store.current()
        job = self._job = Job(command, {"command": command_record(command), "mode": command.mode,
                                         "old_slot": current.id if current else None, "new_slot": None})
        try:
            self._stage(job, "received")
            if self._already_active(job, current):
                return
            self._precheck(job, current)
            archive = self._download(job)
            self._verify(job, archive)
            self._self_test_new(job)
        except Exception as err:  # noqa: BLE001 - every failure before the switch ends the same way
            self._fail(job, as_failure(err, job.record["stage"]))
            return
        if command.mode == "switch":
            self._switch(job)
        else:
            self._test(job)

    def _already_active(self, job: Job, current: Slot | None) -> bool:
        """A repeated command (MQTT QoS 1 may deliver twice) for the model already served: active again."""
        ref = job.command.bundle
        if ref is None or current is None or job.command.mode != "switch":
            return False
        if (current.name, current.version) != (ref.name, ref.version):
            return False
        self._final(job, "active", detail={"slot": current.id, "already_active": True})
        return True

    def _precheck(self, job: Job, current: Slot | None) -> None:
        """Refuses before downloading what would be refused after it."""
        command, ref = job.command, job.command.bundle
        if ref is None:
            raise UpdateFailed("bad_command", "an install command needs a bundle")
        if command.rollback_authorization is not None:
            check_rollback_authorization(command.rollback_authorization, self.trust, ref.name, ref.version)
        elif current is not None and current.name == ref.name and ref.version <= current.version:
            raise UpdateFailed("not_newer", f"{ref.name} v{ref.version} is not newer than the installed "
                                            f"v{current.version}")

    def _download(self, job: Job) -> Path:
        command, ref = job.command, job.command.bundle
        dest = self.workdir / archive_name(ref)
        self._clean_workdir(keep=(dest, partial_path(dest)))
        self._stage(job, "downloading", {"url": ref.url, "size": ref.size or None})
        started = time.monotonic()
        archive = download(ref.url, dest, max_bytes=command.max_bytes, expected_sha256=ref.sha256 or None,
                           expected_size=ref.size or None, timeout_seconds=command.timeout_seconds, ca=self.ca)
        job.detail["download_seconds"] = round(time.monotonic() - started, 3)
        return archive

    def _verify(self, job: Job, archive: Path) -> None:
        job.record["slots_before"] = [slot.id for slot in self.store.slots()]
        self._stage(job, "verifying", {"bytes": archive.stat().st_size})
        ref = job.command.bundle
        slot = self.store.install(archive, max_bytes=max(job.command.max_bytes * UNPACKED_RATIO, RATIO_FLOOR),
                                  rollback_authorization=job.command.rollback_authorization,
                                  expected=(ref.name, ref.version))
        job.new_slot = slot
        job.record["new_slot"] = slot.id
        archive.unlink(missing_ok=True)

    def _self_test_new(self, job: Job) -> None:
        self._stage(job, "self_testing", {"slot": job.new_slot.id})
        job.predictor = self.make_predictor(job.new_slot.path)
        job.detail.update(self._self_test(job.predictor, job.command.latency_budget_ms))

    def _self_test(self, predictor: Predictor, budget_ms: float | None, *, timed: bool = True) -> dict:
        report = predictor.self_test()
        summary = {"passed": report.passed, "examples": report.examples, "max_abs_error": report.max_abs_error}
        if not report.passed:
            raise UpdateFailed("self_test_failed", "; ".join(report.failures), {"self_test": summary})
        if not timed:
            return {"self_test": summary}
        p99 = golden_latency_p99(predictor, self.health)
        result = {"self_test": summary, "golden_latency_p99_ms": round(p99, 4)}
        if budget_ms is not None and p99 > budget_ms:
            raise UpdateFailed("latency_budget", f"golden p99 latency {p99:.3f} ms is over the budget of "
                                                 f"{budget_ms:g} ms", result)
        return result

    # switch and health window ------------------------------------------------------------------------------
    def _switch(self, job: Job) -> None:
        self._stage(job, "switching", {"from": job.record["old_slot"], "to": job.new_slot.id})
        try:
            self.store.activate(job.new_slot)
            job.old_predictor = self.host.swap(job.predictor)
        except Exception as err:  # noqa: BLE001 - the switch did not happen: undo the link, report failed
            self._undo_switch(job)
            self._fail(job, as_failure(err, "switching"))
            return
        job.predictor = None  # it serves now; the host owns it
        self._stage(job, "health_check", {"window_seconds": job.command.health_window_seconds})
        self._health(job)

    def _undo_switch(self, job: Job) -> None:
        with contextlib.suppress(Exception):
            current = self.store.current()
            if current is not None and current.id == job.new_slot.id:
                self.store.rollback()
        if job.old_predictor is not None and self.host.current is not job.old_predictor:
            self.host.swap(job.old_predictor)

    def _health(self, job: Job) -> None:
        """The health window of a switched model (its status is reported), then active or rolled_back."""
        self._job = job
        served = self.host.current
        failure = self._watch(job, lambda: self.host.stats() if self.host.current is served else None)
        if failure is None:
            try:
                self._self_test(served, None, timed=False)  # timed runs would count as its live traffic
            except Exception as err:  # noqa: BLE001 - a model that cannot self-test now is not healthy
                failure = as_failure(err, "health_check")
        if failure is not None:
            self._roll_back(job, failure)
            return
        old = job.old_predictor
        self._final(job, "active", detail={"slot": job.record["new_slot"], **job.detail})
        if old is not None:
            old.close()  # swap() returned it idle; kept only for an instant swap back

    def _watch(self, job: Job, stats: Callable[[], dict | None]) -> UpdateFailed | None:
        """Watches live traffic for the command's health window; None if healthy."""
        policy = self.health
        deadline = time.monotonic() + job.command.health_window_seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(policy.poll_seconds, remaining)):
                raise _Stopped()
            current = stats()
            if current is None:
                return UpdateFailed("replaced", "the model under test stopped serving during its health window")
            failure = judge(current, policy, job.command.latency_budget_ms, latency=False)
            if failure is not None:
                return failure
        current = stats()
        job.detail["health"] = current
        if current is None:
            return UpdateFailed("replaced", "the model under test stopped serving during its health window")
        return judge(current, policy, job.command.latency_budget_ms, latency=True)

    def _roll_back(self, job: Job, failure: UpdateFailed) -> None:
        """Back to the old slot and model after a failed health window (also used by recover())."""
        log.warning("update %s: %s; rolling back", job.command.id, failure)
        job.record.update(target_slot=job.record["old_slot"], from_slot=job.record["new_slot"], remove_from=True,
                          reason=failure.reason, message=str(failure), failure_detail=failure.detail)
        self._finish_rollback(job)

    def _finish_rollback(self, job: Job, old_predictor: Predictor | None = None) -> None:
        record = job.record
        record["stage"] = "rolling_back"
        self.store.write_journal(record)
        target = self._slot(record["target_slot"])
        if target is None:
            raise EdgefleetError(f"cannot roll back: slot {record['target_slot']} is gone")
        current = self.store.current()
        if current is None or current.id != target.id:
            previous = self.store.previous()
            if previous is not None and previous.id == target.id:
                self.store.rollback()
            else:
                self.store.activate(target)
        self._serve(target, old_predictor or job.old_predictor)
        if record.get("remove_from"):
            self._remove_slot(record["from_slot"])
        detail = {"slot": target.id, "message": record.get("message"), **(record.get("failure_detail") or {})}
        self._final(job, "rolled_back", reason=record.get("reason"), detail=detail,
                    bundle=BundleRef(target.name, target.version) if job.command.op == "rollback" else None)

    # shadow and canary -------------------------------------------------------------------------------------
    def _test(self, job: Job) -> None:
        command = job.command
        self._stage(job, "switching", {"mode": command.mode, "candidate": job.new_slot.id})
        candidate, job.predictor = job.predictor, None
        if command.mode == "shadow":
            self.host.start_shadow(candidate)
        else:
            self.host.start_canary(candidate, command.canary_fraction)
        job.record["stage"] = "testing"
        self.store.write_journal(job.record)
        self._report(command, "active", detail={"mode": command.mode, "phase": "testing",
                                                "window_seconds": command.health_window_seconds,
                                                "candidate": job.new_slot.id})
        try:
            failure = self._watch(job, lambda: candidate_stats(self.host))
        finally:
            report = self.host.stop_test(close=True)
        detail = {"mode": command.mode, "phase": "report", "report": report, "candidate": job.new_slot.id}
        if failure is not None:
            self._remove_slot(job.new_slot.id)
            self._final(job, "rolled_back", reason=failure.reason, detail={**detail, "message": str(failure)})
        else:
            self._final(job, "active", detail=detail)

    # rollback command -------------------------------------------------------------------------------------
    def _rollback_command(self, command: Command) -> None:
        current, previous = self.store.current(), self.store.previous()
        job = self._job = Job(command, {"command": command_record(command), "mode": "switch",
                                         "old_slot": current.id if current else None, "new_slot": None})
        self._stage(job, "received")
        refusal = rollback_refusal(command, current, previous)
        if refusal is not None:
            log.warning("rollback %s refused: %s", command.id, refusal)
            self._final(job, "failed", reason=refusal.reason, detail={"message": str(refusal)})
            return
        try:
            predictor = self.make_predictor(previous.path)
            self._self_test(predictor, None, timed=False)
        except Exception as err:  # noqa: BLE001 - the previous model cannot serve: keep the current one
            self._final(job, "failed", reason=as_failure(err, "received").reason, detail={"message": str(err)})
            return
        job.record.update(target_slot=previous.id, from_slot=job.record["old_slot"], remove_from=False,
                          reason=command.reason or "rollback command", message=command.reason or None)
        self._finish_rollback(job, predictor)

    # plumbing --------------------------------------------------------------------------------------------
    _last: Status | None = None  # the last status reported (what recover() returns)
    _job: Job | None = None  # the job the worker runs

    def _stage(self, job: Job, stage: str, detail: dict | None = None) -> None:
        """Journal first, then report: after a crash the journal names the stage that was under way."""
        job.record["stage"] = stage
        self.store.write_journal(job.record)
        self._report(job.command, stage, detail=detail or {})

    def _fail(self, job: Job, failure: UpdateFailed) -> None:
        stage = job.record["stage"]
        log.warning("update %s failed at %s: %s", job.command.id, stage, failure)
        if job.predictor is not None:
            job.predictor.close()
            job.predictor = None
        for slot_id in self._job_slots(job):
            self._remove_slot(slot_id)
        self._final(job, "failed", reason=failure.reason,
                    detail={"stage": stage, "message": str(failure), **failure.detail})

    def _final(self, job: Job, state: str, *, reason: str | None = None, detail: dict | None = None,
               bundle: BundleRef | None = None) -> None:
        """Journals the final state, cleans up, reports it, clears the journal."""
        detail = jsonable(detail or {})
        job.record.update(stage=state, reason=reason, final_detail=detail)
        self.store.write_journal(job.record)
        if state == "active":
            deleted = self.store.clean()
            if deleted:
                detail["deleted_slots"] = [slot.id for slot in deleted]
        self._clean_workdir(keep=self._resumable(job) if state != "active" else ())
        self._report(job.command, state, reason=reason, detail=detail, bundle=bundle)
        self.store.clear_journal()

    def _report(self, command: Command, state: str, *, reason: str | None = None, detail: dict | None = None,
                bundle: BundleRef | None = None) -> None:
        ref = bundle or command.bundle
        status = Status(self.fleet, self.device, command.id, command.deployment, state,
                        BundleRef(ref.name, ref.version) if ref else None, reason, jsonable(detail or {}),
                        time.time())
        self._last = status
        log.info("update %s: %s%s", command.id, state, f" ({reason})" if reason else "")
        try:
            self._report_to(status)
        except Exception:  # noqa: BLE001 - a broken transport must not break the update
            log.exception("reporting status %s of %s failed", state, command.id)

    def _serve(self, slot: Slot, predictor: Predictor | None = None) -> None:
        """Makes the host serve `slot` (whole: the swap is atomic), unless it does already."""
        if Path(self.host.current.bundle.root).resolve() == slot.path.resolve():
            if predictor is not None and predictor is not self.host.current:
                predictor.close()
            return
        self.host.swap(predictor or self.make_predictor(slot.path), close_old=True)

    def _slot(self, slot_id: str | None) -> Slot | None:
        return next((slot for slot in self.store.slots() if slot.id == slot_id), None)

    def _remove_slot(self, slot_id: str | None) -> None:
        """Deletes a slot this update installed, unless current or previous points at it."""
        slot = self._slot(slot_id)
        if slot is None:
            return
        protected = {s.id for s in (self._current_or_none(), self.store.previous()) if s is not None}
        if slot.id in protected:
            log.warning("not deleting slot %s: it is current or previous", slot.id)
            return
        doomed = slot.path.with_name(f"{DELETED}{slot.id}")
        os.rename(slot.path, doomed)  # out of sight first: a crash mid-delete leaves only a leftover
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted slot %s", slot.id)

    def _current_or_none(self) -> Slot | None:
        try:
            return self.store.current()
        except EdgefleetError:
            return None

    def _resumable(self, job: Job) -> tuple[Path, ...]:
        ref = job.command.bundle
        return (partial_path(self.workdir / archive_name(ref)),) if ref else ()

    def _clean_workdir(self, keep: tuple[Path, ...] = ()) -> None:
        for path in self.workdir.iterdir():
            if path in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
