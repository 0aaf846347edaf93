"""Labels later, and accuracy without labels: a device whose camera brightens, whose labels come late.

    python examples/labels_demo.py --bundle runs/digits/bundle --keys runs/keys \
        --data runs/digits/test_x.npy --labels runs/digits/test_y.npy --label-delay 15

1. starts the cloud in this process (SQLite, embedded MQTT broker, ingest, monitors, API) and pushes the
   bundle, whose profile holds the confidence calibration the export fitted on held-out digits;
2. starts one real device agent with its HTTP API; a client asks it for predictions (4 digits every
   50 ms) and sends each prediction's true label to POST /v1/feedback `--label-delay` seconds later;
3. after `--drift-after` seconds the camera brightens (+0.4): every second a row shows the estimated
   accuracy (from confidence alone), the measured accuracy (from the labels that arrived) and the
   label-free alert; the estimate falls first, the measure when the brightened images' labels come in;
4. prints `edgefleet performance` for the device and the alerts: the label-free one, and one per slice.
   Requests alternate between two slices (`?slice=door` and `?slice=yard`, two cameras of one device);
   the bundle holds no accuracy for either, so each is judged against the device's own earlier accuracy
   on it (its first labelled windows, cloud/slice_alerts.py), and both fall when the cameras brighten.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console

from edgefleet.cli.fleet_commands import alerts_table
from edgefleet.cli.performance_commands import performance_table
from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import load_settings
from edgefleet.core.api_client import CloudClient
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.background import BackgroundThreads
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import drifted, register_device

SLICES = ("door", "yard")  # two cameras of the device; no accuracy for them in the bundle
console = Console()
if not console.is_terminal:
    console = Console(width=130)


class Client(BackgroundThreads):
    """Predictions over HTTP, labels LABEL_DELAY seconds later, in order."""

    def __init__(self, url: str, x: np.ndarray, y: np.ndarray, delay: float) -> None:
        self.url, self.x, self.y, self.delay = url, x, y, delay
        self.brighten, self.stop = threading.Event(), threading.Event()
        self.pending: collections.deque = collections.deque()
        self.first_bright_label: float | None = None
        self.threads = [threading.Thread(target=self._ask, daemon=True),
                        threading.Thread(target=self._label, daemon=True)]

    def _ask(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for call in itertools.count():
                if self.stop.wait(0.05):
                    return
                rows = rng.integers(0, len(self.x), 4)
                bright = self.brighten.is_set()
                x = drifted("brightness", self.x[rows], 0.4, rng) if bright else self.x[rows]
                answer = client.post("/v1/predict", params={"slice": SLICES[call % len(SLICES)]},
                                     json={"inputs": x.tolist()}).json()
                self.pending.append((time.time() + self.delay, answer["request_id"], self.y[rows].tolist(), bright))

    def _label(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                if not self.pending or self.pending[0][0] > time.time():
                    self.stop.wait(0.02)
                    continue
                _, request_id, labels, bright = self.pending.popleft()
                if bright and self.first_bright_label is None:
                    self.first_bright_label = time.time()
                client.post("/v1/feedback", json={"request_id": request_id, "label": labels})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/digits/bundle"))
    parser.add_argument("--keys", type=Path, default=Path("runs/keys"))
    parser.add_argument("--data", type=Path, default=Path("runs/digits/test_x.npy"))
    parser.add_argument("--labels", type=Path, default=Path("runs/digits/test_y.npy"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/labels"))
    parser.add_argument("--label-delay", type=float, default=15.0, help="seconds from a prediction to its label")
    parser.add_argument("--drift-after", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    shutil.rmtree(args.workdir, ignore_errors=True)
    settings = load_settings(data_dir=args.workdir / "cloud", port=0, mqtt_port=0, trusted_keys=[args.keys],
                             drift_interval_seconds=1.0, drift_lookback_seconds=4.0)
    with CloudServer(settings) as cloud:
        client = CloudClient(cloud.url, cloud.new_admin_token)
        client.post_file("/api/v1/bundles", Bundle.open(args.bundle).pack(args.workdir / "bundle.tar.gz"))
        credentials = register_device(cloud.url, cloud.new_admin_token, "cam-1", "demo")
        config = DeviceConfig(device="cam-1", fleet="demo", bundle=args.bundle, trusted_keys=(args.keys,),
                              data_dir=args.workdir / "cam-1", threads=1, window_seconds=1.0, http_port=_free_port(),
                              mqtt=MqttConfig(cloud.broker_url, credentials["username"], credentials["password"]))
        with DeviceAgent(config) as agent, Client(agent.http_url, np.load(args.data), np.load(args.labels),
                                                   args.label_delay) as traffic:
            watch(client, traffic, args)
        console.print(performance_table(client.get(f"/api/v1/devices/cam-1/performance?since={time.time() - 600}"
                                                   f"&bucket_seconds=5")))
        console.print(alerts_table([a for a in client.get("/api/v1/alerts?status=all")
                                    if a["kind"] in ("estimated_accuracy", "performance_drop")]))


def watch(client: CloudClient, traffic: Client, args: argparse.Namespace) -> None:
    """One row a second until the measured accuracy has fallen (or the timeout)."""
    started = time.time()
    seen: dict[str, float] = {}
    console.print(f"labels arrive {args.label_delay:g} s after their predictions; the camera brightens at "
                  f"{args.drift_after:g} s")
    console.print(f"{'t':>5}  {'camera':10} {'estimated':>9} {'measured':>9} {'labels':>7}  alert")
    reference = None
    while time.time() - started < args.timeout:
        time.sleep(1.0)
        now = time.time() - started
        if now >= args.drift_after:
            traffic.brighten.set()
        answer = client.get(f"/api/v1/devices/cam-1/performance?since={time.time() - 3}&bucket_seconds=3")
        reference = (answer["models"] or [{}])[0].get("reference_accuracy") or reference
        points = answer["points"]
        estimate = points[-1]["estimated_accuracy"] if points else None
        labelled = [p for p in points if p["labels"]]
        measured = labelled[-1]["accuracy"] if labelled else None
        alert = next((a for a in client.get("/api/v1/alerts?status=open") if a["kind"] == "estimated_accuracy"),
                     None)
        if estimate is not None and reference is not None and estimate < reference - 0.05:
            seen.setdefault("estimate fell", now)
        if alert:
            seen.setdefault("label-free alert opened", now)
        if traffic.first_bright_label:
            seen.setdefault("first brightened label sent", traffic.first_bright_label - started)
        if measured is not None and reference is not None and measured < reference - 0.15:
            seen.setdefault("measured accuracy fell", now)
        console.print(f"{now:5.0f}  {'brightened' if traffic.brighten.is_set() else 'clean':10} "
                      f"{_shown(estimate):>9} {_shown(measured):>9} {sum(p['labels'] for p in points):>7}  "
                      f"{'OPEN' if alert else '-'}")
        if "measured accuracy fell" in seen and now > seen["measured accuracy fell"] + 3:
            break
    console.print(f"reference (held-out) accuracy {_shown(reference)}; brightened at {args.drift_after:g} s")
    for what, at in sorted(seen.items(), key=lambda item: item[1]):
        console.print(f"  {at:6.1f} s  {what}")


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
