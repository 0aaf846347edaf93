"""Fleet commands: device run, sim, push, drift, alerts. They talk to the cloud over HTTP and MQTT and
import only core and edge_runtime, so they work on a device install."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import BundleArg, TrustOption, app, out, trust_store
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError

device_app = typer.Typer(no_args_is_help=True, help="Run this machine as a fleet device.")
app.add_typer(device_app, name="device")

CloudOption = Annotated[str | None, typer.Option("--cloud", help="Cloud API URL (default: $EDGEFLEET_CLOUD)")]
TokenOption = Annotated[str | None, typer.Option("--token", help="Admin API token (default: $EDGEFLEET_TOKEN)")]


@device_app.command("run")
def device_run(config: Annotated[Path, typer.Option("--config", "-c", help="device.toml")]) -> None:
    """Serve a bundle (local HTTP: POST /v1/predict, GET /healthz, GET /metrics) and report telemetry."""
    import signal
    import threading

    from edgefleet.edge_runtime.agent import DeviceAgent
    from edgefleet.edge_runtime.device_config import DeviceConfig

    agent = DeviceAgent(DeviceConfig.load(config)).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bundle = agent.predictor.bundle
    out.print(f"device {agent.config.device} serving {bundle.name} v{bundle.version} at {agent.http_url}"
              + (f", reporting to {agent.config.mqtt.url}" if agent.config.mqtt else ", not reporting (no [mqtt])"))
    stop.wait()
    agent.stop()
    out.print("stopped")


@device_app.command("service")
def device_service(
    config: Annotated[Path, typer.Option("--config", "-c", help="device.toml")],
    user: Annotated[str, typer.Option(help="Unprivileged user the agent runs as")] = "edgefleet",
    output: Annotated[Path | None, typer.Option("--out", help="Write the unit here (default: print it)")] = None,
) -> None:
    """Write a systemd unit that runs this device's agent as a hardened service, restarted on failure."""
    from edgefleet.edge_runtime.device_config import DeviceConfig
    from edgefleet.edge_runtime.service_unit import install_hint, render_unit

    unit = render_unit(config, user=user)
    if output is None:
        typer.echo(unit, nl=False)
        return
    output.write_text(unit)
    out.print(f"wrote {output}; to install it, as root:", markup=False)
    typer.echo(install_hint(output, user, DeviceConfig.load(config).data_dir.resolve()))  # unwrapped: copied as is


@app.command("push")
def push(bundle: BundleArg, cloud: CloudOption = None, token: TokenOption = None) -> None:
    """Upload a signed bundle (.tar.gz, or a directory, packed first) to the cloud's registry."""
    import tempfile

    from edgefleet.core.bundle import Bundle

    client = CloudClient(cloud, token)
    with tempfile.TemporaryDirectory() as scratch:
        archive = bundle if bundle.is_file() else Bundle.open(bundle).pack(Path(scratch) / "bundle.tar.gz")
        stored = client.post_file("/api/v1/bundles", archive)
    out.print(f"pushed {stored['name']} v{stored['version']} ({stored['size'] / 1024:.1f} KiB)")


@app.command("sim")
def sim(
    bundle: BundleArg,
    data: Annotated[Path, typer.Option(help=".npy of inputs the devices draw from (e.g. the test split)")],
    mqtt_url: Annotated[str | None, typer.Option("--mqtt-url", help="Broker for the devices (default: the "
                                                                     "cloud's, from GET /api/v1/info)")] = None,
    trust: TrustOption = None,
    cloud: CloudOption = None,
    token: TokenOption = None,
    devices: Annotated[int, typer.Option(help="Number of simulated devices")] = 3,
    labels: Annotated[Path | None, typer.Option(help=".npy of labels (needed for imbalance drift)")] = None,
    rate: Annotated[float, typer.Option(help="Requests per second per device")] = 20.0,
    window: Annotated[float, typer.Option(help="Telemetry window, seconds")] = 5.0,
    duration: Annotated[float, typer.Option(help="Seconds to run")] = 60.0,
    drift: Annotated[str | None, typer.Option(help="brightness, noise or imbalance")] = None,
    drift_after: Annotated[float, typer.Option(help="Seconds before the drift starts")] = 0.0,
    drift_devices: Annotated[int, typer.Option(help="How many devices drift")] = 1,
    fleet: Annotated[str, typer.Option(help="Fleet of the simulated devices")] = "sim",
    light: Annotated[bool, typer.Option("--light", help="Many device ids per process over a few MQTT "
                                                        "connections, each sending one replayed window per "
                                                        "--window seconds (no model per device)")] = False,
    connections: Annotated[int, typer.Option(min=1, max=500, help="--light: MQTT connections")] = 4,
    mqtt_username: Annotated[str | None, typer.Option(help="--light: the connections' user, granted the "
                                                           "fleet's device topics (default: anonymous)")] = None,
    mqtt_password: Annotated[str | None, typer.Option(envvar="EDGEFLEET_SIM_MQTT_PASSWORD",
                                                      help="--light: its password")] = None,
) -> None:
    """N simulated devices in one process, feeding real data, with optional injected drift."""
    from edgefleet.edge_runtime.sim import DriftPlan, FleetSimulation

    client = CloudClient(cloud, token)
    if light:
        if drift:
            raise EdgefleetError("--light replays recorded windows: it cannot inject drift (leave out --drift)")
        _light(client, bundle, data, trust, mqtt_url or client.get("/api/v1/info")["mqtt_url"], fleet, devices,
               devices / window, connections, mqtt_username, mqtt_password, duration)
        return
    simulation = FleetSimulation(
        cloud_url=client.url, token=client.token, mqtt_url=mqtt_url or client.get("/api/v1/info")["mqtt_url"],
        bundle=bundle,
        trusted_keys=_paths(trust), data=np.load(data, allow_pickle=False),
        labels=np.load(labels, allow_pickle=False) if labels else None, devices=devices, fleet=fleet,
        rate_per_device=rate, window_seconds=window,
        drift=DriftPlan(drift, drift_after, drift_devices) if drift else None, workdir=Path("runs/sim"),
    )
    with simulation, Live(sim_table(simulation), console=out, refresh_per_second=2) as live:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            time.sleep(0.5)
            live.update(sim_table(simulation))


