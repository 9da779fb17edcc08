"""Where each meter value was measured

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-25

OCPP 2.0.1 SampledValueType.location: Outlet (the default, the EVSE's side), Inlet (the
station's grid connection, every EVSE together), Cable, EV, Body. Stored without it, a station's
Inlet register could not be told from its EVSE's, and the REST buckets averaged them together.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("meter_values", sa.Column("location", sa.String(8), nullable=True))


def downgrade() -> None:
    op.drop_column("meter_values", "location")
