"""A fleet's CUSUM steps and event-time periods summed per device shard (cloud/drift_shard_steps.py), and the
late periods the shards found (cloud/drift_late_periods.py): the holder of the fleet scopes feeds the
fleets' CUSUMs and judges their late periods from those sums instead of reading every device's rows.
Three new tables, and two columns of drift_shard_passes (the row id a shard's pass read up to, since when
its sums are whole), NULL for the passes before.

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


def _step_sums(name: str, *extra: sa.Column) -> None:
    op.create_table(name,
                    sa.Column("fleet", sa.String(length=64), nullable=False),
                    sa.Column("model_name", sa.String(length=128), nullable=False),
                    sa.Column("model_version", sa.Integer(), nullable=False),
                    sa.Column("shard", sa.Integer(), nullable=False),
                    sa.Column("step_end", sa.Float(), nullable=False),
                    sa.Column("width", sa.Float(), nullable=False),
                    sa.Column("row_id", sa.Integer(), nullable=False),
                    sa.Column("newest", sa.Integer(), nullable=False),
                    sa.Column("windows", sa.Integer(), nullable=False),
                    sa.Column("window_start", sa.Float(), nullable=False),
                    sa.Column("window_end", sa.Float(), nullable=False),
                    sa.Column("counts", sa.JSON(), nullable=False),
                    sa.Column("computed_at", sa.Float(), nullable=False),
                    *extra,
                    sa.PrimaryKeyConstraint("fleet", "model_name", "model_version", "shard", "step_end"))
    op.create_index(f"ix_{name}_step_end", name, ["step_end"])


def upgrade() -> None:
    _step_sums("drift_cusum_partials", sa.Column("fed", sa.Integer(), nullable=True))
    op.create_index("ix_drift_cusum_partials_unfed", "drift_cusum_partials", ["fleet", "step_end"],
                    postgresql_where=sa.text("fed IS NULL"), sqlite_where=sa.text("fed IS NULL"))
    _step_sums("drift_period_partials")
    op.create_table("drift_late_periods",
                    sa.Column("fleet", sa.String(length=64), nullable=False),
                    sa.Column("model_name", sa.String(length=128), nullable=False),
                    sa.Column("model_version", sa.Integer(), nullable=False),
                    sa.Column("period_end", sa.Float(), nullable=False),
                    sa.Column("found_at", sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint("fleet", "model_name", "model_version", "period_end"))
    op.add_column("drift_shard_passes", sa.Column("row_id", sa.Integer(), nullable=True))
    op.add_column("drift_shard_passes", sa.Column("steps_from", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("drift_shard_passes", "steps_from")
    op.drop_column("drift_shard_passes", "row_id")
    op.drop_table("drift_late_periods")
    for name in ("drift_period_partials", "drift_cusum_partials"):
        for index in ("unfed", "step_end") if name == "drift_cusum_partials" else ("step_end",):
            op.drop_index(f"ix_{name}_{index}", table_name=name)
        op.drop_table(name)
