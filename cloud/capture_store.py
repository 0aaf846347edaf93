"""Data capture in the cloud: each fleet's settings, the samples devices upload, and their listing joined with
the labels that arrived through the feedback API (the ground the datasets of issue 15 stand on).

    settings = fleet_settings(session, "lab", defaults)              # the row, or the defaults
    policy = device_policy(session, device, defaults, max_upload)    # what GET /api/v1/device/capture answers
    answer = store_samples(session, device, parse_upload(body))      # {"acknowledged", "duplicates", "refused"}
    rows = list_captures(session, device="cam-1", model="digits", since=t)
    arrays = decode_arrays(row)                                      # {"inputs": {...}, "outputs": {...}} numpy

An upload is {"samples": [sample, ...]}, each sample as edge_runtime/capture.py writes it. The envelope is
checked first (not an object, no list of 1..MAX_SAMPLES samples, a sample without a usable `sample_id`:
CaptureUploadError, one 400); then each sample on its own, so one bad sample is `refused` with its reason
(the device deletes it) and the others are stored. Arrays are checked before they are decoded: a dtype of
bool, int, uint or float only (never an object), at most MAX_DIMS dims, and a base64 length that is the
shape's bytes exactly. A sample already stored for its device is acknowledged again and counted as a
duplicate: the device deletes it either way.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import zlib
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from edgefleet.cloud.capture_tables import CaptureSample, CaptureSettingsRecord
from edgefleet.cloud.db import Alert, Device, IngestCounter, now
from edgefleet.cloud.labels_store import CloudLabel
from edgefleet.core.bounded_json import SQL_INTEGER_MAX
from edgefleet.core.errors import EdgefleetError

MAX_SAMPLES = 1000  # per upload
MAX_ARRAYS = 64  # inputs or outputs per sample
MAX_DIMS = 8
SAMPLE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
DTYPE = re.compile(r"[<|](b1|u1|i1|[iuf][248])")
REASONS = ("sampled", "low_confidence")
DAY = 86400.0


class CaptureUploadError(EdgefleetError):
    """An upload whose envelope is malformed (400); a bad sample inside a good envelope is refused by id."""


@dataclass(frozen=True)
class CaptureDefaults:
    """A fleet's settings until an admin sets them: capture off, privacy off."""

    enabled: bool = False
    never_capture: bool = False
    sample_rate: float = 0.01
    max_per_second: float = 1.0
    max_sample_bytes: int = 256 * 1024
    max_spool_bytes: int = 64 * 2**20
    low_confidence_below: float | None = None
    only_during_drift: bool = False
    retention_days: float = 30.0


SETTING_FIELDS = tuple(asdict(CaptureDefaults()))


def fleet_settings(session: Session, fleet: str, defaults: CaptureDefaults) -> dict:
    row = session.get(CaptureSettingsRecord, fleet)
    values = asdict(defaults) if row is None else {name: getattr(row, name) for name in SETTING_FIELDS}
    return {"fleet": fleet, **values, "updated_at": None if row is None else row.updated_at}


def put_fleet_settings(session: Session, fleet: str, changes: dict, defaults: CaptureDefaults) -> dict:
    """Stores the fleet's settings: the fields given replace, the others keep their value."""
    row = session.get(CaptureSettingsRecord, fleet)
    if row is None:
        row = CaptureSettingsRecord(fleet=fleet, **asdict(defaults))
        session.add(row)
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = now()
    session.commit()
    return fleet_settings(session, fleet, defaults)


def device_policy(session: Session, device: Device, defaults: CaptureDefaults, max_upload_bytes: int) -> dict:
    """The device's capture policy: its fleet's settings, whether a drift alert is open for it or its fleet,
    and the largest upload the cloud takes."""
    settings = fleet_settings(session, device.fleet, defaults)
    drift_open = session.scalar(select(Alert.id).where(
        Alert.status == "open", Alert.kind.like("%drift%"),
        or_((Alert.scope == "device") & (Alert.scope_id == device.id),
            (Alert.scope == "fleet") & (Alert.scope_id == device.fleet))).limit(1)) is not None
    policy = {name: settings[name] for name in SETTING_FIELDS if name != "retention_days"}
    return {**policy, "drift_alert_open": drift_open, "max_upload_bytes": max_upload_bytes}


