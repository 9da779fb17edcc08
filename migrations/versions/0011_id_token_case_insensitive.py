"""idTokens matched whatever their case: indexes on lower(id_token)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25

OCPP 2.0.1 (IdTokenType.idToken) makes an idToken case-insensitive: RFID readers write the same
UID in upper or lower case hex. The known-token lookup (``TokenRepository.status``) and the
driver API's scoping of sessions to a driver's idToken (``TransactionRepository.find`` and
``listing``) compare lower(id_token); these indexes serve them. The transactions' plain index on
id_token served only those comparisons and is replaced.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_transactions_id_token", table_name="transactions")
    op.create_index("ix_transactions_id_token_lower", "transactions", [sa.text("lower(id_token)")])
    op.create_index("ix_id_tokens_id_token_lower", "id_tokens", [sa.text("lower(id_token)")])


def downgrade() -> None:
    op.drop_index("ix_id_tokens_id_token_lower", table_name="id_tokens")
    op.drop_index("ix_transactions_id_token_lower", table_name="transactions")
    op.create_index("ix_transactions_id_token", "transactions", ["id_token"])
