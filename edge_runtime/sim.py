"""Simulated devices for demos and load tests: N real device agents in one process, fed real data.

Each simulated device is a full DeviceAgent (bundle verification, Predictor with the native telemetry
sketch, on-disk outbox, its own MQTT connection and credentials), registered through the cloud API.
One traffic thread sends requests round-robin at a fixed rate, drawing rows from the data given (the
digits test split in the demo). After `drift.after_seconds` the first `drift.devices` devices see
drifted inputs: brightness (+strength, clipped to [0, 1]), noise (Gaussian, sigma = strength, clipped)
or imbalance (only rows whose label is in the first three classes).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.core.errors import EdgefleetError
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig

log = logging.getLogger(__name__)
DRIFT_KINDS = ("brightness", "noise", "imbalance")


@dataclass(frozen=True)
class DriftPlan:
    kind: str
    after_seconds: float = 0.0
    devices: int = 1
    strength: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise EdgefleetError(f"drift kind {self.kind!r}: expected one of {', '.join(DRIFT_KINDS)}")


def drifted(kind: str, x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The input as a drifted device would see it (imbalance is applied when rows are chosen)."""
    if kind == "brightness":
        return np.clip(x + strength, 0.0, 1.0).astype(x.dtype)
    if kind == "noise":
        return np.clip(x + rng.normal(0.0, strength, size=x.shape), 0.0, 1.0).astype(x.dtype)
    return x


@dataclass
class SimulatedDevice:
    agent: DeviceAgent
    requests: int = 0
    drifting: bool = False


@dataclass
class FleetSimulation:
    cloud_url: str
    token: str
    mqtt_url: str
    bundle: Path
    trusted_keys: list[Path]
    data: np.ndarray
    labels: np.ndarray | None = None
    devices: int = 3
    fleet: str = "sim"
    rate_per_device: float = 20.0
    window_seconds: float = 5.0
    drift: DriftPlan | None = None
    workdir: Path = Path("runs/sim")
    seed: int = 0
    members: list[SimulatedDevice] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.drift and self.drift.kind == "imbalance" and self.labels is None:
            raise EdgefleetError("imbalance drift needs labels (--labels)")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = 0.0
        self.failed = 0  # requests that raised: an update must never make this grow

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> FleetSimulation:
        run = secrets.token_hex(2)
        for index in range(self.devices):
            device_id = f"{self.fleet}-{run}-{index:03d}"
            credentials = register_device(self.cloud_url, self.token, device_id, self.fleet)
            config = DeviceConfig(
                device=device_id, fleet=self.fleet, bundle=self.bundle, trusted_keys=tuple(self.trusted_keys),
                data_dir=self.workdir / device_id, threads=1, window_seconds=self.window_seconds,
                mqtt=MqttConfig(self.mqtt_url, credentials["username"], credentials["password"]),
            )
            self.members.append(SimulatedDevice(DeviceAgent(config, serve_http=False).start()))
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._traffic, name="sim-traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        for member in self.members:
            member.agent.stop()

    def __enter__(self) -> FleetSimulation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> list[dict]:
        rows = []
        for member in self.members:
            agent = member.agent
            rows.append({
                "device": agent.config.device, "requests": member.requests, "drifting": member.drifting,
                "connected": bool(agent.transport and agent.transport.connected),
                "outbox": len(agent.outbox) if agent.outbox else 0, "windows": agent.windows_closed,
            })
        return rows

    # traffic -------------------------------------------------------------------------------------------
    def _traffic(self) -> None:
        rng = np.random.default_rng(self.seed)
        clean_rows = np.arange(len(self.data))
        skewed_rows = np.flatnonzero(self.labels < 3) if self.labels is not None else clean_rows
        period = 1.0 / (self.rate_per_device * max(1, len(self.members)))
        next_at, turn = time.monotonic(), 0
        while not self._stop.is_set():
            index = turn % len(self.members)
            member = self.members[index]
            turn += 1
            drift = self.drift
            member.drifting = bool(drift and index < drift.devices
                                   and time.monotonic() - self.started_at >= drift.after_seconds)
            rows = skewed_rows if member.drifting and drift.kind == "imbalance" else clean_rows
            x = self.data[rng.choice(rows)][None, ...]
            if member.drifting:
                x = drifted(drift.kind, x, drift.strength, rng)
            try:
                member.agent.predict(x)
                member.requests += 1
            except Exception:  # noqa: BLE001 - counted: the demo and the benchmarks report failed requests
                self.failed += 1
                log.exception("simulated request failed")
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def register_device(cloud_url: str, token: str, device_id: str, fleet: str) -> dict:
    """POST /api/v1/devices; returns the MQTT credentials (shown once by the cloud)."""
    request = urllib.request.Request(
        cloud_url.rstrip("/") + "/api/v1/devices", data=json.dumps({"id": device_id, "fleet": fleet}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["mqtt"]
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        raise EdgefleetError(f"registering {device_id} at {cloud_url} failed: {err.code} {detail}") from err
    except urllib.error.URLError as err:
        raise EdgefleetError(f"cannot reach the cloud at {cloud_url}: {err.reason}") from err
