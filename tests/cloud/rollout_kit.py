"""The pieces of the rollout tests that are not tests: the cloud as a client drives it, scripted devices
(plain paho clients on their own cmd topics that download the bundle through the signed URL and answer
with status messages, healthy ones up to "active", broken ones "failed"), and the fixtures both rollout
test modules use (imported there; each is registered under its `name`)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.bundle import Bundle
from edgefleet.core.ota import BundleRef, Command, Status, parse_command
from edgefleet.core.topics import topic
from tests.cloud.cloud_process import cloud_servers
from tests.waiting import until

WAIT = 30.0  # seconds any one condition may take before the test fails
GZIP = {"Content-Type": "application/gzip"}


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    until(predicate, what, timeout)


# --- the cloud ----------------------------------------------------------------------------------------
@dataclass
class Cloud:
    server: CloudServer
    client: httpx.Client
    token: str

    @property
    def settings(self) -> CloudSettings:
        return self.server.settings

    def deployment(self, deployment_id: str) -> dict:
        response = self.client.get(f"/api/v1/deployments/{deployment_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_state(self, deployment_id: str, state: str, timeout: float = WAIT) -> dict:
        wait_until(lambda: self.deployment(deployment_id)["state"] == state, f"{deployment_id} {state}", timeout)
        return self.deployment(deployment_id)

    def deploy(self, devices: list[str] | None = None, **strategy: object) -> dict:
        target = {"devices": devices} if devices else {"fleet": "lab"}
        response = self.client.post("/api/v1/deployments", json={
            "target": target, "bundle": {"name": "digits-cnn", "version": 1},
            "strategy": {"wave_timeout_seconds": 60, "health_window_seconds": 1, **strategy}})
        assert response.status_code == 201, response.text
        return response.json()


# --- scripted devices -----------------------------------------------------------------------------------
@dataclass
class Received:
    command: Command
    at: float  # time.monotonic() on arrival


@dataclass
class ScriptedDevice:
    """A device that answers commands the way the OTA agent does, with a scripted outcome:
    "healthy" (-> active), "fail" (self-test fails), "roll_back" (health check fails, it rolls back itself),
    "hold" (waits at health_check until `release` is set, then -> active)."""

    id: str
    fleet: str
    broker: object
    behaviour: str = "healthy"
    commands: list[Received] = field(default_factory=list)
    published: list[tuple[str, str, float]] = field(default_factory=list)  # (command id, state, monotonic)
    downloads: list[bool] = field(default_factory=list)  # whether each download matched sha256 and size
    password: str | None = None  # MQTT password (username = id), for a broker that checks
    go: threading.Event = field(default_factory=threading.Event)  # answers only once set
    release: threading.Event = field(default_factory=threading.Event)
    seq: int = 0

    def __post_init__(self) -> None:
        self.go.set()
        self._inbox: queue.Queue = queue.Queue()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id, clean_session=False,
                                   protocol=mqtt.MQTTv311)
        if self.password:
            self._client.username_pw_set(self.id, self.password)
        self._client.on_connect = lambda client, *_: client.subscribe(topic(self.fleet, self.id, "cmd"), qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, message: self._inbox.put((time.monotonic(), message.payload))
        self._worker = threading.Thread(target=self._work, daemon=True)

    def start(self) -> ScriptedDevice:
        self._worker.start()
        self._client.connect(self.broker.host, self.broker.port)
        self._client.loop_start()
        assert self._subscribed.wait(10), f"{self.id} did not subscribe"
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.go.set()
        self.release.set()
        self._inbox.put(None)
        self._worker.join(10)
        self._client.disconnect()
        self._client.loop_stop()

    def ops(self) -> list[str]:
        return [r.command.op for r in self.commands]

    def states(self, command_id: str) -> list[str]:
        return [state for cid, state, _ in self.published if cid == command_id]

    def _work(self) -> None:
        while (item := self._inbox.get()) is not None and not self._stopping.is_set():
            at, payload = item
            command = parse_command(payload)
            self.commands.append(Received(command, at))
            self.go.wait(WAIT)
            if command.op == "install":
                self._install(command)
            else:
                for state in ("received", "switching", "rolled_back"):
                    self._status(command, state, "rollback requested" if state == "rolled_back" else None)

    def _install(self, command: Command) -> None:
        self._status(command, "received")
        self._status(command, "downloading")
        with urllib.request.urlopen(command.bundle.url, timeout=10) as response:  # the signed URL, no token
            data = response.read()
        self.downloads.append(hashlib.sha256(data).hexdigest() == command.bundle.sha256
                              and len(data) == command.bundle.size == command.max_bytes)
        self._status(command, "verifying")
        self._status(command, "self_testing")
        if self.behaviour == "fail":
            self._status(command, "failed", "self_test_failed: 3 of 8 golden outputs off")
            return
        self._status(command, "switching")
        self._status(command, "health_check")
        if self.behaviour == "hold":
            self.release.wait(WAIT)
        if self.behaviour == "roll_back":
            self._status(command, "rolled_back", "latency p95 80 ms over the budget")
            return
        self._status(command, "active")

    def _status(self, command: Command, state: str, reason: str | None = None) -> None:
        self.seq += 1
        bundle = BundleRef(command.bundle.name, command.bundle.version) if command.bundle else None
        status = Status(self.fleet, self.id, command.id, command.deployment, state, bundle, reason, {},
                        time.time(), self.seq)
        if self._stopping.is_set():
            return
        self._client.publish(topic(self.fleet, self.id, "status"), status.to_payload(), qos=1).wait_for_publish(10)
        self.published.append((command.id, state, time.monotonic()))


def start_devices(cloud: Cloud, broker: object, count: int, behaviours: dict[str, str] | None = None,
                  group: str | None = None, running: list[ScriptedDevice] | None = None) -> dict[str, ScriptedDevice]:
    """Registers devices lab-00.. in fleet "lab" and starts a scripted device for each (added to `running`)."""
    devices = {}
    for index in range(count):
        device_id = f"lab-{index:02d}"
        body = {"id": device_id, "fleet": "lab", **({"group": group} if group else {})}
        assert cloud.client.post("/api/v1/devices", json=body).status_code == 201
        devices[device_id] = ScriptedDevice(device_id, "lab", broker, (behaviours or {}).get(device_id, "healthy"))
        if running is not None:
            running.append(devices[device_id])
        devices[device_id].start()
    return devices


def planned_waves(plan: dict) -> list[list[str]]:
    return [wave["devices"] for wave in plan["waves"]]


# --- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(name="no_edgefleet_environment", autouse=True)
def no_edgefleet_environment_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)


@pytest.fixture(name="archive")
def archive_fixture(digits_bundle, tmp_path: Path) -> Path:
    return Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")


@pytest.fixture(name="start_cloud")
def start_cloud_fixture(tmp_path: Path, mosquitto, digits_bundle) -> Iterator[Callable[..., Cloud]]:
    with cloud_servers() as start_server:

        def start(token: str | None = None, **overrides: object) -> Cloud:
            options = {"data_dir": tmp_path / "cloud", "port": 0, "mqtt_url": mosquitto.url,
                       "trusted_keys": [digits_bundle.public_key], "rollout_interval_seconds": 0.1,
                       "drift_interval_seconds": 3600, **overrides}
            server, client = start_server(options, token)
            return Cloud(server, client, token or server.new_admin_token)

        yield start


@pytest.fixture(name="cloud")
def cloud_fixture(start_cloud, archive: Path) -> Cloud:
    cloud = start_cloud()
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    return cloud


@pytest.fixture(name="devices_to_stop")
def devices_to_stop_fixture() -> Iterator[list[ScriptedDevice]]:
    running: list[ScriptedDevice] = []
    try:
        yield running
    finally:
        for device in running:
            device.stop()


@pytest.fixture(name="fleet")
def fleet_fixture(cloud: Cloud, mosquitto, devices_to_stop) -> Callable[..., dict[str, ScriptedDevice]]:
    """start_devices on the `cloud` fixture; every device is stopped at the end."""
    return lambda count, behaviours=None, group=None: start_devices(cloud, mosquitto, count, behaviours, group,
                                                                    devices_to_stop)
