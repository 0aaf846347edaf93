"""The fleet half of the main job: cloud on embedded defaults, simulated devices, a drift alert.

    python examples/fleet_demo.py --bundle runs/digits/bundle --keys runs/keys \
        --data runs/digits/test_x.npy --labels runs/digits/test_y.npy

1. starts the cloud companion in this process: SQLite, the embedded MQTT broker (amqtt), the ingest,
   the drift monitor and the HTTP API, each on a free loopback port, data under runs/cloud;
2. pushes the signed bundle to the registry (the drift monitor reads its reference profile);
3. registers N simulated devices and runs them: real Predictors with native telemetry, real outboxes,
   their own MQTT credentials, fed the held-out digits;
4. brightens the inputs of one device after a few seconds, and waits for the monitor's alert;
5. prints the drift evaluations of the drifting and a clean device, and the alerts.
The same steps as separate commands: `edgefleet cloud up`, `edgefleet push`, `edgefleet sim`,
`edgefleet drift`, `edgefleet alerts` (see the README).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live

from edgefleet.cli.cloud_client import CloudClient
from edgefleet.cli.fleet_commands import _sim_table, alerts_table, drift_table
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.bundle import Bundle
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    shutil.rmtree(args.workdir, ignore_errors=True)
    settings = load_settings(data_dir=args.workdir / "cloud", port=0, mqtt_port=0, trusted_keys=[args.keys],
                             drift_interval_seconds=2.0, drift_lookback_seconds=8.0)
    with CloudServer(settings) as cloud:
        console.print(f"cloud: API {cloud.url}, embedded MQTT broker {cloud.broker_url}, data {settings.data_dir}")
        client = CloudClient(cloud.url, cloud.new_admin_token)
        archive = Bundle.open(args.bundle).pack(args.workdir / "bundle.tar.gz")
        stored = client.post_file("/api/v1/bundles", archive)
        console.print(f"registry: {stored['name']} v{stored['version']} verified and stored")

        simulation = FleetSimulation(
            cloud_url=cloud.url, token=cloud.new_admin_token, mqtt_url=client.get("/api/v1/info")["mqtt_url"],
            bundle=args.bundle,
            trusted_keys=[args.keys], data=np.load(args.data), labels=np.load(args.labels),
            devices=args.devices, fleet="demo", rate_per_device=40.0, window_seconds=1.0,
            drift=DriftPlan(args.drift, after_seconds=args.drift_after, devices=1, strength=0.3),
            workdir=args.workdir / "devices",
        )
        with simulation:
            drifting = simulation.members[0].agent.config.device
            clean = simulation.members[-1].agent.config.device
            console.print(f"fleet: {args.devices} devices; {drifting} sees '{args.drift}' drift after "
                          f"{args.drift_after:.0f} s")
            alert, started = None, time.monotonic()
            with Live(_sim_table(simulation), console=console, refresh_per_second=2) as live:
                while alert is None and time.monotonic() - started < args.timeout:
                    time.sleep(0.5)
                    live.update(_sim_table(simulation))
                    alert = next((a for a in client.get("/api/v1/alerts?status=open")
                                  if a["scope"] == "device" and a["scope_id"] == drifting), None)
            elapsed = time.monotonic() - started
            requests = simulation.members[0].requests
        console.print()
        if alert is None:
            raise SystemExit(f"no drift alert for {drifting} within {args.timeout:.0f} s")
        console.print(f"[bold red]alert[/] after {elapsed:.1f} s ({elapsed - args.drift_after:.1f} s after the "
                      f"drift began; {drifting} had served {requests} requests): {alert['message']}")
        console.print(drift_table(client.get(f"/api/v1/devices/{drifting}/drift?limit=4"), f"drift of {drifting}"))
        console.print(drift_table(client.get(f"/api/v1/devices/{clean}/drift?limit=2"), f"drift of {clean}"))
        console.print(alerts_table(client.get("/api/v1/alerts?status=all")))
        counts = client.get("/api/v1/ingest")
        console.print(f"ingest: {counts}")


if __name__ == "__main__":
    main()
