"""The tables of data capture (cloud/capture_store.py): each fleet's capture settings and the samples its
devices uploaded. Their own module, as cloud/labels_store.py: importing it registers them on the shared Base
before `make_engine` creates the tables (cloud/api/captures.py and cloud/retention.py import it).

Samples are database rows, not files beside the bundles: a sample is bounded (256 KiB by default), the
row's unique (device, sample id) is the deduplication and commits with the data in one transaction (a
file written before a crash would need its own sweep), retention is one DELETE, and PostgreSQL holds the
bytes as bytea with the same model. The arrays are stored compactly: their raw little-endian bytes
concatenated and zlib-compressed (level 1) in `arrays`, with each array's name, dtype, shape and offset
in `layout`.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.cloud.db import Base, now


class CaptureSettingsRecord(Base):
    """One fleet's capture settings; a fleet without a row has the defaults (capture off, privacy off)."""

    __tablename__ = "capture_settings"
    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    never_capture: Mapped[bool] = mapped_column(Boolean, default=False)
    sample_rate: Mapped[float] = mapped_column(Float)
    max_per_second: Mapped[float] = mapped_column(Float)
    max_sample_bytes: Mapped[int] = mapped_column(Integer)
    max_spool_bytes: Mapped[int] = mapped_column(Integer)
    low_confidence_below: Mapped[float | None] = mapped_column(Float, nullable=True)
    only_during_drift: Mapped[bool] = mapped_column(Boolean, default=False)
    retention_days: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class CaptureSample(Base):
    """One captured request as its device sent it, stored once per (device, sample id)."""

    __tablename__ = "capture_samples"
    __table_args__ = (UniqueConstraint("device_id", "sample_id", name="uq_capture_device_sample"),
                      Index("ix_capture_samples_model", "model_name", "model_version", "captured_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"), index=True)
    fleet: Mapped[str] = mapped_column(String(64), index=True)
    sample_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    captured_at: Mapped[float] = mapped_column(Float, index=True)  # the device's clock
    reason: Mapped[str] = mapped_column(String(32))  # "sampled" or "low_confidence"
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    slice: Mapped[str | None] = mapped_column(String(64), nullable=True)
    task: Mapped[str | None] = mapped_column(String(32), nullable=True)
    layout: Mapped[dict] = mapped_column(JSON)  # {"inputs"|"outputs": {name: {"dtype", "shape", "offset"}}}
    arrays: Mapped[bytes] = mapped_column(LargeBinary)  # zlib of the arrays' raw bytes, in layout order
    size: Mapped[int] = mapped_column(Integer)  # the arrays' raw bytes, uncompressed
    received_at: Mapped[float] = mapped_column(Float, default=now, index=True)
