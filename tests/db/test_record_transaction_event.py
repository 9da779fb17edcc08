"""record_transaction_event (migration 0005): energy from the meter registers whatever order the
events arrive in (E04 offline replay), and replays return the transaction as stored (D1)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import GatewayHarness
from tests.gateway.test_handlers import PASSWORD, fetch, tx_event

NOW = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


def _registers(imp: float, exp: float, minute: int) -> list[dict[str, Any]]:
    return [{"timestamp": f"2026-07-01T08:{minute:02d}:00Z", "sampledValue": [
        {"value": imp, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}},
        {"value": exp, "measurand": "Energy.Active.Export.Register", "unitOfMeasure": {"unit": "Wh"}},
    ]}]


READINGS = [(1_000.0, 200.0), (5_000.0, 700.0), (3_000.0, 300.0)]  # (import, export) at seqNo 0, 1, 2


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_energy_does_not_depend_on_arrival_order(gateway_server: GatewayHarness, order: tuple[int, ...]) -> None:
    assert gateway_server.gw is not None
    await gateway_server.add_station("CS-E", PASSWORD)
    repo = gateway_server.gw.transactions
    for seq in order:
        imp, exp = READINGS[seq]
        kind = "Started" if seq == 0 else "Updated"
        await repo.record_event("CS-E", tx_event(kind, seq, tid="TX-E", offline=seq != max(order),
                                                 meterValue=_registers(imp, exp, seq)), {}, NOW)
    rows = await fetch(gateway_server.database_url, "SELECT meter_start_import_wh, energy_in_kwh, "
                       "meter_start_export_wh, energy_out_kwh FROM transactions WHERE transaction_id='TX-E'")
    row = dict(rows[0])
    assert row["meter_start_import_wh"] == 1_000.0 and row["energy_in_kwh"] == pytest.approx(4.0)
    assert row["meter_start_export_wh"] == 200.0 and row["energy_out_kwh"] == pytest.approx(0.5)


async def test_a_replay_returns_the_transaction_and_when_it_was_stored(gateway_server: GatewayHarness) -> None:
    assert gateway_server.gw is not None
    await gateway_server.add_station("CS-E", PASSWORD)
    repo = gateway_server.gw.transactions
    p = tx_event("Started", 0, meterValue=_registers(1_000.0, 0.0, 0),
                 transactionInfo={"transactionId": "TX-R", "chargingState": "Charging"})
    first = await repo.record_event("CS-E", p, {"x": 1}, NOW)
    assert first.inserted and first.stored_at == NOW
    later = datetime(2026, 7, 1, 9, 5, tzinfo=UTC)
    again = await repo.record_event("CS-E", p, {"x": 2}, later)
    assert not again.inserted and again.response == {"x": 1} and again.stored_at == NOW
    assert again.tx is not None and again.tx.evse_id == 1 and again.tx.started_at is not None
    assert again.tx.charging_state == "Charging"


# A station glitch (0 Wh) at seqNo 2: the later low reading must not become the session's start
# (0022); before, the energy jumped to 1,240 kWh, the lifetime register.
GLITCH = [(1_234_567.0, 100.0), (1_240_000.0, 600.0), (0.0, 0.0), (1_241_000.0, 700.0)]  # seqNo 0..3
GLITCH_ENERGY = [(0.0, 0.0), (5.433, 0.5), (5.433, 0.5), (6.433, 0.6)]  # (in, out) kWh after each


async def _energy(url: str, tid: str) -> dict[str, Any]:
    rows = await fetch(url, "SELECT meter_start_import_wh, meter_start_import_seq, energy_in_kwh, "
                       "meter_start_export_wh, meter_start_export_seq, energy_out_kwh FROM transactions "
                       "WHERE transaction_id=$1", tid)
    return dict(rows[0])


async def test_a_later_low_reading_does_not_move_the_start(gateway_server: GatewayHarness) -> None:
    assert gateway_server.gw is not None
    await gateway_server.add_station("CS-E", PASSWORD)
    repo = gateway_server.gw.transactions
    for seq, ((imp, exp), (e_in, e_out)) in enumerate(zip(GLITCH, GLITCH_ENERGY, strict=True)):
        rec = await repo.record_event("CS-E", tx_event("Started" if seq == 0 else "Updated", seq, tid="TX-G",
                                                       meterValue=_registers(imp, exp, seq)), {}, NOW)
        assert rec.tx is not None
        assert (rec.tx.energy_in_kwh, rec.tx.energy_out_kwh) == (pytest.approx(e_in), pytest.approx(e_out)), seq
    row = await _energy(gateway_server.database_url, "TX-G")
    assert row["meter_start_import_wh"] == 1_234_567.0 and row["meter_start_import_seq"] == 0
    assert row["meter_start_export_wh"] == 100.0 and row["meter_start_export_seq"] == 0
    assert row["energy_in_kwh"] == pytest.approx(6.433) and row["energy_out_kwh"] == pytest.approx(0.6)


async def test_an_earlier_event_sent_late_still_lowers_the_start(gateway_server: GatewayHarness) -> None:
    """E04/D2: Started (seqNo 0) replayed after Updated 1 and 2 holds the session's first reading."""
    assert gateway_server.gw is not None
    await gateway_server.add_station("CS-E", PASSWORD)
    repo = gateway_server.gw.transactions
    for seq, imp, exp in ((1, 1_500.0, 50.0), (2, 2_000.0, 300.0), (0, 1_000.0, 20.0)):
        kind = "Started" if seq == 0 else "Updated"
        await repo.record_event("CS-E", tx_event(kind, seq, tid="TX-L", offline=seq == 0,
                                                 meterValue=_registers(imp, exp, seq)), {}, NOW)
    row = await _energy(gateway_server.database_url, "TX-L")
    assert row["meter_start_import_wh"] == 1_000.0 and row["meter_start_import_seq"] == 0
    assert row["meter_start_export_wh"] == 20.0 and row["meter_start_export_seq"] == 0
    assert row["energy_in_kwh"] == pytest.approx(1.0) and row["energy_out_kwh"] == pytest.approx(0.28)


async def test_a_start_stored_before_0022_takes_a_lower_reading_as_before(gateway_server: GatewayHarness) -> None:
    """A row written before 0022 has no start seqNo: a lower reading moves its start (and gives it one)."""
    assert gateway_server.gw is not None
    await gateway_server.add_station("CS-E", PASSWORD)
    repo = gateway_server.gw.transactions
    url = gateway_server.database_url
    await repo.record_event("CS-E", tx_event("Updated", 1, tid="TX-O", meterValue=_registers(2_000.0, 0.0, 1)), {}, NOW)
    await fetch(url, "UPDATE transactions SET meter_start_import_seq = NULL, meter_start_export_seq = NULL "
                "WHERE transaction_id='TX-O'")
    await repo.record_event("CS-E", tx_event("Updated", 2, tid="TX-O", meterValue=_registers(1_500.0, 0.0, 2)), {}, NOW)
    row = await _energy(url, "TX-O")
    assert row["meter_start_import_wh"] == 1_500.0 and row["meter_start_import_seq"] == 2
    assert row["energy_in_kwh"] == pytest.approx(0.5)
