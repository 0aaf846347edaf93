"""When a retraining policy's trigger fires, read through the cloud API (so a watcher runs anywhere):

- drift: an open alert of kind data_drift, prediction_drift or sequential_drift for the policy's model in
  its fleet (any device of it, or the fleet as a whole);
- performance: an open alert of kind estimated_accuracy or performance_drop, likewise;
- schedule: `every` seconds after the policy's last run started (at once when it never ran);
- manual: never (`edgefleet loop run` only).

An alert fires once, and only when it opened after the policy's last run started: a run recorded with
its id in `trigger.alert_id` (whatever its outcome) uses it up, so a failed run is not retried in a loop on
the same alert, and the alerts other devices of the fleet raised for the same condition before that run
started are covered by it (each device's drift is its own alert: four drifting cameras must not retrain
four times). An alert opened later (the condition came back, or a new one) fires again. The oldest such
alert fires first.

Readiness: before it runs, the watcher counts the labelled rows a run's dataset stage would freeze now
(POST /api/v1/datasets/count); while they are fewer than the policy's `min_samples` (the labels have not
arrived yet) it records nothing, keeps the count in `waiting` and checks again next interval. A run the
dataset stage stopped anyway (`edgefleet loop run`, or labels deleted in between) uses nothing up either.

    watcher = LoopWatcher(policy, client, trust, interval=10.0, workdir=Path("runs/loop")).start()
    ...
    watcher.stop()

LoopWatcher checks every `interval` seconds in its own thread and runs the policy there (one run at a time,
so a run never overlaps the next check); a failure to reach the cloud is logged and retried next time.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from edgefleet.cloud.loop.policy import Policy
from edgefleet.cloud.loop.runner import RunOutcome, dataset_filter, run_policy
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.signing import TrustStore

log = logging.getLogger(__name__)
ALERT_KINDS = {"drift": ("data_drift", "prediction_drift", "sequential_drift"),
               "performance": ("estimated_accuracy", "performance_drop")}


def due_trigger(policy: Policy, client: CloudClient, now: float | None = None) -> dict | None:
    """The trigger to run the policy with now ({"kind", "alert_id"?, ...}), or None."""
    if policy.trigger == "manual":
        return None
    runs = client.get(f"/api/v1/loop/runs?policy={policy.name}&limit=500")
    if policy.trigger == "schedule":
        last = max((run["started_at"] for run in runs), default=None)
        moment = time.time() if now is None else now
        if last is None or moment - last >= policy.every_s:
            return {"kind": "schedule", "last_run_at": last}
        return None
    runs = [run for run in runs if not _too_early(run)]
    used = {(run.get("trigger") or {}).get("alert_id") for run in runs}
    last = max((run["started_at"] for run in runs), default=float("-inf"))
    alerts = [a for a in client.get("/api/v1/alerts?status=open")
              if a["kind"] in ALERT_KINDS[policy.trigger] and a["model_name"] == policy.model
              and a["fleet"] == policy.fleet and a["id"] not in used and a["opened_at"] > last]
    if not alerts:
        return None
    alert = min(alerts, key=lambda a: (a["opened_at"], a["id"]))
    return {"kind": policy.trigger, "alert_id": alert["id"], "alert_kind": alert["kind"],
            "scope": f"{alert['scope']} {alert['scope_id']}", "model_version": alert["model_version"],
            "opened_at": alert["opened_at"]}


def _too_early(run: dict) -> bool:
    """A run stopped at its dataset stage (too few labelled samples yet) does not use its alert up."""
    stages = run.get("stages") or []
    return run["state"] == "stopped" and bool(stages) and stages[-1]["name"] == "dataset"


class LoopWatcher:
    """Runs the policy each time its trigger fires (module docstring)."""

    def __init__(self, policy: Policy, client: CloudClient, trust: TrustStore, *, interval: float = 10.0,
                 workdir: Path = Path("runs/loop")) -> None:
        self.policy, self.client, self.trust, self.interval, self.workdir = policy, client, trust, interval, workdir
        self.outcomes: list[RunOutcome] = []
        self.waiting: dict | None = None  # the trigger that fired and the labelled rows it waits for, or None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"loop-{policy.name}", daemon=True)

    def start(self) -> LoopWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops checking; a run in progress finishes first (up to `timeout`)."""
        self._stop.set()
        self._thread.join(timeout)

    def check_once(self) -> RunOutcome | None:
        trigger = due_trigger(self.policy, self.client)
        if trigger is None:
            return None
        rows = self.client.post_json("/api/v1/datasets/count", dataset_filter(self.policy))["rows"]
        if rows < self.policy.dataset.min_samples:
            if self.waiting is None:
                log.info("policy %s: trigger %s fired; waiting for %d labelled rows", self.policy.name, trigger,
                         self.policy.dataset.min_samples)
            self.waiting = {"trigger": trigger, "rows": rows, "needed": self.policy.dataset.min_samples,
                            "since": (self.waiting or {}).get("since", time.time())}
            return None
        self.waiting = None
        log.info("policy %s: trigger %s fired; running it", self.policy.name, trigger)
        outcome = run_policy(self.policy, self.client, trust=self.trust, workdir=self.workdir, trigger=trigger,
                             progress=lambda text: log.info("loop %s: %s", self.policy.name, text))
        log.info("policy %s: run %s %s%s", self.policy.name, outcome.run_id, outcome.state,
                 f" ({outcome.reason})" if outcome.reason else "")
        self.outcomes.append(outcome)
        return outcome

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except EdgefleetError as err:  # the cloud unreachable or refusing: tried again next interval
                log.warning("policy %s: %s", self.policy.name, err)
            self._stop.wait(self.interval)


def serve_policies(server, policies: list[Policy], interval: float = 10.0) -> list[LoopWatcher]:  # noqa: ANN001
    """`cloud up --loop`: a watcher per policy on this cloud's own API, with an admin token named "loop" made
    for this start (the process never sees another's token); runs write under the data directory."""
    from edgefleet.cloud.auth import create_token

    if not server.serves_http:
        raise EdgefleetError("--loop needs the API in this process (role all or api)")
    client = CloudClient(server.url, create_token(server.sessions, name="loop"))
    watchers = []
    for policy in policies:
        trust = TrustStore.from_paths(list(policy.trust) or list(server.settings.trusted_keys))
        watchers.append(LoopWatcher(policy, client, trust, interval=interval,
                                    workdir=server.settings.data_dir / "loop").start())
    return watchers
