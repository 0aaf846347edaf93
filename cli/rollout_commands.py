"""Rollout commands: `deploy` plans a staged rollout of a registry bundle; `rollout status|approve|abort|list`
follow and steer it. They talk to the cloud over HTTP only (stdlib), so they work from any machine."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.cli.fleet_commands import CloudOption, TokenOption
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError

rollout_app = typer.Typer(no_args_is_help=True, help="Follow and steer staged rollouts (see `edgefleet deploy`).")
app.add_typer(rollout_app, name="rollout")

FINAL = ("completed", "aborted")
IN_PROGRESS = ("received", "downloading", "verifying", "self_testing", "switching", "health_check")
STATE_STYLE = {"active": "green", "failed": "bold red", "rolled_back": "red", "pending": "dim",
               "completed": "green", "aborted": "bold red", "paused": "yellow", "running": "cyan"}
IdArg = Annotated[str, typer.Argument(help="Deployment id (d-...)")]


@app.command("deploy")
def deploy(
    name: Annotated[str, typer.Argument(help="Bundle name in the registry")],
    version: Annotated[int, typer.Argument(help="Bundle version")],
    fleet: Annotated[str | None, typer.Option(help="Target every device of this fleet")] = None,
    group: Annotated[str | None, typer.Option(help="Target every device of this group")] = None,
    devices: Annotated[str | None, typer.Option(help="Target these devices: a,b,c")] = None,
    waves: Annotated[str | None, typer.Option(help="Cumulative percent per wave, e.g. 5,25,100 "
                                                   "(default: everyone at once)")] = None,
    success: Annotated[float, typer.Option(help="Fraction of a wave that must be active to go on")] = 0.9,
    max_failure: Annotated[float, typer.Option(help="Abort above this fraction of failed devices in a wave")] = 0.2,
    approve_first_wave: Annotated[bool, typer.Option("--approve-first-wave",
                                                     help="Pause after the first wave until approved")] = False,
    mode: Annotated[str, typer.Option(help="switch, shadow or canary")] = "switch",
    wave_timeout: Annotated[float, typer.Option(help="Seconds a wave may take before the rollout aborts")] = 600.0,
    health_window: Annotated[float, typer.Option(help="Seconds a device watches the new model")] = 60.0,
    latency_budget: Annotated[float | None, typer.Option(help="p95 latency budget on the device, ms")] = None,
    resend_interval: Annotated[float, typer.Option(help="Seconds before an unanswered command is sent again")] = 60.0,
    max_resends: Annotated[int, typer.Option(help="How often an unanswered command is sent again")] = 3,
    gate_psi: Annotated[float | None, typer.Option(help="Quality gate: max PSI of the canaries' predicted "
                                                        "classes against the control's")] = None,
    gate_accuracy_drop: Annotated[float | None, typer.Option(help="Quality gate: max accuracy drop, canaries "
                                                                  "vs control (measured, else estimated)")] = None,
    gate_p99_ratio: Annotated[float | None, typer.Option(help="Quality gate: max p99 latency ratio")] = None,
    gate_error_increase: Annotated[float | None, typer.Option(help="Quality gate: max error rate increase")] = None,
    gate_observe: Annotated[float | None, typer.Option(help="Seconds the gates watch the first wave "
                                                            "(default 60)")] = None,
    gate_min_samples: Annotated[int | None, typer.Option(help="Predictions per side a gate needs "
                                                              "(default 200)")] = None,
    gate_min_labels: Annotated[int | None, typer.Option(help="Labels per side for measured accuracy "
                                                             "(default 100)")] = None,
    gate_on_insufficient: Annotated[str | None, typer.Option(help="fail (default) or pass when a gate has too "
                                                                  "little data by the wave timeout")] = None,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Roll a registry bundle out to devices in waves that stop by themselves when the new model misbehaves."""
    target: dict = {}
    if fleet:
        target["fleet"] = fleet
    if group:
        target["group"] = group
    if devices:
        target["devices"] = [d.strip() for d in devices.split(",") if d.strip()]
    if not target:
        raise EdgefleetError("pass a target: --fleet F, --group G and/or --devices a,b")
    strategy: dict = {"kind": "all", "success_threshold": success, "max_failure_rate": max_failure,
                      "pause_for_approval": approve_first_wave, "mode": mode, "wave_timeout_seconds": wave_timeout,
                      "health_window_seconds": health_window, "latency_budget_ms": latency_budget,
                      "resend_interval_seconds": resend_interval, "max_resends": max_resends}
    if waves:
        try:
            strategy.update(kind="waves", waves=[int(p) for p in waves.split(",") if p.strip()])
        except ValueError as err:
            raise EdgefleetError(f"--waves: expected whole percentages like 5,25,100, got {waves!r}") from err
    gates = {key: value for key, value in (
        ("max_prediction_psi", gate_psi), ("max_accuracy_drop", gate_accuracy_drop), ("max_p99_ratio", gate_p99_ratio),
        ("max_error_rate_increase", gate_error_increase), ("observation_seconds", gate_observe),
        ("min_samples", gate_min_samples), ("min_labels", gate_min_labels),
        ("on_insufficient", gate_on_insufficient)) if value is not None}
    if gates:
        strategy["quality_gates"] = gates
    body = {"target": target, "bundle": {"name": name, "version": version}, "strategy": strategy}
    deployment = CloudClient(cloud, token).post_json("/api/v1/deployments", body)
    sizes = ", ".join(str(w["size"]) for w in deployment["waves"])
    out.print(f"deployment {deployment['id']}: {name} v{version} to {deployment['device_count']} device(s) "
              f"in {deployment['wave_count']} wave(s) of {sizes}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"follow it with: edgefleet rollout status {deployment['id']} --watch", markup=False, highlight=False)


@rollout_app.command("status")
def status(
    deployment_id: IdArg,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until the rollout completes or aborts")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch")] = 1.0,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """A deployment's state, its waves (devices by state) and every device's state and reason."""
    client = CloudClient(cloud, token)
    path = f"/api/v1/deployments/{deployment_id}"
    deployment = client.get(path)
    if not watch:
        out.print(deployment_tables(deployment))
        return
    with Live(deployment_tables(deployment), console=out, refresh_per_second=4) as live:
        while deployment["state"] not in FINAL:
            time.sleep(interval)
            deployment = client.get(path)
            live.update(deployment_tables(deployment))


