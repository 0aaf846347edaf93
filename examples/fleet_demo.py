"""The fleet half of the main job: cloud on embedded defaults, simulated devices, a drift alert.

    python examples/fleet_demo.py --bundle runs/digits/bundle --keys runs/keys \
        --data runs/digits/test_x.npy --labels runs/digits/test_y.npy

1. starts the cloud companion in this process: SQLite, the embedded MQTT broker (amqtt), the ingest,
   the drift monitor and the HTTP API, each on a free loopback port, data under runs/cloud;
2. pushes the signed bundle to the registry (the drift monitor reads its reference profile);
3. registers N simulated devices and runs them: real Predictors with native telemetry, real outboxes,
   their own MQTT credentials, fed the held-out digits;
4. brightens the inputs of one device after a few seconds, and waits for the monitor's alert;
5. prints the drift evaluations of the drifting and a clean device, and the alerts;
6. while the devices keep serving, rolls a retrained v2 out in two waves (canary first), then a v3
   whose weights were damaged after export: the canary fails its self-test, the rollout aborts, and
   the rest of the fleet never receives it.
7. with --keep, pushes the other bundles given with --also (the compiled int8 release with its compression
   report), prints the dashboard's URL and sign-in tokens, and keeps the cloud and the fleet running
   until Ctrl-C (`make demo KEEP=1`).
The same steps as separate commands: `edgefleet cloud up`, `edgefleet push`, `edgefleet sim`,
`edgefleet drift`, `edgefleet alerts` (see the README).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
from bundle_versions import damaged, retrained
from rich.console import Console
from rich.live import Live

from edgefleet.cli.fleet_commands import alerts_table, drift_table, sim_table
from edgefleet.cli.rollout_commands import deployment_tables
from edgefleet.cloud.auth import VIEWER, create_token
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.api_client import CloudClient
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.sim import DriftPlan, FleetSimulation

console = Console()
if not console.is_terminal:  # make, CI logs: rich would fall back to 80 columns
    console = Console(width=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/digits/bundle"))
    parser.add_argument("--keys", type=Path, default=Path("runs/keys"))
    parser.add_argument("--data", type=Path, default=Path("runs/digits/test_x.npy"))
    parser.add_argument("--labels", type=Path, default=Path("runs/digits/test_y.npy"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/fleet"))
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--drift", default="brightness", choices=["brightness", "noise", "imbalance"])
    parser.add_argument("--drift-after", type=float, default=6.0)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--keep", action="store_true",
                        help="at the end, keep the cloud and the fleet running and print the dashboard's URL")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="with --keep: one more bundle for the registry (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    shutil.rmtree(args.workdir, ignore_errors=True)
    settings = load_settings(data_dir=args.workdir / "cloud", port=0, mqtt_port=0, trusted_keys=[args.keys],
                             drift_interval_seconds=2.0, drift_lookback_seconds=8.0)
    with CloudServer(settings) as cloud:
        console.print(f"cloud: API {cloud.url}, embedded MQTT broker {cloud.broker_url}, data {settings.data_dir}")
        client = CloudClient(cloud.url, cloud.new_admin_token)
        push(client, args.bundle, args.workdir)
        simulation = FleetSimulation(
            cloud_url=cloud.url, token=cloud.new_admin_token, mqtt_url=client.get("/api/v1/info")["mqtt_url"],
            bundle=args.bundle, trusted_keys=[args.keys], data=np.load(args.data), labels=np.load(args.labels),
            devices=args.devices, fleet="demo", rate_per_device=40.0, window_seconds=1.0,
            drift=DriftPlan(args.drift, after_seconds=args.drift_after, devices=1, strength=0.3),
            workdir=args.workdir / "devices",
        )
        with simulation:
            drift_stage(client, simulation, args)
            update_stage(client, simulation, args)
            if args.keep:
                keep_serving(cloud, client, args)


def push(client: CloudClient, bundle: Path, workdir: Path) -> None:
    archive = Bundle.open(bundle).pack(workdir / f"{bundle.parent.name}-{bundle.name}.tar.gz")
    stored = client.post_file("/api/v1/bundles", archive)
    console.print(f"registry: {stored['name']} v{stored['version']} verified and stored")


def drift_stage(client: CloudClient, simulation: FleetSimulation, args: argparse.Namespace) -> None:
    """One device's inputs drift; wait for the monitor's alert and show the evidence."""
    drifting = simulation.members[0].agent.config.device
    clean = simulation.members[-1].agent.config.device
    console.rule("watch: telemetry and drift")
    console.print(f"fleet: {args.devices} devices; {drifting} sees '{args.drift}' drift after {args.drift_after:.0f} s")
    alert, started = None, time.monotonic()
    with Live(sim_table(simulation), console=console, refresh_per_second=2) as live:
        while alert is None and time.monotonic() - started < args.timeout:
            time.sleep(0.5)
            live.update(sim_table(simulation))
            alert = next((a for a in client.get("/api/v1/alerts?status=open")
                          if a["scope"] == "device" and a["scope_id"] == drifting), None)
    elapsed = time.monotonic() - started
    console.print()
    if alert is None:
        raise SystemExit(f"no drift alert for {drifting} within {args.timeout:.0f} s")
    console.print(f"[bold red]alert[/] after {elapsed:.1f} s ({elapsed - args.drift_after:.1f} s after the drift "
                  f"began; {drifting} had served {simulation.members[0].requests} requests): {alert['message']}")
    console.print(drift_table(client.get(f"/api/v1/devices/{drifting}/drift?limit=4"), f"drift of {drifting}"))
    console.print(drift_table(client.get(f"/api/v1/devices/{clean}/drift?limit=2"), f"drift of {clean}"))
    console.print(alerts_table(client.get("/api/v1/alerts?status=all")))
    console.print(f"ingest: {client.get('/api/v1/ingest')}")


def update_stage(client: CloudClient, simulation: FleetSimulation, args: argparse.Namespace) -> None:
    """A retrained v2 goes out in waves while the devices keep serving; then a damaged v3, which the
    canary wave catches: the rollout aborts and the rest of the fleet never receives it."""
    key = SigningKey.load(args.keys / "release.key")
    simulation.drift = None  # the drifting device's inputs are clean again; its alert closes by itself
    logging.getLogger("edgefleet.cloud.drift_monitor").setLevel(logging.ERROR)
    console.rule("update: staged rollouts over the air")
    v2 = retrained(args.workdir / "v2" / "bundle", key, version=2, seed=1)
    v3 = damaged(v2.root, args.workdir / "v3" / "bundle", key, version=3)
    strategy = {"kind": "waves", "waves": [30, 100], "success_threshold": 1.0, "max_failure_rate": 0.2,
                "health_window_seconds": 3.0, "wave_timeout_seconds": 60.0}
    for bundle, expected in ((v2, "completed"), (v3, "aborted")):
        push(client, bundle.root, args.workdir)
        started = time.monotonic()
        deployment = client.post_json("/api/v1/deployments", {
            "target": {"fleet": "demo"}, "bundle": {"name": bundle.name, "version": bundle.version},
            "strategy": strategy})
        console.print(f"deploy {bundle.name} v{bundle.version} ({bundle.manifest['label']}): waves "
                      f"{[w['size'] for w in deployment['waves']]}")
        while deployment["state"] not in ("completed", "aborted") and time.monotonic() - started < args.timeout:
            time.sleep(0.5)
            deployment = client.get(f"/api/v1/deployments/{deployment['id']}")
        console.print(deployment_tables(deployment))
        serving = {m.agent.config.device: m.agent.predictor.bundle.version for m in simulation.members}
        console.print(f"{deployment['state']} after {time.monotonic() - started:.1f} s; the devices serve versions "
                      f"{serving}; requests failed during the swaps: {simulation.failed}")
        if deployment["state"] != expected:
            raise SystemExit(f"the rollout of v{bundle.version} ended {deployment['state']}, not {expected}")


def keep_serving(cloud: CloudServer, client: CloudClient, args: argparse.Namespace) -> None:
    """The dashboard on the seeded fleet: more bundles for the registry, the URL and two tokens, then wait."""
    for bundle in args.also:
        push(client, bundle, args.workdir)
    viewer = create_token(cloud.sessions, "demo-viewer", VIEWER)
    console.rule("dashboard")
    console.print(f"dashboard: {cloud.url}/  (sign in with a token; the fleet keeps serving)")
    console.print(f"admin token: {cloud.new_admin_token}")
    console.print(f"viewer token (read-only): {viewer}")
    console.print("Ctrl-C stops the cloud and the simulated devices.")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or `kill`: either stops the fleet, then the cloud
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    console.print("stopping")


if __name__ == "__main__":
    main()
