"""Over-the-air updates end to end with real device agents: the cloud (real HTTP, real SQLite), a real
Mosquitto, devices that download through signed URLs into real slots while serving traffic."""

from __future__ import annotations

import json
import signal
import time
from functools import partial
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from edgefleet.cloud.db import DeviceStatus
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.bundle import Bundle
from edgefleet.core.ota import BundleRef, Command
from edgefleet.core.signing import TrustStore
from edgefleet.core.topics import topic
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import FleetSimulation, register_device
from edgefleet.edge_runtime.slots import SlotStore
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


def _agent(cloud_url: str, token: str, mqtt_url: str, device_id: str, bundles: dict[int, Path], trust: list[Path],
           workdir: Path) -> DeviceAgent:
    """A real device agent serving v2 with v1 as its previous slot (two earlier rollouts)."""
    credentials = register_device(cloud_url, token, device_id, "ota") if not (workdir / device_id).exists() else {}
    config = DeviceConfig(device=device_id, fleet="ota", bundle=bundles[1], trusted_keys=tuple(trust),
                          data_dir=workdir / device_id, threads=1, window_seconds=1.0,
                          mqtt=MqttConfig(mqtt_url, credentials.get("username"), credentials.get("password")))
    if not (config.data_dir / "model").exists():
        store = SlotStore(config.data_dir / "model", TrustStore.from_paths(trust))
        for version in (1, 2):
            store.activate(store.install(bundles[version], max_bytes=10**8))
    return DeviceAgent(config, serve_http=False)


def _until(predicate, what: str, timeout: float = 60) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached within {timeout} s: {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_an_aborted_deployment_never_downgrades_a_device_that_did_not_install_it(tmp_path: Path, mosquitto,
                                                                                 digits_bundle):
    """Issue 11, point 2, as it happened: pi-b is offline while v3 is deployed, its queued install is lost
    when Mosquitto restarts without its persistence file (kill -9), it comes back, the wave times out and
    the deployment aborts. pi-a, which installed v3, goes back to v2; pi-b keeps v2 (not its previous v1)
    and hears nothing. A rollback of v3 fed to pi-b over the broker anyway is refused by the device, and a
    command whose window is out of range is answered, not ignored."""
    bundles = {1: digits_bundle.root}
    for version in (2, 3):
        bundles[version] = make_variant(digits_bundle.root, tmp_path / f"v{version}", digits_bundle.private_key,
                                        version=version)
    trust = [digits_bundle.public_key]
    settings = load_settings(data_dir=tmp_path / "cloud", port=0, mqtt_url=mosquitto.url, trusted_keys=trust,
                             rollout_interval_seconds=0.2)
    with CloudServer(settings) as cloud, httpx.Client(
            base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.new_admin_token}"}, timeout=30) as client:
        for version, root in bundles.items():
            archive = Bundle.open(root).pack(tmp_path / f"v{version}.tar.gz")
            stored = client.post("/api/v1/bundles", content=archive.read_bytes(),
                                 headers={"Content-Type": "application/gzip"})
            assert stored.status_code == 201, stored.text
        make = partial(_agent, cloud.url, cloud.new_admin_token, mosquitto.url, bundles=bundles, trust=trust,
                       workdir=tmp_path / "devices")
        a, b = make("pi-a").start(), make("pi-b").start()
        agents = [a, b]
        try:
            _until(lambda: a.transport.connected and b.transport.connected, "both devices connected")
            b.stop()  # offline; the broker keeps its session and queues its commands
            agents.remove(b)
            created = client.post("/api/v1/deployments", json={
                "target": {"fleet": "ota"}, "bundle": {"name": "digits-cnn", "version": 3},
                "strategy": {"success_threshold": 1.0, "health_window_seconds": 1.0, "wave_timeout_seconds": 20,
                             "max_resends": 0}})
            assert created.status_code == 201, created.text
            plan = created.json()

            def row(device: str) -> dict:
                found = client.get(f"/api/v1/deployments/{plan['id']}").json()["devices"]
                return next(d for d in found if d["device"] == device)

            _until(lambda: row("pi-b")["sent_at"] and row("pi-a")["state"] == "active", "pi-a active, pi-b queued")
            mosquitto.stop(signal.SIGKILL)  # no persistence file written: pi-b's queued install is gone
            mosquitto.start()
            b = make("pi-b").start()
            agents.append(b)
            _until(lambda: a.transport.connected and b.transport.connected, "both devices reconnected")

            done = wait_final(client, plan)
            assert done["state"] == "aborted" and done["reason"].endswith("no status from 1 device(s): pi-b"), done
            _until(lambda: row("pi-a")["state"] == "rolled_back", "pi-a rolled back")
            assert a.predictor.bundle.version == 2 and a.store.current().version == 2
            time.sleep(1.0)
            assert b.predictor.bundle.version == 2 and b.store.current().version == 2
            assert b.store.previous().version == 1
            assert b._seen_commands == [] and row("pi-b")["rollback_command"] is None

            # The rollback the old engine sent, fed to pi-b from outside; then a window of 10**300 s.
            sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sender", protocol=mqtt.MQTTv311)
            sender.connect(mosquitto.host, mosquitto.port)
            sender.loop_start()
            try:
                rollback = Command("c-forged", "rollback", plan["id"], BundleRef("digits-cnn", 3), reason="abort")
                install = json.loads(Command("c-forever", "install", plan["id"], BundleRef(
                    "digits-cnn", 3, "http://127.0.0.1:9/x", "0" * 64, 1), max_bytes=1).to_payload())
                install["health_window_seconds"] = 1e300
                for payload in (rollback.to_payload(), json.dumps(install).encode()):
                    sender.publish(topic("ota", "pi-b", "cmd"), payload, qos=1).wait_for_publish(10)
            finally:
                sender.disconnect()
                sender.loop_stop()

            def answered(command_id: str) -> list[tuple[str, str | None]]:
                with cloud.sessions() as session:
                    return session.execute(select(DeviceStatus.state, DeviceStatus.reason)
                                           .where(DeviceStatus.command_id == command_id)
                                           .order_by(DeviceStatus.seq)).all()

            _until(lambda: answered("c-forged")[-1:] == [("failed", "not_current")], "pi-b refuses the rollback")
            _until(lambda: answered("c-forever") == [("failed", "bad_command")], "pi-b refuses the window")
            assert b.predictor.bundle.version == 2 and b.store.previous().version == 1
        finally:
            for agent in agents:
                agent.stop()
