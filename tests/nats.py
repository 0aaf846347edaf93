"""A real NATS cluster for tests: N nats-server processes serving MQTT on JetStream, on free loopback ports,
configured by the project's own `write_nats_config`, each started by the test and stopped by its PID.

Requires the `nats-server` binary (Debian: apt-get install nats-server; scripts/system-deps installs it).
`ready()` waits until every node accepts MQTT and the JetStream meta group has a leader with all nodes as
peers: NATS creates its MQTT streams with the replica count of the peers it knows at the first connect.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from edgefleet.cloud.nats_config import NatsNode, write_nats_config
from tests.mosquitto import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsCluster:
    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = Path(workdir)
        self.nodes = [NatsNode(f"n{i}", free_port(), free_port(), free_port()) for i in range(size)]
        self.monitor_ports = {node.name: free_port() for node in self.nodes}
        self.processes: dict[str, subprocess.Popen] = {}

    def configure(self, devices=(), cloud_hashes=None, sim_users=(), tls=None) -> dict[str, Path]:  # noqa: ANN001
        paths = write_nats_config(self.workdir, self.nodes, devices, cloud_hashes or {}, sim_users, tls=tls)
        self.add_monitoring()
        return paths

    def add_monitoring(self) -> None:
        """The monitoring port is the test's own (readiness, not part of the product): appended to each conf."""
        for node in self.nodes:
            with (self.workdir / f"{node.name}.conf").open("a") as conf:
                conf.write(f"http: 127.0.0.1:{self.monitor_ports[node.name]}\n")

    def reload(self) -> None:
        """What an operator does after new users.conf: SIGHUP (`nats-server --signal reload`) to every node."""
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGHUP)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            log = self.workdir / f"{node.name}.log"
            self.processes[node.name] = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.workdir / f"{node.name}.conf"), "-l", str(log)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ready(timeout)
        return self

    def url(self, index: int) -> str:
        return self.nodes[index].mqtt_url

    def log(self, index: int) -> str:
        path = self.workdir / f"{self.nodes[index].name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _jsz(self, node: NatsNode) -> dict:
        port = self.monitor_ports[node.name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=1) as response:
            return json.loads(response.read())

    def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        while pending and time.monotonic() < deadline:
            node = pending[0]
            if self.processes[node.name].poll() is not None:
                raise RuntimeError(f"nats-server {node.name} exited: {self.log(self.nodes.index(node))}")
            try:
                with socket.create_connection((node.host, node.mqtt_port), timeout=0.2):
                    meta = self._jsz(node).get("meta_cluster") or {}
                if meta.get("leader") and meta.get("cluster_size") == len(self.nodes):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            time.sleep(0.1)
        if pending:
            self.stop()
            raise RuntimeError(f"NATS cluster not formed within {timeout} s: {self.log(0)[-2000:]}")

    def kill(self, index: int) -> None:
        """SIGKILL one node by its PID: no goodbye to its peers or its clients."""
        process = self.processes[self.nodes[index].name]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
