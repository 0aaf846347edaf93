"""Rollout workers sharing deployments through leases (cloud/leases.py): two `cloud up --role rollouts`
processes on one PostgreSQL and one Mosquitto run a staged deployment; the one holding it is killed with
-9 mid-wave, the other takes it over, the rollout completes, and every wave transition happened once (each
is logged only by the worker whose compare-and-set UPDATE made it).

The test waits on states, never on a timing window: the devices of waves 2-4 hold their answers until the
test releases them, so the deployment stays in wave 2 for as long as the test needs (a second worker that
starts late on a loaded machine once found the rollout already past wave 2, and the "wave 2 started"
check never saw it)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from contextlib import ExitStack

import paho.mqtt.client as mqtt
from sqlalchemy import insert, select

from edgefleet.cloud.db import BundleRecord, Deployment, DeploymentDevice, Device
from edgefleet.cloud.leases import LeaseRecord
from edgefleet.cloud.rollout_plan import Strategy, rollout_order, wave_sizes
from edgefleet.core.ota import BundleRef, Status, parse_command
from edgefleet.core.topics import topic
from tests.cloud.cloud_process import cloud_up
from tests.cloud.test_roles import database_url
from tests.waiting import until

DEVICES, WAVES, LEASE = 40, (10, 40, 70, 100), 2.0


class Devices:
    """The fleet's devices on one MQTT connection: each answers an install, a little later, up to "active"
    (a new command id for a device that already answered would show as a second install). Only the devices
    in `answering` answer; the others hold their installs until `release` names them."""

    def __init__(self, port: int, answering: set[str]) -> None:
        self.installs: dict[str, list[str]] = {}
        self.answering = set(answering)
        self.held: dict[str, object] = {}  # device -> the install it holds (a parsed Command)
        self.seq = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scaleout-devices",
                                  protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("edgefleet/v1/lab/+/cmd", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _client, _userdata, message) -> None:  # noqa: ANN001 - paho
        command = parse_command(message.payload)
        device = message.topic.split("/")[3]
        with self.lock:
            if command.id in self.installs.setdefault(device, []):
                return  # a re-send of the same command: the agent ignores an id it has seen
            self.installs[device].append(command.id)
            if device not in self.answering:
                self.held[device] = command
                return
        threading.Timer(2.0, self._answer, (device, command)).start()  # a wave lasts a moment

    def holding(self) -> set[str]:
        """The devices holding an install they have not answered."""
        with self.lock:
            return set(self.held)

    def release(self, devices: set[str]) -> None:
        """From now on these devices answer; those holding an install answer it at once."""
        with self.lock:
            self.answering |= devices
            due = [(device, self.held.pop(device)) for device in devices if device in self.held]
        for device, command in due:
            self._answer(device, command)

    def _answer(self, device: str, command) -> None:  # noqa: ANN001 - a parsed Command
        for state in ("received", "switching", "health_check", "active"):
            with self.lock:
                self.seq += 1
                seq = self.seq
            status = Status("lab", device, command.id, command.deployment, state,
                            BundleRef(command.bundle.name, command.bundle.version), None, {}, time.time(), seq)
            self.client.publish(topic("lab", device, "status"), status.to_payload(), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def plan(sessions) -> dict[str, int]:
    """A deployment of 40 devices in 4 waves, as the API stores one (rows written directly: no bundle built);
    returns each device's wave."""
    ids = [f"dev-{n:02d}" for n in range(DEVICES)]
    order = rollout_order("dep-1", ids)
    strategy = Strategy(kind="waves", waves=WAVES, wave_timeout_seconds=600).checked()
    sizes = wave_sizes(strategy.waves, DEVICES)
    waves = [wave for wave, size in enumerate(sizes, start=1) for _ in range(size)]
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": i, "fleet": "lab", "password_hash": "-"} for i in ids])
        session.add(BundleRecord(name="digits-cnn", version=2, path="unused", sha256="0" * 64, size=1000,
                                 manifest={}))
        session.add(Deployment(id="dep-1", bundle_name="digits-cnn", bundle_version=2, target={"fleet": "lab"},
                               strategy=strategy.model_dump(mode="json"), wave_sizes=sizes, state="pending",
                               current_wave=0))
        session.flush()
        session.execute(insert(DeploymentDevice), [
            {"deployment_id": "dep-1", "device_id": device, "wave": wave, "rank": rank}
            for rank, (device, wave) in enumerate(zip(order, waves, strict=True))])
    return dict(zip(order, waves, strict=True))


