"""The light simulator at fleet scale, on loopback: messages/s it sustains with 10,000 and 100,000 device ids,
and a deploy to 10,000 light devices driven through the real cloud, timed until all report active.

    python benchmarks/bench_light_fleet.py [--sizes 10000,100000] [--seconds 10] [--deploy 10000] [--out F]

One real Mosquitto (anonymous, loopback only, started here and stopped by PID) carries everything; the
simulator, the broker and (for the deploy) the cloud with its ingest, rollout engine and SQLite share this
2-core machine. Throughput: the simulator is offered `--offered` windows/s over 8 connections and what the
broker acknowledged per second is reported (QoS 1); nobody subscribes, so this is the sender's and the
broker's ceiling, not the ingest's. Deploy: devices registered in bulk, each sending one window a minute,
one deployment of all at once with success threshold 1.0, the cloud on PostgreSQL (`--db sqlite`:
SQLite); the light devices answer at once, so the time is the cloud's (commands out, statuses in, waves),
not an install's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.mosquitto, tests.edge_runtime.ota_kit

from report import emit  # noqa: E402

from edgefleet.cloud.digits import build_digits_bundle, load_splits  # noqa: E402
from edgefleet.cloud.server import CloudServer  # noqa: E402
from edgefleet.cloud.settings import load_settings  # noqa: E402
from edgefleet.core.bundle import Bundle  # noqa: E402
from edgefleet.edge_runtime.light_sim import LightFleet, record_windows  # noqa: E402
from tests.edge_runtime.ota_kit import make_variant  # noqa: E402
from tests.mosquitto import MosquittoBroker  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

CONNECTIONS = 8
DEPLOY_TIMEOUT = 600.0


def throughput(broker: MosquittoBroker, windows: list, devices: int, offered: float, seconds: float) -> dict:
    fleet = LightFleet([broker.url], fleet="tput", devices=devices, windows=windows, rate=offered,
                       connections=CONNECTIONS)
    with fleet:
        time.sleep(1.0)  # warm-up: connections up, paho's queues filled
        first, started = fleet.status()["acked"], time.perf_counter()
        time.sleep(seconds)
        last, elapsed = fleet.status()["acked"], time.perf_counter() - started
    rate = (last - first) / elapsed
    return {"devices": devices, "connections": CONNECTIONS, "offered_msgs_per_s": offered,
            "acked_msgs_per_s": round(rate, 1), "sustained_fraction_of_offered": round(rate / offered, 3),
            "seconds": round(elapsed, 2)}


def deploy(work: Path, broker: MosquittoBroker, bundle: Path, key: Path, windows: list, devices: int,
           db_url: str | None) -> dict:
    new = make_variant(bundle, work / "v2", key.with_suffix(".key"), version=2, weight_noise=0.01)
    settings = load_settings(data_dir=work / "cloud", db_url=db_url, port=0, mqtt_url=broker.url, trusted_keys=[key],
                             rollout_interval_seconds=0.2)
    with CloudServer(settings) as cloud, httpx.Client(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.new_admin_token}"}, timeout=120) as api:
        for root in (bundle, new):
            archive = Bundle.open(root).pack(work / f"{root.name}.tar.gz")
            api.post("/api/v1/bundles", content=archive.read_bytes(),
                     headers={"Content-Type": "application/gzip"}).raise_for_status()
        fleet = LightFleet([broker.url], fleet="light", devices=devices, windows=windows, rate=devices / 60.0,
                           connections=CONNECTIONS)
        started = time.perf_counter()
        for start in range(0, devices, 1000):
            api.post("/api/v1/devices/bulk", json={"devices": [{"id": d, "fleet": "light"}
                                                               for d in fleet.ids[start:start + 1000]]}
                     ).raise_for_status()
        registered = time.perf_counter() - started
        with fleet:
            deployed = time.perf_counter()
            deployment = api.post("/api/v1/deployments", json={
                "target": {"fleet": "light"}, "bundle": {"name": "digits-cnn", "version": 2},
                "strategy": {"kind": "all", "success_threshold": 1.0, "health_window_seconds": 1.0,
                             "wave_timeout_seconds": DEPLOY_TIMEOUT}})
            deployment.raise_for_status()
            deployment = deployment.json()
            while deployment["state"] not in ("completed", "aborted") and \
                    time.perf_counter() - deployed < DEPLOY_TIMEOUT:
                time.sleep(1.0)
                deployment = api.get(f"/api/v1/deployments/{deployment['id']}").json()
            elapsed = time.perf_counter() - deployed
            answered = fleet.status()
    return {"devices": devices, "database": (db_url or "sqlite").split(":")[0], "state": deployment["state"],
            "reason": deployment.get("reason"),
            "device_states": deployment.get("counts"),
            "seconds_to_all_active": round(elapsed, 2) if deployment["state"] == "completed" else None,
            "seconds_waited": round(elapsed, 2), "commands_received": answered["commands"],
            "commands_per_device": round(answered["commands"] / devices, 3), "repeated_commands": answered["repeated"],
            "bulk_registration_seconds": round(registered, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--offered", type=float, default=20000.0, help="windows/s offered to the simulator")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--deploy", type=int, default=10000, help="light devices to deploy to (0: skip)")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres", help="the deploy's cloud database")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edgefleet-light-") as scratch:
        work = Path(scratch)
        with contextlib.redirect_stdout(sys.stderr):
            bundle, key = build_digits_bundle(work / "v1", epochs=3)
        windows = record_windows(bundle, [key], load_splits().x_test)
        broker = MosquittoBroker(work / "mosquitto").start()
        postgres = None
        try:
            rates = [throughput(broker, windows, int(n), args.offered, args.seconds) for n in args.sizes.split(",")]
            for row in rates:
                print(f"{row['devices']} devices: {row['acked_msgs_per_s']} msg/s", file=sys.stderr)
            postgres = PostgresServer().start() if args.deploy and args.db == "postgres" else None
            rollout = deploy(work, broker, bundle, key, windows, args.deploy,
                             postgres.url if postgres else None) if args.deploy else None
        finally:
            broker.stop()
            if postgres:
                postgres.stop()
    emit({"benchmark": "light_fleet", "broker": "mosquitto (anonymous, loopback)", "throughput": rates,
          "deploy": rollout}, args.out)


if __name__ == "__main__":
    main()