@rollout_app.command("approve")
def approve(deployment_id: IdArg, cloud: CloudOption = None, token: TokenOption = None) -> None:
    """Let a rollout paused after its first wave go on (or approve it in advance)."""
    deployment = CloudClient(cloud, token).post_json(f"/api/v1/deployments/{deployment_id}/approve", {})
    out.print(f"deployment {deployment['id']} approved; it is {deployment['state']}", markup=False, highlight=False)


@rollout_app.command("abort")
def abort(
    deployment_id: IdArg,
    reason: Annotated[str | None, typer.Option(help="Why (kept with the deployment)")] = None,
    rollback: Annotated[bool, typer.Option("--rollback/--no-rollback",
                                           help="Send rollback to the devices already updated")] = True,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Stop a rollout: no device gets the update any more; updated devices roll back (unless --no-rollback)."""
    body = {"rollback": rollback, **({"reason": reason} if reason else {})}
    deployment = CloudClient(cloud, token).post_json(f"/api/v1/deployments/{deployment_id}/abort", body)
    out.print(f"deployment {deployment['id']} aborted: {deployment['reason']}"
              + ("; updated devices get a rollback command" if rollback else ""), markup=False, highlight=False)


@rollout_app.command("list")
def list_command(cloud: CloudOption = None, token: TokenOption = None) -> None:
    """Deployments, newest first."""
    rows = CloudClient(cloud, token).get("/api/v1/deployments")
    table = Table("id", "bundle", "state", "wave", "devices", "created", "reason", title="deployments")
    for row in rows:
        table.add_row(row["id"], f"{row['bundle']['name']} v{row['bundle']['version']}", _state(row["state"]),
                      f"{row['current_wave']}/{row['wave_count']}", str(row["device_count"]), _when(row["created_at"]),
                      escape(row.get("reason") or ""))
    out.print(table)


def deployment_tables(deployment: dict) -> Group:
    """The wave table and the device table of one deployment, titled with its state."""
    bundle = deployment["bundle"]
    title = (f"deployment {deployment['id']}: {bundle['name']} v{bundle['version']}, {deployment['state']}, "
             f"wave {deployment['current_wave']} of {deployment['wave_count']}")
    waves = Table("wave", "devices", "pending", "in progress", "active", "failed", "rolled back", "status",
                  title=escape(title), caption=escape(_caption(deployment)))
    for wave in deployment["waves"]:
        counts = wave["counts"]
        waves.add_row(str(wave["wave"]), str(wave["size"]), str(counts.get("pending", 0)),
                      str(sum(counts.get(s, 0) for s in IN_PROGRESS)), str(counts.get("active", 0)),
                      str(counts.get("failed", 0)), str(counts.get("rolled_back", 0)), wave["status"])
    devices = Table("device", "wave", "state", "reason", "command sent", "resent", "rollback sent", "updated")
    for row in deployment["devices"]:
        devices.add_row(row["device"], str(row["wave"]), _state(row["state"]), escape(_reason(row)),
                        _when(row.get("sent_at")), str(row.get("resends") or 0), _when(row.get("rollback_sent_at")),
                        _when(row.get("updated_at")))
    return Group(waves, *_gate_table(deployment), devices)


def _gate_table(deployment: dict) -> list[Table]:
    """The quality gates' verdict on the first wave (empty without gates or before it is judged)."""
    verdict = deployment.get("gates")
    if not verdict:
        return []
    title = (f"quality gates: {verdict['outcome']} (canary {', '.join(verdict['canary'])} vs control "
             f"{len(verdict['control'])} device(s))")
    table = Table("gate", "outcome", "canary", "control", "value", "threshold", "figures", title=escape(title))
    for result in verdict["results"]:
        style = _OUTCOME_STYLE.get(result["outcome"], "")
        table.add_row(result["gate"], f"[{style}]{escape(result['outcome'])}[/]",
                      *(_figure(result.get(key)) for key in ("canary", "control", "value", "threshold")),
                      escape(result["text"]))
    return [table]


_OUTCOME_STYLE = {"pass": "green", "fail": "bold red", "insufficient": "yellow"}


def _figure(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def _reason(row: dict) -> str:
    """A device's reason; for one whose install went out and that never answered, says so."""
    if row["state"] == "pending" and row.get("sent_at"):
        return "no status received (silent)"
    return row.get("reason") or ""


def _caption(deployment: dict) -> str:
    if deployment["state"] == "paused":
        return f"paused: {deployment.get('reason') or ''}; go on with `edgefleet rollout approve {deployment['id']}`"
    return deployment.get("reason") or ""


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%H:%M:%S") if stamp else "-"


def _state(value: str) -> str:
    style = STATE_STYLE.get(value)
    return f"[{style}]{value}[/]" if style else value
