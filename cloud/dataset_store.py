"""Datasets: captured samples (cloud/capture_store.py) frozen with the labels that had arrived for them, by
name and version, so a retrained bundle's lineage can name the exact data it saw.

    record = create_dataset(session, "lab-digits", DatasetFilter(fleet="lab", labelled_only=True))
    record = get_dataset(session, "lab-digits", "latest")          # or a version number
    arrays, fingerprint = export_arrays(session, record)  # {input name..., "y", "slice", "captured_at"} numpy
    counts = count_selection(session, DatasetFilter(fleet="lab", labelled_only=True))  # nothing frozen

Freezing reads the captures the filter selects (fleet, device, model name and version, captured since /
until, slice, labelled only), each joined with the newest label the feedback API received for its request
id, and stores: the next version for the name (1, 2, ...), the member list `[capture id, device, sample id,
label item]` sorted by (device, sample id), a summary (samples, rows, counts per class and slice, time
range, input layout) and a fingerprint. The fingerprint is the sha256 over the members in that order: for
each, its device, sample id and label as canonical JSON, then its stored layout and raw array bytes. The
same rows with the same labels give the same fingerprint; a label that arrives later changes the next
version's fingerprint, never a frozen one's (its labels are stored in the member list).

Retention: a dataset does not pin its samples. Retention (cloud/retention.py) deletes captures by their
fleet's period whether a dataset holds them or not, and the dataset's record stays; exporting it then
refuses (409) naming how many of its samples are gone, rather than export a smaller file under the same
fingerprint. Export re-computes the fingerprint from the stored rows and refuses a mismatch the same way.
Export the datasets you train on (the .npz is the lasting copy) or raise the fleet's `retention_days`.

Refused before anything is stored (DatasetError, 400): a filter nothing matches (saying how many matched
before `labelled_only`), samples whose inputs differ in name, dtype or per-row shape (filter by model name
and version), an input without a batch axis, a label list whose length is not the sample's rows, labels
that mix class names, class indices and values, an input named `y` or `slice`, and more than MAX_SAMPLES
samples or MAX_BYTES array bytes (the export is built in memory).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import JSON, Float, Integer, String, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.api.deps import ConflictError, NotFoundError
from edgefleet.cloud.capture_store import decode_arrays, list_captures
from edgefleet.cloud.capture_tables import CaptureSample
from edgefleet.cloud.db import Base, now
from edgefleet.core.errors import EdgefleetError

MAX_SAMPLES = 20_000
MAX_BYTES = 256 * 2**20
PAGE = 1000
RESERVED = {"y", "slice", "captured_at"}  # the .npz keys that are not inputs (cloud/loop/eval_data.py)
NO_SLICE = "none"  # the slice value of a sample captured without one, when others have one


class DatasetError(EdgefleetError):
    """A dataset that cannot be frozen as asked (400)."""


class Dataset(Base):
    """One frozen version of a named dataset."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_dataset_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    filter: Mapped[dict] = mapped_column(JSON)
    fingerprint: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict] = mapped_column(JSON)
    members: Mapped[list] = mapped_column(JSON)  # [[capture id, device, sample id, label item | null], ...]


@dataclass(frozen=True)
class DatasetFilter:
    fleet: str | None = None
    device: str | None = None
    model: str | None = None
    version: int | None = None
    since: float | None = None
    until: float | None = None
    slice: str | None = None
    labelled_only: bool = False

    def check(self) -> None:
        if self.version is not None and self.model is None:
            raise DatasetError("a model version filter needs the model name too")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise DatasetError(f"since ({self.since}) must be before until ({self.until})")

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if v not in (None, False)) or "no filter"


def create_dataset(session: Session, name: str, where: DatasetFilter) -> Dataset:
    """Freezes the next version of `name` from the captures `where` selects (see the module docstring)."""
    where.check()
    chosen, unlabelled = _select(session, where)
    if not chosen:
        more = f" ({unlabelled} match without labelled_only: their labels have not arrived)" if unlabelled else ""
        raise DatasetError(f"no captured sample matches {where.describe()}{more}; a dataset cannot be empty")
    chosen.sort(key=lambda pair: (pair[0].device_id, pair[0].sample_id))
    summary = _summary(chosen)
    members = [[row.id, row.device_id, row.sample_id, label] for row, label in chosen]
    version = (session.scalar(select(func.max(Dataset.version)).where(Dataset.name == name)) or 0) + 1
    record = Dataset(name=name, version=version, filter=asdict(where), summary=summary, members=members,
                     fingerprint=_fingerprint((row, label) for row, label in chosen))
    session.add(record)
    try:
        session.commit()
    except IntegrityError as err:
        session.rollback()
        raise ConflictError(f"dataset {name} version {version} was created at the same time; retry") from err
    return record


