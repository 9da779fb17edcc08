"""The last answer each station gave to its TxDefaultProfile

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-25

Only an accepted default was stored (0012). A station that refused its default charges
unmanaged at its rating, and the planner counts it so; after a gateway restart, with the refusal
forgotten and no boot to send the default again (most stations reconnect without one), the same
station was counted at the default, and the site limit could be broken by the difference.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stations", sa.Column("default_answer", sa.String(32), nullable=True))
    # What was stored before is an acceptance.
    op.execute("UPDATE stations SET default_answer = 'Accepted' WHERE default_limit_kw IS NOT NULL")


def downgrade() -> None:
    op.drop_column("stations", "default_answer")
