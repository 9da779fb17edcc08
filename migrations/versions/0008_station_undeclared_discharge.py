"""stations.discharge_undeclared_evs: discharge EVs that did not declare a discharge power, per station

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24

An EV is planned to discharge only once it declared its discharge power (ISO 15118-20), unless
the site's switch ``GATEWAY_DISCHARGE_UNDECLARED_EVS`` says its V2G cars cannot tell. A site
that mixes DC chargers with CHAdeMO V2G cars and AC chargers needs that per station: NULL
keeps the site's switch.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stations", sa.Column("discharge_undeclared_evs", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("stations", "discharge_undeclared_evs")