def count_selection(session: Session, where: DatasetFilter) -> dict:
    """What freezing `where` now would hold ({"samples", "rows", "unlabelled"}) without storing a version: a
    loop watcher asks it before a run, so it records no run while the labels have not arrived."""
    where.check()
    chosen, unlabelled = _select(session, where)
    return {"samples": len(chosen), "rows": sum(_rows(row) for row, _ in chosen), "unlabelled": unlabelled}


def _select(session: Session, where: DatasetFilter) -> tuple[list[tuple[CaptureSample, dict | None]], int]:
    """The (row, label) pairs the filter selects, and how many more it would without labelled_only."""
    chosen, unlabelled, total_bytes, after = [], 0, 0, 0
    while True:
        page = list_captures(session, device=where.device, fleet=where.fleet, model=where.model,
                             version=where.version, since=where.since, after_id=after, limit=PAGE)
        for row, label in page:
            if (where.until is not None and row.captured_at >= where.until) or \
                    (where.slice is not None and row.slice != where.slice):
                continue
            if label is None and where.labelled_only:
                unlabelled += 1
                continue
            chosen.append((row, label))
            total_bytes += row.size
            if len(chosen) > MAX_SAMPLES or total_bytes > MAX_BYTES:
                raise DatasetError(f"{where.describe()} selects more than {MAX_SAMPLES} samples or "
                                   f"{MAX_BYTES // 2**20} MiB of arrays; narrow it (since, until, device)")
        if len(page) < PAGE:
            return chosen, unlabelled
        after = page[-1][0].id


def _summary(chosen: list[tuple[CaptureSample, dict | None]]) -> dict:
    """Counts, time range and the input layout; refuses samples that cannot form one .npz."""
    first_row = chosen[0][0]
    layout = _input_layout(first_row)
    if RESERVED & set(layout):
        raise DatasetError(f"an input named {sorted(RESERVED & set(layout))[0]!r} would clash with the .npz's own "
                           f"keys ({', '.join(sorted(RESERVED))})")
    classes: Counter[str] = Counter()
    slices: Counter[str] = Counter()
    kinds, rows, labelled = set(), 0, 0
    for row, label in chosen:
        if _input_layout(row) != layout:
            raise DatasetError(f"sample {row.device_id}/{row.sample_id} has inputs {_input_layout(row)}, sample "
                               f"{first_row.device_id}/{first_row.sample_id} {layout}: one dataset holds one "
                               f"input layout (filter by model name and version)")
        count = _rows(row)
        rows += count
        slices[row.slice or NO_SLICE] += count
        if label is None:
            continue
        labelled += 1
        for value in _label_values(row, label, count):
            kinds.add("value" if "value" in label else type(value).__name__)
            if "label" in label:
                classes[str(value)] += 1
    if len(kinds) > 1:
        raise DatasetError(f"the labels mix {' and '.join(sorted(kinds))} (class names, class indices, values); "
                           f"one dataset holds one kind")
    times = [row.captured_at for row, _ in chosen]
    return {"samples": len(chosen), "rows": rows, "labelled": labelled, "unlabelled": len(chosen) - labelled,
            "classes": dict(sorted(classes.items())), "slices": dict(sorted(slices.items())),
            "label_kind": next(iter(kinds), None), "first_captured_at": min(times), "last_captured_at": max(times),
            "inputs": layout, "bytes": sum(row.size for row, _ in chosen)}


def _input_layout(row: CaptureSample) -> dict:
    return {name: {"dtype": spec["dtype"], "row_shape": spec["shape"][1:]}
            for name, spec in sorted(row.layout["inputs"].items())}


def _rows(row: CaptureSample) -> int:
    """The sample's batch size: the first axis, the same for every input."""
    sizes = {spec["shape"][0] if spec["shape"] else None for spec in row.layout["inputs"].values()}
    if len(sizes) != 1 or None in sizes:
        raise DatasetError(f"sample {row.device_id}/{row.sample_id}: every input needs the same batch axis first "
                           f"(shapes {[s['shape'] for s in row.layout['inputs'].values()]})")
    return sizes.pop()


