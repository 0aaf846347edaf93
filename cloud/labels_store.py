"""Labels the cloud received (POST /api/v1/feedback), kept until the forwarder has handed them to the broker
for their device. The table is its own module so cloud/db.py stays the core schema; importing this module
registers it on the shared Base before `make_engine` creates the tables (cloud/api and cloud/components
import it)."""

from __future__ import annotations

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.cloud.db import Base, now


class CloudLabel(Base):
    """One label for one prediction of one device, by request id or by the prediction's time. `command_id` is
    committed before the publish and `sent_at` once the broker acknowledged it (a label whose publish may not
    have happened is sent again under the same command; the device refuses a second label for a request)."""

    __tablename__ = "cloud_labels"
    __table_args__ = (Index("ix_cloud_labels_unsent", "sent_at", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"), index=True)
    fleet: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    timestamp: Mapped[float | None] = mapped_column(Float, nullable=True)
    item: Mapped[dict] = mapped_column(JSON)  # what the device gets: {"request_id"|"timestamp", "label"|"value"}
    received_at: Mapped[float] = mapped_column(Float, default=now)
    command_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
