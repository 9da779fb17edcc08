"""An index on the plan each profile was sent for

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25

``GET /api/v1/profiles-sent?plan_id=N`` (what a plan changed at the stations) read the whole
table, which grows by one row per profile pushed; and the foreign key's ON DELETE SET NULL would
too, for every plan deleted.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_profiles_sent_plan_id", "profiles_sent", ["plan_id"])


def downgrade() -> None:
    op.drop_index("ix_profiles_sent_plan_id", table_name="profiles_sent")
