"""What a restart rebuilds from Postgres must plan like the state it replaces: the open sessions'
state of charge is 0..1 in the live state, though the table keeps the station's percent."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from tests.api.conftest import OPERATOR, PluggedStation, plug_in
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.gateway.test_handlers import PASSWORD, fetch
from tests.ocpp_client import RawStation

# A 60 kWh EV at 40 % that wants 80 %: 24 kWh to go.
NEEDS = {
    "evseId": 1,
    "chargingNeeds": {
        "requestedEnergyTransfer": "DC",
        "dcChargingParameters": {"evMaxCurrent": 100, "evMaxVoltage": 400, "evEnergyCapacity": 60000,
                                 "stateOfCharge": 40, "fullSoC": 80},
    },
}


async def test_open_sessions_keep_their_energy_need_across_a_restart(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await plug_in(h, "CS-RS", "tx-rs", "TOKEN-RS", evses=[(1, 50.0, 0.0, False)])
    await st.ws.ok("NotifyEVChargingNeeds", NEEDS)
    # The SoC reading reaches the transaction row with a TransactionEvent's meter values.
    soc_sample = {"timestamp": st.ts(1), "sampledValue": [
        {"value": 40, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}},
        {"value": 0, "measurand": "Energy.Active.Import.Register"}]}
    await st.ws.ok("TransactionEvent", {
        "eventType": "Updated", "timestamp": st.ts(1), "triggerReason": "MeterValuePeriodic", "seqNo": 1,
        "transactionInfo": {"transactionId": "tx-rs", "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1}, "meterValue": [soc_sample]})

    async def resolved() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
            got = await api.get("/api/v1/sessions/tx-rs", headers=OPERATOR)
            assert got.status_code == 200, got.text
            body: dict[str, Any] = got.json()
            return body

    before = await resolved()
    assert before["soc"] == 0.4
    assert before["resolved"]["energy_source"] == "ev"
    assert abs(before["resolved"]["energy_wanted_kwh"] - 24.0) < 1e-6, before["resolved"]

    await h.restart()
    assert h.gw is not None
    after = await resolved()
    assert after["soc"] == 0.4
    assert after["resolved"]["energy_source"] == "ev"
    assert abs(after["resolved"]["energy_wanted_kwh"] - 24.0) < 1e-6, after["resolved"]
    # The answer came from the rebuilt live session, which the planner reads too.
    live = h.gw.state.evses[("CS-RS", 1)].session
    assert live is not None and live.transaction_id == "tx-rs" and live.soc == 0.4
    assert h.gw.state.resolve(live).energy_wanted_kwh == after["resolved"]["energy_wanted_kwh"]


async def test_an_energy_request_made_mid_session_counts_from_the_same_point_after_a_restart(
        gateway_factory: Any) -> None:
    """ISO 15118 EnergyAmount is what the EV still wants when it says so: 20 kWh asked after 5 kWh
    went in is 5 * efficiency + 20 kWh in the battery by departure, before a restart and after."""
    from tests.gateway.test_handlers import fetch, wait_for

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await plug_in(h, "CS-MID", "tx-mid", "TOKEN-MID", evses=[(1, 11.0, 0.0, False)])
    await st.tx_event("Updated", "tx-mid", energy_wh=5000.0, power_w=7000.0, offset_s=60)

    async def drawn() -> bool:
        s = h.gw.state.session_by_tx("CS-MID", "tx-mid")  # type: ignore[union-attr]
        return s is not None and s.energy_in_kwh == 5.0

    await wait_for(drawn)
    await st.ws.ok("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "AC_three_phase",
        "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 16,
                                 "evMaxVoltage": 400}}})
    wanted = 5.0 * h.gw.settings.ev_efficiency + 20.0

    async def stored() -> bool:
        rows = await fetch(h.database_url, "SELECT baseline_kwh FROM ev_needs WHERE station_id = 'CS-MID'")
        return bool(rows) and rows[-1]["baseline_kwh"] is not None

    await wait_for(stored)
    live = h.gw.state.session_by_tx("CS-MID", "tx-mid")
    assert live is not None and abs(h.gw.state.resolve(live).energy_wanted_kwh - wanted) < 1e-6

    # The first baseline stored is the one kept: another node's later reading does not move it.
    row = (await fetch(h.database_url, "SELECT id, baseline_kwh FROM ev_needs WHERE station_id = 'CS-MID'"))[-1]
    assert await h.gw.planning.set_needs_baseline(row["id"], 99.0) == row["baseline_kwh"]

    await h.restart()
    assert h.gw is not None
    live = h.gw.state.session_by_tx("CS-MID", "tx-mid")
    assert live is not None and live.needs.energy_kwh == 20.0
    # Before, the restart counted the 20 kWh from plug-in: 4.6 kWh less to plan for.
    assert abs(h.gw.state.resolve(live).energy_wanted_kwh - wanted) < 1e-6
    # A session the REST API rebuilds from storage (not in the live state yet) counts the same.
    h.gw.state.evses[("CS-MID", 1)].session = None
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        got = await api.get("/api/v1/sessions/tx-mid", headers=OPERATOR)
    assert got.status_code == 200, got.text
    assert abs(got.json()["resolved"]["energy_wanted_kwh"] - wanted) < 1e-3, got.json()["resolved"]


async def test_the_battery_energy_at_plug_in_is_kept_across_a_restart(gateway_factory: Any) -> None:
    """The energy an ISO 15118 EV still wants is counted on its SoC from its battery's energy at
    plug-in. Pinned again after a restart, from the SoC then less the meter's energy through the
    assumed efficiency, it would take in the error of that efficiency on all energy before."""
    from tests.gateway.test_handlers import fetch, wait_for

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await plug_in(h, "CS-BS", "tx-bs", "TOKEN-BS", evses=[(1, 50.0, 0.0, False)])
    await st.ws.ok("NotifyEVChargingNeeds", {**NEEDS, "evseId": 1})

    async def reading(seq: int, soc: float, wh: float) -> None:
        await st.ws.ok("TransactionEvent", {
            "eventType": "Updated", "timestamp": st.ts(seq), "triggerReason": "MeterValuePeriodic", "seqNo": seq,
            "transactionInfo": {"transactionId": "tx-bs", "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1}, "meterValue": [{"timestamp": st.ts(seq), "sampledValue": [
                {"value": soc, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}},
                {"value": wh, "measurand": "Energy.Active.Import.Register"}]}]})

    await reading(1, 40, 0.0)  # 40 % of 60 kWh with nothing metered yet: 24 kWh at plug-in

    async def stored() -> bool:
        rows = await fetch(h.database_url, "SELECT battery_start_kwh FROM transactions WHERE transaction_id = 'tx-bs'")
        return bool(rows) and rows[0]["battery_start_kwh"] is not None

    await wait_for(stored)
    rows = await fetch(h.database_url, "SELECT battery_start_kwh FROM transactions WHERE transaction_id = 'tx-bs'")
    assert abs(rows[0]["battery_start_kwh"] - 24.0) < 1e-6
    # This EV loses more than the assumed efficiency: 10 kWh metered, 8.4 kWh into the battery.
    await reading(2, 54, 10_000.0)

    async def charged() -> bool:
        s = h.gw.state.session_by_tx("CS-BS", "tx-bs")  # type: ignore[union-attr]
        return s is not None and s.soc == 0.54 and s.energy_in_kwh == 10.0

    await wait_for(charged)
    # The first value stored is the one kept: another node's later pin does not move it.
    assert await h.gw.transactions.set_battery_start("CS-BS", "tx-bs", 99.0) == 24.0

    await h.restart()
    assert h.gw is not None
    live = h.gw.state.session_by_tx("CS-BS", "tx-bs")
    assert live is not None and live.soc == 0.54
    # Pinned anew it would be 32.4 - 10 x 0.92 = 23.2 kWh, and the plan would count 0.8 kWh more in.
    assert live.battery_start_kwh is not None and abs(live.battery_start_kwh - 24.0) < 1e-6


async def test_the_most_a_battery_held_is_kept_across_a_restart(gateway_factory: Any) -> None:
    """A battery lent to the grid is to hold again, by its believed departure, the most it held:
    after a restart that is read back from the SoC samples stored, not taken as the SoC then."""
    from tests.gateway.test_handlers import fetch, wait_for

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await plug_in(h, "CS-HI", "tx-hi", "TOKEN-HI", evses=[(1, 50.0, 50.0, True)])
    await st.ws.ok("NotifyEVChargingNeeds", {**NEEDS, "evseId": 1})

    async def reading(seq: int, soc: float, unit: str = "Percent") -> None:
        await st.ws.ok("TransactionEvent", {
            "eventType": "Updated", "timestamp": st.ts(seq), "triggerReason": "MeterValuePeriodic", "seqNo": seq,
            "transactionInfo": {"transactionId": "tx-hi", "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1}, "meterValue": [{"timestamp": st.ts(seq), "sampledValue": [
                {"value": soc, "measurand": "SoC", "unitOfMeasure": {"unit": unit}}]}]})

    # Charged to 70 %, then lent down to 55 %; between them two samples that are no SoC the
    # live state takes (255 %: some stations' "unknown"; a value in Wh), stored all the same.
    for seq, soc, unit in ((1, 40.0, "Percent"), (2, 70.0, "Percent"), (3, 255.0, "Percent"), (4, 5000.0, "Wh"),
                           (5, 55.0, "Percent")):
        await reading(seq, soc, unit)

    async def stored() -> bool:
        rows = await fetch(h.database_url, "SELECT last_soc FROM transactions WHERE transaction_id = 'tx-hi'")
        return bool(rows) and rows[0]["last_soc"] == 55.0

    await wait_for(stored)
    live = h.gw.state.session_by_tx("CS-HI", "tx-hi")
    assert live is not None and live.high_soc == 0.7
    await h.restart()
    assert h.gw is not None
    live = h.gw.state.session_by_tx("CS-HI", "tx-hi")
    assert live is not None and live.soc == 0.55 and live.high_soc == 0.7


async def _db_row(database_url: str, sql: str) -> Any:
    rows = await fetch(database_url, sql)
    return rows[0] if rows else None


async def test_a_transaction_whose_ended_was_lost_is_closed_by_the_next_and_not_back_after_a_restart(
    gateway_factory: Any,
) -> None:
    """tx-A's Ended never reached the gateway; tx-B started on the same EVSE and ended. Left open
    in the table, tx-A came back at the next restart as a session drawing its last power."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await plug_in(h, "CS-SUP", "tx-a", "TOKEN-A")
    await st.tx_event("Updated", "tx-a", energy_wh=1000.0, power_w=11000.0, offset_s=10)
    # tx-A's Ended is lost; tx-B starts on the same EVSE, and ends.
    await st.tx_event("Started", "tx-b", id_token="TOKEN-B", energy_wh=0.0, power_w=7000.0,
                      trigger="CablePluggedIn", offset_s=600)
    await st.tx_event("Ended", "tx-b", energy_wh=2000.0, power_w=0.0, trigger="EVCommunicationLost",
                      offset_s=1200)

    async def closed() -> bool:
        row = await _db_row(h.database_url, "SELECT ended_at, stopped_reason FROM transactions "
                                            "WHERE transaction_id = 'tx-a'")
        return row is not None and row["ended_at"] is not None

    deadline = asyncio.get_running_loop().time() + EVENT_TIMEOUT_S
    while not await closed():
        assert asyncio.get_running_loop().time() < deadline, "tx-a was not closed"
        await asyncio.sleep(0.05)
    a = await _db_row(h.database_url, "SELECT ended_at, stopped_reason FROM transactions WHERE transaction_id = 'tx-a'")
    b = await _db_row(h.database_url, "SELECT started_at FROM transactions WHERE transaction_id = 'tx-b'")
    assert a["stopped_reason"] == "Superseded" and a["ended_at"] == b["started_at"]
    await st.ws.close()

    await h.restart()
    assert h.gw is not None
    assert h.gw.state.evses[("CS-SUP", 1)].session is None
    assert h.gw.state.site_power_kw() == 0.0


