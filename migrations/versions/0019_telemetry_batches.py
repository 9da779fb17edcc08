"""Telemetry batches written, so one is never written twice

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-25

The telemetry writer put a batch back and wrote it again on any failure, also one whose COPY had
committed and only the answer was lost (a connection reset after COMMIT, a command timeout):
``meter_values`` has no natural key, so those rows were stored twice and counted twice in the
REST averages. Each batch now records its id in the same transaction; a retry of one already
recorded writes nothing. Ids are kept for a week.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telemetry_batches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry_batches")),
    )
    op.create_index(op.f("ix_telemetry_batches_written_at"), "telemetry_batches", ["written_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_telemetry_batches_written_at"), table_name="telemetry_batches")
    op.drop_table("telemetry_batches")
