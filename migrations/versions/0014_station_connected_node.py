"""Which gateway node holds each connected station

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25

``stations.connected`` was only ever cleared by the node whose connection closed: after a node
crashed (SIGKILL, power loss) its stations stayed "connected" in ``gateway station list`` and on
MQTT until they came back, and a node noticing an old connection close late cleared the flag of a
station that had meanwhile connected to another node. With the node stored, a node clears only
its own stations' flags, and at start those it held when it stopped.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stations", sa.Column("connected_node", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("stations", "connected_node")
