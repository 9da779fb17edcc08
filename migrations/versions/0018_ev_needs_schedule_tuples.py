"""The most schedule entries an EV takes

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-25

NotifyEVChargingNeeds.maxScheduleTuples (ISO 15118 MaxEntriesSAScheduleTuple): the EV's
TxProfile is cut to that many periods. Stored with the needs so a restart keeps it; rows from
before are filled from their stored request.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ev_needs", sa.Column("max_schedule_tuples", sa.Integer(), nullable=True))
    # CASE, not WHERE, guards the casts: a WHERE's conditions may be evaluated in any order.
    op.execute("""
        UPDATE ev_needs SET max_schedule_tuples = CASE
            WHEN jsonb_typeof(payload->'maxScheduleTuples') <> 'number' THEN NULL
            WHEN (payload->>'maxScheduleTuples')::numeric BETWEEN 1 AND 2147483647
                 AND (payload->>'maxScheduleTuples')::numeric = trunc((payload->>'maxScheduleTuples')::numeric)
            THEN (payload->>'maxScheduleTuples')::numeric::int
        END
        WHERE jsonb_typeof(payload) = 'object' AND payload ? 'maxScheduleTuples'
    """)


def downgrade() -> None:
    op.drop_column("ev_needs", "max_schedule_tuples")
