"""What the data capture fleet tests share: a counting HTTP proxy in front of the cloud (it sees every request a
device makes, and can hold the cloud's answers to uploads so that a device is killed after the cloud stored a
batch but before the device heard so), a device.toml with a [cloud] section, and the agent as a process.

    python -m tests.cloud.capture_kit device.toml      # starts DeviceAgent, prints "ready", runs until killed
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

UPLOAD = "/api/v1/device/captures"


class CountingProxy:
    """Forwards every request to `upstream`, counting (method, path); with `hold_uploads` set it forwards an
    upload, keeps the cloud's answer and waits for `release` before answering."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.seen: Counter[tuple[str, str]] = Counter()
        self.hold_uploads = threading.Event()
        self.release = threading.Event()
        self.held = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                path = self.path.split("?")[0]
                proxy.seen[(self.command, path)] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                content = answer.read()
                connection.close()
                if path == UPLOAD and proxy.hold_uploads.is_set():
                    proxy.held += 1
                    proxy.release.wait(60)
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


def device_toml(path: Path, *, device: str, fleet: str, bundle: Path, key: Path, data_dir: Path, http_port: int,
                mqtt_url: str, password: str, cloud_url: str) -> Path:
    path.write_text(f"""
[device]
id = "{device}"
fleet = "{fleet}"
data_dir = "{data_dir}"

[model]
bundle = "{bundle}"
trusted_keys = ["{key}"]
backends = ["onnxruntime"]
threads = 1

[mqtt]
url = "{mqtt_url}"
username = "{device}"
password = "{password}"

[telemetry]
window_seconds = 1

[http]
port = {http_port}

[cloud]
url = "{cloud_url}"
poll_seconds = 0.5
upload_seconds = 0.3
""")
    return path


def start_agent_process(config: Path, log: Path) -> subprocess.Popen:
    """The agent in its own process; returns once it serves (it prints "ready")."""
    process = subprocess.Popen([sys.executable, "-m", "tests.cloud.capture_kit", str(config)],
                               stdout=subprocess.PIPE, stderr=log.open("a"), text=True,
                               cwd=Path(__file__).resolve().parents[2])
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise RuntimeError(f"the agent did not start: {line!r}; see {log}")
    return process


def main(argv: list[str]) -> None:
    import logging
    import time

    from edgefleet.edge_runtime.agent import DeviceAgent
    from edgefleet.edge_runtime.device_config import DeviceConfig

    logging.basicConfig(level=logging.INFO)
    DeviceAgent(DeviceConfig.load(Path(argv[0]))).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