def deployment(sessions) -> Deployment:
    with sessions() as session:
        return session.get(Deployment, "dep-1")


def active(sessions) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(DeploymentDevice.device_id).where(
            DeploymentDevice.deployment_id == "dep-1", DeploymentDevice.state == "active")))


def test_a_killed_rollout_worker_leaves_the_deployment_to_another_and_no_wave_runs_twice(
        tmp_path, postgres, mosquitto):
    mosquitto.start()
    sessions, url = database_url(postgres, "scaleout_rollouts")
    common = ("--db", url, "--mqtt-url", mosquitto.url, "--data", str(tmp_path / "data"))
    env = {"EDGEFLEET_LEASE_SECONDS": str(LEASE)}
    with ExitStack() as stack:
        stack.enter_context(cloud_up(tmp_path, "--role", "ingest", "--worker", "i", *common))  # applies statuses
        waves = plan(sessions)
        wave = {n: {d for d, w in waves.items() if w == n} for n in range(1, len(WAVES) + 1)}
        devices = Devices(mosquitto.port, answering=wave[1])
        stack.callback(devices.close)
        workers = [stack.enter_context(cloud_up(tmp_path, "--role", "rollouts", "--public-url",
                                                "http://127.0.0.1:9", *common, env=env))[0] for _ in range(2)]
        # Wave 2 is out and stays out (its devices hold their answers), however late the second worker started.
        until(lambda: deployment(sessions).current_wave == 2 and devices.holding() == wave[2],
              "wave 2 started and its installs received", 120)
        answered = set(sorted(wave[2])[:len(wave[2]) // 2])
        devices.release(answered)
        until(lambda: answered <= active(sessions), "half of wave 2 active", 60)
        with sessions() as session:
            holder = session.scalar(select(LeaseRecord.holder).where(LeaseRecord.name == "rollouts/deployment/dep-1"))
        leader = next(w for w in workers if f":{w.pid}:" in holder)
        os.kill(leader.pid, signal.SIGKILL)  # mid-rollout: wave 2 of 4 is out, half its devices answered
        leader.wait(10)
        killed_at_wave = deployment(sessions).current_wave
        devices.release(set(waves))  # the rest of wave 2 answers while no worker holds the deployment
        until(lambda: deployment(sessions).state == "completed", "the rollout completed by the other worker", 120)
        survivor = next(w for w in workers if w is not leader)
        assert survivor.poll() is None
    assert killed_at_wave == 2  # the kill came mid-wave 2: the deployment could not move on without its devices
    logs = "\n".join(p.read_text() for p in tmp_path.glob("cloud-up-*.log"))
    started = [int(n) for n in re.findall(r"deployment dep-1: wave \d+ done, starting wave (\d+)", logs)]
    assert sorted(started) == list(range(2, len(WAVES) + 1))  # each wave started once, by one worker or the other
    assert logs.count("deployment dep-1: running, wave 1") == 1 and logs.count("deployment dep-1 completed") == 1
    with sessions() as session:
        rows = session.scalars(select(DeploymentDevice).where(DeploymentDevice.deployment_id == "dep-1")).all()
    assert {r.state for r in rows} == {"active"}
    assert all(len(commands) == 1 for commands in devices.installs.values())  # one install id per device
    assert len(devices.installs) == DEVICES
