"""Time from `deploy` to every device active: N simulated devices (real agents, real MQTT, real HTTP
downloads, real slots), one rollout of all at once, for N = 10 and 100.

    python benchmarks/bench_deploy.py [--sizes 10,100] [--out runs/deploy.json]

The cloud (embedded broker, SQLite, rollout engine) and all devices share this 2-core machine, so this
measures the whole pipeline's work, not network latency. Each device downloads the bundle through a
signed URL, verifies it, self-tests, swaps while serving traffic, then watches a 1 s health window.
Prints JSON: per N the seconds to all active, the spread of per-device completion, failed requests.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.edge_runtime.ota_kit

from report import emit  # noqa: E402

from edgefleet.cloud.digits import build_digits_bundle, load_splits  # noqa: E402
from edgefleet.cloud.server import CloudServer  # noqa: E402
from edgefleet.cloud.settings import load_settings  # noqa: E402
from edgefleet.core.bundle import Bundle  # noqa: E402
from edgefleet.edge_runtime.sim import FleetSimulation  # noqa: E402
from tests.edge_runtime.ota_kit import make_variant  # noqa: E402

HEALTH_WINDOW = 1.0


def measure(workdir: Path, bundle: Path, key: Path, private: Path, devices: int) -> dict:
    new = make_variant(bundle, workdir / "v2", private, version=2, weight_noise=0.01)
    settings = load_settings(data_dir=workdir / "cloud", port=0, mqtt_port=0, trusted_keys=[key],
                             rollout_interval_seconds=0.2)
    with CloudServer(settings) as cloud, httpx.Client(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.new_admin_token}"}, timeout=60) as api:
        for root in (bundle, new):
            archive = Bundle.open(root).pack(workdir / f"{root.name}.tar.gz")
            api.post("/api/v1/bundles", content=archive.read_bytes(), headers={"Content-Type": "application/gzip"})
        started = time.perf_counter()
        simulation = FleetSimulation(
            cloud_url=cloud.url, token=cloud.new_admin_token, mqtt_url=api.get("/api/v1/info").json()["mqtt_url"],
            bundle=bundle, trusted_keys=[key], data=load_splits().x_test, devices=devices, fleet="bench",
            rate_per_device=max(1.0, 200.0 / devices), window_seconds=5.0, workdir=workdir / "devices")
        with simulation:
            while not all(row["connected"] for row in simulation.status()):
                time.sleep(0.2)
            fleet_up = time.perf_counter() - started
            deployed = time.perf_counter()
            deployment = api.post("/api/v1/deployments", json={
                "target": {"fleet": "bench"}, "bundle": {"name": "digits-cnn", "version": 2},
                "strategy": {"kind": "all", "success_threshold": 1.0, "health_window_seconds": HEALTH_WINDOW,
                             "wave_timeout_seconds": 600}}).json()
            while deployment["state"] not in ("completed", "aborted"):
                time.sleep(0.2)
                deployment = api.get(f"/api/v1/deployments/{deployment['id']}").json()
            elapsed = time.perf_counter() - deployed
            done = sorted(d["updated_at"] - deployment["created_at"] for d in deployment["devices"])
            serving = {m.agent.predictor.bundle.version for m in simulation.members}
            failed = simulation.failed
    return {
        "devices": devices, "state": deployment["state"], "reason": deployment.get("reason"),
        "device_states": deployment["counts"],
        "failure_reasons": sorted({d.get("reason") or "" for d in deployment["devices"]} - {""}),
        "seconds_to_all_active": elapsed if deployment["state"] == "completed" else None,
        "per_device_done_seconds": {"first": done[0], "median": done[len(done) // 2], "last": done[-1]},
        "health_window_seconds": HEALTH_WINDOW, "serving_versions": sorted(serving),
        "requests_failed_during_rollout": failed, "fleet_start_seconds": fleet_up,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-deploy-") as scratch:
        work = Path(scratch)
        with contextlib.redirect_stdout(sys.stderr):
            bundle, key = build_digits_bundle(work / "v1", epochs=3)
        for size in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            results.append(measure(work / f"n{size}", bundle, key, key.with_suffix(".key"), size))
            print(f"N={size}: {results[-1]['state']} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    emit({"benchmark": "deploy_to_active", "strategy": "all at once, success threshold 1.0", "results": results},
         args.out)


if __name__ == "__main__":
    main()
