"""A fleet's CUSUM steps summed per device shard (cloud/drift_cusum_partials.py): each monitor worker adds its
shards' new windows to their fleets' steps, the holder of the fleet scopes feeds the fleets' CUSUMs from
those sums instead of reading every device's rows. One new table, and two columns of drift_shard_passes
(the row id a shard's pass read up to, since when its steps are whole), NULL for the passes before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("drift_cusum_partials",
                    sa.Column("fleet", sa.String(length=64), nullable=False),
                    sa.Column("model_name", sa.String(length=128), nullable=False),
                    sa.Column("model_version", sa.Integer(), nullable=False),
                    sa.Column("shard", sa.Integer(), nullable=False),
                    sa.Column("step_end", sa.Float(), nullable=False),
                    sa.Column("slot_seconds", sa.Float(), nullable=False),
                    sa.Column("row_id", sa.Integer(), nullable=False),
                    sa.Column("newest", sa.Integer(), nullable=False),
                    sa.Column("fed", sa.Integer(), nullable=True),
                    sa.Column("windows", sa.Integer(), nullable=False),
                    sa.Column("counts", sa.JSON(), nullable=False),
                    sa.Column("computed_at", sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint("fleet", "model_name", "model_version", "shard", "step_end"))
    op.create_index("ix_drift_cusum_partials_step_end", "drift_cusum_partials", ["step_end"])
    op.create_index("ix_drift_cusum_partials_unfed", "drift_cusum_partials", ["fleet", "step_end"],
                    postgresql_where=sa.text("fed IS NULL"), sqlite_where=sa.text("fed IS NULL"))
    op.add_column("drift_shard_passes", sa.Column("row_id", sa.Integer(), nullable=True))
    op.add_column("drift_shard_passes", sa.Column("steps_from", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("drift_shard_passes", "steps_from")
    op.drop_column("drift_shard_passes", "row_id")
    op.drop_index("ix_drift_cusum_partials_unfed", table_name="drift_cusum_partials")
    op.drop_index("ix_drift_cusum_partials_step_end", table_name="drift_cusum_partials")
    op.drop_table("drift_cusum_partials")
