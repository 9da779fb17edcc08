"""Unusual payloads that the JSON schemas let through: every one is answered with a schema-valid CALLRESULT or a
Part 4 CALLERROR (never InternalError), nothing is half-stored, and the socket lives on."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.ocpp.validation import V201
from tests.conftest import GatewayHarness
from tests.gateway.test_handlers import PASSWORD, fetch, tx_event
from tests.ocpp_client import RawStation

HUGE = 2**40  # valid JSON Schema "integer", past Postgres int4 and OCPP's 32-bit integers

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("leap second", "StatusNotification", {"timestamp": "2026-06-30T23:59:60Z", "connectorStatus": "Available",
                                           "evseId": 1, "connectorId": 1}),
    ("lower-case t and z", "StatusNotification", {"timestamp": "2026-07-01t08:00:00z",
                                                  "connectorStatus": "Available", "evseId": 1, "connectorId": 1}),
    ("nanoseconds", "TransactionEvent", tx_event("Started", 0, timestamp="2026-07-01T08:00:00.123456789Z")),
    ("huge evseId", "StatusNotification", {"timestamp": "2026-07-01T08:00:00Z", "connectorStatus": "Available",
                                           "evseId": HUGE, "connectorId": 1}),
    ("huge seqNo", "TransactionEvent", tx_event("Started", 0, seqNo=HUGE, transactionInfo={"transactionId": "T-H"})),
    ("negative seqNo", "TransactionEvent", tx_event("Started", 0, seqNo=-5, transactionInfo={"transactionId": "T-N"})),
    ("NUL in a token", "TransactionEvent", tx_event("Started", 0, idToken={"idToken": "A\u0000B", "type": "ISO14443"})),
    ("NUL in vendor data", "DataTransfer", {"vendorId": "com.example", "data": {"note": "x\u0000y"}}),
    ("huge meter value", "MeterValues", {"evseId": 1, "meterValue": [
        {"timestamp": "2026-07-01T08:00:00Z", "sampledValue": [{"value": 1e308}]}]}),
    ("multiplier past any float", "MeterValues", {"evseId": 1, "meterValue": [
        {"timestamp": "2026-07-01T08:00:00Z",
         "sampledValue": [{"value": 5.0, "unitOfMeasure": {"multiplier": 2**31 - 1}}]}]}),
    ("kWh past any float", "TransactionEvent", tx_event(
        "Started", 0, transactionInfo={"transactionId": "T-K"}, meterValue=[
            {"timestamp": "2026-07-01T08:00:00Z",
             "sampledValue": [{"value": 1e308, "unitOfMeasure": {"unit": "kWh"}}]}])),
    ("needs far future", "NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "AC_three_phase", "departureTime": "9999-12-31T23:59:59Z",
        "acChargingParameters": {"energyAmount": HUGE, "evMinCurrent": 0, "evMaxCurrent": HUGE,
                                 "evMaxVoltage": HUGE}}}),
]


@pytest.mark.parametrize(("name", "action", "payload"), CASES, ids=[c[0] for c in CASES])
async def test_unusual_but_valid_payloads(gateway_server: GatewayHarness, name: str, action: str,
                                          payload: dict[str, Any]) -> None:
    await gateway_server.add_station("CS-EDGE", PASSWORD)
    st = await RawStation.connect(gateway_server.ocpp_url, "CS-EDGE", PASSWORD)
    reply = await st.call(action, payload)
    if reply[0] == 3:
        V201.check(action, reply[2], request=False)
    else:
        assert reply[0] == 4 and reply[2] not in ("InternalError", "GenericError"), reply
        if action == "TransactionEvent":  # refused means not stored
            assert await fetch(gateway_server.database_url, "SELECT 1 FROM transaction_events") == []
    assert "currentTime" in await st.ok("Heartbeat", {})
    await st.close()


def test_a_reading_no_float_can_hold_is_skipped_not_fatal() -> None:
    from gateway.ocpp.meter import samples

    mv = [{"timestamp": "2026-07-01T08:00:00Z", "sampledValue": [
        {"value": 5.0, "unitOfMeasure": {"multiplier": 2**31 - 1}},
        {"value": 1e308, "unitOfMeasure": {"unit": "kWh"}},
        {"value": 7.0, "unitOfMeasure": {"unit": "kWh", "multiplier": -1}}]}]
    assert [(s.value, s.unit) for s in samples(mv)] == [(pytest.approx(700.0), "Wh")]


@pytest.mark.parametrize("seqs", [(2**31 - 1, 0), (2_147_483_000, 2_147_483_600), (0, 2**31 - 1)])
async def test_seq_nos_near_the_32_bit_limit_are_stored(gateway_server: GatewayHarness, seqs: tuple[int, int]) -> None:
    """The gap bookkeeping added to the highest seqNo in 32 bits: past 2**31 - 1 every later event
    of the transaction got InternalError, and was never stored."""
    await gateway_server.add_station("CS-SEQ", PASSWORD)
    st = await RawStation.connect(gateway_server.ocpp_url, "CS-SEQ", PASSWORD)
    first, second = seqs
    await st.ok("TransactionEvent", tx_event("Started", 0, seqNo=first, transactionInfo={"transactionId": "T-S"}))
    await st.ok("TransactionEvent", tx_event("Updated", 1, seqNo=second, transactionInfo={"transactionId": "T-S"}))
    rows = await fetch(gateway_server.database_url, "SELECT seq_no FROM transaction_events ORDER BY seq_no")
    assert [r["seq_no"] for r in rows] == sorted(seqs)
    await st.close()
