"""record_transaction_event(): a card that stops a session never becomes its owner

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-25

Since 0010 a session belongs to the token of its earliest event that carried one, so a card
shown to stop a session someone started with a card does not take it over. A session started
without a token (NoAuthorization, free vend, plug and charge without an idToken) had no such
event, and the first card to come, the one that stopped it, became its owner: its driver token
could then read and change the session. The owner is now taken only from events that can
authorize a start: not an Ended event, nor one whose trigger is StopAuthorized. Sessions stored
before are given their owner again by the same rule (none where only a stop carried a token).
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER_RULE_BEFORE = "IF p_token IS NOT NULL AND (t.id_token IS NULL OR p_seq < t.id_token_seq_no) THEN"
OWNER_RULE = ("IF p_token IS NOT NULL AND p_event_type <> 'Ended' AND p_trigger IS DISTINCT FROM 'StopAuthorized'\n"
              "       AND (t.id_token IS NULL OR p_seq < t.id_token_seq_no) THEN")

# Rows written before: the token of each transaction's earliest stored event that could own it
# (record_event stores NoAuthorization as no token), none where there is no such event.
RECOMPUTE = """
UPDATE transactions t SET id_token = f.tok, id_token_type = f.typ, id_token_seq_no = f.seq_no
FROM (SELECT x.station_id, x.transaction_id, o.tok, o.typ, o.seq_no
      FROM transactions x
      LEFT JOIN LATERAL (
          SELECT e.payload->'idToken'->>'idToken' AS tok, e.payload->'idToken'->>'type' AS typ, e.seq_no
          FROM transaction_events e
          WHERE e.station_id = x.station_id AND e.transaction_id = x.transaction_id
            AND e.payload ? 'idToken' AND e.payload->'idToken'->>'type' <> 'NoAuthorization'
            AND e.event_type <> 'Ended' AND e.trigger_reason IS DISTINCT FROM 'StopAuthorized'
          ORDER BY e.seq_no LIMIT 1) o ON true
      WHERE x.id_token IS NOT NULL) f
WHERE t.station_id = f.station_id AND t.transaction_id = f.transaction_id
  AND t.id_token_seq_no IS DISTINCT FROM f.seq_no
"""


def _revision(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"migration_{name[:4]}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_0016() -> str:
    text: str = _revision("0016_record_event_seq_no_bigint_sums.py").function()
    return text


def upgrade() -> None:
    text = _function_0016()
    assert text.count(OWNER_RULE_BEFORE) == 1
    op.execute(text.replace(OWNER_RULE_BEFORE, OWNER_RULE))
    op.execute(RECOMPUTE)


def downgrade() -> None:
    op.execute(_function_0016())
