"""Every station-to-CSMS message over real WebSockets against real Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from gateway import events as ev
from gateway.clock import ManualClock, parse_rfc3339
from gateway.ocpp.handlers import NO_PKI
from tests.conftest import EVENT_TIMEOUT_S, STATION_PASSWORD, GatewayHarness
from tests.ocpp_client import RawStation

PASSWORD = STATION_PASSWORD  # what the shared ``station`` fixture logs in with
T0 = "2026-07-01T08:00:00.000Z"


async def wait_for(cond: Callable[[], Awaitable[bool]], limit_s: float = EVENT_TIMEOUT_S) -> None:
    """Poll a condition that depends on another task's progress (no fixed sleeps)."""
    async with asyncio.timeout(limit_s):
        while not await cond():
            await asyncio.sleep(0.02)


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def tx_event(event_type: str, seq: int, tid: str = "TX-1", **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "eventType": event_type, "timestamp": f"2026-07-01T08:{seq:02d}:00.000Z",
        "triggerReason": {"Started": "CablePluggedIn", "Ended": "EVDeparted"}.get(event_type, "MeterValuePeriodic"),
        "seqNo": seq, "transactionInfo": {"transactionId": tid}, "evse": {"id": 1, "connectorId": 1},
    }
    p.update(extra)
    return p


def energy(wh: float, ts: str = T0, power_w: float | None = None, soc: float | None = None) -> list[dict[str, Any]]:
    sv: list[dict[str, Any]] = [{"value": wh, "measurand": "Energy.Active.Import.Register",
                                 "unitOfMeasure": {"unit": "Wh"}}]
    if power_w is not None:
        sv.append({"value": power_w, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}})
    if soc is not None:
        sv.append({"value": soc, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}})
    return [{"timestamp": ts, "sampledValue": sv}]


async def test_boot_accepted_with_interval_and_stored(gateway_server: GatewayHarness, station: RawStation) -> None:
    reply = await station.ok("BootNotification", {
        "reason": "PowerUp",
        "chargingStation": {"model": "Wallbox-X", "vendorName": "Acme", "firmwareVersion": "1.2.3"}})
    assert reply["status"] == "Accepted"
    assert reply["interval"] == gateway_server.settings.heartbeat_interval_s
    rows = await fetch(gateway_server.database_url,
                       "SELECT vendor, model, firmware_version, last_boot_at FROM stations")
    assert (rows[0]["vendor"], rows[0]["model"], rows[0]["firmware_version"]) == ("Acme", "Wallbox-X", "1.2.3")
    assert rows[0]["last_boot_at"] is not None


async def test_boot_pending_per_station_state(gateway_server: GatewayHarness, station: RawStation) -> None:
    await fetch(gateway_server.database_url, "UPDATE stations SET boot_status='Pending' WHERE id='CS-1'")
    reply = await station.ok("BootNotification", {"reason": "PowerUp",
                                                  "chargingStation": {"model": "M", "vendorName": "V"}})
    assert reply["status"] == "Pending"
    assert reply["interval"] > 0


