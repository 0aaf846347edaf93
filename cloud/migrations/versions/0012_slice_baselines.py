"""The accuracy monitor's per-shard runs of a fleet slice's first labelled windows
(cloud/performance_baselines.py): the fleet holder finds a slice's earlier accuracy from them instead of
reading the fleet's older rows. One new table; nothing else changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("performance_slice_baselines",
                    sa.Column("fleet", sa.String(length=64), nullable=False),
                    sa.Column("model_name", sa.String(length=128), nullable=False),
                    sa.Column("model_version", sa.Integer(), nullable=False),
                    sa.Column("shard", sa.Integer(), nullable=False),
                    sa.Column("slice", sa.String(length=64), nullable=False),
                    sa.Column("labels", sa.Integer(), nullable=False),
                    sa.Column("last_end", sa.Float(), nullable=False),
                    sa.Column("last_id", sa.Integer(), nullable=False),
                    sa.Column("entries", sa.JSON(), nullable=False),
                    sa.Column("updated_at", sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint("fleet", "model_name", "model_version", "shard", "slice"))


def downgrade() -> None:
    op.drop_table("performance_slice_baselines")
