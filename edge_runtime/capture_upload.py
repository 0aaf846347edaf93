"""The capture uplink: one thread that reads the fleet's capture settings from the cloud and uploads the spool.

    uplink = CaptureUplink(capturer, "https://cloud.example", username="cam-1", password="...").start()
    uplink.stop()

Over HTTP(S), not MQTT: a sample can be hundreds of KiB, and the broker's inflight window is shared with
telemetry and commands. The device authenticates with its own credentials (HTTP Basic: its id and the
password the cloud gave it at registration, the same one it logs into the broker with), never an admin token.

Every `poll_seconds` it asks GET /api/v1/device/capture for its fleet's settings (and whether a drift
alert is open for it or its fleet) and puts them in force (Capturer.apply). Settings are state, not
events: a device that was offline, restarted or newly registered has them on its next poll, with no
record of who received what. Every `upload_seconds` (or sooner once a batch is waiting) it sends the
oldest samples, as many as fit the cloud's `max_upload_bytes`, to POST /api/v1/device/captures and
deletes exactly the ids the cloud acknowledged (stored now or before). Recovery: a kill -9 anywhere
leaves unacknowledged samples in the spool, and the restarted uplink sends them again; the cloud stores
each (device, sample id) once, so at most the batch in flight is sent twice.

Refusals: 403 `never_capture` (the fleet's privacy switch turned on since the last poll) puts the switch
in force at once, which empties the spool; 413 or 400 halves the batch, and a single sample the cloud
refuses as too large or malformed is deleted with a log line, or it would block the spool for ever.
Anything else (the cloud unreachable, a 5xx) waits for the next round, with exponential back-off.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from edgefleet.core import bounded_json
from edgefleet.core.bounded_json import JsonLimitError
from edgefleet.core.tls import client_context
from edgefleet.edge_runtime.capture import CapturePolicy, CapturePolicyError, Capturer

log = logging.getLogger(__name__)
SETTINGS_PATH = "/api/v1/device/capture"
UPLOAD_PATH = "/api/v1/device/captures"
MAX_ANSWER_BYTES = 1 << 20
ENVELOPE_BYTES = 256  # the batch's JSON around its samples
MAX_BACKOFF = 300.0


class CaptureUplink:
    def __init__(self, capturer: Capturer, url: str, *, username: str, password: str, poll_seconds: float = 60.0,
                 upload_seconds: float = 10.0, timeout: float = 30.0, ca: Path | None = None) -> None:
        self.capturer, self.url = capturer, url.rstrip("/")
        self._tls = client_context(ca) if self.url.startswith("https://") else None  # ca: a private CA's PEM
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.poll_seconds, self.upload_seconds, self.timeout = poll_seconds, upload_seconds, timeout
        self.uploaded = 0  # samples the cloud acknowledged since start
        self.requests = 0  # upload requests sent since start
        self.polls = 0  # settings read since start
        self.last_error: str | None = None
        self._batch_limit: int | None = None  # lowered after a 413
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CaptureUplink:
        self._thread = threading.Thread(target=self._loop, name="capture-uplink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        next_poll, backoff = 0.0, 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_poll:
                    self.poll()
                    next_poll = time.monotonic() + self.poll_seconds
                while self.upload_once() and not self._stop.is_set():
                    pass
                backoff = 0.0
            except (OSError, ValueError, JsonLimitError, CapturePolicyError) as err:  # unreachable, 5xx, bad answer
                self.last_error = f"{type(err).__name__}: {err}"
                backoff = min(MAX_BACKOFF, max(1.0, backoff * 2))
                log.info("capture uplink: %s; next try in %.0f s", self.last_error, backoff)
                next_poll = min(next_poll, time.monotonic() + backoff)
            self._wake.wait(backoff or min(self.upload_seconds, max(0.0, next_poll - time.monotonic())))
            self._wake.clear()

    def poll(self) -> CapturePolicy:
        """Reads the fleet's settings and puts them in force."""
        answer = self._call("GET", SETTINGS_PATH)
        policy = CapturePolicy.from_cloud(answer)
        self.capturer.apply(policy)
        self.polls += 1
        return policy

    def upload_once(self) -> bool:
        """Sends one batch; True if it sent one and more may be waiting."""
        policy = self.capturer.policy
        if policy.never_capture:  # nothing ever leaves a fleet with the privacy switch on
            self.capturer.spool.clear()
            return False
        limit = min(policy.max_upload_bytes, self._batch_limit or policy.max_upload_bytes) - ENVELOPE_BYTES
        batch = self.capturer.spool.batch(max_bytes=max(1, limit))
        if not batch:
            return False
        body = b'{"samples":[' + b",".join(payload for _, payload in batch) + b"]}"
        self.requests += 1
        try:
            answer = self._call("POST", UPLOAD_PATH, body)
        except urllib.error.HTTPError as err:
            return self._refused(err, batch)
        acknowledged = [str(s) for s in answer.get("acknowledged", []) if isinstance(s, str)]
        refused = [str(r.get("sample_id")) for r in answer.get("refused", []) if isinstance(r, dict)]
        if refused:
            log.warning("capture uplink: the cloud refused %d sample(s) (first: %s); deleted",
                        len(refused), answer["refused"][0])
        self.capturer.spool.delete(acknowledged + refused)
        self.uploaded += len(acknowledged)
        self._batch_limit = None
        return bool(acknowledged or refused)

    def _refused(self, err: urllib.error.HTTPError, batch: list[tuple[str, bytes]]) -> bool:
        detail = _detail(err)
        if err.code == 403 and "never_capture" in detail:
            log.warning("capture uplink: the cloud says fleet %s never captures; deleting the spool",
                        self.capturer.fleet)
            self.capturer.apply(CapturePolicy(never_capture=True))
            return False
        if err.code in (400, 413) and len(batch) == 1:
            log.warning("capture uplink: sample %s refused (%d %s); deleted", batch[0][0], err.code, detail)
            self.capturer.spool.delete([batch[0][0]])
            return True
        if err.code in (400, 413):  # halve until the sample the cloud refuses is alone, then delete it
            self._batch_limit = max(1024, sum(len(p) for _, p in batch) // 2)
            return True
        raise OSError(f"upload refused: {err.code} {detail}")

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict:
        headers = {"Authorization": self._auth}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout, context=self._tls) as response:
            raw = response.read(MAX_ANSWER_BYTES + 1)
        answer = bounded_json.loads(raw, max_bytes=MAX_ANSWER_BYTES, what="capture answer")
        if not isinstance(answer, dict):
            raise ValueError(f"{method} {path}: the cloud answered {type(answer).__name__}, not an object")
        return answer


def _detail(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read(4096)
        return str(json.loads(raw).get("detail", raw[:200]))
    except (OSError, ValueError, AttributeError):
        return ""
