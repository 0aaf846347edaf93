"""The loop closed in the main job: a drifted fleet retrained and moved to v2 by a watcher, no human in between.

    python examples/loop_demo.py --bundle runs/digits/bundle --keys runs/keys --workdir runs/loop

1. starts the cloud (embedded broker, SQLite) and four device agents serving the bundle (v1) and capturing
   half their requests (at most 3 a second each) for the fleet's datasets;
2. turns half the live traffic brighter by 0.5 (a new lighting condition v1 gets mostly wrong); each answer's
   true label reaches the cloud's feedback API 2 s later, as from a labelling team;
3. a LoopWatcher (what `edgefleet cloud up --loop POLICY` runs) sees the drift alert, waits until the
   policy's 400 labelled rows are there, and runs it: freeze the dataset, retrain from scratch
   (examples/loop_train_digits.py), dynamic int8, onnxruntime, offline evaluation against v1, push, and a
   two-wave rollout whose canaries are judged on their measured accuracy against the control;
4. prints each device's accuracy on the bright digits before and after, and the time of every stage;
5. runs the policy twice more with a careless training function (labels shuffled, examples/loop_train_digits.py):
   the offline evaluation stops it, and forced past that, the canary's accuracy gate stops it and rolls the
   canaries back to v2. The demo fails if either bad candidate gets through.

benchmarks/bench_loop.py runs the same scenario and prints the figures as JSON. One run on a shared machine:
the times describe this run, not a rate.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import httpx
from loop_fleet import LabelledTraffic, brighter, device_accuracy, start_agents, write_policy
from rich.console import Console
from rich.table import Table

from edgefleet.cloud.digits import load_splits
from edgefleet.cloud.loop.policy import load_policy
from edgefleet.cloud.loop.runner import run_policy
from edgefleet.cloud.loop.trigger import LoopWatcher
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.api_client import CloudClient
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import TrustStore

TIMEOUT = 900.0  # seconds from the drift to the watcher's first run; a run past it is a bug, not a slow host
EXAMPLES = Path(__file__).resolve().parent


def run_scenario(work: Path, bundle: Path, public: Path, private: Path) -> dict:
    """Runs the scenario once under `work`; returns the first run's record, the stage times and the accuracy
    per device on the bright digits before and after."""
    if str(EXAMPLES.parent) not in sys.path:
        sys.path.insert(0, str(EXAMPLES.parent))  # the policy's "examples.loop_train_digits:retrain"
    splits = load_splits()
    settings = load_settings(data_dir=work / "cloud", port=0, mqtt_port=0, trusted_keys=[public],
                             rollout_interval_seconds=0.2, drift_interval_seconds=1.0)
    data = {"private_key": private, "public_key": public, "x_train": splits.x_train, "y_train": splits.y_train,
            "x_test": splits.x_test, "y_test": splits.y_test}
    policy = load_policy(write_policy(work / "policy", function="examples.loop_train_digits:retrain", **data))
    careless = load_policy(write_policy(work / "careless", function="examples.loop_train_digits:careless",
                                        name="digits-careless", **data))
    bright = brighter(splits.x_test)
    with CloudServer(settings) as cloud:
        token = cloud.new_admin_token
        api = httpx.Client(base_url=cloud.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        archive = Bundle.open(bundle).pack(work / "v1.tar.gz")
        api.post("/api/v1/bundles", content=archive.read_bytes(),
                 headers={"Content-Type": "application/gzip"}).raise_for_status()
        api.put("/api/v1/fleets/lab/capture", json={"enabled": True, "sample_rate": 0.5,
                                                    "max_per_second": 3}).raise_for_status()
        agents = start_agents(cloud.url, token, api.get("/api/v1/info").json()["mqtt_url"], bundle, public, work)
        urls = {name: agent.http_url for name, agent in agents.items()}
        watcher = LoopWatcher(policy, CloudClient(cloud.url, token), TrustStore.from_paths([public]), interval=1.0,
                              workdir=work / "runs")
        try:
            with LabelledTraffic(urls, splits.x_train, splits.y_train, cloud.url, token) as traffic:
                drift_started = time.time()  # measuring "before" already sends each device 450 bright digits
                before = {name: device_accuracy(url, bright, splits.y_test) for name, url in urls.items()}
                traffic.drift.set()
                watcher.start()
                while not watcher.outcomes:
                    if time.time() - drift_started > TIMEOUT:
                        raise SystemExit(f"no loop run within {TIMEOUT:g} s of the drift (waiting: {watcher.waiting})")
                    time.sleep(1.0)
                watcher.stop(TIMEOUT)
                after = {name: device_accuracy(url, bright, splits.y_test) for name, url in urls.items()}
                serving = {name: agent.predictor.bundle.version for name, agent in agents.items()}
                client = CloudClient(cloud.url, token)
                bad = [run_policy(careless, client, trust=TrustStore.from_paths([public]), force=force,
                                  workdir=work / "runs") for force in (False, True)]
                back = time.time() + 60  # a stopped canary wave rolls its devices back to v2
                while {agent.predictor.bundle.version for agent in agents.values()} != {2} and time.time() < back:
                    time.sleep(0.5)
                serving_at_end = {name: agent.predictor.bundle.version for name, agent in agents.items()}
        finally:
            watcher.stop()
            for agent in agents.values():
                agent.stop()
            api.close()
    run = watcher.outcomes[0].record
    alert_at = run["trigger"]["opened_at"]
    return {
        "run": run["id"], "state": run["state"], "reason": run["reason"], "trigger": run["trigger"],
        "seconds": {"drift_start_to_alert": round(alert_at - drift_started, 1),
                    "alert_to_run_start": round(run["started_at"] - alert_at, 1),
                    "stages": {s["name"]: s["seconds"] for s in run["stages"]},
                    "alert_to_fleet_on_v2": round(run["stages"][-1]["ended_at"] - alert_at, 1)
                    if run["state"] == "succeeded" else None},
        "runs_recorded": len(watcher.outcomes), "min_samples": policy.dataset.min_samples,
        "dataset": run["stages"][0]["outputs"], "serving_versions": serving,
        "drifted_accuracy_per_device": {name: {"before": round(before[name], 3), "after": round(after[name], 3)}
                                        for name in urls},
        "careless_runs": [{"run": o.run_id, "forced": force, "state": o.state, "reason": o.reason,
                           "stopped_at": o.record["stages"][-1]["name"] if o.record["stages"] else None}
                          for force, o in zip((False, True), bad, strict=True)],
        "serving_versions_at_end": serving_at_end,
    }


def show(result: dict, console: Console) -> None:
    seconds = result["seconds"]
    trigger = result["trigger"]
    console.print(f"loop run {result['run']}, fired by the {trigger.get('alert_kind')} alert {trigger.get('alert_id')} "
                  f"on {trigger.get('scope')}: {result['state']}" + (f" ({result['reason']})" if result["reason"]
                                                                    else ""), markup=False)
    devices = Table("device", "serves", "bright digits before", "after", title="accuracy on the drifted data")
    for name, figures in result["drifted_accuracy_per_device"].items():
        devices.add_row(name, f"v{result['serving_versions'][name]}", f"{figures['before']:.3f}",
                        f"{figures['after']:.3f}")
    console.print(devices)
    stages = Table("from drift to fleet on v2", "seconds", title="time by stage")
    stages.add_row("drift starts -> drift alert", f"{seconds['drift_start_to_alert']:.1f}")
    stages.add_row(f"alert -> run starts (waiting for {result['min_samples']} labelled rows; "
                   f"{result['dataset'].get('rows')} frozen)",
                   f"{seconds['alert_to_run_start']:.1f}")
    for name, value in seconds["stages"].items():
        stages.add_row(f"  {name}", "-" if value is None else f"{value:.1f}")
    total = seconds["alert_to_fleet_on_v2"]
    stages.add_row("alert -> fleet on v2", "-" if total is None else f"{total:.1f}")
    console.print(stages)
    runs = Table("careless candidate (labels shuffled)", "state", "stopped at", "reason",
                 title="bad candidates must not reach the fleet")
    for run in result["careless_runs"]:
        runs.add_row("forced past evaluation" if run["forced"] else "as the policy says", run["state"],
                     run["stopped_at"] or "-", run["reason"] or "")
    console.print(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="The serving bundle (v1, digits-cnn)")
    parser.add_argument("--keys", type=Path, required=True, help="Directory with release.key and release.pub")
    parser.add_argument("--workdir", type=Path, default=Path("runs/loop"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # each alert the drift shows logs a warning: dozens of lines
    args.workdir.mkdir(parents=True, exist_ok=True)
    console = Console() if Console().is_terminal else Console(width=130)
    result = run_scenario(args.workdir.resolve(), args.bundle.resolve(), (args.keys / "release.pub").resolve(),
                          (args.keys / "release.key").resolve())
    show(result, console)
    if result["state"] != "succeeded" or set(result["serving_versions"].values()) != {2}:
        raise SystemExit(f"the loop did not move the fleet to v2: {result['state']} {result['reason']}")
    unforced, forced = result["careless_runs"]
    if (unforced["state"], unforced["stopped_at"]) != ("stopped", "evaluate"):
        raise SystemExit(f"the careless candidate was not stopped by the offline evaluation: {unforced}")
    if (forced["state"], forced["stopped_at"]) != ("stopped", "deploy") or "quality gate" not in forced["reason"]:
        raise SystemExit(f"the forced careless candidate was not stopped by the canary's quality gate: {forced}")
    if set(result["serving_versions_at_end"].values()) != {2}:
        raise SystemExit(f"the canaries did not roll back to v2: {result['serving_versions_at_end']}")


if __name__ == "__main__":
    main()