async def test_a_station_told_pending_sends_only_boot_and_what_was_triggered(
        gateway_server: GatewayHarness, station: RawStation) -> None:
    h = gateway_server
    assert h.gw is not None
    await fetch(h.database_url, "UPDATE stations SET boot_status='Pending' WHERE id='CS-1'")
    boot = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
    assert (await station.ok("BootNotification", boot))["status"] == "Pending"
    # B02.FR.09: anything else is a SecurityError, and the socket lives.
    reply = await station.call("Heartbeat", {})
    assert reply[0] == 4 and reply[2] == "SecurityError" and "Pending" in reply[3]
    status = {"timestamp": "2026-07-01T08:00:00Z", "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
    assert (await station.call("StatusNotification", status))[2] == "SecurityError"
    # ...except what the CSMS asked for with TriggerMessage.
    trigger = asyncio.create_task(h.gw.commands.trigger_message("CS-1", "StatusNotification", 1, 1))
    asked = await station.next_call()
    assert asked[2] == "TriggerMessage"
    await station.answer(asked, {"status": "Accepted"})
    assert (await trigger)["status"] == "Accepted"
    assert await station.ok("StatusNotification", status) == {}
    assert await station.ok("StatusNotification", {**status, "evseId": 2}) == {}  # F06: one per EVSE
    # Answered Pending again: what was triggered before is done.
    assert (await station.ok("BootNotification", boot))["status"] == "Pending"
    assert (await station.call("StatusNotification", status))[2] == "SecurityError"
    # A trigger the station refused lets nothing through.
    trigger = asyncio.create_task(h.gw.commands.trigger_message("CS-1", "MeterValues"))
    asked = await station.next_call()
    await station.answer(asked, {"status": "Rejected"})
    assert (await trigger)["status"] == "Rejected"
    assert (await station.call("MeterValues", {"evseId": 1, "meterValue": energy(1.0)}))[2] == "SecurityError"
    # Accepted on the next boot: served as usual.
    await fetch(h.database_url, "UPDATE stations SET boot_status='Accepted' WHERE id='CS-1'")
    assert (await station.ok("BootNotification", boot))["status"] == "Accepted"
    assert "currentTime" in await station.ok("Heartbeat", {})


async def test_heartbeat_and_reconnect_without_boot(gateway_server: GatewayHarness, station: RawStation) -> None:
    # No BootNotification on this connection: the station is still served (state from the DB).
    reply = await station.ok("Heartbeat", {})
    assert reply["currentTime"].endswith("Z")


async def test_status_notification_history_and_current(gateway_server: GatewayHarness, station: RawStation) -> None:
    for status, ts in (("Available", "2026-07-01T08:00:00Z"), ("Occupied", "2026-07-01T08:05:00Z")):
        assert await station.ok("StatusNotification", {"timestamp": ts, "connectorStatus": status,
                                                       "evseId": 1, "connectorId": 1}) == {}
    # A late (older) report must not overwrite the newer current status.
    await station.ok("StatusNotification", {"timestamp": "2026-07-01T07:00:00Z", "connectorStatus": "Faulted",
                                            "evseId": 1, "connectorId": 1})

    async def history_written() -> bool:
        return len(await fetch(gateway_server.database_url, "SELECT 1 FROM status_history")) == 3

    await wait_for(history_written)
    cur = await fetch(gateway_server.database_url, "SELECT status FROM connectors")
    assert [r["status"] for r in cur] == ["Occupied"]


async def test_authorize_accept_any_by_default(station: RawStation) -> None:
    reply = await station.ok("Authorize", {"idToken": {"idToken": "RFID-1", "type": "ISO14443"}})
    assert reply == {"idTokenInfo": {"status": "Accepted"}}


async def test_known_tokens_only_policy(gateway_factory: Any) -> None:
    h = await gateway_factory(known_tokens_only=True)
    await h.add_station("CS-K", PASSWORD)
    await h.gw.tokens.add("KNOWN-1", "ISO14443", h.gw.clock.now())
    st = await RawStation.connect(h.ocpp_url, "CS-K", PASSWORD)
    known = await st.ok("Authorize", {"idToken": {"idToken": "KNOWN-1", "type": "ISO14443"}})
    unknown = await st.ok("Authorize", {"idToken": {"idToken": "STRANGER", "type": "ISO14443"}})
    assert known["idTokenInfo"]["status"] == "Accepted"
    assert unknown["idTokenInfo"]["status"] == "Unknown"
    te = await st.ok("TransactionEvent", tx_event("Started", 0, idToken={"idToken": "STRANGER", "type": "ISO14443"}))
    assert te["idTokenInfo"]["status"] == "Unknown"
    await st.close()


async def test_the_token_cache_keeps_the_latest_tokens_only(gateway_factory: Any, monkeypatch: Any) -> None:
    """A station presenting endless made-up tokens does not grow the gateway without bound."""
    from gateway.ocpp import handlers

    monkeypatch.setattr(handlers, "TOKEN_CACHE_KEPT", 3)
    h = await gateway_factory(known_tokens_only=True)
    await h.add_station("CS-K", PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-K", PASSWORD)
    for i in range(6):
        await st.ok("Authorize", {"idToken": {"idToken": f"MADE-UP-{i}", "type": "ISO14443"}})
    assert list(h.gw.handlers._token_cache) == [f"ISO14443:made-up-{i}" for i in (3, 4, 5)]  # keyed case-blind
    await st.close()


async def test_transaction_lifecycle_energy_and_meter_values(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    token = {"idToken": "DRIVER-7", "type": "ISO14443"}
    r0 = await station.ok("TransactionEvent", tx_event("Started", 0, idToken=token, meterValue=energy(10_000.0)))
    assert r0["idTokenInfo"]["status"] == "Accepted"
    await station.ok("TransactionEvent", tx_event("Updated", 1, meterValue=energy(14_000.0, power_w=7_400.0, soc=55)))
    await station.ok("MeterValues", {"evseId": 1, "meterValue": energy(15_000.0, power_w=7_000.0)})
    await station.ok("TransactionEvent", tx_event("Ended", 2, meterValue=energy(22_500.0),
                                                  transactionInfo={"transactionId": "TX-1",
                                                                   "stoppedReason": "EVDisconnected"}))
    tx = (await fetch(gateway_server.database_url, "SELECT * FROM transactions"))[0]
    assert tx["id_token"] == "DRIVER-7" and tx["evse_id"] == 1
    assert tx["energy_in_kwh"] == pytest.approx(12.5)
    assert tx["last_soc"] == 55 and tx["ended_at"] is not None and tx["stopped_reason"] == "EVDisconnected"

    async def meter_rows() -> bool:
        rows = await fetch(gateway_server.database_url, "SELECT transaction_id FROM meter_values")
        return len(rows) == 7

    await wait_for(meter_rows)
    # MeterValues carry no transactionId: the gateway attributes them to the EVSE's session.
    rows = await fetch(gateway_server.database_url,
                       "SELECT transaction_id FROM meter_values WHERE value = 15000")
    assert rows[0]["transaction_id"] == "TX-1"


async def test_a_reading_without_a_unit_keeps_its_measurands_unit_and_the_payload_is_stored_as_sent(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    """The schema's default unit ("Wh") used to be written into the payload as it was checked:
    an SoC sent without a unit became a reading in Wh, lost to the plan, and the stored payload
    was no longer the one received."""
    import json

    payload = tx_event("Started", 0, meterValue=[{"timestamp": T0, "sampledValue": [
        {"value": 55, "measurand": "SoC", "unitOfMeasure": {"multiplier": 0}},
        {"value": 7400, "measurand": "Power.Active.Import"}]}])
    sent = json.loads(json.dumps(payload))
    await station.ok("TransactionEvent", payload)
    tx = (await fetch(gateway_server.database_url, "SELECT last_soc, last_power_kw FROM transactions"))[0]
    assert (tx["last_soc"], tx["last_power_kw"]) == (55, pytest.approx(7.4))
    stored = (await fetch(gateway_server.database_url, "SELECT payload FROM transaction_events"))[0]["payload"]
    assert json.loads(stored) == sent

    async def rows() -> bool:
        return len(await fetch(gateway_server.database_url, "SELECT 1 FROM meter_values")) == 2

    await wait_for(rows)
    units = await fetch(gateway_server.database_url, "SELECT measurand, unit FROM meter_values ORDER BY measurand")
    assert [tuple(r) for r in units] == [("Power.Active.Import", "W"), ("SoC", "Percent")]


async def test_a_stations_inlet_register_is_stored_as_such_and_not_counted_as_the_sessions_energy(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    """SampledValue.location: the Inlet register counts every EVSE of the station; mixed with
    the EVSE's own (Outlet, the default), a 12.5-kWh session read as 1,252 kWh."""
    def readings(outlet_wh: float, inlet_wh: float) -> list[dict[str, Any]]:
        return [{"timestamp": T0, "sampledValue": [
            {"value": outlet_wh, "measurand": "Energy.Active.Import.Register"},
            {"value": inlet_wh, "measurand": "Energy.Active.Import.Register", "location": "Inlet"},
            {"value": 50_000, "measurand": "Power.Active.Import", "location": "Inlet"},
            {"value": 7_000, "measurand": "Power.Active.Import", "location": "Outlet"}]}]

    await station.ok("TransactionEvent", tx_event("Started", 0, meterValue=readings(10_000.0, 1_250_000.0)))
    await station.ok("TransactionEvent", tx_event("Ended", 1, meterValue=readings(22_500.0, 1_262_000.0)))
    tx = (await fetch(gateway_server.database_url, "SELECT energy_in_kwh, last_power_kw FROM transactions"))[0]
    assert tx["energy_in_kwh"] == pytest.approx(12.5) and tx["last_power_kw"] == pytest.approx(7.0)

    async def rows() -> bool:
        return len(await fetch(gateway_server.database_url, "SELECT 1 FROM meter_values")) == 8

    await wait_for(rows)
    inlet = await fetch(gateway_server.database_url,
                        "SELECT value FROM meter_values WHERE location = 'Inlet' AND measurand LIKE 'Energy%' "
                        "ORDER BY value")
    assert [r["value"] for r in inlet] == [1_250_000.0, 1_262_000.0]
    # The EVSE's own meter is one series, its location said ("Outlet") or not.
    outlet = await fetch(gateway_server.database_url, "SELECT DISTINCT location FROM meter_values "
                                                      "WHERE measurand LIKE 'Power%' AND value = 7000")
    assert [r["location"] for r in outlet] == [None]


async def test_d1_replays_store_once_and_get_the_same_answer(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    payload = tx_event("Started", 0, idToken={"idToken": "A", "type": "ISO14443"}, meterValue=energy(1_000.0))
    replies = [await station.call("TransactionEvent", payload, message_id=f"retry-{i}") for i in range(4)]
    assert all(r[0] == 3 for r in replies)
    assert len({str(r[2]) for r in replies}) == 1
    rows = await fetch(gateway_server.database_url, "SELECT count(*) AS n FROM transaction_events")
    assert rows[0]["n"] == 1


async def test_d2_seq_gap_flagged_then_closed_and_ordered(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    for seq in (0, 1, 3):
        await station.ok("TransactionEvent", tx_event("Started" if seq == 0 else "Updated", seq))
    gaps = await gateway_server.gw.transactions.open_gaps("CS-1", "TX-1")  # type: ignore[union-attr]
    assert gaps == [2]
    await station.ok("TransactionEvent", tx_event("Updated", 2, offline=True))
    assert await gateway_server.gw.transactions.open_gaps("CS-1", "TX-1") == []  # type: ignore[union-attr]
    events = await gateway_server.gw.transactions.events("CS-1", "TX-1")  # type: ignore[union-attr]
    assert [e.seq_no for e in events] == [0, 1, 2, 3]
    assert [e.offline for e in events] == [False, False, True, False]


async def test_a_late_event_keeps_the_newer_readings_and_the_starting_token(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    """D2: an offline event sent late (a lower seqNo) does not replace the newer charging state,
    power and SoC, in the table or in the live state; and the session keeps the token it was
    started with when another card stops it (the REST API's driver tokens follow that one)."""
    h = gateway_server
    assert h.gw is not None
    a = {"idToken": "CARD-A", "type": "ISO14443"}
    await station.ok("TransactionEvent", tx_event("Started", 0, idToken=a, meterValue=energy(0.0, soc=20)))
    await station.ok("TransactionEvent", tx_event("Updated", 1, transactionInfo={
        "transactionId": "TX-1", "chargingState": "Charging"}, meterValue=energy(2_000.0, power_w=7_000, soc=30)))
    await station.ok("TransactionEvent", tx_event("Updated", 3, transactionInfo={
        "transactionId": "TX-1", "chargingState": "Charging"}, meterValue=energy(6_000.0, power_w=7_000, soc=50)))
    await station.ok("TransactionEvent", tx_event("Updated", 2, offline=True, transactionInfo={
        "transactionId": "TX-1", "chargingState": "SuspendedEV"}, meterValue=energy(4_000.0, power_w=0, soc=40)))
    row = (await fetch(h.database_url, "SELECT * FROM transactions WHERE transaction_id='TX-1'"))[0]
    assert (row["charging_state"], row["last_power_kw"], row["last_soc"]) == ("Charging", 7.0, 50.0)
    assert row["energy_in_kwh"] == pytest.approx(6.0)
    session = h.gw.state.evse("CS-1", 1).session
    assert session is not None
    assert (session.charging_state, session.power_kw, session.soc) == ("Charging", 7.0, 0.5)
    # Another card shown to stop it: the session stays the starter's.
    b = {"idToken": "CARD-B", "type": "ISO14443"}
    await station.ok("TransactionEvent", tx_event("Updated", 4, idToken=b, triggerReason="StopAuthorized"))
    row = (await fetch(h.database_url, "SELECT id_token FROM transactions WHERE transaction_id='TX-1'"))[0]
    assert row["id_token"] == "CARD-A"


async def test_a_transaction_event_without_readings_leaves_newer_meter_values_alone(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    """The SoC and power of a session are what was read last: a TransactionEvent that read none
    (a trigger, a chargingState change) used to publish the row's, those of the last
    TransactionEvent that did, over what MeterValues read since."""
    h = gateway_server
    assert h.gw is not None
    await station.ok("TransactionEvent", tx_event("Started", 0, meterValue=energy(1_000.0, power_w=11_000, soc=20)))
    await station.ok("MeterValues", {"evseId": 1, "meterValue": energy(5_000.0, power_w=0, soc=50)})
    session = h.gw.state.evse("CS-1", 1).session
    assert session is not None

    async def metered() -> bool:
        return session.soc == 0.5

    await wait_for(metered)
    await station.ok("TransactionEvent", tx_event("Updated", 1, triggerReason="ChargingStateChanged",
                                                  transactionInfo={"transactionId": "TX-1",
                                                                   "chargingState": "SuspendedEV"}))
    await station.ok("Heartbeat", {})  # the event's own publications are folded in by now
    assert (session.soc, session.power_kw, session.charging_state) == (0.5, 0.0, "SuspendedEV")
    # The SoC was read without registers: it is not paired with the session's energy.
    assert session.soc_with_registers is False


@pytest.mark.parametrize("stop", ["StopAuthorized", "Ended"])
async def test_a_card_that_only_stops_a_tokenless_session_does_not_become_its_owner(
    gateway_server: GatewayHarness, station: RawStation, stop: str
) -> None:
    """A session started without a token (free vend, NoAuthorization) and stopped with a card:
    that card's driver token could read and change the session, as its first token."""
    await station.ok("TransactionEvent", tx_event("Started", 0, meterValue=energy(0.0)))
    stranger = {"idToken": "STRANGER", "type": "ISO14443"}
    if stop == "StopAuthorized":
        await station.ok("TransactionEvent", tx_event("Updated", 1, idToken=stranger, triggerReason="StopAuthorized"))
    else:
        await station.ok("TransactionEvent", tx_event("Ended", 1, idToken=stranger, meterValue=energy(2_000.0)))
    row = (await fetch(gateway_server.database_url, "SELECT id_token FROM transactions WHERE transaction_id='TX-1'"))[0]
    assert row["id_token"] is None
    # A card that authorizes it later (triggerReason Authorized) is its owner.
    if stop == "StopAuthorized":
        owner = {"idToken": "OWNER", "type": "ISO14443"}
        await station.ok("TransactionEvent", tx_event("Updated", 2, idToken=owner, triggerReason="Authorized"))
        row = (await fetch(gateway_server.database_url,
                           "SELECT id_token FROM transactions WHERE transaction_id='TX-1'"))[0]
        assert row["id_token"] == "OWNER"


async def test_a_late_event_of_an_ended_session_leaves_the_next_session_alone(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    h = gateway_server
    assert h.gw is not None
    await station.ok("TransactionEvent", tx_event("Started", 0, tid="TX-A"))
    await station.ok("TransactionEvent", tx_event("Ended", 2, tid="TX-A"))
    await station.ok("TransactionEvent", tx_event("Started", 0, tid="TX-B"))
    sub = h.gw.bus.subscribe(ev.SessionStarted, ev.SessionUpdated, ev.SessionEnded)
    await station.ok("TransactionEvent", tx_event("Updated", 1, tid="TX-A", offline=True,
                                                  meterValue=energy(1_000.0)))
    assert sub.queue.qsize() == 0  # no second SessionEnded of TX-A beside TX-B
    assert h.gw.handlers.active_tx == {("CS-1", 1): "TX-B"}
    session = h.gw.state.evse("CS-1", 1).session
    assert session is not None and session.transaction_id == "TX-B"


async def test_vendor_needs_that_are_not_plausible_numbers_are_left_out(
        gateway_server: GatewayHarness, station: RawStation) -> None:
    """customData has no schema: a SoC as text, a capacity of 400 digits, a power as a list or a
    SoC of 500 % are left out of the needs (kept in the stored payload), never an InternalError."""
    await station.ok("TransactionEvent", tx_event("Started", 0))
    reply = await station.ok("NotifyEVChargingNeeds", {
        "evseId": 1,
        "chargingNeeds": {
            "requestedEnergyTransfer": "AC_three_phase",
            "acChargingParameters": {"energyAmount": 20_000, "evMinCurrent": 6, "evMaxCurrent": 16,
                                     "evMaxVoltage": 400},
            "customData": {"vendorId": "x", "stateOfCharge": "50", "evEnergyCapacity": 10**400,
                           "evMaxDischargePower": [1], "evMinSoC": 500, "evTargetSoC": True},
        }})
    assert reply["status"] == "Rejected"  # answered as usual; this gateway plans nothing (no scheduler)
    row = (await fetch(gateway_server.database_url, "SELECT * FROM ev_needs"))[0]
    assert row["energy_kwh"] == pytest.approx(20.0)
    assert [row[k] for k in ("soc", "capacity_kwh", "ev_max_discharge_kw", "min_soc", "target_soc")] == [None] * 5


async def test_notify_ev_charging_needs_stored(gateway_server: GatewayHarness, station: RawStation) -> None:
    await station.ok("TransactionEvent", tx_event("Started", 0))
    reply = await station.ok("NotifyEVChargingNeeds", {
        "evseId": 1, "maxScheduleTuples": 5,
        "chargingNeeds": {
            "requestedEnergyTransfer": "AC_three_phase", "departureTime": "2026-07-01T17:30:00Z",
            "acChargingParameters": {"energyAmount": 30_000, "evMinCurrent": 6, "evMaxCurrent": 16,
                                     "evMaxVoltage": 400},
            "customData": {"vendorId": "org.example.v2x", "evMaxDischargePower": 7_000, "evMinSoC": 20,
                           "stateOfCharge": 40, "evEnergyCapacity": 60_000},
        }})
    # This gateway plans nothing (its scheduler is off): no schedule will follow (K15.FR.03 keeps
    # Accepted for a CSMS that sends one), and the needs are stored all the same.
    assert reply["status"] == "Rejected" and reply["statusInfo"]["reasonCode"] == "NoScheduler"
    row = (await fetch(gateway_server.database_url, "SELECT * FROM ev_needs"))[0]
    assert row["transaction_id"] == "TX-1"
    assert row["energy_kwh"] == pytest.approx(30.0)
    assert row["departure_time"].isoformat().startswith("2026-07-01T17:30")
    assert row["ev_max_charge_kw"] == pytest.approx(16 * 230 * 3 / 1000)
    assert row["ev_max_discharge_kw"] == pytest.approx(7.0)
    assert row["min_soc"] == pytest.approx(0.2) and row["capacity_kwh"] == pytest.approx(60.0)
    assert row["max_schedule_tuples"] == 5
    assert gateway_server.gw is not None
    stored = await gateway_server.gw.planning.latest_needs("CS-1", 1, None)
    assert stored is not None and stored.needs.max_schedule_tuples == 5


NOTIFICATIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("NotifyEVChargingSchedule", {
        "timeBase": T0, "evseId": 1,
        "chargingSchedule": {"id": 1, "chargingRateUnit": "W",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7000.0}]}},
     {"status": "Accepted"}),
    ("NotifyChargingLimit", {"chargingLimit": {"chargingLimitSource": "EMS", "isGridCritical": False}}, {}),
    ("ClearedChargingLimit", {"chargingLimitSource": "EMS", "evseId": 1}, {}),
    ("ReportChargingProfiles", {
        "requestId": 1, "chargingLimitSource": "CSO", "evseId": 1,
        "chargingProfile": [{"id": 5, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
                             "chargingProfileKind": "Absolute",
                             "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                                   "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                               "limit": 16.0}]}]}]}, {}),
    ("NotifyReport", {"requestId": 1, "generatedAt": T0, "seqNo": 0, "tbc": False}, {}),
    ("NotifyEvent", {"generatedAt": T0, "seqNo": 0, "eventData": [{
        "eventId": 1, "timestamp": T0, "trigger": "Alerting", "actualValue": "Faulted",
        "eventNotificationType": "HardWiredNotification", "component": {"name": "Connector"},
        "variable": {"name": "Problem"}}]}, {}),
    ("LogStatusNotification", {"status": "Uploaded", "requestId": 3}, {}),
    ("FirmwareStatusNotification", {"status": "Installed", "requestId": 4}, {}),
    ("DataTransfer", {"vendorId": "com.example", "messageId": "x", "data": {"a": 1}}, {"status": "UnknownVendorId"}),
    ("NotifyCustomerInformation", {"data": "no data", "seqNo": 0, "generatedAt": T0, "requestId": 5}, {}),
    ("NotifyMonitoringReport", {"requestId": 6, "seqNo": 0, "generatedAt": T0}, {}),
    ("NotifyDisplayMessages", {"requestId": 7}, {}),
    ("ReservationStatusUpdate", {"reservationId": 8, "reservationUpdateStatus": "Expired"}, {}),
    ("PublishFirmwareStatusNotification", {"status": "Published"}, {}),
    # No certificate authority here: refused with the reason (A02, M02, M06), kept all the same.
    ("SignCertificate", {"csr": "-----BEGIN CERTIFICATE REQUEST-----"}, {"status": "Rejected", "statusInfo": NO_PKI}),
    ("Get15118EVCertificate", {"iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef", "action": "Install",
                               "exiRequest": "AAAA"}, {"status": "Failed", "exiResponse": "", "statusInfo": NO_PKI}),
    ("GetCertificateStatus", {"ocspRequestData": {"hashAlgorithm": "SHA256", "issuerNameHash": "a",
                                                  "issuerKeyHash": "b", "serialNumber": "c",
                                                  "responderURL": "http://ocsp.example"}},
     {"status": "Failed", "statusInfo": NO_PKI}),
]


@pytest.mark.parametrize(("action", "payload", "expected"), NOTIFICATIONS, ids=[n[0] for n in NOTIFICATIONS])
async def test_notifications_answered_and_kept(
    gateway_server: GatewayHarness, station: RawStation, action: str, payload: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    assert await station.ok(action, payload) == expected
    rows = await fetch(gateway_server.database_url, "SELECT payload FROM station_messages WHERE action=$1", action)
    assert len(rows) == 1


async def test_security_event_notification_stored(gateway_server: GatewayHarness, station: RawStation) -> None:
    await station.ok("SecurityEventNotification", {"type": "TamperDetectionActivated", "timestamp": T0,
                                                   "techInfo": "lid opened"})
    rows = await fetch(gateway_server.database_url, "SELECT kind, source, detail FROM security_events")
    assert [(r["kind"], r["source"], r["detail"]) for r in rows] == [("TamperDetectionActivated", "station",
                                                                       "lid opened")]


async def test_every_station_action_has_a_handler(gateway_server: GatewayHarness) -> None:
    # docs/reliability.md R2: a valid CALL of any station-to-CSMS action is answered with a CALLRESULT.
    from gateway.ocpp.validation import V201_STATION_ACTIONS

    assert gateway_server.gw is not None
    assert V201_STATION_ACTIONS <= gateway_server.gw.handlers.actions


async def test_restart_mid_transaction(gateway_server: GatewayHarness) -> None:
    await gateway_server.add_station("CS-R", PASSWORD)
    st = await RawStation.connect(gateway_server.ocpp_url, "CS-R", PASSWORD)
    await st.ok("TransactionEvent", tx_event("Started", 0, tid="TX-R", meterValue=energy(0.0)))
    await gateway_server.restart()
    await st.close()
    st = await RawStation.connect(gateway_server.ocpp_url, "CS-R", PASSWORD)
    # No BootNotification after the restart: the gateway knows the open session from Postgres.
    assert gateway_server.gw is not None
    assert gateway_server.gw.handlers.active_tx[("CS-R", 1)] == "TX-R"
    assert gateway_server.gw.state.evses[("CS-R", 1)].session is not None
    await st.ok("MeterValues", {"evseId": 1, "meterValue": energy(3_000.0)})
    await st.ok("TransactionEvent", tx_event("Ended", 1, tid="TX-R", meterValue=energy(5_000.0)))
    tx = (await fetch(gateway_server.database_url, "SELECT * FROM transactions WHERE transaction_id='TX-R'"))[0]
    assert tx["ended_at"] is not None and tx["energy_in_kwh"] == pytest.approx(5.0)
    events = await fetch(gateway_server.database_url, "SELECT seq_no FROM transaction_events ORDER BY seq_no")
    assert [e["seq_no"] for e in events] == [0, 1]
    await st.close()


async def test_event_payload_and_reply_are_stored_as_json_objects(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    await station.ok("TransactionEvent", tx_event("Started", 0, idToken={"idToken": "J", "type": "ISO14443"}))
    rows = await fetch(gateway_server.database_url,
                       "SELECT jsonb_typeof(payload) AS p, jsonb_typeof(response) AS r, payload->>'eventType' AS e "
                       "FROM transaction_events")
    assert (rows[0]["p"], rows[0]["r"], rows[0]["e"]) == ("object", "object", "Started")


async def test_a_session_queued_offline_keeps_the_stations_start_and_end(
    gateway_server: GatewayHarness, station: RawStation
) -> None:
    gw = gateway_server.gw
    assert gw is not None
    # E04: the station was offline from 08:00 to 08:03 and sends the queued events on reconnection.
    await station.ok("TransactionEvent", tx_event("Started", 0, offline=True, meterValue=energy(1_000.0)))
    await station.ok("TransactionEvent", tx_event("Ended", 3, offline=True, meterValue=energy(9_000.0),
                                                  triggerReason="EVDeparted"))

    async def ended() -> bool:
        return len(gw.state.completed) == 1

    await wait_for(ended)
    done = gw.state.completed[0]
    # What the forecasts learn is the stay the station saw, not the moment it reconnected.
    assert done.arrival == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    assert done.departure == datetime(2026, 7, 1, 8, 3, tzinfo=UTC)
    # Sent live, the gateway's own clock is the time (a station's clock may be off).
    await station.ok("TransactionEvent", tx_event("Started", 0, tid="TX-2", meterValue=energy(1_000.0)))

    async def started() -> bool:
        s = gw.state.evse("CS-1", 1).session
        return s is not None and s.transaction_id == "TX-2"

    await wait_for(started)
    s = gw.state.evse("CS-1", 1).session
    assert s is not None and s.started_at > datetime(2026, 7, 2, tzinfo=UTC)


async def test_boot_current_time_is_read_as_the_gateway_answers(gateway_factory: Any) -> None:
    """B01: a station sets its clock from currentTime, so it must be the time of the answer, not the
    time the BootNotification arrived: a slow write of the boot in between (here one simulated
    minute, as 0.07 s of real time is at 900x) would set the station's clock behind by that much."""
    clock = ManualClock(datetime(2026, 7, 1, 8, tzinfo=UTC))
    h = await gateway_factory(clock=clock)
    assert h.gw is not None
    repo = h.gw.handlers._stations
    real_boot = repo.boot

    async def slow_boot(station_id: str, payload: dict[str, Any], now: datetime) -> str:
        status = await real_boot(station_id, payload, now)
        clock.advance(60.0)  # the write took a (simulated) minute
        return status

    repo.boot = slow_boot  # type: ignore[method-assign]
    await h.add_station("CS-1", PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-1", PASSWORD)
    try:
        reply = await st.ok("BootNotification", {"reason": "PowerUp",
                                                 "chargingStation": {"model": "M", "vendorName": "V"}})
    finally:
        await st.close()
    assert reply["status"] == "Accepted"
    assert parse_rfc3339(reply["currentTime"]) == clock.now()


async def test_a_replay_on_a_clock_that_stands_still_publishes_nothing(gateway_factory: Any) -> None:
    """The stored-at time tells which call stored an event; on a simulation's clock that does not
    move between the event and its replay, the replay must still not count as the one that
    stored it."""
    h = await gateway_factory(clock=ManualClock(datetime(2026, 7, 1, 8, tzinfo=UTC)))
    await h.add_station("CS-M", STATION_PASSWORD)
    st = await RawStation.connect(h.ocpp_url, "CS-M", STATION_PASSWORD)
    sub = h.gw.bus.subscribe(ev.SessionStarted, ev.SessionUpdated, ev.SessionEnded)
    p = tx_event("Started", 0, meterValue=energy(1_000.0))
    first = await st.call("TransactionEvent", p)
    again = await st.call("TransactionEvent", p, message_id="replay-m")
    assert first[0] == again[0] == 3 and again[2] == first[2]
    published = [type(sub.queue.get_nowait()) for _ in range(sub.queue.qsize())]
    assert published == [ev.SessionStarted, ev.SessionUpdated]
    await st.close()


async def test_ev_needs_read_back_during_a_database_blip_are_applied_once_it_answers(
        gateway_server: GatewayHarness, station: RawStation, monkeypatch: Any) -> None:
    h = gateway_server
    assert h.gw is not None
    await station.ok("TransactionEvent", tx_event("Started", 0))
    real = h.gw.planning.latest_needs
    failures = 0
    away = True

    async def blip(*a: Any, **k: Any) -> Any:
        nonlocal failures
        if away:
            failures += 1
            raise ConnectionRefusedError("the database is away for a moment")
        return await real(*a, **k)

    monkeypatch.setattr(h.gw.planning, "latest_needs", blip)
    reply = await station.ok("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "AC_three_phase",
        "acChargingParameters": {"energyAmount": 30_000, "evMinCurrent": 6, "evMaxCurrent": 16, "evMaxVoltage": 400}}})
    assert reply["status"] == "Rejected"  # answered as usual; this gateway plans nothing (no scheduler)

    async def retried_a_few_times() -> bool:
        return failures >= 4

    await wait_for(retried_a_few_times)
    away = False
    assert failures < 10  # retried with a back-off, not in a loop as fast as it fails

    async def planned_with() -> bool:
        s = h.gw.state.evse("CS-1", 1).session
        return s is not None and s.needs.energy_kwh == pytest.approx(30.0)

    await wait_for(planned_with)


def test_negative_ev_needs_are_taken_as_not_told() -> None:
    """The schema bounds energyAmount, evMaxCurrent and evMaxPower from neither side: negative
    ones made the plan a 0-W profile for the whole stay."""
    from gateway.ocpp.handlers import needs_from_payload

    ac = needs_from_payload({"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "AC_three_phase",
        "acChargingParameters": {"energyAmount": -20_000, "evMinCurrent": 6, "evMaxCurrent": -16,
                                 "evMaxVoltage": 400}}})
    assert (ac.energy_kwh, ac.ev_max_charge_kw) == (None, None)
    dc = needs_from_payload({"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "DC",
        "dcChargingParameters": {"evMaxCurrent": 200, "evMaxVoltage": 400, "evMaxPower": -50_000,
                                 "energyAmount": 30_000, "evEnergyCapacity": -1}}})
    assert dc.ev_max_charge_kw == pytest.approx(80.0)  # current x voltage where the power is nonsense
    assert dc.energy_kwh == pytest.approx(30.0) and dc.capacity_kwh is None
    zero = needs_from_payload({"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "AC_single_phase",
        "acChargingParameters": {"energyAmount": 0, "evMinCurrent": 0, "evMaxCurrent": 0, "evMaxVoltage": 230}}})
    assert (zero.energy_kwh, zero.ev_max_charge_kw) == (0.0, None)  # needs nothing: told; 0 A: not
