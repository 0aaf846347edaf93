"""Ingest throughput on a 3-node NATS cluster: devices publish over MQTT, 1 and then 2 `cloud up --role ingest`
workers pull from the one JetStream consumer they share (cloud/ingest_nats.py) into PostgreSQL.

    python benchmarks/bench_ingest_nats.py --workers 1,2 [--devices 20000] [--prefill] [--out runs/ingest-nats.json]

The same stream as bench_ingest.py --workers (one realistic window per device, QoS 1, pre-encoded MQTT
packets from --publishers processes, here logged in as a simulator user and spread over nodes 1 and 2),
each worker count on a fresh cluster (tests/nats.py, loopback ports) and a fresh database of one real
PostgreSQL; worker N connects to node N mod 3. It measures from the first publish until the last row is
committed, checks that every window is stored exactly once, and prints JSON with each rate, the ratio to
the first, and the CPU microseconds per message of the workers, the three nats-server processes and
PostgreSQL. Publishers, servers and workers share this machine's cores. --prefill publishes the whole
stream into JetStream before the workers start and times their drain alone, from the first row stored.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.nats and tests.postgres

from bench_ingest import (  # noqa: E402 - benchmarks/, beside this script
    FLEET,
    MAX_UNACKED,
    PUBLISH_CHUNK,
    _count_pubacks,
    _cpu_seconds,
    _family,
    _packet,
    _read_exactly,
    _utf8,
    count_rows,
    distinct_windows,
    fresh_database,
    payload,
    stop_processes,
)
from report import emit  # noqa: E402

from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, INGEST, cloud_password, new_cloud_secret  # noqa: E402
from edgefleet.cloud.nats_config import INGEST_CONSUMER, INGEST_INBOX, INGEST_STREAM, bcrypt_hash  # noqa: E402
from edgefleet.core.topics import topic  # noqa: E402
from tests.nats import NatsCluster  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

SIM_USER, SIM_PASSWORD = "bench-sim", "bench-sim-pw"


def publish(port: int, devices: list[str], ready: multiprocessing.Event, go: multiprocessing.Event) -> None:
    """bench_ingest.publish with credentials: NATS takes no anonymous MQTT client here."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_packet(0x10, _utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 600)
                             + _utf8(f"bench-{os.getpid()}") + _utf8(SIM_USER) + _utf8(SIM_PASSWORD)))
        if _read_exactly(sock, 4) != b"\x20\x02\x00\x00":
            raise SystemExit("the broker refused the publisher's connection")
        packets = [_packet(0x32, _utf8(topic(FLEET, d, "telemetry")) + struct.pack("!H", i % 65535 + 1) + payload(d))
                   for i, d in enumerate(devices)]
        acked = [0]
        reader = threading.Thread(target=_count_pubacks, args=(sock, len(packets), acked), daemon=True)
        reader.start()
        ready.set()
        go.wait()
        for start in range(0, len(packets), PUBLISH_CHUNK):
            while start - acked[0] > MAX_UNACKED:
                time.sleep(0.001)
            sock.sendall(b"".join(packets[start:start + PUBLISH_CHUNK]))
        reader.join(120)
        sock.sendall(b"\xe0\x00")


def ingest_js(port: int, secret: str, ask):  # noqa: ANN001, ANN201
    """`ask(js)` on a JetStream context of the ingest user (as an operator's `nats` CLI would)."""
    import nats

    async def call():  # noqa: ANN202
        connection = await nats.connect(f"nats://127.0.0.1:{port}", user=INGEST.username,
                                        password=cloud_password(secret, INGEST), inbox_prefix=INGEST_INBOX,
                                        allow_reconnect=False)
        try:
            return await ask(connection.jetstream(timeout=5))
        finally:
            await connection.close()

    return asyncio.run(call())


def waiting_pulls(port: int, secret: str) -> int:
    """Pull requests waiting on the shared consumer: one per idle worker (0 until a worker made it)."""
    async def ask(js) -> int:  # noqa: ANN001
        try:
            return (await js.consumer_info(INGEST_STREAM, INGEST_CONSUMER)).num_waiting
        except Exception:  # noqa: BLE001 - no stream or consumer yet
            return 0

    return ingest_js(port, secret, ask)


def make_stream(port: int, secret: str) -> None:
    """--prefill: the stream and the consumer as the first worker makes them (cloud/ingest_nats.py)."""
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

    from edgefleet.cloud.ingest_nats import MAX_ACK_PENDING
    from edgefleet.cloud.nats_config import ingest_subjects

    async def ask(js) -> None:  # noqa: ANN001
        await js.add_stream(StreamConfig(name=INGEST_STREAM, subjects=ingest_subjects(), num_replicas=3,
                                         retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE))
        await js.add_consumer(INGEST_STREAM, ConsumerConfig(durable_name=INGEST_CONSUMER, ack_policy=AckPolicy.EXPLICIT,
                                                            ack_wait=30, max_deliver=-1,
                                                            max_ack_pending=MAX_ACK_PENDING))

    ingest_js(port, secret, ask)


def stream_messages(port: int, secret: str) -> int:
    async def ask(js) -> int:  # noqa: ANN001
        return (await js.stream_info(INGEST_STREAM)).state.messages

    return ingest_js(port, secret, ask)


