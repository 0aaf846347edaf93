"""A fleet's window counts summed per device shard (cloud/drift_fleet_partials.py): each monitor worker
writes its shards' sums, the holder of the fleet scopes adds them up instead of reading every device's
rows. Two new tables; nothing else changes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("drift_fleet_partials",
                    sa.Column("fleet", sa.String(length=64), nullable=False),
                    sa.Column("model_name", sa.String(length=128), nullable=False),
                    sa.Column("model_version", sa.Integer(), nullable=False),
                    sa.Column("shard", sa.Integer(), nullable=False),
                    sa.Column("computed_at", sa.Float(), nullable=False),
                    sa.Column("windows", sa.Integer(), nullable=False),
                    sa.Column("window_start", sa.Float(), nullable=False),
                    sa.Column("window_end", sa.Float(), nullable=False),
                    sa.Column("counts", sa.JSON(), nullable=True),
                    sa.PrimaryKeyConstraint("fleet", "model_name", "model_version", "shard"))
    op.create_table("drift_shard_passes",
                    sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
                    sa.Column("computed_at", sa.Float(), nullable=False),
                    sa.Column("holder", sa.String(length=128), nullable=False),
                    sa.PrimaryKeyConstraint("shard"))


def downgrade() -> None:
    op.drop_table("drift_shard_passes")
    op.drop_table("drift_fleet_partials")
