"""When the connection each station's flag describes was opened (wall clock)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-25

With several nodes, a node's write of "connected here" could land after another node's write for
the station's newer connection (a slow pool, a database blip), leaving the older node's name on
the row, and that node's later disconnect then cleared the flag of a station still connected
elsewhere. Each write now carries when its connection was opened: an older connection's write
never replaces a newer one's, and a disconnect clears only the connection it describes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stations", sa.Column("connected_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("stations", "connected_since")
