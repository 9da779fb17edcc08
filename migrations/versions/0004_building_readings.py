"""building_readings: the building's load per five-minute slot, the learned profile's memory

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "building_readings",
        sa.Column("site", sa.String(length=80), nullable=False),
        sa.Column("slot_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("power_kw", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("site", "slot_start", name=op.f("pk_building_readings")),
    )


def downgrade() -> None:
    op.drop_table("building_readings")
