"""The cloud's tables (SQLAlchemy 2): SQLite by default, PostgreSQL by URL, the same models for both.

Telemetry rows and OTA status events are unique on (device, seq): the ingest's duplicate filter is the
database itself, so a message that arrives twice (QoS 1 redelivery, an outbox replay) is stored once.
A deployment is its rows (Deployment, one DeploymentDevice per targeted device with its wave): the
rollout engine keeps no other state, so a restarted cloud resumes where it stopped.
"""

from __future__ import annotations

import time

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


def now() -> float:
    return time.time()


class ApiToken(Base):
    """API tokens; only the SHA-256 of the token is stored (tokens are 32 random bytes)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # "admin" or "viewer" (the dashboard only, read-only); None: a token made before roles, an admin's.
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Device(Base):
    __tablename__ = "devices"
    # The dashboard's fleet page walks devices in (fleet, id) order with LIMIT/OFFSET: one index keeps a deep
    # page from sorting the table (page 200 of 10,000 devices: 13 -> 3 ms); it also serves lookups by fleet
    # alone, so the row has no index of its fleet only. The ingest updates a device's row with every window:
    # pages half full on PostgreSQL let the new row version stay in its page (a HOT update, no index
    # entries to write), which cut PostgreSQL's CPU per stored window by a fifth (migration 0006).
    __table_args__ = (Index("ix_devices_fleet_id", "fleet", "id"), {"postgresql_with": {"fillfactor": 50}})
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64))
    # An optional label within the fleet that deployments can target ("canary", "site-3").
    group: Mapped[str | None] = mapped_column("device_group", String(64), nullable=True, index=True)
    # MQTT password in Mosquitto's PBKDF2-SHA512 format ($7$...), checked by both brokers.
    password_hash: Mapped[str] = mapped_column(String(256))
    # The same password as bcrypt, for NATS (cloud/nats_config.py), made at registration; None for devices
    # registered before migration 0007.
    password_bcrypt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    backend: Mapped[str | None] = mapped_column(String(64), nullable=True)  # from the birth: what /healthz says
    runtime: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # core.presence.runtime_summary
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The connection stamp of the last birth or death applied: orders presence messages that arrive in
    # any order (retained ones after an ingest restart).
    presence_stamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    # Set by DELETE /api/v1/devices/{id}: the brokers refuse the device from then on; its history stays.
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class TelemetryRecord(Base):
    __tablename__ = "telemetry"
    # The (device_id, seq) key also serves lookups by device: no index of device_id alone to write per row.
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # A registered device's id, with no foreign key (migration 0008): its per-row check was a quarter of
    # PostgreSQL's CPU per stored window, and both of its guarantees are kept another way. A window is
    # stored only for a device the ingest has just locked (cloud/ingest_store.py), and a device with
    # telemetry cannot be deleted or renamed (the trigger TELEMETRY_DEVICE_GUARD below; revoking keeps the row).
    device_id: Mapped[str] = mapped_column(String(64))
    fleet: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[float] = mapped_column(Float, index=True)
    window_end: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    dropped_windows: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[str] = mapped_column(Text)  # the validated message, for the drift monitor
    received_at: Mapped[float] = mapped_column(Float, default=now)


# What telemetry's foreign key to devices refused on that side, kept without its cost per inserted row: a
# DELETE of a device that has telemetry, or a change of its id, fails (on PostgreSQL with the foreign key's
# error code, 23503) and the device's windows stay. Nothing in the cloud deletes or renames a device (DELETE
# /api/v1/devices/{id} revokes it and keeps the row); this holds against a hand-made DELETE. On PostgreSQL an
# AFTER trigger, like the foreign key's own: it runs once the row is deleted, so a DELETE that waited for an
# ingest holding the device's row sees the windows that ingest committed (READ COMMITTED: the trigger's
# query takes a new snapshot). The ingest's UPDATE of last_seen names no id, so the trigger never runs for
# it. Migration 0008 creates the same for upgraded databases. On SQLite a batch migration that rebuilds the
# devices table drops its triggers: such a migration must create these again.
TELEMETRY_DEVICE_GUARD = {
    "postgresql": [
        "CREATE OR REPLACE FUNCTION devices_keep_telemetry() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN "
        "IF TG_OP = 'UPDATE' THEN IF NEW.id = OLD.id THEN RETURN NULL; END IF; END IF; "
        "IF EXISTS (SELECT 1 FROM telemetry WHERE device_id = OLD.id) THEN "
        "RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = 'device ' || OLD.id || "
        "' has telemetry, which would be left without its device; revoke the device instead "
        "(DELETE /api/v1/devices/{id} keeps its row and history)'; "
        "END IF; "
        "RETURN NULL; "
        "END $$",
        "CREATE TRIGGER devices_keep_telemetry AFTER DELETE OR UPDATE OF id ON devices "
        "FOR EACH ROW EXECUTE FUNCTION devices_keep_telemetry()",
    ],
    "sqlite": [
        "CREATE TRIGGER devices_keep_telemetry_delete BEFORE DELETE ON devices "
        "WHEN EXISTS (SELECT 1 FROM telemetry WHERE device_id = OLD.id) "
        "BEGIN SELECT RAISE(ABORT, 'the device has telemetry, which would be left without its device; revoke "
        "the device instead (DELETE /api/v1/devices/{id} keeps its row and history)'); END",
        "CREATE TRIGGER devices_keep_telemetry_rename BEFORE UPDATE OF id ON devices "
        "WHEN NEW.id IS NOT OLD.id AND EXISTS (SELECT 1 FROM telemetry WHERE device_id = OLD.id) "
        "BEGIN SELECT RAISE(ABORT, 'the device has telemetry, which would be left without its device'); END",
    ],
}


@event.listens_for(Base.metadata, "after_create")
def _guard_telemetry_devices(_metadata, connection, tables=None, **_kw) -> None:  # noqa: ANN001 - SQLAlchemy's
    """Creates TELEMETRY_DEVICE_GUARD with the tables (a new database: cloud/schema.py's create_all)."""
    if tables is not None and not {"devices", "telemetry"} <= {t.name for t in tables}:
        return
    for statement in TELEMETRY_DEVICE_GUARD.get(connection.dialect.name, []):
        connection.exec_driver_sql(statement)


class BundleRecord(Base):
    """A verified bundle in the registry; the drift monitor reads its reference profile."""

    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_bundle_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # the .tar.gz in the artifact store
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict] = mapped_column(JSON)
    uploaded_at: Mapped[float] = mapped_column(Float, default=now)


