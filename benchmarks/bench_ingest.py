"""Ingest throughput: telemetry windows from many devices through a real Mosquitto into SQLite.

    python benchmarks/bench_ingest.py [--devices 50000] [--publishers 2] [--out runs/ingest.json]

Registers N devices, starts a real Mosquitto (loopback, free port) and the cloud's Ingest, then
publisher processes send one realistic digits-CNN window per device (QoS 1, every device its own topic
and seq). It measures from the first publish until the last row is committed, checks that every
window is stored exactly once, and prints JSON with the rate against the goal (5,000 msg/s: 50,000
devices reporting every 10 s). Publishers, broker and ingest share this machine's cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.mosquitto, the broker helper

from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.db import Device, IngestCounter, TelemetryRecord, make_engine, make_sessions  # noqa: E402
from edgefleet.cloud.ingest import Ingest  # noqa: E402
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow  # noqa: E402
from edgefleet.core.topics import topic  # noqa: E402
from tests.mosquitto import MosquittoBroker  # noqa: E402

GOAL = 5000.0
FLEET = "bench"


def payload(device: str) -> bytes:
    """A window as the digits CNN's device sends it: 2 channel taps x 11 columns, 10 classes."""
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[4], latency[5] = 580, 20
    features = FeatureCounts("pixels", ((60, 61, 59, 60, 62, 58, 60, 61, 59, 60, 0),) * 2)
    return TelemetryWindow(FLEET, device, 1, "digits-cnn", 1, 1.7e9, 1.7e9 + 10, 600, 600, 0, tuple(latency),
                           (features,), (60,) * 10, (55, 54, 56, 55, 55, 54, 56, 55, 55, 55, 0)).to_payload()


def publish(port: int, devices: list[str], ready: multiprocessing.Event, go: multiprocessing.Event) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    messages = [(topic(FLEET, d, "telemetry"), payload(d)) for d in devices]
    ready.set()
    go.wait()
    infos = [client.publish(name, body, qos=1) for name, body in messages]
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-ingest-") as workdir:
        work = Path(workdir)
        sessions = make_sessions(make_engine(f"sqlite:///{work / 'cloud.db'}"))
        ids = [f"dev-{i:06d}" for i in range(args.devices)]
        with sessions.begin() as session:
            session.execute(insert(Device), [{"id": d, "fleet": FLEET, "password_hash": "-"} for d in ids])
        broker = MosquittoBroker(work / "mosquitto").start()
        ingest = Ingest(sessions, broker.url)
        ingest.start()
        try:
            if not ingest.wait_connected(10):
                raise SystemExit("the ingest did not connect")
            time.sleep(0.5)
            go = multiprocessing.Event()
            workers = []
            for index in range(args.publishers):
                ready = multiprocessing.Event()
                share = ids[index::args.publishers]
                worker = multiprocessing.Process(target=publish, args=(broker.port, share, ready, go))
                worker.start()
                ready.wait(60)
                workers.append(worker)
            started = time.perf_counter()
            go.set()
            stored, deadline = 0, time.monotonic() + args.timeout
            while stored < args.devices and time.monotonic() < deadline:
                time.sleep(0.1)
                with sessions() as session:
                    stored = session.scalar(select(func.count()).select_from(TelemetryRecord))
            elapsed = time.perf_counter() - started
            for worker in workers:
                worker.join(60)
            time.sleep(0.5)
            with sessions() as session:
                counters = {r.reason: r.count for r in session.scalars(select(IngestCounter))}
                distinct = session.scalar(select(func.count(func.distinct(TelemetryRecord.device_id))))
        finally:
            ingest.stop()
            broker.stop()
    rate = stored / elapsed
    report = {
        "benchmark": "ingest",
        "path": "publishers -> Mosquitto (QoS 1) -> Ingest (paho, manual ack after commit) -> SQLite",
        "devices": args.devices, "publishers": args.publishers, "payload_bytes": len(payload("dev-000000")),
        "sent": args.devices, "stored": stored, "distinct_devices": distinct, "lost": args.devices - stored,
        "counters": counters, "seconds": elapsed, "messages_per_second": rate,
        "goal_messages_per_second": GOAL, "meets_goal": rate >= GOAL and stored == args.devices,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
