"""`edgefleet cloud up` as a real process, for the tests that drive the cloud the way a user does."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.mosquitto import free_port


@contextmanager
def cloud_up(tmp_path: Path, *args: str,
             env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, queue.Queue, str, str]]:
    """`edgefleet cloud up` as a real process; once it serves, yields it, the queue of its further stdout
    lines, its URL and what it printed while starting."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")} | {"COLUMNS": "200"} | (env or {})
    stderr = (tmp_path / f"cloud-up-{port}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", "cloud", "up", "--port", str(port), "--host", "127.0.0.1",
         *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=tmp_path, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in process.stdout], daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}"
        startup = read_until(lines, "running;", process, tmp_path)
        yield process, lines, url, "\n".join(startup)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        stderr.close()


def read_until(lines: queue.Queue, marker: str, process: subprocess.Popen, tmp_path: Path,
               timeout: float = 60) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.2))
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if marker in seen[-1]:
            return seen
    logs = "\n".join(p.read_text() for p in tmp_path.glob("cloud-up-*.log"))
    raise AssertionError(f"no {marker!r} in the output: {seen}\n{logs}")
