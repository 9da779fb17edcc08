"""record_transaction_event(): a later low reading does not move the session's meter start

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-26

Since 0005 a session's energy was its highest register reading minus the lowest one ever seen
(``meter_start_*_wh := LEAST(...)``), so that offline events replayed out of order (E04, D2)
give the same energy whatever their arrival order. One bad low reading later in the session
then reset the start for good: a station glitch reporting 0 Wh, or a meter reboot. Readings
1,234,567 -> 1,240,000 -> 0 -> 1,241,000 Wh gave 0 -> 5.43 -> 1240.0 -> 1241.0 kWh: the planner
believed the EV had taken 1,240 kWh, and the forecasters learnt it.

The start now remembers the seqNo of the event whose reading set it
(``transactions.meter_start_import_seq`` / ``meter_start_export_seq``, new). A lower reading
moves it only from an event with a lower seqNo (an earlier event arriving late: Started seq 0
at 1,000 Wh after Updated seq 1 and 2 at 1,500 and 2,000 Wh still gives 1.0 kWh). From a later
event it is a glitch or a reset and does not move the start; that event's readings above the
start still count toward the highest. The same readings now give 0 -> 5.433 -> 5.433 -> 6.433 kWh.
A start stored before this revision has no seqNo and takes a lower reading as before, which
gives it one.

Known limit: a real meter reset in the middle of a session undercounts until the register
passes its old highest again (nothing is counted from the reset until then). That is the safer
error: the other one counts a meter's lifetime register as the session's energy.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENERGY_BEFORE = """    -- Registers are monotonic: energy = highest - lowest reading, whatever the arrival order.
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
"""
ENERGY = """    -- Registers are monotonic: energy = highest reading - start, whatever the arrival order.
    -- The start is set by the first reading, and moved down only by a lower reading of an
    -- earlier event (a lower seqNo than meter_start_*_seq: an offline event sent late, E04/D2).
    -- A lower reading of a later event is a glitch or a meter reset and leaves the start (0022);
    -- the event's readings above it still count toward the highest. A start stored before 0022
    -- has no seq and takes any lower reading, as it used to.
    -- The highest so far is meter_start + energy (kept so by this function; NULL before the
    -- first reading, which GREATEST skips).
    IF p_imp_min IS NOT NULL THEN
        highest := GREATEST(t.meter_start_import_wh + t.energy_in_kwh * 1000.0, p_imp_max);
        IF t.meter_start_import_wh IS NULL OR (p_imp_min < t.meter_start_import_wh
                AND (t.meter_start_import_seq IS NULL OR p_seq < t.meter_start_import_seq)) THEN
            t.meter_start_import_wh := p_imp_min;
            t.meter_start_import_seq := p_seq;
        END IF;
        t.energy_in_kwh := GREATEST(0.0, (highest - t.meter_start_import_wh) / 1000.0);
    END IF;
    IF p_exp_min IS NOT NULL THEN
        highest := GREATEST(t.meter_start_export_wh + t.energy_out_kwh * 1000.0, p_exp_max);
        IF t.meter_start_export_wh IS NULL OR (p_exp_min < t.meter_start_export_wh
                AND (t.meter_start_export_seq IS NULL OR p_seq < t.meter_start_export_seq)) THEN
            t.meter_start_export_wh := p_exp_min;
            t.meter_start_export_seq := p_seq;
        END IF;
        t.energy_out_kwh := GREATEST(0.0, (highest - t.meter_start_export_wh) / 1000.0);
    END IF;
"""

# 0020's text -> this revision's (each found exactly once): the energy block, and the UPDATE
# that stores the row's new columns.
CHANGES = {
    ENERGY_BEFORE: ENERGY,
    "meter_start_import_wh = t.meter_start_import_wh, meter_start_export_wh = t.meter_start_export_wh,":
        "meter_start_import_wh = t.meter_start_import_wh, meter_start_export_wh = t.meter_start_export_wh,\n"
        "        meter_start_import_seq = t.meter_start_import_seq, meter_start_export_seq = t.meter_start_export_seq,",
}


def _revision(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"migration_{name[:4]}", Path(__file__).with_name(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_0020() -> str:
    """The function as 0020's upgrade creates it."""
    m = _revision("0020_record_event_stop_token_not_owner.py")
    text: str = m._function_0016()
    assert text.count(m.OWNER_RULE_BEFORE) == 1
    return text.replace(m.OWNER_RULE_BEFORE, m.OWNER_RULE)


def function() -> str:
    text = _function_0020()
    for old, new in CHANGES.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def upgrade() -> None:
    op.add_column("transactions", sa.Column("meter_start_import_seq", sa.BigInteger(), nullable=True))
    op.add_column("transactions", sa.Column("meter_start_export_seq", sa.BigInteger(), nullable=True))
    op.execute(function())


def downgrade() -> None:
    op.execute(_function_0020())
    op.drop_column("transactions", "meter_start_export_seq")
    op.drop_column("transactions", "meter_start_import_seq")
