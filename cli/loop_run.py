"""`edgefleet loop run --policy FILE` runs a retraining policy once (cloud/loop/runner.py), recording every
stage in the cloud; `edgefleet loop watch --policy FILE` runs it whenever its trigger fires
(cloud/loop/trigger.py); `edgefleet loop status [RUN]` shows the recorded runs and their stages with the time
each took. Registered on loop_commands' loop_app, beside the single stages."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import TrustOption, out, trust_store
from edgefleet.cli.fleet_commands import CloudOption, TokenOption
from edgefleet.cli.loop_commands import loop_app
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import check_id

# the options `loop run` and `loop watch` share
PolicyOption = Annotated[Path, typer.Option("--policy", help="The retraining policy (TOML; cloud/loop/policy.py "
                                                             "documents every key)")]
WorkdirOption = Annotated[Path, typer.Option("--workdir", help="Where each run's files go (DIR/<run id>)")]
STATE_STYLE = {"succeeded": "green", "failed": "bold red", "stopped": "yellow", "running": "cyan",
               "skipped": "dim"}


@loop_app.command("run")
def run(
    policy_path: PolicyOption,
    force: Annotated[bool, typer.Option("--force", help="Go on past an offline evaluation that refuses the "
                                                        "candidate (recorded in the report and the run)")] = False,
    workdir: WorkdirOption = Path("runs/loop"),
    trust: TrustOption = None,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Run the policy once: dataset, train, compress, compile, evaluate, push, deploy; exit 2 unless it succeeds."""
    from edgefleet.cloud.loop.policy import load_policy
    from edgefleet.cloud.loop.runner import run_policy

    policy = load_policy(policy_path)
    store = trust_store(list(policy.trust) or trust)
    client = CloudClient(cloud, token)
    with out.status(f"loop run of {policy.name}", spinner="dots") as status:
        def progress(text: str) -> None:
            status.update(escape(text))
            out.print(escape(text), highlight=False, emoji=False)

        outcome = run_policy(policy, client, trust=store, force=force, workdir=workdir, progress=progress)
    out.print(run_tables(outcome.record))
    if outcome.state != "succeeded":
        raise EdgefleetError(f"loop run {outcome.run_id} {outcome.state}: {outcome.reason}")


@loop_app.command("watch")
def watch(
    policy_path: PolicyOption,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between checks of the trigger")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="Check the trigger once, run the policy if it fired and "
                                                      "its labelled rows are there, and exit")] = False,
    workdir: WorkdirOption = Path("runs/loop"),
    trust: TrustOption = None,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Run the policy each time its trigger fires (an open drift or performance alert for its model and fleet,
    once per alert; or its schedule), until Ctrl+C or SIGTERM."""
    import logging
    import signal
    import threading

    from edgefleet.cloud.loop.policy import load_policy
    from edgefleet.cloud.loop.trigger import LoopWatcher

    policy = load_policy(policy_path)
    if policy.trigger == "manual":
        raise EdgefleetError(f"{policy_path}: [trigger] kind is 'manual': nothing to watch (loop run runs it)")
    watcher = LoopWatcher(policy, CloudClient(cloud, token), trust_store(list(policy.trust) or trust),
                          interval=interval, workdir=workdir)
    if once:
        outcome = watcher.check_once()
        if outcome is None:
            waiting = watcher.waiting
            out.print("the trigger has not fired" if waiting is None else
                      f"the trigger fired; waiting for {waiting['needed']} labelled rows ({waiting['rows']} so far): "
                      f"no run recorded", markup=False)
            return
        out.print(run_tables(outcome.record))
        if outcome.state != "succeeded":
            raise EdgefleetError(f"loop run {outcome.run_id} {outcome.state}: {outcome.reason}")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    watcher.start()
    out.print(f"watching the {policy.trigger} trigger of policy {policy.name} every {interval:g} s", markup=False)
    stop.wait()
    watcher.stop()


@loop_app.command("status")
def status(
    run_id: Annotated[str | None, typer.Argument(metavar="[RUN]", help="One run (r-...); default: the latest "
                                                                       "runs")] = None,
    policy: Annotated[str | None, typer.Option(help="Only this policy's runs")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Runs to list")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON")] = False,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Recorded loop runs and their stages: state, time per stage, figures, reason."""
    client = CloudClient(cloud, token)
    if run_id is not None:
        runs = [client.get(f"/api/v1/loop/runs/{check_id(run_id, 'run id')}")]
    else:
        query = f"?limit={limit}" + (f"&policy={check_id(policy, 'policy')}" if policy else "")
        runs = client.get(f"/api/v1/loop/runs{query}")
    if as_json:
        out.print_json(json.dumps(runs if run_id is None else runs[0]))
        return
    if not runs:
        out.print("no loop runs recorded")
        return
    for record in runs if run_id is not None else runs[:1]:
        out.print(run_tables(record))
    if run_id is None:
        out.print(runs_table(runs))


