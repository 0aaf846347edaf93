"""The cloud for tests: `edgefleet cloud up` as a real process (driven the way a user does), and in-process
CloudServers on free ports with an admin client each."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from edgefleet.cloud.server import CloudServer
from edgefleet.cloud.settings import CloudSettings
from tests.mosquitto import free_port

StartServer = Callable[..., tuple[CloudServer, httpx.Client]]


@contextmanager
def cloud_servers() -> Iterator[StartServer]:
    """Yields start(settings, token=None): a CloudServer started with those settings and an HTTP client that
    sends `token` (default: the admin token a fresh database printed). All are closed and stopped at the end."""
    started: list[tuple[CloudServer, httpx.Client]] = []

    def start(settings: dict, token: str | None = None) -> tuple[CloudServer, httpx.Client]:
        server = CloudServer(CloudSettings(**settings)).start()
        client = httpx.Client(base_url=server.url, timeout=30,
                              headers={"Authorization": f"Bearer {token or server.new_admin_token}"})
        started.append((server, client))
        return server, client

    try:
        yield start
    finally:
        for server, client in started:
            client.close()
            server.stop()


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
