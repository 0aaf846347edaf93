"""The dashboard's fleet page at 10,000 devices: time per request and page weight.

    python benchmarks/bench_dashboard.py [--devices 10000] [--requests 200] [--out runs/dashboard.json]

Starts the cloud (in this process, a real uvicorn on loopback, SQLite in a temporary folder, a real
Mosquitto), stores N devices in 20 fleets with one telemetry window each and an open alert on every 20th,
signs in through the sign-in form, then requests the fleet page in several shapes, interleaved request by
request: the first page, a middle and the last page (OFFSET deep in the table), a substring search, and
a fleet plus online filter; GET /healthz beside them is the floor (HTTP on loopback, no page). Times
are from request to the last byte on a keep-alive connection (the server's work plus the loopback round
trip); page weight is the HTML body as sent (no compression).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.mosquitto, the broker helper

from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.db import Alert, Device, TelemetryRecord  # noqa: E402
from edgefleet.cloud.server import CloudServer  # noqa: E402
from edgefleet.cloud.settings import CloudSettings  # noqa: E402
from tests.mosquitto import MosquittoBroker  # noqa: E402


def populate(server: CloudServer, count: int) -> None:
    now = time.time()
    devices = [{"id": f"node-{i:05d}", "fleet": f"site-{i % 20:02d}", "password_hash": "$7$unused",
                "online": i % 3 != 0, "model_name": "digits-cnn", "model_version": 1 + i % 2,
                "agent_version": "0.1", "last_seen": now - i} for i in range(count)]
    windows = [{"device_id": d["id"], "fleet": d["fleet"], "seq": 1, "model_name": "digits-cnn", "model_version": 1,
                "window_start": now - 70, "window_end": now - 10, "requests": 600, "samples": 600, "errors": 0,
                "payload": "{}", "received_at": now} for d in devices]
    alerts = [{"scope": "device", "scope_id": d["id"], "fleet": d["fleet"], "model_name": "digits-cnn",
               "model_version": 1, "kind": "data_drift", "message": "drift", "details": {}, "status": "open",
               "opened_at": now} for d in devices[::20]]
    with server.sessions.begin() as session:
        session.execute(insert(Device), devices)
        session.execute(insert(TelemetryRecord), windows)
        session.execute(insert(Alert), alerts)


def sign_in(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, headers={"Origin": url}, timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"csrf": csrf, "token": token}).status_code == 303
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pages = max(1, -(-args.devices // 50))
    shapes = {"first_page": {}, "middle_page": {"page": pages // 2}, "last_page": {"page": pages},
              "search": {"q": "node-012"}, "fleet_online": {"fleet": "site-07", "online": "yes", "page": 2}}
    with tempfile.TemporaryDirectory() as folder:
        broker = MosquittoBroker(Path(folder) / "mosquitto").start()
        server = CloudServer(CloudSettings(data_dir=Path(folder) / "data", port=0, mqtt_url=broker.url,
                                           drift_interval_seconds=3600)).start()
        try:
            populate(server, args.devices)
            client = sign_in(server.url, server.new_admin_token)
            sizes = {}
            for name, params in shapes.items():  # warm up, and check each shape renders a full page
                answer = client.get("/", params=params)
                assert answer.status_code == 200 and 'id="devices"' in answer.text, (name, answer.status_code)
                sizes[name] = len(answer.content)
            paths = {name: "/" for name in shapes} | {"healthz": "/healthz"}
            shapes["healthz"] = {}
            sizes["healthz"] = len(client.get("/healthz").content)
            times = {name: np.empty(args.requests) for name in shapes}
            for index in range(args.requests):
                for name, params in shapes.items():
                    start = time.perf_counter()
                    client.get(paths[name], params=params).raise_for_status()
                    times[name][index] = (time.perf_counter() - start) * 1e3
            client.close()
        finally:
            server.stop()
            broker.stop()
    emit({"benchmark": "dashboard_fleet_page", "devices": args.devices, "requests_per_shape": args.requests,
          "shapes": {name: {"params": shapes[name], "p50_ms": round(float(np.percentile(t, 50)), 2),
                            "p99_ms": round(float(np.percentile(t, 99)), 2), "page_kb": round(sizes[name] / 1024, 1)}
                     for name, t in times.items()}}, args.out)


if __name__ == "__main__":
    main()
