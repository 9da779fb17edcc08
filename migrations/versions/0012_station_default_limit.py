"""The TxDefaultProfile limit each station last accepted

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25

A station keeps its TxDefaultProfile across a gateway restart, and most reconnect without a
BootNotification: the gateway must know what each one holds to move it when the site limit (or
the number of EVSEs sharing it) changes. ``gateway.ocpp.defaults.DefaultProfiles`` writes it on
every accepted default and reads it back at start.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stations", sa.Column("default_limit_kw", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("stations", "default_limit_kw")
