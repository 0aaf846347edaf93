"""Ingest take-over after a kill -9: how long a killed ingest worker's share of the stream waits, and what a
supervisor's restart costs the stream, against the same stream without a kill in the same run.

    cd benchmarks && python bench_ingest_takeover.py [--devices 100000] [--restart-after 1] [--kill-at 0.25]

Two `edgefleet cloud up --role ingest` workers share one Mosquitto subscription ($share/edgefleet-ingest)
into one PostgreSQL, as in bench_ingest.py. Mosquitto keeps routing a share to a member whose persistent
session is offline (queued for it, up to the generated config's max_queued_messages of 100,000), so a
worker killed with -9 is not replaced by the other: its share waits until it is back under the same name
(cloud/ingest.py), as a supervisor restarts it (`edgefleet cloud service`: systemd, `RestartSec=1`). The
bench kills worker w1 with SIGKILL once `--kill-at` of the windows are stored, starts it again
`--restart-after` seconds later (the supervisor), and prints: the seconds from the kill until w1 had
connected again and until every window was stored, the whole stream's time against a run without a kill
(the same stream, devices and workers, a fresh database and broker), and that every window was stored
exactly once. At 16,700 msg/s (1M devices, a window a minute) and 2 workers the queue of 100,000 holds
about 12 s of a dead worker's share: the supervisor must restart it sooner, or Mosquitto drops the rest.
Everything stays on loopback; each run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from bench_ingest import (
    count_accepted,
    count_rows,
    distinct_windows,
    fresh_database,
    start_worker,
    stop_processes,
    stream,
    wait_connected,
)
from report import emit

from tests.mosquitto import MosquittoBroker
from tests.postgres import PostgresServer

WORKERS = ("w0", "w1")


def run(work: Path, postgres: PostgresServer, database: str, ids: list[str], args: argparse.Namespace,
        kill: bool) -> dict:
    url, engine, sessions = fresh_database(postgres, database, ids)
    broker = MosquittoBroker(work / "mosquitto", max_inflight=args.inflight).start()
    processes = {name: start_worker(work, url, broker, name) for name in WORKERS}
    events: dict[str, float] = {}
    restarter: list[threading.Thread] = []

    def restart() -> None:  # the supervisor: w1 again under its name, `restart_after` s after it died
        time.sleep(args.restart_after)
        processes["w1"] = start_worker(work, url, broker, "w1")
        wait_connected(work, broker, [processes["w1"]], ["w1"], times=2)
        events["reconnected"] = time.perf_counter()

    def stored() -> int:
        count = count_accepted(sessions)
        if kill and "killed" not in events and count >= args.kill_at * len(ids):
            os.kill(processes["w1"].pid, signal.SIGKILL)
            processes["w1"].wait(10)
            events["killed"], events["stored_at_kill"] = time.perf_counter(), count
            restarter.append(threading.Thread(target=restart, daemon=True))
            restarter[0].start()
        return count

    try:
        wait_connected(work, broker, list(processes.values()), list(WORKERS))
        time.sleep(1.0)  # subscribed
        started = time.perf_counter()
        count, elapsed, _published, _sending = stream(broker.port, ids, args.publishers, stored, args.timeout)
        finished = started + elapsed
        for thread in restarter:
            thread.join(70)
        rows, distinct = count_rows(sessions), distinct_windows(sessions)
    finally:
        stop_processes(list(processes.values()))
        broker.stop()
        engine.dispose()
    result = {"killed": kill, "sent": len(ids), "stored": rows, "stored_once": rows == distinct == len(ids),
              "lost": len(ids) - distinct, "seconds": round(elapsed, 3), "messages_per_second": round(count / elapsed)}
    if kill:
        if "killed" not in events:
            raise SystemExit(f"the stream ended before {args.kill_at:.0%} of it was stored: no kill happened")
        result |= {"stored_at_kill": int(events["stored_at_kill"]), "restart_after_seconds": args.restart_after,
                   "kill_to_reconnected_seconds": round(events.get("reconnected", float("nan")) - events["killed"], 3),
                   "kill_to_all_stored_seconds": round(finished - events["killed"], 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--inflight", type=int, default=1000)
    parser.add_argument("--kill-at", type=float, default=0.25, help="share of the windows stored before the kill")
    parser.add_argument("--restart-after", type=float, default=1.0, help="the supervisor's restart delay (s)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ids = [f"dev-{i:06d}" for i in range(args.devices)]
    postgres = PostgresServer().start()
    runs = []
    try:
        for index, kill in enumerate((False, True)):
            with tempfile.TemporaryDirectory(prefix="edgefleet-takeover-") as workdir:
                runs.append(run(Path(workdir), postgres, f"takeover_{index}", ids, args, kill))
    finally:
        postgres.stop()
    plain, killed = runs
    emit({"benchmark": "ingest_takeover",
          "path": "publishers -> Mosquitto ($share/edgefleet-ingest) -> 2 `cloud up --role ingest` workers -> "
                  "PostgreSQL; w1 killed -9 and restarted under its name",
          "devices": args.devices, "runs": runs,
          "extra_seconds_for_the_kill": round(killed["seconds"] - plain["seconds"], 3),
          "every_window_once": plain["stored_once"] and killed["stored_once"]}, args.out)


if __name__ == "__main__":
    main()
