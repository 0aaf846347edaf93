"""The ingest's write cost per window (cloud/ingest_store.py): two indexes that a composite index already
serves are dropped (telemetry's device_id, covered by the (device_id, seq) key; devices' fleet, covered by
(fleet, id)), and on PostgreSQL the devices table gets fillfactor 50, so the row update every window makes
can stay in its page without new index entries (HOT). The fillfactor applies to pages written from now
on; `VACUUM FULL devices`, with the cloud stopped, rewrites the existing ones.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_telemetry_device_id", table_name="telemetry")
    op.drop_index("ix_devices_fleet", table_name="devices")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices RESET (fillfactor)")
    op.create_index("ix_devices_fleet", "devices", ["fleet"], unique=False)
    op.create_index("ix_telemetry_device_id", "telemetry", ["device_id"], unique=False)
