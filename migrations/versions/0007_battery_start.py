"""transactions.battery_start_kwh: the EV battery's energy at plug-in, once SoC and capacity are known

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24

The energy an ISO 15118 EV still wants is counted on its own SoC from the battery's energy at
plug-in (domain.Session.battery_start_kwh), pinned when the SoC and the capacity are first both
known. It was kept in memory only: a restarted gateway pinned it again from the SoC then, less
the meter's energy through the assumed efficiency, so every kWh the EV had taken before the restart
carried the assumed efficiency's error into the plan. The row now keeps the first value pinned
(NULL on rows written before, and until it is known).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("transactions", sa.Column("battery_start_kwh", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("transactions", "battery_start_kwh")
