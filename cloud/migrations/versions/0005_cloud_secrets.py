"""Shared secrets (cloud/signed_urls.py): the download URL signing key moves from `<data>/download-url.key`
into the database, so API replicas with different data directories check each other's URLs. A new table;
the first start afterwards copies the old file's key in, so URLs already sent keep working.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("cloud_secrets",
                    sa.Column("name", sa.String(length=64), nullable=False),
                    sa.Column("value", sa.Text(), nullable=False),
                    sa.PrimaryKeyConstraint("name"))


def downgrade() -> None:
    op.drop_table("cloud_secrets")
