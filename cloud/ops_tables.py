"""The tables of operations monitoring (issue 14): operational limits, the label-free accuracy alert's
settings, webhooks and their delivery log, and telemetry rolled up by hour and day. They live on
cloud/db.py's Base; make_engine imports this module before create_all, so every database gets them (and
_add_missing_columns treats them like the others).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.cloud.db import Base, now


class OpsSettingsRecord(Base):
    """Operational limits for one fleet, one model, or one model in one fleet ("" = any); `limits` holds
    only the fields set here (cloud/ops_settings.py resolves them like the drift settings)."""

    __tablename__ = "ops_settings"
    __table_args__ = (UniqueConstraint("fleet", "model_name", name="uq_ops_settings_fleet_model"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64), default="")
    model_name: Mapped[str] = mapped_column(String(128), default="")
    limits: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class PerformanceSettingsRecord(Base):
    """The label-free accuracy alert's settings for one fleet, one model, or one model in one fleet ("" =
    any); `values` holds only the fields set here (cloud/performance_settings.py)."""

    __tablename__ = "performance_settings"
    __table_args__ = (UniqueConstraint("fleet", "model_name", name="uq_performance_settings_fleet_model"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64), default="")
    model_name: Mapped[str] = mapped_column(String(128), default="")
    values: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class Webhook(Base):
    """A URL every alert is POSTed to when it opens and when it closes, signed with its secret (HMAC-SHA256
    of the body); `events` and `kinds` narrow what it gets (None: everything)."""

    __tablename__ = "webhooks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))  # kept: signing needs it (shown once, at creation)
    # alerts with a higher id are delivered; set to the newest alert when the webhook is made
    cursor: Mapped[int] = mapped_column(Integer, default=0)
    # every alert at or below it is closed and its resolved event queued (or filtered out); None: = cursor
    resolved_cursor: Mapped[int | None] = mapped_column(Integer, nullable=True)
    events: Mapped[list | None] = mapped_column(JSON, nullable=True)  # ["alert.opened", "alert.resolved"]
    kinds: Mapped[list | None] = mapped_column(JSON, nullable=True)  # alert kinds, e.g. ["data_drift"]
    created_at: Mapped[float] = mapped_column(Float, default=now)


class WebhookDelivery(Base):
    """The delivery log: one row per (webhook, alert, event), its attempts and how each went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("webhook_id", "alert_id", "event", name="uq_webhook_delivery"),
                      Index("ix_webhook_deliveries_state_next", "state", "next_attempt_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    alert_id: Mapped[int] = mapped_column(Integer, index=True)
    event: Mapped[str] = mapped_column(String(32))  # "alert.opened" or "alert.resolved"
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=now)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # HTTP status, None: no answer
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    history: Mapped[list] = mapped_column(JSON, default=list)  # [{"at", "status", "error", "seconds"}]
    created_at: Mapped[float] = mapped_column(Float, default=now)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class TelemetryRollup(Base):
    """Telemetry windows of one device and model version added up over an hour or a day (cloud/retention.py):
    `payload` is a telemetry message whose counts are the sums, so every reader of windows reads it."""

    __tablename__ = "telemetry_rollups"
    __table_args__ = (UniqueConstraint("device_id", "model_name", "model_version", "granularity", "bucket_start",
                                       name="uq_telemetry_rollup"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    fleet: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    granularity: Mapped[str] = mapped_column(String(8))  # "hour" or "day"
    bucket_start: Mapped[float] = mapped_column(Float, index=True)
    windows: Mapped[int] = mapped_column(Integer)  # raw windows added in
    requests: Mapped[int] = mapped_column(BigInteger)
    samples: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text)