def _light(client: CloudClient, bundle: Path, data: Path, trust: list[Path] | None, mqtt_url: str, fleet: str,
           devices: int, rate: float, connections: int, username: str | None, password: str | None,
           duration: float) -> None:
    """Registers the light devices in bulk (the ingest keeps registered devices' windows), then runs them."""
    from edgefleet.edge_runtime.light_sim import LightFleet, record_windows

    windows = record_windows(bundle, _paths(trust), np.load(data, allow_pickle=False))
    simulation = LightFleet([mqtt_url], fleet=fleet, devices=devices, windows=windows, rate=rate,
                            connections=connections, username=username, password=password)
    for start in range(0, devices, 1000):
        client.post_json("/api/v1/devices/bulk", {"devices": [{"id": d, "fleet": fleet}
                                                              for d in simulation.ids[start:start + 1000]]})
    out.print(f"registered {devices} light devices ({simulation.ids[0]} ...) in fleet {fleet}")
    with simulation, Live(light_table(simulation.status()), console=out, refresh_per_second=2) as live:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            time.sleep(0.5)
            live.update(light_table(simulation.status()))


def light_table(status: dict) -> Table:
    table = Table(*status, title="light simulated fleet")
    table.add_row(*(str(value) for value in status.values()))
    return table


def _paths(trust: list[Path] | None) -> list[Path]:
    trust_store(trust)  # the same checks and message as every other command
    from edgefleet.core import config

    return list(trust or config.trusted_key_paths())


def sim_table(simulation) -> Table:  # noqa: ANN001 - FleetSimulation, imported lazily
    table = Table("device", "requests", "windows", "outbox", "connected", "drifting", title="simulated fleet")
    for row in simulation.status():
        table.add_row(row["device"], str(row["requests"]), str(row["windows"]), str(row["outbox"]),
                      "yes" if row["connected"] else "[red]no[/]", "[yellow]yes[/]" if row["drifting"] else "no")
    return table


@app.command("drift")
def drift_command(
    device: Annotated[str | None, typer.Option(help="Device id")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet id (instead of --device)")] = None,
    limit: Annotated[int, typer.Option(help="Results to show")] = 10,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Latest drift evaluations of a device or a fleet."""
    if bool(device) == bool(fleet):
        raise EdgefleetError("pass exactly one of --device ID or --fleet ID")
    client = CloudClient(cloud, token)
    path = f"/api/v1/devices/{device}/drift" if device else f"/api/v1/fleets/{fleet}/drift"
    rows = client.get(f"{path}?limit={limit}")
    out.print(drift_table(rows, f"drift of {'device ' + device if device else 'fleet ' + fleet}"))


def drift_table(rows: list[dict], title: str) -> Table:
    """One row per evaluation: the verdict of each group and its signal with the highest PSI."""
    table = Table("at", "late", "model", "n", "data", "prediction", "highest PSI (threshold)", title=title)
    for row in rows:
        report = row.get("report") or {}
        data, prediction = report.get("data_drift") or {}, report.get("prediction_drift") or {}
        table.add_row(_when(row.get("computed_at")), _late(row.get("late_by")),
                      f"{row['model_name']}:{row['model_version']}",
                      str(row.get("samples")), _verdict(data.get("verdict")), _verdict(prediction.get("verdict")),
                      escape(_worst_signal([data, prediction])))
    return table


@app.command("alerts")
def alerts(
    status: Annotated[str, typer.Option(help="open, closed or all")] = "open",
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Alerts the cloud raised: drift, performance, latency, error rate, device health, data quality."""
    rows = CloudClient(cloud, token).get(f"/api/v1/alerts?status={status}")
    out.print(alerts_table(rows))


def alerts_table(rows: list[dict]) -> Table:
    """One row per alert; one raised from late data (a backlog drained after an outage) says how late."""
    table = Table("opened", "status", "late", "scope", "kind", "message", title="alerts")
    for row in rows:
        table.add_row(_when(row.get("opened_at")), row["status"], _late(row.get("late_by")),
                      f"{row['scope']} {row['scope_id']}", row["kind"].replace("_", " "), escape(row["message"]))
    return table


def _late(late_by: float | None) -> str:
    return "-" if late_by is None else f"[yellow]{late_by:.0f} s[/]"


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%H:%M:%S") if stamp else "-"


def _verdict(value: str | None) -> str:
    return {"drift": "[bold red]drift[/]", "ok": "[green]ok[/]"}.get(value or "", value or "-")


def _worst_signal(groups: list[dict]) -> str:
    signals = [(name, stats) for group in groups for name, stats in (group.get("signals") or {}).items()
               if stats.get("psi") is not None]
    if not signals:
        return "-"
    name, stats = max(signals, key=lambda item: item[1]["psi"])
    return f"{name} {stats['psi']:.3f} ({stats['psi_threshold']:.3f})"