class DriftResult(Base):
    """One evaluation of one scope (a device, or a whole fleet) for one model version and time range."""

    __tablename__ = "drift_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # "device" or "fleet"
    scope_id: Mapped[str] = mapped_column(String(64), index=True)
    fleet: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(16))  # "drift", "ok" or "insufficient"
    report: Mapped[dict] = mapped_column(JSON)  # per-signal statistics and thresholds
    computed_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    # An evaluation of a past period whose windows arrived after the lookback had passed it (a backlog
    # drained after an outage): seconds from its last window's end to the evaluation. None: on time.
    late_by: Mapped[float | None] = mapped_column(Float, nullable=True)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[str] = mapped_column(String(64), index=True)
    fleet: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))  # "data_drift" or "prediction_drift"
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="open")  # "open" or "closed"
    opened_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Raised from late data (DriftResult.late_by): seconds from the end of the drifting period to the alert.
    late_by: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Acknowledged by an operator on the dashboard (the alert stays open until the drift monitor closes it).
    acknowledged_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DriftSettingsRecord(Base):
    """Drift monitor settings for one fleet, one model, or one model in one fleet ("" = any); a column left
    NULL takes the next less specific value (cloud/drift_settings.py)."""

    __tablename__ = "drift_settings"
    __table_args__ = (UniqueConstraint("fleet", "model_name", name="uq_drift_settings_fleet_model"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fleet: Mapped[str] = mapped_column(String(64), default="")
    model_name: Mapped[str] = mapped_column(String(128), default="")
    min_samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    alpha: Mapped[float | None] = mapped_column(Float, nullable=True)
    psi_floor: Mapped[float | None] = mapped_column(Float, nullable=True)
    noise_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    lookback_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    interval_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class Deployment(Base):
    """A staged rollout of one bundle to a set of devices, in waves (see edgefleet.cloud.rollout)."""

    __tablename__ = "deployments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bundle_name: Mapped[str] = mapped_column(String(128))
    bundle_version: Mapped[int] = mapped_column(Integer)
    target: Mapped[dict] = mapped_column(JSON)  # as requested: {"fleet", "group", "devices"}
    strategy: Mapped[dict] = mapped_column(JSON)  # edgefleet.cloud.rollout_plan.Strategy, all fields
    wave_sizes: Mapped[list] = mapped_column(JSON)  # devices per wave, in order
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending|running|paused|completed|aborted
    current_wave: Mapped[int] = mapped_column(Integer, default=0)  # 1-based; 0 before the first wave
    wave_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    approved: Mapped[bool] = mapped_column(Boolean, default=False)  # the first wave was approved
    # On abort: whether updated devices get a rollback command, and whether the engine has sent them all.
    rollback: Mapped[bool] = mapped_column(Boolean, default=True)
    rollback_done: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Quality gates (cloud/quality_gates.py): when the first wave's observation began, and the verdict.
    gate_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    gate_verdict: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class DeploymentDevice(Base):
    """One device of a deployment: its wave, the commands sent to it, and the last state it reported."""

    __tablename__ = "deployment_devices"
    __table_args__ = (UniqueConstraint("deployment_id", "device_id", name="uq_deployment_device"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(32), ForeignKey("deployments.id"), index=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"), index=True)
    wave: Mapped[int] = mapped_column(Integer)  # 1-based
    rank: Mapped[int] = mapped_column(Integer)  # position in the deterministic order
    state: Mapped[str] = mapped_column(String(16), default="pending")  # "pending" or one of core.ota.STATES
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The install command: its id is stored before it is published, sent_at once the broker acknowledged it.
    command_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Re-sends of the same install to a device that answered nothing: how many, and the broker's last ack.
    resends: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rollback_command_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rollback_sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    rollback_resends: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rollback_resent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    status_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)  # seq of the status applied last
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class DeviceStatus(Base):
    """An OTA status message as a device sent it (validated), once per (device, seq)."""

    __tablename__ = "device_status"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_device_status_device_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"), index=True)
    fleet: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    deployment_id: Mapped[str] = mapped_column(String(64), index=True)  # as sent; may name no deployment
    command_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[float] = mapped_column(Float)  # the device's clock
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float, default=now)


class IngestCounter(Base):
    """How many messages the ingest accepted, dropped as duplicates, or refused, by reason."""

    __tablename__ = "ingest_counters"
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


# The modules besides this one whose tables live on Base: imported before the schema is made or compared
# (tests/cloud/test_migrations.py checks that no module with tables is missing here).
MODEL_MODULES = ("capture_tables", "dataset_store", "drift_cusum_store", "drift_fleet_partials",
                 "drift_late_periods", "drift_shard_steps", "enrollment", "labels_store", "leases", "loop.run_store",
                 "ops_tables", "performance_baselines", "performance_partials", "signed_urls")


def load_models() -> None:
    """Registers every table on Base (each module's import does it)."""
    import importlib

    # dataset_store imports from the api package, whose datasets module imports dataset_store back: the
    # package first, or dataset_store meets its own half-made module
    importlib.import_module("edgefleet.cloud.api")
    for name in MODEL_MODULES:
        importlib.import_module(f"edgefleet.cloud.{name}")


def open_engine(url: str) -> Engine:
    """An engine with SQLite set up for a service: WAL, a busy timeout, foreign keys. The schema is not
    touched (`edgefleet cloud migrate` starts here)."""
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"check_same_thread": False} if is_sqlite else {})
    if is_sqlite:
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # noqa: ANN001 - DBAPI objects
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
    return engine


def make_engine(url: str) -> Engine:
    """open_engine, with the schema made on an empty database; a database at an older schema revision is
    refused with a SchemaError that names `edgefleet cloud migrate` (cloud/schema.py)."""
    from edgefleet.cloud.schema import ensure_schema

    engine = open_engine(url)
    try:
        ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def make_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
