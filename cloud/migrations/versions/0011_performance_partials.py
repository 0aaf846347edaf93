"""A fleet's accuracy counts summed per device shard (cloud/performance_partials.py): each monitor worker
writes its shards' totals, the holder of the fleet scopes adds them up instead of reading every device's
rows, as the drift monitor does since 0009. Two new tables (the accuracy monitor's partials and its own
shard passes); nothing else changes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("performance_fleet_partials",
                    sa.Column("fleet", sa.String(length=64), nullable=False),
                    sa.Column("model_name", sa.String(length=128), nullable=False),
                    sa.Column("model_version", sa.Integer(), nullable=False),
                    sa.Column("shard", sa.Integer(), nullable=False),
                    sa.Column("computed_at", sa.Float(), nullable=False),
                    sa.Column("windows", sa.Integer(), nullable=False),
                    sa.Column("window_start", sa.Float(), nullable=False),
                    sa.Column("window_end", sa.Float(), nullable=False),
                    sa.Column("sums", sa.JSON(), nullable=True),
                    sa.PrimaryKeyConstraint("fleet", "model_name", "model_version", "shard"))
    op.create_table("performance_shard_passes",
                    sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
                    sa.Column("computed_at", sa.Float(), nullable=False),
                    sa.Column("holder", sa.String(length=128), nullable=False),
                    sa.PrimaryKeyConstraint("shard"))


def downgrade() -> None:
    op.drop_table("performance_shard_passes")
    op.drop_table("performance_fleet_partials")