# --- upload ---------------------------------------------------------------------------------------------
def parse_upload(data: object) -> list[dict]:
    """The samples of an upload (parsed JSON), or CaptureUploadError naming what is wrong with the envelope."""
    if not isinstance(data, dict) or set(data) != {"samples"}:
        raise CaptureUploadError('an upload must be {"samples": [...]}')
    samples = data["samples"]
    if not isinstance(samples, list) or not 1 <= len(samples) <= MAX_SAMPLES:
        raise CaptureUploadError(f"samples must be a list of 1 to {MAX_SAMPLES} samples")
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict) or not isinstance(sample.get("sample_id"), str) \
                or not SAMPLE_ID.fullmatch(sample["sample_id"]):
            raise CaptureUploadError(f"samples[{index}] has no sample_id of 1-64 letters, digits, '_' or '-'")
    return samples


def store_samples(session: Session, device: Device, samples: list[dict]) -> dict:
    """Stores the new samples in one transaction; every sample stored now or before is acknowledged."""
    tally: Counter[str] = Counter()
    refused, acknowledged, rows = [], [], {}
    for sample in samples:
        try:
            rows.setdefault(sample["sample_id"], _row(device, sample))
        except CaptureUploadError as err:
            refused.append({"sample_id": sample["sample_id"], "reason": str(err)})
    existing = set(session.scalars(select(CaptureSample.sample_id).where(
        CaptureSample.device_id == device.id, CaptureSample.sample_id.in_(list(rows)))))
    for sample_id, row in rows.items():
        acknowledged.append(sample_id)
        if sample_id in existing:
            tally["capture_duplicate"] += 1
        else:
            session.add(row)
            tally["capture_stored"] += 1
    tally["capture_refused"] += len(refused)
    _add_counts(session, tally)
    session.commit()
    return {"acknowledged": acknowledged, "stored": tally["capture_stored"],
            "duplicates": tally["capture_duplicate"], "refused": refused}


def _row(device: Device, sample: dict) -> CaptureSample:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CaptureUploadError(what)

    need(sample.get("device") == device.id, f"the sample names device {str(sample.get('device'))[:64]!r}, "
                                           f"not the one that sent it")
    rid = sample.get("request_id")
    need(isinstance(rid, str) and REQUEST_ID.fullmatch(rid) is not None, "request_id is not a request id")
    model = sample.get("model")
    need(isinstance(model, dict) and isinstance(model.get("name"), str) and 0 < len(model["name"]) <= 128
         and _int(model.get("version")), "model must be {\"name\", \"version\"}")
    at = sample.get("captured_at")
    need(_finite(at) and 0 <= at < 1e11, "captured_at must be unix seconds")
    reason = sample.get("reason", "sampled")
    need(reason in REASONS, f"reason must be one of {', '.join(REASONS)}")
    confidence = sample.get("confidence")
    need(confidence is None or (_finite(confidence) and 0 <= confidence <= 1), "confidence must be 0..1 or null")
    slice_name, task = sample.get("slice"), sample.get("task")
    need(slice_name is None or (isinstance(slice_name, str) and len(slice_name) <= 64), "slice must be a name")
    need(task is None or (isinstance(task, str) and len(task) <= 32), "task must be a task name")
    layout, chunks, offset = {}, [], 0
    for kind in ("inputs", "outputs"):
        arrays = sample.get(kind)
        need(isinstance(arrays, dict) and len(arrays) <= MAX_ARRAYS, f"{kind} must be an object of arrays")
        layout[kind] = {}
        for name, array in arrays.items():
            raw = _array_bytes(kind, name, array)
            layout[kind][name] = {"dtype": array["dtype"], "shape": array["shape"], "offset": offset}
            chunks.append(raw)
            offset += len(raw)
    return CaptureSample(device_id=device.id, fleet=device.fleet, sample_id=sample["sample_id"], request_id=rid,
                         model_name=model["name"], model_version=model["version"], captured_at=float(at),
                         reason=reason, confidence=confidence, slice=slice_name, task=task, layout=layout,
                         arrays=zlib.compress(b"".join(chunks), 1), size=offset)