def publishers_for(cluster: NatsCluster, ids: list[str], count: int, go: multiprocessing.Event) -> list:
    processes = []
    for index in range(count):
        ready = multiprocessing.Event()
        port = cluster.nodes[1 + index % 2].mqtt_port
        process = multiprocessing.Process(target=publish, args=(port, ids[index::count], ready, go))
        process.start()
        ready.wait(60)
        processes.append(process)
    return processes


def run(work: Path, postgres: PostgresServer, database: str, ids: list[str], workers: int,
        args: argparse.Namespace) -> dict:
    url, engine, sessions = fresh_database(postgres, database, ids)
    secret = new_cloud_secret()
    cluster = NatsCluster(work / "nats")
    cluster.configure([], {n: bcrypt_hash(cloud_password(secret, n), rounds=4) for n in CLOUD_CLIENTS},
                      sim_users=[(SIM_USER, FLEET, bcrypt_hash(SIM_PASSWORD, rounds=4))])
    cluster.start()
    port0 = cluster.nodes[0].client_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"EDGEFLEET_MQTT_PASSWORD": secret}
    processes: list[subprocess.Popen] = []
    parts = {"ingest": lambda: [p.pid for p in processes],
             "nats_servers": lambda: [p.pid for p in cluster.processes.values()],
             "postgres": lambda: _family(postgres.pid)}
    try:
        published = None
        if args.prefill:  # the whole stream in JetStream first: the workers' drain alone is timed
            make_stream(port0, secret)
            go = multiprocessing.Event()
            publishers = publishers_for(cluster, ids, args.publishers, go)
            started = time.perf_counter()
            go.set()
            for process in publishers:
                process.join(args.timeout)
            while stream_messages(port0, secret) < len(ids):
                time.sleep(0.2)
            published = time.perf_counter() - started
        for n in range(workers):
            log = (work / f"worker-{n}.log").open("w")
            node = cluster.nodes[n % 3]
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--role", "ingest", "--worker", f"w{n}",
                 "--db", url, "--mqtt-url", f"nats://127.0.0.1:{node.client_port}", "--data", str(work / "data"),
                 "--log-level", "warning"], stdout=log, stderr=log, env=env, start_new_session=True))
        deadline = time.monotonic() + 90
        if not args.prefill:
            while waiting_pulls(port0, secret) < workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise SystemExit(f"the ingest workers did not start pulling: see {work}/worker-*.log")
                time.sleep(0.2)
            go = multiprocessing.Event()
            publishers = publishers_for(cluster, ids, args.publishers, go)
            before = {name: _cpu_seconds(pids()) for name, pids in parts.items()}
            started, first = time.perf_counter(), 0
            go.set()
        else:  # timed from the first row seen: the workers' start-up (imports, connect) left out
            while (first := count_rows(sessions)) == 0:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise SystemExit(f"the ingest workers stored nothing: see {work}/worker-*.log")
                time.sleep(0.02)
            before = {name: _cpu_seconds(pids()) for name, pids in parts.items()}
            started, publishers = time.perf_counter(), []
        stored, deadline = first, time.monotonic() + args.timeout
        while stored < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
            stored = count_rows(sessions)
            if published is None and not any(p.is_alive() for p in publishers):
                published = time.perf_counter() - started
        elapsed = time.perf_counter() - started
        for process in publishers:
            process.join(60)
        timed = max(stored - first, 1)
        cpu = {name: (_cpu_seconds(pids()) - before[name]) / timed * 1e6 for name, pids in parts.items()}
        distinct = distinct_windows(sessions)
    finally:
        stop_processes(processes)
        cluster.stop()
        engine.dispose()
    return {"workers": workers, "sent": len(ids), "stored": stored, "stored_once": distinct == stored,
            "lost": len(ids) - stored, "timed_messages": stored - first, "seconds": elapsed,
            ("prefill_seconds" if args.prefill else "publishers_done_seconds"): published,
            "messages_per_second": (stored - first) / elapsed,
            "cpu_us_per_message": {name: round(value, 1) for name, value in cpu.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--prefill", action="store_true",
                        help="publish the whole stream before the workers start; time their drain alone")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ids = [f"dev-{i:06d}" for i in range(args.devices)]
    runs = []
    postgres = PostgresServer().start()
    try:
        for index, workers in enumerate(int(n) for n in args.workers.split(",")):
            with tempfile.TemporaryDirectory(prefix="edgefleet-ingest-nats-") as workdir:
                runs.append(run(Path(workdir), postgres, f"ingest_nats_{index}", ids, workers, args))
    finally:
        postgres.stop()
    base = runs[0]["messages_per_second"]
    for entry in runs:
        entry["ratio_to_first"] = entry["messages_per_second"] / base if base else None
    emit({"benchmark": "ingest_nats_workers",
          "path": "publishers -> NATS MQTT (QoS 1, 3 nodes) -> JetStream stream (work queue, R3) -> one durable pull "
                  "consumer -> `cloud up --role ingest` processes (ack after commit) -> PostgreSQL",
          "devices": args.devices, "publishers": args.publishers, "prefill": args.prefill, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
