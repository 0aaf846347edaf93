"""A bcrypt hash of each device's MQTT password beside the PBKDF2 one (cloud/nats_config.py): NATS checks
bcrypt only, and a hash can be made only where the password is known, at registration. Devices registered
before this revision have none; `edgefleet cloud nats-config` lists them, and they keep working on
Mosquitto and the embedded broker.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("password_bcrypt", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("password_bcrypt")
