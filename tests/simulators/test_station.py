"""The station's protocol behaviour against a scriptable loopback CSMS (real WebSockets).

These cover what the real gateway cannot be made to do on purpose (withhold replies, watch
message ids); ``test_against_gateway.py`` runs the same station against the real gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.clock import ScaledClock, to_rfc3339
from gateway.domain import EvseSpec
from gateway.episode import Arrival, StationSpec
from simulators.loopback_csms import LoopbackCsms
from simulators.station import Faults, Station, StationConfig

WAIT_S = 30.0
SCALE = 1800.0  # one real second = half a simulated hour
START = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
FAST = StationConfig(
    call_timeout_real_s=0.4,
    transaction_retry_interval_real_s=0.05,
    transaction_park_real_s=0.3,
    retry_backoff_wait_minimum_real_s=0.05,
    retry_backoff_random_range_real_s=0.05,
    aligned_interval_sim_s=0,
)


@pytest.fixture
def clock() -> ScaledClock:
    return ScaledClock(START, SCALE)


@pytest.fixture
async def csms(clock: ScaledClock) -> AsyncIterator[LoopbackCsms]:
    c = LoopbackCsms(clock, password="pw-1", heartbeat_interval_s=120)
    await c.start()
    yield c
    await c.stop()


def spec(sid: str = "CS-1", bidirectional: bool = True) -> StationSpec:
    return StationSpec(sid, (EvseSpec(sid, 1, 11.0, 11.0 if bidirectional else 0.0, bidirectional),))


def arrival(clock: ScaledClock, *, after_s: float = 60, dwell_s: float = 4 * 3600, **kw: Any) -> Arrival:
    t = clock.now() + timedelta(seconds=after_s)
    base: dict[str, Any] = dict(
        id="EV-1",
        station_id="CS-1",
        evse_id=1,
        arrival=t,
        departure=t + timedelta(seconds=dwell_s),
        arrival_soc=0.3,
        capacity_kwh=60.0,
        energy_kwh=20.0,
        max_charge_kw=11.0,
        id_token="TOK-1",
        announced_departure=t + timedelta(seconds=dwell_s),
        iso15118=True,
    )
    base.update(kw)
    return Arrival(**base)


async def started(station: Station, arrivals: list[Arrival] | None = None) -> asyncio.Task[None]:
    task = asyncio.create_task(station.run(arrivals or []))
    await asyncio.wait_for(station.connected.wait(), WAIT_S)
    return task


async def finish(station: Station, task: asyncio.Task[None]) -> None:
    await station.stop()
    await asyncio.wait_for(task, WAIT_S)


def tx_events(csms: LoopbackCsms) -> list[dict[str, Any]]:
    return [r.payload for r in csms.calls("TransactionEvent")]


async def test_boot_status_and_heartbeat(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    task = await started(st)
    boots = csms.calls("BootNotification")
    assert len(boots) == 1 and boots[0].payload["reason"] == "PowerUp"
    await csms.wait_for(lambda: len(csms.calls("StatusNotification")) >= 1)
    assert csms.calls("StatusNotification")[0].payload["connectorStatus"] == "Available"
    # The interval came from the boot reply (120 s simulated, a fraction of a real second).
    await csms.wait_for(lambda: len(csms.calls("Heartbeat")) >= 2)
    assert st.heartbeat_interval_s == 120
    await finish(st, task)


async def test_wrong_password_never_boots(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st = Station(spec(), csms.url, password="wrong", clock=clock, config=FAST)
    task = asyncio.create_task(st.run())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(st.booted.wait(), 0.5)
    assert csms.calls("BootNotification") == []
    await finish(st, task)


async def test_full_transaction(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    a = arrival(clock, dwell_s=2.5 * 3600)
    done = asyncio.Event()
    st.on_departure = lambda _s, _r: done.set()
    task = await started(st, [a])
    await asyncio.wait_for(done.wait(), WAIT_S)
    await csms.wait_for(lambda: any(e["eventType"] == "Ended" for e in tx_events(csms)))
    events = tx_events(csms)
    assert [e["seqNo"] for e in events] == list(range(len(events)))
    assert len({e["transactionInfo"]["transactionId"] for e in events}) == 1
    assert events[0]["eventType"] == "Started" and events[0]["triggerReason"] == "CablePluggedIn"
    assert events[1]["triggerReason"] == "Authorized" and events[1]["idToken"]["idToken"] == "TOK-1"
    assert events[-1]["triggerReason"] == "EVDeparted"
    assert events[-1]["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    periodic = [e for e in events if e["triggerReason"] == "MeterValuePeriodic"]
    assert periodic
    measurands = {s["measurand"] for s in periodic[-1]["meterValue"][0]["sampledValue"]}
    assert {
        "Energy.Active.Import.Register",
        "Energy.Active.Export.Register",
        "Power.Active.Import",
        "SoC",
    } <= measurands
    # 20 kWh at 11 kW takes about 2 h: the request is met, the car stops at its own charge
    # limit, and the meter saw it (with the charging losses).
    result = st.results[0]
    assert result.delivered_kwh == pytest.approx(20.0, abs=0.05)
    assert result.fully_served
    assert result.imported_kwh == pytest.approx(20.0 / 0.92, abs=0.1)
    end_import = next(
        s["value"]
        for s in events[-1]["meterValue"][0]["sampledValue"]
        if s["measurand"] == "Energy.Active.Import.Register"
    )
    assert end_import == pytest.approx(result.imported_kwh * 1000, rel=1e-3)
    # ISO 15118 EV: its needs went out with the departure and energy.
    needs = csms.calls("NotifyEVChargingNeeds")
    assert len(needs) == 1
    ac = needs[0].payload["chargingNeeds"]["acChargingParameters"]
    assert ac["energyAmount"] == 20000
    assert needs[0].payload["chargingNeeds"]["departureTime"] == to_rfc3339(a.announced_departure or a.departure)
    assert not any(e.get("offline") for e in events)
    await finish(st, task)


async def test_ev_without_15118_sends_no_needs(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    task = await started(st, [arrival(clock, iso15118=False, announced_departure=None, dwell_s=1800)])
    await csms.wait_for(lambda: any(e["eventType"] == "Ended" for e in tx_events(csms)))
    assert csms.calls("NotifyEVChargingNeeds") == []
    assert tx_events(csms)[1]["idToken"]["type"] == "ISO14443"
    await finish(st, task)


def profile(limit_w: float, *, tx: str, start: datetime, pid: int = 1) -> dict[str, Any]:
    return {
        "id": pid,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "transactionId": tx,
        "chargingSchedule": [
            {
                "id": pid,
                "startSchedule": to_rfc3339(start),
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit_w}],
            }
        ],
    }


async def plugged(csms: LoopbackCsms, clock: ScaledClock, bidirectional: bool, **kw: Any) -> tuple[Station, Any, str]:
    st = Station(spec(bidirectional=bidirectional), csms.url, password="pw-1", clock=clock, config=FAST)
    a = arrival(clock, dwell_s=10 * 3600, bidirectional=True, max_discharge_kw=7.0, **kw)
    task = await started(st, [a])
    await csms.wait_for(lambda: any(e["triggerReason"] == "Authorized" for e in tx_events(csms)))
    await asyncio.wait_for(_until(lambda: st.evses[1].power_kw > 0), WAIT_S)
    return st, task, tx_events(csms)[0]["transactionInfo"]["transactionId"]


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.01)


async def test_profile_is_applied_and_reported(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st, task, tx = await plugged(csms, clock, bidirectional=True)
    reply = await csms.call(
        "CS-1",
        "SetChargingProfile",
        {"evseId": 1, "chargingProfile": profile(4000, tx=tx, start=clock.now())},
    )
    assert reply[2]["status"] == "Accepted"
    assert st.evses[1].power_kw == pytest.approx(4.0)
    assert st.evses[1].limit_kw == pytest.approx(4.0)
    comp = await csms.call("CS-1", "GetCompositeSchedule", {"duration": 3600, "evseId": 1, "chargingRateUnit": "W"})
    assert comp[2]["status"] == "Accepted"
    assert comp[2]["schedule"]["chargingSchedulePeriod"][0]["limit"] == 4000
    got = await csms.call(
        "CS-1",
        "GetChargingProfiles",
        {"requestId": 7, "chargingProfile": {"chargingProfilePurpose": "TxProfile"}},
    )
    assert got[2]["status"] == "Accepted"
    await csms.wait_for(lambda: bool(csms.calls("ReportChargingProfiles")))
    rep = csms.calls("ReportChargingProfiles")[0].payload
    assert rep["requestId"] == 7 and rep["chargingProfile"][0]["id"] == 1
    # The rate change was reported as a transaction event.
    cleared = await csms.call("CS-1", "ClearChargingProfile", {"chargingProfileId": 1})
    assert cleared[2]["status"] == "Accepted"
    assert st.evses[1].power_kw == pytest.approx(11.0)
    await finish(st, task)


async def test_a_period_starting_inside_the_physics_sleep_is_applied_at_its_start(
        csms: LoopbackCsms, clock: ScaledClock) -> None:
    """The physics loop sleeps until its next tick or the next boundary of the profiles it had:
    a profile set meanwhile, with a period starting before that tick, was applied a tick late (up
    to 150 simulated s at the demo's scale, past the gateway's own rise delay). Here the tick is
    ten simulated hours away, and so is the next meter reading (which also applies them)."""
    from dataclasses import replace

    from simulators.station import Station

    st = Station(spec(), csms.url, password="pw-1", clock=clock,
                 config=replace(FAST, physics_step_sim_s=36_000.0, meter_interval_sim_s=36_000.0))
    task = await started(st, [arrival(clock, dwell_s=20 * 3600)])
    await asyncio.wait_for(_until(lambda: st.evses[1].power_kw > 0), WAIT_S)
    tx = st.evses[1].session.transaction.id  # type: ignore[union-attr]
    now = clock.now()
    prof = profile(11000, tx=tx, start=now - timedelta(seconds=60))
    prof["chargingSchedule"][0]["chargingSchedulePeriod"] = [{"startPeriod": 0, "limit": 11000},
                                                             {"startPeriod": 240, "limit": 2000}]
    reply = await csms.call("CS-1", "SetChargingProfile", {"evseId": 1, "chargingProfile": prof})
    assert reply[2]["status"] == "Accepted"
    await asyncio.wait_for(_until(lambda: st.evses[1].power_kw == pytest.approx(2.0)), WAIT_S)
    due = now + timedelta(seconds=180)
    assert st._last_update is not None and (st._last_update - due).total_seconds() < 600  # not ten hours
    await finish(st, task)


async def test_negative_limit_discharges_a_bidirectional_evse(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st, task, tx = await plugged(csms, clock, bidirectional=True)
    reply = await csms.call(
        "CS-1",
        "SetChargingProfile",
        {"evseId": 1, "chargingProfile": profile(-5000, tx=tx, start=clock.now())},
    )
    assert reply[2]["status"] == "Accepted"
    assert st.evses[1].power_kw == pytest.approx(-5.0)
    soc0 = st.evses[1].session.battery.soc  # type: ignore[union-attr]
    await asyncio.wait_for(_until(lambda: st.evses[1].export_wh > 1000), WAIT_S)
    assert st.evses[1].session.battery.soc < soc0  # type: ignore[union-attr]
    await finish(st, task)


async def test_a_v2g_ev_without_iso15118_stops_instead_of_discharging(csms: LoopbackCsms, clock: ScaledClock) -> None:
    """V2G needs ISO 15118: basic signalling cannot ask an EV for energy back, so on a negative
    limit a bidirectional EVSE holds a plain EV at zero."""
    st, task, tx = await plugged(csms, clock, bidirectional=True, iso15118=False, announced_departure=None)
    reply = await csms.call(
        "CS-1",
        "SetChargingProfile",
        {"evseId": 1, "chargingProfile": profile(-5000, tx=tx, start=clock.now())},
    )
    assert reply[2]["status"] == "Accepted"
    assert st.evses[1].power_kw == 0.0
    assert st.evses[1].export_wh == 0.0
    await finish(st, task)


async def test_unidirectional_evse_rejects_a_discharge_profile(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st, task, tx = await plugged(csms, clock, bidirectional=False)
    reply = await csms.call(
        "CS-1",
        "SetChargingProfile",
        {"evseId": 1, "chargingProfile": profile(-5000, tx=tx, start=clock.now())},
    )
    assert reply[2]["status"] == "Rejected"
    assert reply[2]["statusInfo"]["reasonCode"] == "NoDischarge"
    assert st.evses[1].power_kw == pytest.approx(11.0)
    await finish(st, task)


async def test_drop_queues_offline_and_replays_without_new_boot(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st, task, _tx = await plugged(csms, clock, bidirectional=True)
    before = len(tx_events(csms))
    st.drop_link(offline_for_s=1800)  # 30 simulated minutes (1 real second) away
    await asyncio.wait_for(_until(lambda: not st.connected.is_set()), WAIT_S)
    await asyncio.wait_for(_until(lambda: st.outbox_len >= 3), WAIT_S)  # periodic samples pile up
    await asyncio.wait_for(st.connected.wait(), WAIT_S)
    await csms.wait_for(lambda: sum(1 for e in tx_events(csms)[before:] if e.get("offline")) >= 3)
    replayed = tx_events(csms)[before:]
    seqs = [e["seqNo"] for e in tx_events(csms)]
    assert seqs == sorted(seqs)  # in order, nothing lost
    assert any(e.get("offline") for e in replayed)
    assert len(csms.calls("BootNotification")) == 1
    assert st.connections == 2
    await finish(st, task)


async def test_unanswered_transaction_event_is_retried_with_new_message_ids(
    csms: LoopbackCsms, clock: ScaledClock
) -> None:
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    task = await started(st)
    csms.silence["TransactionEvent"] = 2
    st.plug_in(arrival(clock, after_s=0))
    await csms.wait_for(lambda: len([e for e in tx_events(csms) if e["eventType"] == "Started"]) >= 3)
    starts = [r for r in csms.calls("TransactionEvent") if r.payload["eventType"] == "Started"]
    assert len({r.message_id for r in starts}) == 3  # three attempts, three message ids
    assert len({r.payload["seqNo"] for r in starts}) == 1  # of the same message
    await csms.wait_for(lambda: any(e["triggerReason"] == "Authorized" for e in tx_events(csms)))
    await finish(st, task)


async def test_unanswered_charging_needs_are_asked_again(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    task = await started(st)
    csms.silence["NotifyEVChargingNeeds"] = 1
    st.plug_in(arrival(clock, after_s=0))
    await csms.wait_for(lambda: len(csms.calls("NotifyEVChargingNeeds")) >= 2)
    first, second = csms.calls("NotifyEVChargingNeeds")[:2]
    assert first.message_id != second.message_id
    assert first.payload == second.payload  # the same need, asked again after the timeout
    await finish(st, task)


async def test_after_three_failed_attempts_the_message_stays_queued(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    task = await started(st)
    csms.silence["TransactionEvent"] = 3
    st.plug_in(arrival(clock, after_s=0))
    await csms.wait_for(lambda: len(csms.calls("TransactionEvent")) >= 3)
    assert st.outbox_len >= 1  # not dropped after its three attempts
    # After the park interval it is tried again, answered, and the rest follows.
    await csms.wait_for(lambda: any(e["triggerReason"] == "Authorized" for e in tx_events(csms)))
    assert len([e for e in tx_events(csms) if e["eventType"] == "Started"]) == 4
    await finish(st, task)


async def test_misbehaviour_callerror_ignore_profile_and_malformed_frame(
    csms: LoopbackCsms, clock: ScaledClock
) -> None:
    faults = Faults(callerror_actions={"GetCompositeSchedule"}, ignore_profiles=True)
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST, faults=faults)
    a = arrival(clock, after_s=0, dwell_s=10 * 3600)
    task = await started(st, [a])
    await csms.wait_for(lambda: any(e["triggerReason"] == "Authorized" for e in tx_events(csms)))
    tx = tx_events(csms)[0]["transactionInfo"]["transactionId"]
    err = await csms.call("CS-1", "GetCompositeSchedule", {"duration": 60, "evseId": 1})
    assert err[0] == 4 and err[2] == "InternalError"
    ok = await csms.call(
        "CS-1",
        "SetChargingProfile",
        {"evseId": 1, "chargingProfile": profile(2000, tx=tx, start=clock.now())},
    )
    assert ok[2]["status"] == "Accepted"
    await asyncio.wait_for(_until(lambda: st.evses[1].power_kw > 0), WAIT_S)
    assert st.evses[1].power_kw == pytest.approx(11.0)  # ignored
    beats = len(csms.calls("Heartbeat"))
    await st.send_malformed()
    await csms.wait_for(lambda: len(csms.calls("Heartbeat")) > beats)  # the link survived
    assert st.connections == 1
    await finish(st, task)


async def test_refused_token_stops_energy(csms: LoopbackCsms, clock: ScaledClock) -> None:
    csms.token_status["BLOCKED"] = "Blocked"
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    task = await started(st)
    st.plug_in(arrival(clock, after_s=0, id_token="BLOCKED"))
    await csms.wait_for(lambda: any(e["triggerReason"] == "Authorized" for e in tx_events(csms)))
    await csms.wait_for(lambda: st.evses[1].session is not None and st.evses[1].session.authorized is False)
    st.update()
    assert st.evses[1].power_kw == 0.0
    await finish(st, task)


async def test_need_change_renegotiates_for_15118_and_calls_the_driver_app_otherwise(
    csms: LoopbackCsms, clock: ScaledClock
) -> None:
    from gateway.episode import NeedChange

    calls: list[tuple[str, int, str, dict[str, Any]]] = []
    called = asyncio.Event()

    async def app(sid: str, evse_id: int, tx: str, prefs: dict[str, Any]) -> None:
        calls.append((sid, evse_id, tx, prefs))
        if len(calls) == 2:
            called.set()

    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST, driver_app=app)
    task = await started(st)
    t = clock.now()
    iso = arrival(clock, after_s=0, dwell_s=5 * 3600, need_change=NeedChange(t + timedelta(hours=1), 30.0))
    st.plug_in(iso)
    await csms.wait_for(lambda: len(csms.calls("NotifyEVChargingNeeds")) == 1)
    # At plug-in the EV asks for its first request (20 kWh); the change comes at its own time.
    first = csms.calls("NotifyEVChargingNeeds")[0].payload["chargingNeeds"]["acChargingParameters"]
    assert first["energyAmount"] == 20000
    st.change_needs(iso)
    await csms.wait_for(lambda: len(csms.calls("NotifyEVChargingNeeds")) == 2)
    # The renegotiation asks for what is still missing of the new 30 kWh.
    assert (
        0
        < csms.calls("NotifyEVChargingNeeds")[1].payload["chargingNeeds"]["acChargingParameters"]["energyAmount"]
        <= 30000
    )
    assert st.evses[1].session is not None and st.evses[1].session.requested_kwh == 30.0
    st.unplug(1)
    plain = arrival(clock, after_s=0, iso15118=False, need_change=NeedChange(t + timedelta(hours=1), 12.0))
    st.plug_in(plain)
    st.change_needs(plain)
    # (the driver app's first call carries the first request, its second the new one)
    await asyncio.wait_for(called.wait(), WAIT_S)
    assert len(csms.calls("NotifyEVChargingNeeds")) == 2  # nothing more from the plain car
    tx = st.evses[1].session.transaction.id  # type: ignore[union-attr]
    assert calls[0][:3] == ("CS-1", 1, tx) and calls[0][3]["departure_time"] == to_rfc3339(plain.departure)
    assert calls[0][3]["energy_kwh"] == 20.0 and calls[1][3]["energy_kwh"] == 12.0
    await finish(st, task)


async def test_rate_change_is_reported_as_a_transaction_event(csms: LoopbackCsms, clock: ScaledClock) -> None:
    st, task, tx = await plugged(csms, clock, bidirectional=True)
    await csms.call(
        "CS-1", "SetChargingProfile", {"evseId": 1, "chargingProfile": profile(2500, tx=tx, start=clock.now())}
    )
    await csms.wait_for(lambda: any(e["triggerReason"] == "ChargingRateChanged" for e in tx_events(csms)))
    ev = next(e for e in tx_events(csms) if e["triggerReason"] == "ChargingRateChanged")
    power = next(s["value"] for s in ev["meterValue"][0]["sampledValue"] if s["measurand"] == "Power.Active.Import")
    assert power == 2500
    await finish(st, task)


async def test_a_limit_that_moves_nothing_is_not_reported_and_a_state_change_is_one_event(
    csms: LoopbackCsms, clock: ScaledClock
) -> None:
    st, task, tx = await plugged(csms, clock, bidirectional=True)
    before = len(tx_events(csms))

    async def limit(w: float) -> None:
        body = {"evseId": 1, "chargingProfile": profile(w, tx=tx, start=clock.now())}
        await csms.call("CS-1", "SetChargingProfile", body)

    # Above what the 11 kW car takes: the charging rate does not change, so nothing is sent.
    await limit(22000)
    assert st.evses[1].power_kw == pytest.approx(11.0)
    # Zero: the state changes (SuspendedEVSE) and the power with it, in one event with the meter value.
    await limit(0)
    await csms.wait_for(lambda: any(e["triggerReason"] == "ChargingStateChanged" for e in tx_events(csms)[before:]))
    moved = [e for e in tx_events(csms)[before:] if e["triggerReason"] != "MeterValuePeriodic"]
    assert [e["triggerReason"] for e in moved] == ["ChargingStateChanged"]
    assert moved[0]["transactionInfo"]["chargingState"] == "SuspendedEVSE"
    sampled = moved[0]["meterValue"][0]["sampledValue"]
    assert next(s["value"] for s in sampled if s["measurand"] == "Power.Active.Import") == 0
    await finish(st, task)


def test_the_meter_counts_to_now_between_physics_ticks(clock: ScaledClock) -> None:
    """The registers move at each physics tick; what the meters counted by a moment between two
    ticks is the registers plus what flowed since the last one (the physics integrated to it)."""
    from gateway.clock import ManualClock

    t0 = clock.now()
    st = Station(spec(), "ws://127.0.0.1:9/ocpp", password="pw-1", clock=ManualClock(t0), config=FAST)
    evse = st.evses[1]
    st._last_update = t0
    st.plug_in(Arrival(id="EV-1", station_id="CS-1", evse_id=1, arrival=t0, departure=t0 + timedelta(hours=4),
                       arrival_soc=0.2, capacity_kwh=60.0, energy_kwh=30.0, max_charge_kw=11.0, id_token="T"))
    evse.import_wh, evse.export_wh = 5_000.0, 1_000.0
    assert evse.power_kw == pytest.approx(11.0)
    assert st.metered_net_kwh() == pytest.approx(4.0)
    assert st.metered_net_kwh(t0 - timedelta(seconds=5)) == pytest.approx(4.0)  # never before the tick
    assert st.metered_net_kwh(t0 + timedelta(seconds=90)) == pytest.approx(4.0 + 11.0 * 90 / 3600)


def test_the_meter_never_counts_energy_an_ev_did_not_take() -> None:
    """Read between two physics ticks, the meter carried the last setpoint forward: an EV that
    filled up 30 s after plug-in read 0.18 kWh, then 0.37, and the tick took it back to 0.09."""
    from gateway.clock import ManualClock

    t0 = datetime(2026, 7, 1, 8, tzinfo=UTC)
    st = Station(spec(bidirectional=False), "ws://127.0.0.1:9/ocpp", clock=ManualClock(t0))
    st._last_update = t0
    st.plug_in(Arrival(id="EV-1", station_id="CS-1", evse_id=1, arrival=t0, departure=t0 + timedelta(hours=4),
                       arrival_soc=0.5, capacity_kwh=60.0, energy_kwh=0.085, max_charge_kw=11.0, id_token="T"))
    readings = [st.metered_net_kwh(t0 + timedelta(seconds=s)) for s in (60, 120, 150)]
    assert readings[0] == pytest.approx(readings[1]) == pytest.approx(readings[2])
    assert readings[2] == pytest.approx(st.evses[1].import_wh / 1000.0)
    assert readings[2] < 0.1


async def test_stop_during_the_handshake_makes_run_return(clock: ScaledClock) -> None:
    """stop() while connect() was in progress had no link to close: the connection completed
    afterwards was served and run() never returned."""
    entered, release = asyncio.Event(), asyncio.Event()

    class SlowHandshake(LoopbackCsms):
        async def _check(self, conn: Any, request: Any) -> Any:  # type: ignore[override]
            entered.set()
            await release.wait()
            return None

    c = SlowHandshake(clock, heartbeat_interval_s=120)
    await c.start()
    try:
        st = Station(spec(), c.url, clock=clock, config=FAST)
        task = asyncio.create_task(st.run([]))
        await asyncio.wait_for(entered.wait(), WAIT_S)
        await st.stop()
        release.set()  # the handshake may complete now: the station must not take it up
        await asyncio.wait_for(task, WAIT_S)
        assert st.connections == 0 and not st.connected.is_set()
    finally:
        release.set()
        await c.stop()


async def test_a_failed_sender_takes_the_heartbeat_loop_down_with_the_link(clock: ScaledClock) -> None:
    """gather() left the heartbeat loop running on a dead link (and past run()) when the sender
    raised (a send on a closed link raises ConnectionClosed)."""
    from websockets.exceptions import ConnectionClosedError

    # A day between heartbeats: the first is due 12-36 simulated hours (24-72 real s) after
    # connecting, so a heartbeat loop left behind is still waiting when the link is back.
    c = LoopbackCsms(clock, password="pw-1", heartbeat_interval_s=86_400)
    await c.start()
    try:
        st = Station(spec(), c.url, password="pw-1", clock=clock, config=FAST)
        heartbeats: list[asyncio.Task[Any]] = []
        real_heartbeat, real_sender = st._heartbeat_loop, st._sender_loop

        async def heartbeat(link: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            heartbeats.append(task)
            await real_heartbeat(link)

        async def sender(link: Any) -> None:
            if st.connections == 1:
                raise ConnectionClosedError(None, None)
            await real_sender(link)

        st._heartbeat_loop = heartbeat  # type: ignore[method-assign]
        st._sender_loop = sender  # type: ignore[method-assign]
        task = asyncio.create_task(st.run([]))
        await asyncio.wait_for(_until(lambda: st.connections >= 2 and len(heartbeats) >= 2), WAIT_S)
        assert heartbeats[0].done()  # the first link's loop ended with it
        await finish(st, task)
        assert all(t.done() for t in heartbeats)
    finally:
        await c.stop()


async def test_a_token_refused_after_offline_authorization_is_deauthorized_first(
    csms: LoopbackCsms, clock: ScaledClock
) -> None:
    """The Deauthorized event comes before any state change, with chargingState SuspendedEVSE
    (the EVSE holds the energy off); the CSMS never sees EVConnected ahead of the reason."""
    csms.token_status["BLOCKED"] = "Blocked"
    st = Station(spec(), csms.url, password="pw-1", clock=clock, config=FAST)
    task = await started(st)
    st.drop_link(offline_for_s=600)
    await asyncio.wait_for(_until(lambda: not st.connected.is_set()), WAIT_S)
    st.plug_in(arrival(clock, after_s=0, id_token="BLOCKED", iso15118=False, announced_departure=None))
    assert st.evses[1].power_kw > 0  # authorized offline
    await csms.wait_for(lambda: any(e["triggerReason"] == "Deauthorized" for e in tx_events(csms)))
    events = tx_events(csms)
    i = next(i for i, e in enumerate(events) if e["triggerReason"] == "Deauthorized")
    assert events[i]["transactionInfo"]["chargingState"] == "SuspendedEVSE"
    assert "EVConnected" not in [e["transactionInfo"]["chargingState"] for e in events[2:i]]
    assert st.evses[1].power_kw == 0.0
    imported = st.evses[1].import_wh
    # Later events keep the suspension (no ChargingStateChanged to EVConnected) and no energy flows.
    await csms.wait_for(lambda: len(tx_events(csms)) >= i + 3)
    later = tx_events(csms)[i + 1:]
    assert {e["transactionInfo"]["chargingState"] for e in later} == {"SuspendedEVSE"}
    assert "ChargingStateChanged" not in [e["triggerReason"] for e in later]
    st.update()
    assert st.evses[1].import_wh == imported and st.evses[1].power_kw == 0.0
    assert st.evses[1].session is not None  # the transaction goes on until the EV leaves
    await finish(st, task)


async def test_meter_values_sampled_for_an_event_have_the_trigger_context(
    csms: LoopbackCsms, clock: ScaledClock
) -> None:
    st, task, tx = await plugged(csms, clock, bidirectional=True)
    await csms.call(
        "CS-1", "SetChargingProfile", {"evseId": 1, "chargingProfile": profile(2500, tx=tx, start=clock.now())}
    )
    triggers = ("ChargingStateChanged", "ChargingRateChanged", "MeterValuePeriodic")
    await csms.wait_for(lambda: set(triggers) <= {e["triggerReason"] for e in tx_events(csms)})
    for e in tx_events(csms):
        if e["triggerReason"] not in triggers:
            continue
        contexts = {s["context"] for s in e["meterValue"][0]["sampledValue"]}
        assert contexts == ({"Sample.Periodic"} if e["triggerReason"] == "MeterValuePeriodic" else {"Trigger"})
    await finish(st, task)