async def test_a_restart_keeps_only_the_newest_open_transaction_of_an_evse(gateway_factory: Any) -> None:
    """Two transactions left open on one EVSE (written before the rule above): the newest is the
    session, the older one is closed."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await plug_in(h, "CS-TWO", "tx-old", "TOKEN-A")
    await st.tx_event("Started", "tx-new", id_token="TOKEN-B", energy_wh=0.0, power_w=7000.0,
                      trigger="CablePluggedIn", offset_s=600)
    await st.ws.close()
    await h.stop()
    # As an older version left it: both open.
    conn = await asyncpg.connect(h.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("UPDATE transactions SET ended_at = NULL, stopped_reason = NULL "
                           "WHERE transaction_id = 'tx-old'")
    finally:
        await conn.close()
    await h.start()
    assert h.gw is not None
    live = h.gw.state.evses[("CS-TWO", 1)].session
    assert live is not None and live.transaction_id == "tx-new"
    old = await _db_row(h.database_url, "SELECT ended_at, stopped_reason FROM transactions "
                                        "WHERE transaction_id = 'tx-old'")
    assert old["ended_at"] is not None and old["stopped_reason"] == "Superseded"


async def _booted(h: GatewayHarness, station_id: str) -> PluggedStation:
    """A registered, connected and booted station with one 50-kW EVSE and nothing plugged in."""
    assert h.gw is not None
    await h.add_station(station_id, PASSWORD, evses=[(1, 50.0, 0.0, False)])
    st = PluggedStation(await RawStation.connect(h.ocpp_url, station_id, PASSWORD), h.gw.clock.now)
    await st.boot()
    return st


async def _energy_source(h: GatewayHarness, station_id: str) -> str | None:
    assert h.gw is not None
    live = h.gw.state.evses[(station_id, 1)].session
    return None if live is None else h.gw.state.resolve(live).energy_source


async def _until_source(h: GatewayHarness, station_id: str, source: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT_S
    while await _energy_source(h, station_id) != source:
        assert loop.time() < deadline, f"energy source {await _energy_source(h, station_id)}, not {source}"
        await asyncio.sleep(0.02)


async def test_needs_sent_before_the_transaction_began_are_its_own_and_stay_across_a_restart(
    gateway_factory: Any,
) -> None:
    """A station that starts the transaction when power flows (TxStartPoint PowerPathClosed)
    forwards the EV's ISO 15118 needs before TransactionEvent Started."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await _booted(h, "CS-PRE")
    await st.ws.ok("NotifyEVChargingNeeds", NEEDS)
    await st.tx_event("Started", "tx-pre", id_token="TOKEN-PRE", energy_wh=0.0, power_w=7000.0,
                      trigger="CablePluggedIn")
    await _until_source(h, "CS-PRE", "ev")
    await st.ws.close()
    await h.restart()
    assert await _energy_source(h, "CS-PRE") == "ev"


