"""A throwaway S3 API server for tests: moto's standalone server (`python -m moto.server`, from the test
extra's moto[server]) on a free loopback port, its state in memory, stopped by its PID. It speaks the S3 REST
API over HTTP, so boto3 in the cloud talks to it exactly as to AWS or MinIO, presigned URLs included."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mosquitto import free_port

# moto accepts any credentials; boto3 needs some, and a region, to sign requests
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "edgefleet-test", "AWS_SECRET_ACCESS_KEY": "edgefleet-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="edgefleet-moto-", suffix=".log")[1])  # werkzeug logs each request

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> S3Server:
        with self.log.open("ab") as log:
            command = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto.server exited with {self.process.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto.server did not listen on {self.port} within {timeout} s")

    def client(self):  # noqa: ANN201 - a boto3 S3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        self.log.unlink(missing_ok=True)
