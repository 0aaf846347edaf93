"""Data capture on the device: a sampled, rate-limited, size-bounded share of predict requests, kept whole
(inputs, outputs, request id, model, time) in the capture spool until the cloud has them.

    capturer = Capturer(spool, fleet="lab", device="cam-1", state_path=data_dir / "capture-policy.json")
    capturer.apply(CapturePolicy.from_cloud(answer))   # what the fleet's settings say (capture_upload.py)
    capturer.offer(request_id, bundle, inputs, outputs, answer)   # on every HTTP predict; almost always a no-op

Off by default: a device captures only once its fleet's settings turned capture on (PUT
/api/v1/fleets/<fleet>/capture in the cloud; the device reads them over HTTPS, capture_upload.py).
Every request draws one random number against `sample_rate`; only a request that wins goes further:
the token bucket (`max_per_second`), the optional filters (`low_confidence_below`: a classifier's or
detector's lowest top-1 confidence in the answer must be below it, other tasks are never captured under
it; `only_during_drift`: only while the cloud reports a drift alert open for this device or its fleet),
then a bounded queue to one writer thread that encodes the sample and appends it to the spool. So the
request itself pays one `random()` call, and a captured one a queue put.

The privacy switch wins over everything: a fleet whose settings say `never_capture`, or a bundle whose
model card says `"data_capture": "never"`, captures nothing, and turning the fleet's switch on deletes
what the spool still holds. The policy in force is persisted (`state_path`), so a device restarted
without a network keeps the fleet's last word, privacy included, and `describe()` says it (/healthz and
the device's model card, GET /v1/model-card).

A sample is one JSON object: arrays as {"dtype", "shape", "data": base64 of the raw little-endian bytes}
(no pickle, no zip to unpack on the cloud); one over `max_sample_bytes` is dropped and counted. Every
drop is counted by reason in `counts` (rate_limited, low_confidence, too_large, spool_full, disk_full,
queue_full, privacy).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import queue
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from edgefleet.core.errors import EdgefleetError
from edgefleet.edge_runtime.capture_spool import CaptureSpool

log = logging.getLogger(__name__)
QUEUE_LIMIT = 256  # captured samples waiting for the writer; beyond it they are dropped (queue_full)
MAX_RATE = 10_000.0


class CapturePolicyError(EdgefleetError):
    """Capture settings out of range (from the cloud's answer or a persisted file)."""


@dataclass(frozen=True)
class CapturePolicy:
    enabled: bool = False
    never_capture: bool = False  # the fleet's privacy switch: wins over everything
    sample_rate: float = 0.01  # share of requests drawn
    max_per_second: float = 1.0
    max_sample_bytes: int = 256 * 1024
    max_spool_bytes: int = 64 * 2**20
    low_confidence_below: float | None = None
    only_during_drift: bool = False
    drift_alert_open: bool = False  # the cloud's view, refreshed with the settings
    max_upload_bytes: int = 4 * 2**20  # the cloud's cap on one upload request

    @property
    def active(self) -> bool:
        return (self.enabled and not self.never_capture and self.sample_rate > 0
                and (self.drift_alert_open or not self.only_during_drift))

    @classmethod
    def from_cloud(cls, data: object) -> CapturePolicy:
        """The policy from GET /api/v1/device/capture's answer (or a persisted copy); CapturePolicyError
        names the first field out of range."""
        if not isinstance(data, dict):
            raise CapturePolicyError("capture settings must be a JSON object")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        policy = cls(**values)
        checks = [
            ("enabled", isinstance(policy.enabled, bool)), ("never_capture", isinstance(policy.never_capture, bool)),
            ("only_during_drift", isinstance(policy.only_during_drift, bool)),
            ("drift_alert_open", isinstance(policy.drift_alert_open, bool)),
            ("sample_rate", _number(policy.sample_rate, 0.0, 1.0)),
            ("max_per_second", _number(policy.max_per_second, 0.0, MAX_RATE)),
            ("max_sample_bytes", _integer(policy.max_sample_bytes, 64, 2**30)),
            ("max_spool_bytes", _integer(policy.max_spool_bytes, 1024, 2**40)),
            ("max_upload_bytes", _integer(policy.max_upload_bytes, 1024, 2**31)),
            ("low_confidence_below", policy.low_confidence_below is None
             or _number(policy.low_confidence_below, 0.0, 1.0)),
        ]
        for name, ok in checks:
            if not ok:
                raise CapturePolicyError(f"capture setting {name}={getattr(policy, name)!r} is out of range")
        return policy


def _number(value: object, low: float, high: float) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _integer(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class Capturer:
    def __init__(self, spool: CaptureSpool, *, fleet: str, device: str, state_path: Path | None = None,
                 max_spool_bytes: int | None = None) -> None:
        """max_spool_bytes: the device's own ceiling on the spool, whatever the fleet asks (None: none)."""
        self.spool, self.fleet, self.device = spool, fleet, device
        self.state_path, self.device_ceiling = state_path, max_spool_bytes
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0
        self._tokens, self._refilled = 0.0, time.monotonic()
        self.policy = CapturePolicy()
        self._rate = 0.0  # the hot path reads this one float: 0 while capture is not active
        self._writer = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
        self._writer.start()
        self.apply(self._load(), persist=False)

    # policy --------------------------------------------------------------------------------------------
    def apply(self, policy: CapturePolicy, *, persist: bool = True) -> None:
        """Puts the policy in force; the privacy switch also empties the spool."""
        if self.device_ceiling is not None and policy.max_spool_bytes > self.device_ceiling:
            policy = replace(policy, max_spool_bytes=self.device_ceiling)
        changed = policy != self.policy
        with self._lock:
            self.policy = policy
            self.spool.max_bytes = policy.max_spool_bytes
            if changed:  # a new policy starts with a full bucket: its burst is available at once
                self._tokens, self._refilled = max(1.0, policy.max_per_second), time.monotonic()
        self._rate = policy.sample_rate if policy.active else 0.0
        if policy.never_capture:
            removed = self.spool.clear()
            if removed:
                log.warning("capture: fleet %s turned on its privacy switch; deleted %d samples not yet uploaded",
                            self.fleet, removed)
        if changed:
            log.info("capture: %s", self.describe(None)["mode"])
            if persist and self.state_path is not None:
                temporary = self.state_path.with_suffix(".tmp")
                temporary.write_text(json.dumps(asdict(policy)))
                os.replace(temporary, self.state_path)

    def _load(self) -> CapturePolicy:
        if self.state_path is None or not self.state_path.exists():
            return CapturePolicy()
        try:
            return CapturePolicy.from_cloud(json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError, CapturePolicyError) as err:
            log.warning("capture: ignored the persisted policy %s (%s); capture is off until the cloud answers",
                        self.state_path, err)
            return CapturePolicy()

    def describe(self, bundle: object | None) -> dict:
        """What /healthz and the model card say: the mode in force, why, and the counts."""
        policy = self.policy
        if policy.never_capture:
            mode = f"never (fleet {self.fleet}'s privacy switch)"
        elif bundle is not None and _card_forbids(bundle):
            mode = "never (the model card's data_capture)"
        elif policy.active:
            mode = f"on: {policy.sample_rate:g} of requests, at most {policy.max_per_second:g}/s"
        else:
            mode = "off"
        return {"mode": mode, "never_capture": policy.never_capture, "pending": len(self.spool),
                "pending_bytes": self.spool.pending_bytes, "counts": dict(self.counts)}

    # the request path ----------------------------------------------------------------------------------
    def offer(self, request_id: str, bundle: object, inputs: dict, outputs: dict, answer: dict,
              slice_tag: str | None = None) -> None:
        """Called once per answered request; captures it when it wins the draw and passes the limits."""
        rate = self._rate
        if not rate or random.random() >= rate:
            return
        try:
            self._take(request_id, bundle, inputs, outputs, answer, slice_tag)
        except Exception:  # noqa: BLE001 - capture must never fail the request it samples
            log.exception("capture: a request could not be captured")
            self.counts["error"] += 1

    def _take(self, request_id: str, bundle: object, inputs: dict, outputs: dict, answer: dict,
              slice_tag: str | None) -> None:
        policy = self.policy
        if _card_forbids(bundle):
            self.counts["privacy"] += 1
            return
        confidence = _lowest_confidence(answer)
        if policy.low_confidence_below is not None and (confidence is None
                                                        or confidence >= policy.low_confidence_below):
            self.counts["low_confidence"] += 1
            return
        with self._lock:
            now = time.monotonic()
            burst = max(1.0, policy.max_per_second)
            self._tokens = min(burst, self._tokens + (now - self._refilled) * policy.max_per_second)
            self._refilled = now
            if self._tokens < 1.0:
                self.counts["rate_limited"] += 1
                return
            self._tokens -= 1.0
            if self._queued >= QUEUE_LIMIT:
                self.counts["queue_full"] += 1
                return
            self._queued += 1
        meta = {"request_id": request_id, "device": self.device, "fleet": self.fleet, "captured_at": time.time(),
                "model": {"name": bundle.name, "version": bundle.version}, "task": answer.get("task"),
                "confidence": confidence, "slice": slice_tag,
                "reason": "low_confidence" if policy.low_confidence_below is not None else "sampled"}
        self._queue.put((meta, inputs, outputs, policy.max_sample_bytes))

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until the writer has stored (or dropped) every queued sample; True if it did in time."""
        deadline = time.monotonic() + timeout
        while self._queued and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queued

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(5)

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._store(*item)
            except Exception:  # noqa: BLE001 - a sample that fails to encode must not stop capture
                log.exception("capture: a sample could not be stored")
                self.counts["error"] += 1
            finally:
                with self._lock:
                    self._queued -= 1

    def _store(self, meta: dict, inputs: dict, outputs: dict, max_bytes: int) -> None:
        if self.policy.never_capture:  # the switch turned on while this sample waited
            self.counts["privacy"] += 1
            return
        sample_id = uuid.uuid4().hex
        payload = json.dumps({"sample_id": sample_id, **meta, "inputs": encode_arrays(inputs),
                              "outputs": encode_arrays(outputs)}, separators=(",", ":")).encode()
        if len(payload) > max_bytes:
            self.counts["too_large"] += 1
            return
        refused = self.spool.append(sample_id, payload)
        self.counts[refused or "captured"] += 1


def encode_arrays(arrays: dict) -> dict:
    """{name: {"dtype", "shape", "data"}}: the raw bytes little-endian, base64 (decode: cloud/capture_store.py)."""
    encoded = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        encoded[name] = {"dtype": array.dtype.str, "shape": list(array.shape),
                         "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()}
    return encoded


def _lowest_confidence(answer: dict) -> float | None:
    """The lowest top-1 confidence among the answer's samples: a classifier's, a detector's best score; else None."""
    predictions = answer.get("predictions")
    if predictions:
        return float(min(p["confidence"] for p in predictions))
    detections = answer.get("detections")
    if detections:  # per sample its best score (0 with no detection), the lowest of those
        return float(min(max((d.get("score", 0.0) for d in sample), default=0.0) for sample in detections))
    return None


def _card_forbids(bundle: object) -> bool:
    card = bundle.manifest.get("model_card") or {}
    return isinstance(card, dict) and card.get("data_capture") == "never"
