"""record_transaction_event(): seqNo gap sums in 64 bits

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-25

The function of 0010 added to the transaction's highest seqNo in ``int``: with a seqNo near
2**31 - 1 (a valid 32-bit value) the sum overflowed, and every later event of that transaction
was answered InternalError and never stored. The same function, its gap sums in ``bigint``.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0010's text -> this revision's (each found exactly once).
CHANGES = {
    "IF p_seq > old_max + 1 THEN": "IF p_seq::bigint > old_max::bigint + 1 THEN",
    "generate_series(old_max + 1, LEAST(p_seq - 1, old_max + p_max_gap_rows)) n":
        "generate_series(old_max::bigint + 1, LEAST(p_seq::bigint - 1, old_max::bigint + p_max_gap_rows)) n",
}


def _revision_0010() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "migration_0010", Path(__file__).with_name("0010_record_event_first_token_late_readings.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def function() -> str:
    text: str = _revision_0010().FUNCTION
    for old, new in CHANGES.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def upgrade() -> None:
    op.execute(function())


def downgrade() -> None:
    op.execute(_revision_0010().FUNCTION)