async def test_needs_stay_across_a_restart_when_the_stations_clock_runs_ahead(gateway_factory: Any) -> None:
    """The transaction's start is the station's time, the needs' receipt ours: a station clock
    a minute ahead must not put its needs "before" the session."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await _booted(h, "CS-AHEAD")
    await st.tx_event("Started", "tx-ahead", id_token="TOKEN-AHEAD", energy_wh=0.0, power_w=7000.0,
                      trigger="CablePluggedIn", offset_s=60)
    await st.ws.ok("NotifyEVChargingNeeds", NEEDS)
    await _until_source(h, "CS-AHEAD", "ev")
    await st.ws.close()
    await h.restart()
    assert await _energy_source(h, "CS-AHEAD") == "ev"


async def test_needs_sent_before_one_session_are_not_the_next_ones(gateway_factory: Any) -> None:
    """A's EV sent its needs before A began; A ended; B, an EV that tells nothing, began minutes
    later. B plans from the forecast, live and after a restart."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    st = await _booted(h, "CS-NEXT")
    await st.ws.ok("NotifyEVChargingNeeds", NEEDS)
    await st.tx_event("Started", "tx-a", id_token="TOKEN-A", energy_wh=0.0, power_w=7000.0, trigger="CablePluggedIn")
    await _until_source(h, "CS-NEXT", "ev")
    await st.tx_event("Ended", "tx-a", energy_wh=3000.0, power_w=0.0, trigger="EVCommunicationLost", offset_s=120)
    await st.tx_event("Started", "tx-b", id_token="TOKEN-B", energy_wh=0.0, power_w=7000.0, trigger="CablePluggedIn",
                      offset_s=240)

    async def b_live() -> bool:
        live = h.gw.state.evses[("CS-NEXT", 1)].session  # type: ignore[union-attr]
        return live is not None and live.transaction_id == "tx-b"

    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT_S
    while not await b_live():
        assert loop.time() < deadline, "tx-b did not start"
        await asyncio.sleep(0.02)
    assert await _energy_source(h, "CS-NEXT") == "forecast"
    await st.ws.close()
    await h.restart()
    assert await _energy_source(h, "CS-NEXT") == "forecast"