def _array_bytes(kind: str, name: object, array: object) -> bytes:
    where = f"{kind}[{str(name)[:64]!r}]"
    if not isinstance(name, str) or not 0 < len(name) <= 128 or not isinstance(array, dict) \
            or set(array) != {"dtype", "shape", "data"}:
        raise CaptureUploadError(f"{where} must be {{\"dtype\", \"shape\", \"data\"}}")
    dtype, shape, data = array["dtype"], array["shape"], array["data"]
    if not isinstance(dtype, str) or not DTYPE.fullmatch(dtype):
        raise CaptureUploadError(f"{where}: dtype {str(dtype)[:16]!r} is not a little-endian bool, int, uint or float")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_int(d) for d in shape):
        raise CaptureUploadError(f"{where}: shape must be a list of at most {MAX_DIMS} sizes")
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if not isinstance(data, str) or len(data) != 4 * math.ceil(size / 3):
        raise CaptureUploadError(f"{where}: data must be base64 of exactly {size} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise CaptureUploadError(f"{where}: data is not base64") from err
    if len(raw) != size:
        raise CaptureUploadError(f"{where}: data holds {len(raw)} bytes, the shape needs {size}")
    return raw


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SQL_INTEGER_MAX


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _add_counts(session: Session, tally: Counter) -> None:
    for reason, count in tally.items():
        if count:
            row = session.get(IngestCounter, reason)
            if row is None:
                session.add(IngestCounter(reason=reason, count=count))
            else:
                row.count += count


# --- reading ----------------------------------------------------------------------------------------------
def list_captures(session: Session, *, device: str | None = None, fleet: str | None = None, model: str | None = None,
                  version: int | None = None, since: float | None = None, after_id: int = 0,
                  limit: int = 100) -> list[tuple[CaptureSample, dict | None]]:
    """Samples in id order, each with the label the feedback API received for its (device, request id):
    the label's item ({"label": ...} or {"value": ...}), None while none arrived."""
    query = select(CaptureSample).where(CaptureSample.id > after_id).order_by(CaptureSample.id).limit(limit)
    for column, value in ((CaptureSample.device_id, device), (CaptureSample.fleet, fleet),
                          (CaptureSample.model_name, model), (CaptureSample.model_version, version)):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(CaptureSample.captured_at >= since)
    rows = list(session.scalars(query))
    labels: dict[tuple[str, str], dict] = {}
    if rows:
        found = session.scalars(select(CloudLabel).where(
            CloudLabel.device_id.in_({r.device_id for r in rows}),
            CloudLabel.request_id.in_({r.request_id for r in rows})).order_by(CloudLabel.id))
        for label in found:  # the newest label for a request wins
            labels[(label.device_id, label.request_id)] = {k: v for k, v in label.item.items() if k != "request_id"}
    return [(row, labels.get((row.device_id, row.request_id))) for row in rows]


def decode_arrays(row: CaptureSample) -> dict[str, dict[str, np.ndarray]]:
    """The sample's inputs and outputs as numpy arrays."""
    raw = zlib.decompress(row.arrays)
    decoded: dict[str, dict[str, np.ndarray]] = {}
    for kind, arrays in row.layout.items():
        decoded[kind] = {}
        for name, spec in arrays.items():
            dtype = np.dtype(spec["dtype"])
            count = math.prod(spec["shape"])
            decoded[kind][name] = np.frombuffer(raw, dtype, count, spec["offset"]).reshape(spec["shape"])
    return decoded


def purge_captures(session: Session, at: float, defaults: CaptureDefaults) -> int:
    """Deletes samples received longer ago than their fleet's retention (the default's for fleets without a
    row); returns how many."""
    days = {row.fleet: row.retention_days for row in session.scalars(select(CaptureSettingsRecord))}
    deleted = 0
    for fleet, keep in days.items():
        deleted += session.execute(delete(CaptureSample).where(
            CaptureSample.fleet == fleet, CaptureSample.received_at < at - keep * DAY)).rowcount or 0
    deleted += session.execute(delete(CaptureSample).where(
        CaptureSample.fleet.not_in(list(days)) if days else True,
        CaptureSample.received_at < at - defaults.retention_days * DAY)).rowcount or 0
    return deleted