def runs_table(runs: list[dict]) -> Table:
    table = Table("run", "policy", "trigger", "started", "seconds", "state", "bundle", "reason",
                  title=f"{len(runs)} loop run(s), newest first")
    for record in runs:
        trigger = record.get("trigger") or {}
        table.add_row(record["id"], escape(record["policy"]), escape(_trigger(trigger)), _when(record["started_at"]),
                      _seconds(record), _state(record["state"]), _bundle(record.get("bundle")),
                      escape(record.get("reason") or ""))
    return table


def run_tables(record: dict) -> Table:
    """One run: a row per stage with its state, time and the figures that matter for it."""
    title = (f"loop run {record['id']} of {record['policy']} ({record['model']} on fleet {record['fleet']}): "
             f"{record['state']}, {_seconds(record)} s, trigger {_trigger(record.get('trigger') or {})}")
    table = Table("stage", "state", "seconds", "figures", title=escape(title),
                  caption=escape(record.get("reason") or "") or None)
    for stage in record["stages"]:
        table.add_row(stage["name"], _state(stage["state"]),
                      "-" if stage["seconds"] is None else f"{stage['seconds']:.1f}",
                      escape(stage.get("message") or _figures(stage)))
    return table


def _figures(stage: dict) -> str:
    outputs, metrics = stage.get("outputs") or {}, stage.get("metrics") or {}
    name = stage["name"]
    if name == "dataset" and outputs:
        return (f"{outputs.get('name')}:{outputs.get('version')} {outputs.get('rows')} rows "
                f"({metrics.get('train_rows')} train, {metrics.get('holdout_rows')} holdout), "
                f"{str(outputs.get('fingerprint'))[:12]}")
    if name == "train" and metrics:
        return (f"v{outputs.get('version')} {metrics.get('mode')}, {metrics.get('rows_seen')} rows seen, "
                f"{metrics.get('cpu_s')} s CPU")
    if name == "compress" and metrics:
        return "; ".join(f"{s['method']} {s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}"
                         for s in metrics.get("steps", []))
    if name == "compile" and outputs:
        return "compiled " + ", ".join(outputs.get("compiled", [])) + (
            f"; refused {', '.join(r['target'] for r in outputs['refused'])}" if outputs.get("refused") else "")
    if name == "evaluate" and metrics:
        overall = metrics.get("overall") or {}
        parts = [f"{data}: {v['candidate']:.3f} vs {v['serving']:.3f} ({v['verdict']})"
                 for data, v in overall.items() if "candidate" in v]
        return ", ".join(parts) + (" [forced]" if metrics.get("forced") else "")
    if name == "push" and outputs:
        return f"{outputs.get('name')} v{outputs.get('version')}"
    if name == "deploy" and outputs:
        devices = outputs.get("devices") or {}
        text = f"{outputs.get('deployment')} {outputs.get('state')}, {len(devices)} device(s)"
        accuracy = metrics.get("accuracy_per_device") or {}
        return text + "".join(f"; {device} {_accuracy(f['before'])} -> {_accuracy(f['after'])}"
                              for device, f in sorted(accuracy.items()))
    return ""


def _accuracy(figure: dict) -> str:
    if figure.get("accuracy") is None:
        return f"v{figure['version']} no labels"
    return f"v{figure['version']} {figure['accuracy']:.3f} ({figure['labels']} labels)"


def _trigger(trigger: dict) -> str:
    kind = trigger.get("kind", "manual")
    alert = f" alert {trigger['alert_id']}" if trigger.get("alert_id") is not None else ""
    return kind + alert + (" (forced)" if trigger.get("forced") else "")


def _seconds(record: dict) -> str:
    return "-" if record.get("ended_at") is None else f"{record['ended_at'] - record['started_at']:.1f}"


def _bundle(bundle: dict | None) -> str:
    return "-" if not bundle else escape(f"{bundle['name']} v{bundle['version']}")


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


def _state(value: str) -> str:
    style = STATE_STYLE.get(value)
    return f"[{style}]{value}[/]" if style else value