async def test_a_station_registered_by_another_process_is_planned_at_its_ratings(gateway_factory: Any) -> None:
    """`gateway station add --evse` and `gateway sim --register` write to the database while the
    gateway runs: the station's EVSEs come into the live state when it connects, not only at
    the next restart (until then it was planned at the built-in default, one-way)."""
    from gateway import events as ev
    from gateway.db.admin import register_for_sim
    from gateway.domain import EvseSpec
    from gateway.episode import StationSpec

    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    # Not heard as it is written: the registration's notification could bring the ratings in
    # before the connection does (tests/gateway/test_station_changes.py), and this is about the
    # connection's own read (a notification nobody heard is lost).
    await h.gw.station_changes.stop()
    changed = h.gw.bus.subscribe(ev.SiteInputsChanged)
    await register_for_sim(h.database_url, [StationSpec("LATE-1", (
        EvseSpec("LATE-1", 1, max_charge_kw=22.0, max_discharge_kw=11.0, bidirectional=True),))], PASSWORD)
    assert ("LATE-1", 1) not in h.gw.state.evses
    st = await RawStation.connect(h.ocpp_url, "LATE-1", PASSWORD)

    async def rated() -> bool:
        e = h.gw.state.evses.get(("LATE-1", 1))
        return e is not None and e.spec.max_charge_kw == 22.0

    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while not await rated():
            await asyncio.sleep(0.02)
        assert (await changed.get()).what == "evses"  # the site is planned again with it
    spec = h.gw.state.evses[("LATE-1", 1)].spec
    assert (spec.max_discharge_kw, spec.bidirectional) == (11.0, True)
    changed.close()
    await st.close()


