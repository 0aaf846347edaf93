"""Over-the-air updates end to end with real device agents: the cloud (real HTTP, real SQLite), a real
Mosquitto, devices that download through signed URLs into real slots while serving traffic."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.sim import FleetSimulation
from tests.edge_runtime.ota_kit import make_variant

STRATEGY = {"kind": "waves", "waves": [25, 100], "success_threshold": 1.0, "max_failure_rate": 0.2,
            "health_window_seconds": 1.0, "wave_timeout_seconds": 60.0}


def wait_final(client: httpx.Client, deployment: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while deployment["state"] not in ("completed", "aborted") and time.monotonic() < deadline:
        time.sleep(0.3)
        deployment = client.get(f"/api/v1/deployments/{deployment['id']}").json()
    return deployment


@pytest.mark.slow
def test_rollout_in_waves_then_a_broken_release_stopped_by_the_canary(tmp_path: Path, mosquitto, digits_bundle,
                                                                      digits_splits):
    good = make_variant(digits_bundle.root, tmp_path / "v2", digits_bundle.private_key, version=2,
                        weight_noise=0.01)
    broken = make_variant(digits_bundle.root, tmp_path / "v3", digits_bundle.private_key, version=3,
                          golden_offset=1.0)  # verifies, then fails the device's self-test
    settings = load_settings(data_dir=tmp_path / "cloud", port=0, mqtt_url=mosquitto.url,
                             trusted_keys=[digits_bundle.public_key], rollout_interval_seconds=0.2)
    with CloudServer(settings) as cloud, httpx.Client(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.new_admin_token}"}, timeout=30) as client:
        for root in (digits_bundle.root, good, broken):
            archive = Bundle.open(root).pack(tmp_path / f"{root.name}.tar.gz")
            stored = client.post("/api/v1/bundles", content=archive.read_bytes(),
                                 headers={"Content-Type": "application/gzip"})
            assert stored.status_code == 201, stored.text
        simulation = FleetSimulation(
            cloud_url=cloud.url, token=cloud.new_admin_token, mqtt_url=mosquitto.url, bundle=digits_bundle.root,
            trusted_keys=[digits_bundle.public_key], data=digits_splits.x_test, devices=4, fleet="ota",
            rate_per_device=30.0, window_seconds=1.0, workdir=tmp_path / "devices")
        with simulation:
            deadline = time.monotonic() + 20  # every device connected (its command subscription is live)
            while not all(row["connected"] for row in simulation.status()) and time.monotonic() < deadline:
                time.sleep(0.1)
            deployment = client.post("/api/v1/deployments", json={
                "target": {"fleet": "ota"}, "bundle": {"name": "digits-cnn", "version": 2}, "strategy": STRATEGY})
            assert deployment.status_code == 201, deployment.text
            done = wait_final(client, deployment.json())
            assert done["state"] == "completed", done
            assert [w["size"] for w in done["waves"]] == [1, 3]
            assert {m.agent.predictor.bundle.version for m in simulation.members} == {2}
            assert simulation.failed == 0  # no request failed while the four devices swapped models

            deployment = client.post("/api/v1/deployments", json={
                "target": {"fleet": "ota"}, "bundle": {"name": "digits-cnn", "version": 3}, "strategy": STRATEGY})
            assert deployment.status_code == 201, deployment.text
            done = wait_final(client, deployment.json())
            assert done["state"] == "aborted", done
            canary, rest = done["waves"][0]["devices"], done["waves"][1]["devices"]
            states = {d["device"]: d for d in done["devices"]}
            assert [states[d]["state"] for d in canary] == ["failed"]
            assert states[canary[0]]["reason"] == "self_test_failed"
            assert all(states[d]["state"] == "pending" and states[d]["sent_at"] is None for d in rest)
            # the rest of the fleet never received v3: each saw exactly one command, v2's install
            assert all(len(m.agent._seen_commands) == 1 for m in simulation.members
                       if m.agent.config.device in rest)
            assert {m.agent.predictor.bundle.version for m in simulation.members} == {2}
            assert simulation.failed == 0
            time.sleep(1.5)  # a telemetry window of v2 from every device
            listed = client.get("/api/v1/devices?fleet=ota").json()
            assert {d["model_version"] for d in listed} == {2}
