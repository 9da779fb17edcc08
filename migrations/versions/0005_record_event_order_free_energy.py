"""record_transaction_event(): energy independent of arrival order; replays return the transaction

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Replaces the function of 0002 (which stays as applied) with two changes:

- Energy. Registers are monotonic, so a transaction's energy is (highest reading - lowest
  reading). 0002 lowered ``meter_start_*`` when a lower reading arrived late (an offline
  Started replayed after an Updated: E04) but kept the energy computed against the old start,
  so Started 1000 Wh + Updated 5000 Wh gave 4.0 kWh in order and 0.0 kWh the other way round.
  The function now keeps the invariant ``highest = meter_start + energy * 1000`` and recomputes
  the energy from (highest, lowest) on every reading, whatever the order (same for export).
  Rows written by 0002 out of order keep their understated energy until a higher reading
  arrives.
- Replays. A replay (same station, transactionId, seqNo: docs/reliability.md D1) still stores
  nothing and returns the first answer, and now also the transaction as stored and the
  ``received_at`` of the stored event, so the caller can tell its own earlier commit (whose
  result was lost with the connection) from a station's replay, and apply the side effects
  exactly once (see ``gateway/ocpp/handlers.py``). The row also carries ``charging_state``.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = ("record_transaction_event(text, text, int, text, text, timestamptz, boolean, timestamptz, jsonb, "
             "jsonb, int, int, text, text, text, text, double precision, double precision, double precision, "
             "double precision, double precision, double precision, int)")

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
                        t.energy_out_kwh, t.last_power_kw, t.last_soc, t.charging_state::text, p_now;
END;
$$;
"""


def upgrade() -> None:
    # The result columns change, so CREATE OR REPLACE cannot be used: drop and create in the
    # migration's transaction (callers never see the function missing).
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
    # 0002's function, from 0002 itself (module names starting with a digit cannot be imported).
    spec = importlib.util.spec_from_file_location(
        "migration_0002", Path(__file__).with_name("0002_record_transaction_event.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    op.execute(module.FUNCTION)