async def test_a_slow_database_does_not_hold_up_a_new_connection(gateway_factory: Any) -> None:
    """The connected flag is stored in the background, in order per station: a station is served
    while that write waits (it held the first messages for the pool's timeout), and the flag
    ends as the last connection left it."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    await h.add_station("CS-SLOW", PASSWORD)
    stations = h.gw.stations
    real = stations.set_connected
    release = asyncio.Event()

    written: list[bool] = []

    async def slow(station_id: str, connected: bool, *rest: Any) -> None:
        await release.wait()
        await real(station_id, connected, *rest)
        written.append(connected)

    stations.set_connected = slow  # type: ignore[method-assign]
    st = await RawStation.connect(h.ocpp_url, "CS-SLOW", PASSWORD)
    assert "currentTime" in await asyncio.wait_for(st.ok("Heartbeat", {}), EVENT_TIMEOUT_S)
    await st.close()

    async def gone() -> bool:
        return h.gw is not None and h.gw.ocpp.registry.get("CS-SLOW") is None

    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while not await gone():
            await asyncio.sleep(0.02)
    release.set()  # the connect's write, then the disconnect's

    writes = h.gw.ocpp.observer.flag_writes
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while writes.pending("CS-SLOW"):  # both written
            await asyncio.sleep(0.02)
    assert written == [True, False]  # in the order they happened
    rows = await fetch(h.database_url, "SELECT connected, last_seen_at FROM stations WHERE id='CS-SLOW'")
    assert rows[0]["connected"] is False and rows[0]["last_seen_at"] is not None
    stations.set_connected = real  # type: ignore[method-assign]
