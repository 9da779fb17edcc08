"""record_transaction_event(): one round trip per TransactionEvent

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

The TransactionEvent write is the gateway's hottest path. This function stores the event
(idempotent on station, transactionId, seqNo: docs/reliability.md D1), merges it into its
transaction row, and records/closes seqNo gaps (D2), in one statement and so one round trip
and one implicit transaction. Python computes the meter summary; SQL merges it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = r"""
CREATE FUNCTION record_transaction_event(
    p_station text, p_tid text, p_seq int, p_event_type text, p_trigger text, p_ts timestamptz,
    p_offline boolean, p_now timestamptz, p_payload jsonb, p_response jsonb,
    p_evse int, p_connector int, p_token text, p_token_type text, p_stopped_reason text,
    p_charging_state text, p_imp_min double precision, p_imp_max double precision,
    p_exp_min double precision, p_exp_max double precision, p_power_kw double precision,
    p_soc double precision, p_max_gap_rows int
) RETURNS TABLE (inserted boolean, response jsonb, evse_id int, id_token text, started_at timestamptz,
                 ended_at timestamptz, energy_in_kwh double precision, energy_out_kwh double precision,
                 last_power_kw double precision, last_soc double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ev_id bigint;
    t transactions%ROWTYPE;
    old_max int;
BEGIN
    INSERT INTO transaction_events AS e (station_id, transaction_id, seq_no, event_type, trigger_reason, ts,
                                         offline, received_at, payload, response)
    VALUES (p_station, p_tid, p_seq, p_event_type, p_trigger, p_ts, p_offline, p_now, p_payload, p_response)
    ON CONFLICT (station_id, transaction_id, seq_no) DO NOTHING
    RETURNING e.id INTO ev_id;
    IF ev_id IS NULL THEN
        RETURN QUERY SELECT false, e.response, NULL::int, NULL::text, NULL::timestamptz, NULL::timestamptz,
                            NULL::double precision, NULL::double precision, NULL::double precision,
                            NULL::double precision
                     FROM transaction_events e
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
    IF p_token IS NOT NULL THEN
        t.id_token := p_token;
        t.id_token_type := p_token_type;
    END IF;
    IF p_event_type = 'Started' OR t.started_at IS NULL THEN
        t.started_at := LEAST(t.started_at, p_ts);
    END IF;
    IF p_event_type = 'Ended' THEN
        t.ended_at := p_ts;
        t.stopped_reason := COALESCE(p_stopped_reason, 'Local');
    END IF;
    t.charging_state := COALESCE(p_charging_state, t.charging_state);
    -- Registers are monotonic: min/max over all events give the energy whatever the arrival order.
    IF p_imp_min IS NOT NULL THEN
        t.meter_start_import_wh := LEAST(t.meter_start_import_wh, p_imp_min);
        t.energy_in_kwh := GREATEST(t.energy_in_kwh, (p_imp_max - t.meter_start_import_wh) / 1000.0);
    END IF;
    IF p_exp_min IS NOT NULL THEN
        t.meter_start_export_wh := LEAST(t.meter_start_export_wh, p_exp_min);
        t.energy_out_kwh := GREATEST(t.energy_out_kwh, (p_exp_max - t.meter_start_export_wh) / 1000.0);
    END IF;
    t.last_power_kw := COALESCE(p_power_kw, t.last_power_kw);
    t.last_soc := COALESCE(p_soc, t.last_soc);
    t.max_seq_no := GREATEST(old_max, p_seq);

    UPDATE transactions x SET evse_id = t.evse_id, connector_id = t.connector_id, id_token = t.id_token,
        id_token_type = t.id_token_type, started_at = t.started_at, ended_at = t.ended_at,
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
                        t.energy_out_kwh, t.last_power_kw, t.last_soc;
END;
$$;
"""


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS record_transaction_event(text, text, int, text, text, timestamptz, boolean, "
               "timestamptz, jsonb, jsonb, int, int, text, text, text, text, double precision, double precision, "
               "double precision, double precision, double precision, double precision, int)")
