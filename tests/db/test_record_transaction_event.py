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
