"""record_transaction_event(): the starting token keeps the session; late events keep newer readings

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24

Replaces the function of 0005 (same arguments and result) with two changes:

- Token. Every event with an idToken used to overwrite ``transactions.id_token``, so a second
  card shown to stop a session (StopAuthorized) took it over: the driver tokens of the REST API
  are scoped by that column, and the starter lost the session while the stopper could change it.
  The session now keeps the token of its earliest event that carried one
  (``transactions.id_token_seq_no``, new); other tokens stay in their events' payloads. Rows
  written before this revision are given the token of their earliest stored event with one.
- Late events (D2). An event with a lower seqNo than one already stored (an offline event sent
  late) used to replace the charging state, power and SoC with its older values: a stale
  SuspendedEV made the planner take a charging EV for full. It now fills only what no event has
  told.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION record_transaction_event(
    p_station text, p_tid text, p_seq int, p_event_type text, p_trigger text, p_ts timestamptz,
    p_offline boolean, p_now timestamptz, p_payload jsonb, p_response jsonb,
    p_evse int, p_connector int, p_token text, p_token_type text, p_stopped_reason text,
    p_charging_state text, p_imp_min double precision, p_imp_max double precision,
    p_exp_min double precision, p_exp_max double precision, p_power_kw double precision,
    p_soc double precision, p_max_gap_rows int
) RETURNS TABLE (inserted boolean, response jsonb, evse_id int, id_token text, started_at timestamptz,
                 ended_at timestamptz, energy_in_kwh double precision, energy_out_kwh double precision,
                 last_power_kw double precision, last_soc double precision, charging_state text,
                 stored_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ev_id bigint;
    t transactions%ROWTYPE;
    old_max int;
    highest double precision;
BEGIN
    INSERT INTO transaction_events AS e (station_id, transaction_id, seq_no, event_type, trigger_reason, ts,
                                         offline, received_at, payload, response)
    VALUES (p_station, p_tid, p_seq, p_event_type, p_trigger, p_ts, p_offline, p_now, p_payload, p_response)
    ON CONFLICT (station_id, transaction_id, seq_no) DO NOTHING
    RETURNING e.id INTO ev_id;
    IF ev_id IS NULL THEN
        -- D1: a replay stores nothing; it gets the first answer, the transaction as it stands
        -- and when the stored event was received.
        RETURN QUERY SELECT false, e.response, x.evse_id, x.id_token::text, x.started_at, x.ended_at,
                            x.energy_in_kwh, x.energy_out_kwh, x.last_power_kw, x.last_soc,
                            x.charging_state::text, e.received_at
                     FROM transaction_events e
                     LEFT JOIN transactions x ON x.station_id = e.station_id AND x.transaction_id = e.transaction_id
                     WHERE e.station_id = p_station AND e.transaction_id = p_tid AND e.seq_no = p_seq;
        RETURN;
    END IF;

    INSERT INTO transactions AS x (station_id, transaction_id, updated_at) VALUES (p_station, p_tid, p_now)
    ON CONFLICT ON CONSTRAINT uq_transactions_station_id_transaction_id DO NOTHING;
    SELECT * INTO t FROM transactions x WHERE x.station_id = p_station AND x.transaction_id = p_tid FOR UPDATE;
    old_max := t.max_seq_no;

    IF p_evse IS NOT NULL THEN
        t.evse_id := p_evse;
        t.connector_id := COALESCE(p_connector, t.connector_id);
    END IF;
    -- The session belongs to the token of its earliest event that carried one (E01-E03: the
    -- token it was authorized with); a later one (a card shown to stop it, StopAuthorized) is
    -- kept in its event's payload and does not take the session over.
    IF p_token IS NOT NULL AND (t.id_token IS NULL OR p_seq < t.id_token_seq_no) THEN
        t.id_token := p_token;
        t.id_token_type := p_token_type;
        t.id_token_seq_no := p_seq;
    END IF;
    IF p_event_type = 'Started' OR t.started_at IS NULL THEN
        t.started_at := LEAST(t.started_at, p_ts);
    END IF;
    IF p_event_type = 'Ended' THEN
        t.ended_at := p_ts;
        t.stopped_reason := COALESCE(p_stopped_reason, 'Local');
    END IF;
    -- D2: a late event (a lower seqNo than one stored) does not replace newer readings of the
    -- state, power or SoC; it only fills what no event has told yet.
    IF p_seq >= old_max THEN
        t.charging_state := COALESCE(p_charging_state, t.charging_state);
        t.last_power_kw := COALESCE(p_power_kw, t.last_power_kw);
        t.last_soc := COALESCE(p_soc, t.last_soc);
    ELSE
        t.charging_state := COALESCE(t.charging_state, p_charging_state);
        t.last_power_kw := COALESCE(t.last_power_kw, p_power_kw);
        t.last_soc := COALESCE(t.last_soc, p_soc);
    END IF;
    -- Registers are monotonic: energy = highest - lowest reading, whatever the arrival order.
    -- The highest so far is meter_start + energy (kept so by this function; NULL before the
    -- first reading, which GREATEST skips).
    IF p_imp_min IS NOT NULL THEN
        highest := GREATEST(t.meter_start_import_wh + t.energy_in_kwh * 1000.0, p_imp_max);
        t.meter_start_import_wh := LEAST(t.meter_start_import_wh, p_imp_min);
        t.energy_in_kwh := GREATEST(0.0, (highest - t.meter_start_import_wh) / 1000.0);
    END IF;
    IF p_exp_min IS NOT NULL THEN
        highest := GREATEST(t.meter_start_export_wh + t.energy_out_kwh * 1000.0, p_exp_max);
        t.meter_start_export_wh := LEAST(t.meter_start_export_wh, p_exp_min);
        t.energy_out_kwh := GREATEST(0.0, (highest - t.meter_start_export_wh) / 1000.0);
    END IF;
    t.max_seq_no := GREATEST(old_max, p_seq);

    UPDATE transactions x SET evse_id = t.evse_id, connector_id = t.connector_id, id_token = t.id_token,
        id_token_type = t.id_token_type, id_token_seq_no = t.id_token_seq_no, started_at = t.started_at, ended_at = t.ended_at,
        stopped_reason = t.stopped_reason, charging_state = t.charging_state,
        meter_start_import_wh = t.meter_start_import_wh, meter_start_export_wh = t.meter_start_export_wh,
        energy_in_kwh = t.energy_in_kwh, energy_out_kwh = t.energy_out_kwh, last_power_kw = t.last_power_kw,
        last_soc = t.last_soc, max_seq_no = t.max_seq_no, updated_at = p_now
    WHERE x.id = t.id;

    -- D2: remember skipped seqNos; a late event closes its gap.
    IF p_seq > old_max + 1 THEN
        INSERT INTO transaction_seq_gaps (station_id, transaction_id, seq_no, detected_at)
        SELECT p_station, p_tid, n, p_now FROM generate_series(old_max + 1, LEAST(p_seq - 1, old_max + p_max_gap_rows)) n
        ON CONFLICT ON CONSTRAINT uq_transaction_seq_gaps_station_id_transaction_id_seq_no DO NOTHING;
    ELSIF p_seq < old_max THEN
        UPDATE transaction_seq_gaps g SET closed_at = p_now
        WHERE g.station_id = p_station AND g.transaction_id = p_tid AND g.seq_no = p_seq AND g.closed_at IS NULL;
    END IF;

    RETURN QUERY SELECT true, p_response, t.evse_id, t.id_token::text, t.started_at, t.ended_at, t.energy_in_kwh,
                        t.energy_out_kwh, t.last_power_kw, t.last_soc, t.charging_state::text, p_now;
END;
$$;
"""


# Rows written before: the token of each transaction's earliest stored event that carried one
# (record_event stores NoAuthorization as no token).
BACKFILL = """
UPDATE transactions t SET id_token = f.tok, id_token_type = f.typ, id_token_seq_no = f.seq_no
FROM (SELECT DISTINCT ON (station_id, transaction_id) station_id, transaction_id, seq_no,
             payload->'idToken'->>'idToken' AS tok, payload->'idToken'->>'type' AS typ
      FROM transaction_events
      WHERE payload ? 'idToken' AND payload->'idToken'->>'type' <> 'NoAuthorization'
      ORDER BY station_id, transaction_id, seq_no) f
WHERE t.station_id = f.station_id AND t.transaction_id = f.transaction_id
"""


def upgrade() -> None:
    op.add_column("transactions", sa.Column("id_token_seq_no", sa.Integer(), nullable=True))
    op.execute(BACKFILL)
    op.execute(FUNCTION)


def downgrade() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "migration_0005", Path(__file__).with_name("0005_record_event_order_free_energy.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    op.execute(module.FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.drop_column("transactions", "id_token_seq_no")
