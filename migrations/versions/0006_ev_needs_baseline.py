"""ev_needs.baseline_kwh: the energy already in the EV when it declared its needs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

NotifyEVChargingNeeds' EnergyAmount is energy still wanted, counted from the moment the EV
sent it. The gateway kept the EV's energy at that moment in memory only, so after a restart an
EV that declared "30 kWh more" with 5 kWh already in was planned for 30 kWh in all. The row now
carries it (NULL on rows written before, and while the write has not happened: read as 0).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ev_needs", sa.Column("baseline_kwh", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("ev_needs", "baseline_kwh")
