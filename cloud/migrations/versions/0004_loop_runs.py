"""Retraining runs (cloud/loop/run_store.py): one loop_runs row per run of a policy, one loop_stages row per
stage it reached. New tables; nothing else changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("loop_runs",
                    sa.Column("id", sa.String(length=32), nullable=False),
                    sa.Column("policy", sa.String(length=64), nullable=False),
                    sa.Column("model_name", sa.String(length=128), nullable=False),
                    sa.Column("fleet", sa.String(length=64), nullable=False),
                    sa.Column("state", sa.String(length=16), nullable=False),
                    sa.Column("trigger", sa.JSON(), nullable=False),
                    sa.Column("document", sa.JSON(), nullable=False),
                    sa.Column("reason", sa.Text(), nullable=True),
                    sa.Column("bundle", sa.JSON(), nullable=True),
                    sa.Column("summary", sa.JSON(), nullable=True),
                    sa.Column("started_at", sa.Float(), nullable=False),
                    sa.Column("ended_at", sa.Float(), nullable=True),
                    sa.PrimaryKeyConstraint("id"))
    op.create_index(op.f("ix_loop_runs_policy"), "loop_runs", ["policy"], unique=False)
    op.create_index(op.f("ix_loop_runs_started_at"), "loop_runs", ["started_at"], unique=False)
    op.create_table("loop_stages",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("run_id", sa.String(length=32), nullable=False),
                    sa.Column("name", sa.String(length=32), nullable=False),
                    sa.Column("position", sa.Integer(), nullable=False),
                    sa.Column("state", sa.String(length=16), nullable=False),
                    sa.Column("inputs", sa.JSON(), nullable=False),
                    sa.Column("outputs", sa.JSON(), nullable=False),
                    sa.Column("metrics", sa.JSON(), nullable=False),
                    sa.Column("message", sa.Text(), nullable=True),
                    sa.Column("started_at", sa.Float(), nullable=False),
                    sa.Column("ended_at", sa.Float(), nullable=True),
                    sa.ForeignKeyConstraint(["run_id"], ["loop_runs.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id"),
                    sa.UniqueConstraint("run_id", "name", name="uq_loop_stage_run_name"))
    op.create_index(op.f("ix_loop_stages_run_id"), "loop_stages", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_loop_stages_run_id"), table_name="loop_stages")
    op.drop_table("loop_stages")
    op.drop_index(op.f("ix_loop_runs_started_at"), table_name="loop_runs")
    op.drop_index(op.f("ix_loop_runs_policy"), table_name="loop_runs")
    op.drop_table("loop_runs")
