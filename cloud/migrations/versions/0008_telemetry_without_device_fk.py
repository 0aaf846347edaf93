"""Telemetry without its foreign key to devices (cloud/db.py, TelemetryRecord.device_id): on PostgreSQL its
per-row check, a query of its own for every stored window, was about 5 of the 21.5 us of CPU the ingest's
store cost per window. What it guaranteed is kept without it: the ingest stores a window only for a device
whose row it has just locked (cloud/ingest_store.py), and a trigger on devices refuses to delete or rename
a device that has telemetry, as the foreign key did (db.TELEMETRY_DEVICE_GUARD; the statements are copied
here so this revision stays what it was when the models change).

PostgreSQL drops the constraint by the name it has (telemetry_device_id_fkey where the previous release's
create_all made it); SQLite rebuilds the table (batch mode), naming its unnamed foreign key to drop it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SQLITE_FK = "fk_telemetry_device_id_devices"
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}

_GUARD = {
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
_UNGUARD = {
    "postgresql": ["DROP TRIGGER IF EXISTS devices_keep_telemetry ON devices",
                   "DROP FUNCTION IF EXISTS devices_keep_telemetry()"],
    "sqlite": ["DROP TRIGGER IF EXISTS devices_keep_telemetry_delete",
               "DROP TRIGGER IF EXISTS devices_keep_telemetry_rename"],
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        with op.batch_alter_table("telemetry", naming_convention=_NAMING) as batch:
            batch.drop_constraint(_SQLITE_FK, type_="foreignkey")
    else:
        for fk in sa.inspect(op.get_bind()).get_foreign_keys("telemetry"):
            if fk["referred_table"] == "devices" and fk["constrained_columns"] == ["device_id"]:
                op.drop_constraint(fk["name"], "telemetry", type_="foreignkey")
    for statement in _GUARD.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in _UNGUARD.get(dialect, []):
        op.execute(statement)
    if dialect == "sqlite":
        with op.batch_alter_table("telemetry", naming_convention=_NAMING) as batch:
            batch.create_foreign_key(_SQLITE_FK, "devices", ["device_id"], ["id"])
    else:
        op.create_foreign_key("telemetry_device_id_fkey", "telemetry", "devices", ["device_id"], ["id"])
