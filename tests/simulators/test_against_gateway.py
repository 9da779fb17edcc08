"""The simulator against the real gateway over WebSockets and Postgres.

Boot, a full transaction, a profile applied and obeyed, discharge on a bidirectional EVSE, a drop
with offline replay, and the fleet runner end to end. Waits are on events with generous timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gateway.clock import ScaledClock, to_rfc3339
from gateway.domain import EvseSpec, SiteLimits, Tariff
from gateway.episode import Arrival, Episode, StationSpec
from simulators.fleet import Fleet
from simulators.station import Station, StationConfig

WAIT_S = 30.0
PASSWORD = "sim-secret-1"
CONFIG = StationConfig(
    call_timeout_real_s=5.0,
    retry_backoff_wait_minimum_real_s=0.05,
    retry_backoff_random_range_real_s=0.05,
    transaction_retry_interval_real_s=0.1,
    aligned_interval_sim_s=0,
)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def db_rows(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_plain(url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def eventually(check: Callable[[], Awaitable[bool]], wait_s: float = WAIT_S) -> None:
    """Poll a database condition (the database has no event to wait on) until true or timeout."""

    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0.1)

    await asyncio.wait_for(loop(), wait_s)


async def until(pred: Callable[[], bool], wait_s: float = WAIT_S) -> None:
    async def loop() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), wait_s)


def spec(sid: str, bidirectional: bool) -> StationSpec:
    return StationSpec(sid, (EvseSpec(sid, 1, 11.0, 11.0 if bidirectional else 0.0, bidirectional),))


def ev(sid: str, at: datetime, *, dwell_s: float, ev_id: str = "EV-1", **kw: Any) -> Arrival:
    base: dict[str, Any] = dict(
        id=ev_id,
        station_id=sid,
        evse_id=1,
        arrival=at,
        departure=at + timedelta(seconds=dwell_s),
        arrival_soc=0.3,
        capacity_kwh=60.0,
        energy_kwh=15.0,
        max_charge_kw=11.0,
        id_token=f"TOK-{ev_id}",
        announced_departure=at + timedelta(seconds=dwell_s),
        iso15118=True,
        bidirectional=True,
        max_discharge_kw=7.0,
        reserve_soc=0.2,
    )
    base.update(kw)
    return Arrival(**base)


async def run_station(st: Station) -> asyncio.Task[None]:
    task = asyncio.create_task(st.run())
    await asyncio.wait_for(st.connected.wait(), WAIT_S)
    return task


async def stop_station(st: Station, task: asyncio.Task[None]) -> None:
    await asyncio.wait_for(st.drained.wait(), WAIT_S)
    await st.stop()
    await asyncio.wait_for(task, WAIT_S)


def tx_profile(tx: str, limit_w: float, start: datetime) -> dict[str, Any]:
    return {
        "id": 501,
        "stackLevel": 2,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute",
        "transactionId": tx,
        "chargingSchedule": [
            {
                "id": 501,
                "startSchedule": to_rfc3339(start),
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit_w}],
            }
        ],
    }


async def test_boot_and_full_transaction_reach_postgres(gateway_server: Any) -> None:
    """Against the gateway on its own (real-time) clock: the station adopts the gateway's time at
    boot and runs its battery on a fast clock of its own."""
    await gateway_server.add_station("SIM-1", PASSWORD, evses=[(1, 11.0, 11.0, True)])
    clock = ScaledClock(datetime(2026, 7, 1, 8, tzinfo=UTC), 3600.0)
    st = Station(spec("SIM-1", True), gateway_server.ocpp_url, password=PASSWORD, clock=clock, config=CONFIG)
    departed = asyncio.Event()
    st.on_departure = lambda _s, _r: departed.set()
    task = await run_station(st)
    assert st.boot_status == "Accepted"
    # Boot set the station's clock to the gateway's (within a fraction of a simulated minute).
    gw_now = gateway_server.gw.clock.now()
    assert abs((st.clock.now() - gw_now).total_seconds()) < 0.2 * 3600
    st.plug_in(ev("SIM-1", st.clock.now(), dwell_s=2.5 * 3600))
    await asyncio.wait_for(until(lambda: st.evses[1].power_kw > 0), WAIT_S)
    await asyncio.wait_for(_unplug_at(st, 2.5 * 3600), WAIT_S)
    await asyncio.wait_for(departed.wait(), WAIT_S)
    result = st.results[0]
    assert result.fully_served
    db = gateway_server.database_url

    async def ended() -> bool:
        rows = await db_rows(db, "SELECT ended_at, energy_in_kwh FROM transactions WHERE station_id='SIM-1'")
        return bool(rows) and rows[0]["ended_at"] is not None

    await eventually(ended)
    events = await db_rows(
        db,
        "SELECT seq_no, event_type, offline FROM transaction_events WHERE station_id='SIM-1' ORDER BY seq_no",
    )
    assert [e["seq_no"] for e in events] == list(range(len(events)))
    assert events[0]["event_type"] == "Started" and events[-1]["event_type"] == "Ended"
    assert not any(e["offline"] for e in events)
    tx = (await db_rows(db, "SELECT energy_in_kwh FROM transactions WHERE station_id='SIM-1'"))[0]
    assert tx["energy_in_kwh"] == pytest.approx(result.imported_kwh, rel=0.02)
    needs = await db_rows(db, "SELECT energy_kwh FROM ev_needs WHERE station_id='SIM-1'")
    assert needs and needs[0]["energy_kwh"] == pytest.approx(15.0)
    await stop_station(st, task)
    # The station's own count of what it sent (benches check the CSMS against it): every event
    # queued was answered, and the gateway stored each once.
    assert st.tx_queued == st.tx_acked == len(events) and st.tx_dropped == 0


async def _unplug_at(st: Station, after_s: float) -> None:
    s = st.evses[1].session
    assert s is not None
    await st.clock.sleep_until(s.transaction.started + timedelta(seconds=after_s))
    st.unplug(1)


@pytest.fixture
def clock() -> ScaledClock:
    return ScaledClock(datetime(2026, 7, 1, 8, tzinfo=UTC), 600.0)


async def _plugged(h: Any, clock: ScaledClock, sid: str, bidirectional: bool) -> tuple[Station, Any, str]:
    await h.add_station(sid, PASSWORD, evses=[(1, 11.0, 11.0 if bidirectional else 0.0, bidirectional)])
    st = Station(spec(sid, bidirectional), h.ocpp_url, password=PASSWORD, clock=clock, config=CONFIG)
    task = await run_station(st)
    st.plug_in(ev(sid, clock.now(), dwell_s=10 * 3600))
    await until(lambda: st.evses[1].power_kw > 0)  # authorized by the gateway
    s = st.evses[1].session
    assert s is not None
    return st, task, s.transaction.id


async def test_profile_is_applied_and_obeyed(gateway_factory: Any, clock: ScaledClock) -> None:
    h = await gateway_factory(clock=clock)
    st, task, tx = await _plugged(h, clock, "SIM-P", bidirectional=False)
    assert st.evses[1].power_kw == pytest.approx(11.0)
    reply = await h.commands.set_charging_profile("SIM-P", 1, tx_profile(tx, 3000, clock.now()))
    assert reply["status"] == "Accepted"
    assert st.evses[1].limit_kw == pytest.approx(3.0)
    assert st.evses[1].power_kw == pytest.approx(3.0)

    async def reported() -> bool:
        rows = await db_rows(h.database_url, "SELECT last_power_kw FROM transactions WHERE transaction_id=$1", tx)
        return bool(rows) and rows[0]["last_power_kw"] is not None and abs(rows[0]["last_power_kw"] - 3.0) < 0.01

    await eventually(reported)
    # A unidirectional EVSE refuses to discharge.
    refused = await h.commands.set_charging_profile("SIM-P", 1, tx_profile(tx, -4000, clock.now()))
    assert refused["status"] == "Rejected"
    assert st.evses[1].power_kw == pytest.approx(3.0)
    await stop_station(st, task)


async def test_negative_limit_discharges_a_bidirectional_evse(gateway_factory: Any, clock: ScaledClock) -> None:
    h = await gateway_factory(clock=clock)
    st, task, tx = await _plugged(h, clock, "SIM-D", bidirectional=True)
    reply = await h.commands.set_charging_profile("SIM-D", 1, tx_profile(tx, -6000, clock.now()))
    assert reply["status"] == "Accepted"
    # The EVSE follows the new limit; wait for it rather than assume it happened with the answer.
    await until(lambda: abs(st.evses[1].power_kw + 6.0) < 1e-6)

    async def exported() -> bool:
        rows = await db_rows(h.database_url, "SELECT energy_out_kwh FROM transactions WHERE transaction_id=$1", tx)
        return bool(rows) and rows[0]["energy_out_kwh"] > 0.5

    await eventually(exported)
    assert st.evses[1].export_wh > 500
    await stop_station(st, task)


async def test_drop_and_offline_replay(gateway_factory: Any, clock: ScaledClock) -> None:
    h = await gateway_factory(clock=clock)
    st, task, tx = await _plugged(h, clock, "SIM-O", bidirectional=True)
    st.drop_link(offline_for_s=1800)  # 30 simulated minutes = 3 real seconds offline
    await until(lambda: not st.connected.is_set())
    await until(lambda: st.outbox_len >= 3)  # periodic meter values are queued while offline
    await asyncio.wait_for(st.connected.wait(), WAIT_S)
    assert st.connections == 2

    async def replayed() -> bool:
        rows = await db_rows(
            h.database_url,
            "SELECT count(*) AS n FROM transaction_events WHERE transaction_id=$1 AND offline",
            tx,
        )
        return bool(rows[0]["n"] >= 3)

    await eventually(replayed)
    st.unplug(1)
    rows = await db_rows(h.database_url, "SELECT seq_no FROM transaction_events WHERE transaction_id=$1", tx)
    await stop_station(st, task)
    seqs = sorted(r["seq_no"] for r in rows)
    assert seqs == list(range(len(seqs)))  # nothing lost across the drop


async def test_fleet_runs_an_episode_against_the_gateway(gateway_factory: Any) -> None:
    clock = ScaledClock(datetime(2026, 7, 1, 8, tzinfo=UTC), 1800.0)
    h = await gateway_factory(clock=clock)
    stations = (spec("FL-1", True), spec("FL-2", False))
    for s in stations:
        e = s.evses[0]
        await h.add_station(s.id, PASSWORD, evses=[(1, e.max_charge_kw, e.max_discharge_kw, e.bidirectional)])
    t0 = clock.now()  # the episode starts now, after the gateway has come up
    arrivals = (
        ev("FL-1", t0 + timedelta(minutes=5), dwell_s=1.5 * 3600, ev_id="EV-A", energy_kwh=8.0),
        ev(
            "FL-2",
            t0 + timedelta(minutes=10),
            dwell_s=1.5 * 3600,
            ev_id="EV-B",
            iso15118=False,
            announced_departure=None,
            bidirectional=False,
            max_discharge_kw=0.0,
            reserve_soc=0.0,
            energy_kwh=8.0,
        ),
        # Wants 30 kWh in 45 min at 11 kW: cannot be fully served.
        ev("FL-1", t0 + timedelta(hours=1, minutes=45), dwell_s=2700, ev_id="EV-C", energy_kwh=30.0),
    )
    episode = Episode(
        start=t0,
        end=t0 + timedelta(hours=2, minutes=40),
        limits=SiteLimits(30.0, 10.0),
        tariff=Tariff(periods=()),
        stations=stations,
        arrivals=arrivals,
    )
    fleet = Fleet(episode, h.ocpp_url, password=lambda sid: PASSWORD, clock=clock, config=CONFIG)
    run = asyncio.create_task(fleet.run())
    await asyncio.wait_for(fleet.departed["EV-A"].wait(), WAIT_S)
    summary = await asyncio.wait_for(run, WAIT_S)
    evs = {e["id"]: e for e in summary["evs"]}
    assert set(evs) == {"EV-A", "EV-B", "EV-C"}
    assert evs["EV-A"]["fully_served"] and evs["EV-B"]["fully_served"], summary
    assert not evs["EV-C"]["fully_served"]
    assert evs["EV-C"]["energy_delivered_kwh"] < 0.75 * 11.0
    assert evs["EV-C"]["energy_requested_kwh"] > evs["EV-C"]["energy_deliverable_kwh"]  # no policy could
    for e in evs.values():
        assert set(e) >= {
            "id",
            "energy_requested_kwh",
            "energy_delivered_kwh",
            "energy_discharged_kwh",
            "departure_soc",
            "fully_served",
        }
    # Two EVs at 11 kW overlapped: the sampled site import saw both.
    assert summary["site"]["peak_import_kw"] == pytest.approx(22.0, abs=0.5)
    assert summary["site"]["limit_kw"] == 30.0
    assert summary["stations"]["booted"] == 2
    rows = await db_rows(h.database_url, "SELECT count(*) AS n FROM transactions WHERE ended_at IS NOT NULL")
    assert rows[0]["n"] == 3



def _periods(payload: Any) -> int:
    body = json.loads(payload) if isinstance(payload, str) else payload
    return len(body["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"])


async def test_a_station_taking_few_periods_per_schedule_gets_its_plan_cut_to_them(
    gateway_factory: Any, clock: ScaledClock
) -> None:
    """A station that takes one period per schedule (SmartChargingCtrlr.PeriodsPerSchedule)
    refuses the plan's first profile; the gateway reads the variable and sends the plan cut to
    that, instead of leaving the EVSE on a flat safe limit for half an hour."""
    h = await gateway_factory(clock=clock, scheduler_enabled=True, replan_debounce_s=0.05,
                              replan_period_s=3600.0)
    await h.add_station("SIM-PPS", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    config = dataclasses.replace(CONFIG, periods_per_schedule=1)
    st = Station(spec("SIM-PPS", False), h.ocpp_url, password=PASSWORD, clock=clock, config=config)
    task = await run_station(st)
    st.plug_in(ev("SIM-PPS", clock.now(), dwell_s=10 * 3600, energy_kwh=5.0))
    sched = h.gw.scheduler
    assert sched is not None
    sql = "SELECT status, payload FROM profiles_sent WHERE station_id='SIM-PPS' ORDER BY id"

    async def planned_within_the_cap() -> bool:
        # "Accepted" is a plan's profile; the safe limit after a refusal is "fallback:...".
        return any(r["status"] == "Accepted" and _periods(r["payload"]) == 1
                   for r in await db_rows(h.database_url, sql))

    await eventually(planned_within_the_cap)
    rows = await db_rows(h.database_url, sql)
    assert rows[0]["status"] == "Rejected" and _periods(rows[0]["payload"]) > 1
    assert sched._periods_max == {"SIM-PPS": 1}
    assert ("SIM-PPS", 1) not in sched._rejected
    await stop_station(st, task)
