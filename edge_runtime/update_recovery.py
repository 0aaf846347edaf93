"""Crash recovery for the OTA updater (updater.py): what `recover()` does with the journal at start-up.

Journal: before each stage the whole job (command, stage, slot ids) is written with
`store.write_journal`; the journal is cleared after the final status. `recover()` at start-up reads
it and applies these rules (the Status it reports carries detail.interrupted_at):

- no journal: make the host serve store.current(); nothing to report.
- interrupted before the switch (received .. self_testing, or switching with `current` still the old
  slot): the old model serves; slots the job installed are deleted; "failed", reason
  "interrupted at <stage>". A `.partial` download of that command is kept (the next command for the
  same bundle resumes it; download() checks size and sha256 anyway); other workdir files are deleted.
- interrupted after the switch (switching with `current` already the new slot, or health_check): the
  new model was self-tested before the switch, but its health window was cut short, and the crash may
  have been its fault. The host serves the new slot, self-tests it, and re-runs the whole health window
  (a "health_check" status, then "active" or "rolled_back"), at most `max_health_retries` times; a
  further interruption there rolls back: "rolled_back", reason "interrupted at health_check again".
- interrupted in a shadow/canary test: the candidate slot is deleted and the old model serves:
  "rolled_back", reason "interrupted at testing".
- interrupted while rolling back: the rollback is completed, "rolled_back" with its original reason.
- interrupted after the final stage was journaled: its cleanup is redone and its status re-sent.

Recovery is a mixin of Updater: it uses the updater's store, health policy, worker thread and its
stage/final/rollback/serve steps, so that each rule here reads as the same steps the live update takes.
"""

from __future__ import annotations

import logging
import threading

from edgefleet.core.ota import BundleRef, Status
from edgefleet.edge_runtime.health import UpdateFailed
from edgefleet.edge_runtime.slots import Slot
from edgefleet.edge_runtime.update_job import Job, as_failure, command_from_record

log = logging.getLogger(__name__)

PRE_SWITCH = ("received", "downloading", "verifying", "self_testing")


class Recovery:
    def recover(self) -> Status | None:
        """At start-up: finishes or undoes an update that a crash interrupted (see the module docstring).
        Returns the Status it reported (None if there was nothing to recover); a re-run health window
        continues on the worker thread (wait() for it)."""
        record = self.store.read_journal()
        if record is None:
            current = self.store.current()
            if current is not None:
                self._serve(current)
            return None
        stage = str(record.get("stage"))
        job = Job(command_from_record(record["command"]), record)
        log.warning("recovering update %s interrupted at %s", job.command.id, stage)
        current = self.store.current()
        new_id = record.get("new_slot")
        switched = current is not None and new_id is not None and current.id == new_id
        if stage in ("active", "failed", "rolled_back"):
            return self._recover_final(job, stage)
        if stage == "rolling_back":
            self._finish_rollback(job)
            return self._last
        if stage == "testing":
            return self._recover_before_switch(job, "rolled_back", current)
        if stage in PRE_SWITCH or (stage == "switching" and not switched):
            return self._recover_before_switch(job, "failed", current)
        if stage in ("switching", "health_check") and switched:
            return self._recover_health(job, stage, current)
        # health_check but current is not the new slot: something else changed the links; serve it
        return self._recover_before_switch(job, "failed", current)

    def _recover_before_switch(self, job: Job, state: str, current: Slot | None) -> Status:
        stage = job.record["stage"]
        if current is not None:
            self._serve(current)
        for slot_id in self._job_slots(job):
            if current is None or slot_id != current.id:
                self._remove_slot(slot_id)
        self._final(job, state, reason=f"interrupted at {stage}", detail={"interrupted_at": stage})
        return self._last

    def _recover_health(self, job: Job, stage: str, current: Slot) -> Status:
        record = job.record
        recoveries = int(record.get("recoveries", 0))
        try:
            self._serve(current)
        except Exception as err:  # noqa: BLE001 - the new model cannot even load: back to the old one
            self._roll_back(job, as_failure(err, stage))
            return self._last
        if recoveries >= self.health.max_health_retries:
            self._roll_back(job, UpdateFailed(f"interrupted at {stage} again",
                                              f"the health window was interrupted {recoveries + 1} times",
                                              {"interrupted_at": stage}))
            return self._last
        record["recoveries"] = recoveries + 1
        self._stage(job, "health_check", {"window_seconds": job.command.health_window_seconds,
                                          "interrupted_at": stage, "recoveries": recoveries + 1})
        status = self._last
        with self._lock:
            self._worker = threading.Thread(target=self._run, args=(self._health, job), name="ota-recover",
                                            daemon=True)
            self._worker.start()
        return status

    def _recover_final(self, job: Job, stage: str) -> Status:
        record = job.record
        if stage == "failed":
            for slot_id in self._job_slots(job):
                self._remove_slot(slot_id)
        current = self.store.current()
        if current is not None:
            self._serve(current)
        target = self._slot(record.get("target_slot")) if job.command.op == "rollback" else None
        self._final(job, stage, reason=record.get("reason"), detail=record.get("final_detail") or {},
                    bundle=BundleRef(target.name, target.version) if target else None)
        return self._last

    def _job_slots(self, job: Job) -> list[str]:
        """Slots this job installed: its new slot, and any that appeared after it journaled slots_before
        (an install that completed just before the crash, before its id was journaled)."""
        record = job.record
        found = [record["new_slot"]] if record.get("new_slot") else []
        if "slots_before" in record:
            before = set(record["slots_before"])
            found += [s.id for s in self.store.slots() if s.id not in before and s.id not in found]
        return found