def _label_values(row: CaptureSample, label: dict, count: int) -> list:
    """One label (or value) per row of the sample."""
    value = label.get("label", label.get("value"))
    values = value if isinstance(value, list) else [value]
    if len(values) != count:
        raise DatasetError(f"sample {row.device_id}/{row.sample_id} has {count} rows and {len(values)} labels")
    return values


def _fingerprint(pairs) -> str:  # noqa: ANN001 - (CaptureSample, label) pairs in member order
    digest = hashlib.sha256()
    for row, label in pairs:
        head = json.dumps([row.device_id, row.sample_id, label, row.layout], sort_keys=True, separators=(",", ":"))
        digest.update(len(head).to_bytes(8, "little") + head.encode())
        raw = zlib.decompress(row.arrays)
        digest.update(len(raw).to_bytes(8, "little") + raw)
    return digest.hexdigest()


# --- reading -------------------------------------------------------------------------------------------
def list_datasets(session: Session, name: str | None = None) -> list[Dataset]:
    query = select(Dataset).order_by(Dataset.name, Dataset.version)
    return list(session.scalars(query if name is None else query.where(Dataset.name == name)))


def get_dataset(session: Session, name: str, version: str) -> Dataset:
    """The version given ("latest" or a number) of the named dataset, or NotFoundError."""
    query = select(Dataset).where(Dataset.name == name)
    if version == "latest":
        record = session.scalar(query.order_by(Dataset.version.desc()).limit(1))
    elif version.isdigit() and len(version) < 10:
        record = session.scalar(query.where(Dataset.version == int(version)))
    else:
        raise DatasetError(f"dataset version {version[:32]!r} must be a number or 'latest'")
    if record is None:
        known = [d.version for d in list_datasets(session, name)]
        raise NotFoundError(f"no dataset {name} version {version}" + (f" (it has versions {known})" if known else ""))
    return record


def describe(record: Dataset, with_samples: bool = False) -> dict:
    """The record as the API answers it (and dataset.json holds)."""
    out = {"name": record.name, "version": record.version, "created_at": record.created_at,
           "fingerprint": record.fingerprint, "filter": record.filter, **record.summary}
    if with_samples:
        out["members"] = [{"device": device, "sample_id": sample_id} for _, device, sample_id, _ in record.members]
    return out


def export_arrays(session: Session, record: Dataset) -> tuple[dict[str, np.ndarray], str]:
    """The dataset as eval_data's .npz layout (inputs by name, `y` when every sample is labelled, `slice` when
    any sample has one, `captured_at`: each row's sample's capture time in Unix seconds, which the freshness
    report ages the data by), rows in member order, and its re-computed fingerprint."""
    ids = [member[0] for member in record.members]
    found: dict[int, CaptureSample] = {}
    for start in range(0, len(ids), 500):
        found.update((row.id, row) for row in session.scalars(
            select(CaptureSample).where(CaptureSample.id.in_(ids[start:start + 500]))))
    pairs, gone = [], []
    for capture_id, device, sample_id, label in record.members:
        row = found.get(capture_id)
        if row is None or (row.device_id, row.sample_id) != (device, sample_id):
            gone.append(f"{device}/{sample_id}")
        else:
            pairs.append((row, label))
    where = f"dataset {record.name} version {record.version}"
    if gone:
        raise ConflictError(f"{where}: {len(gone)} of its {len(ids)} samples were deleted by capture retention "
                            f"since it was frozen (first: {gone[0]}); it cannot be exported as fingerprinted. "
                            f"Create a new version from what remains")
    fingerprint = _fingerprint(pairs)
    if fingerprint != record.fingerprint:
        raise ConflictError(f"{where}: its samples no longer give its fingerprint ({fingerprint[:12]} instead of "
                            f"{record.fingerprint[:12]}); it cannot be exported")
    columns: dict[str, list[np.ndarray]] = {name: [] for name in record.summary["inputs"]}
    labels, slices, times = [], [], []
    for row, label in pairs:
        inputs = decode_arrays(row)["inputs"]
        for name in columns:
            columns[name].append(inputs[name])
        count = _rows(row)
        slices.extend([row.slice or NO_SLICE] * count)
        times.extend([row.captured_at] * count)
        if label is not None:
            labels.extend(_label_values(row, label, count))
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    if record.summary["unlabelled"] == 0:
        arrays["y"] = np.asarray(labels, dtype=np.float64 if record.summary["label_kind"] == "value" else None)
    if set(slices) != {NO_SLICE}:
        arrays["slice"] = np.asarray(slices)
    arrays["captured_at"] = np.asarray(times, dtype=np.float64)
    return arrays, fingerprint
