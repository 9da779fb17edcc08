"""The live scheduler loop against a real gateway, real Postgres and real HiGHS solves; the
station side is a raw OCPP-J client that records every SetChargingProfile it is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from gateway import events as ev
from gateway.domain import GridEvent, GridEventKind
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.gateway.test_handlers import PASSWORD, energy, fetch, tx_event, wait_for
from tests.ocpp_client import RawStation


class ProfileSink:
    """Answers every SetChargingProfile with ``status`` and keeps the profiles."""

    def __init__(self, st: RawStation, status: str = "Accepted") -> None:
        self.st = st
        self.status = status
        self.reason: str | None = None  # statusInfo.reasonCode of the answers, if any
        self.profiles: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            call = await self.st.incoming_calls.get()
            if call[2] == "SetChargingProfile":
                self.profiles.append(call[3])
                answer: dict[str, Any] = {"status": self.status}
                if self.reason is not None:
                    answer["statusInfo"] = {"reasonCode": self.reason}
                await self.st.answer(call, answer)
            else:
                await self.st.answer(call, {"status": "Accepted"})

    def first_limits_w(self) -> list[float]:
        return [p["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"]
                for p in self.profiles]


@pytest.fixture
async def site(gateway_factory: Any) -> AsyncIterator[GatewayHarness]:
    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0)
    yield h


async def plug_in(h: GatewayHarness, station_id: str, *, bidi: bool = True, tid: str | None = None,
                  status: str = "Accepted") -> tuple[RawStation, ProfileSink]:
    await h.add_station(station_id, PASSWORD, evses=[(1, 11.0, 11.0 if bidi else 0.0, bidi)])
    st = await RawStation.connect(h.ocpp_url, station_id, PASSWORD)
    sink = ProfileSink(st, status)
    await st.ok("TransactionEvent", tx_event("Started", 0, tid=tid or f"TX-{station_id}",
                                             meterValue=energy(0.0)))
    return st, sink


async def planned_plug_in(h: GatewayHarness, station_id: str, tid: str) -> tuple[RawStation, ProfileSink]:
    """An EV plugged in on a new station, once its first profile has arrived."""
    st, sink = await plug_in(h, station_id, tid=tid)

    async def planned() -> bool:
        return len(sink.profiles) >= 1

    await wait_for(planned)
    return st, sink


async def test_plug_in_gets_a_profile_within_seconds_and_it_is_stored(gateway_factory: Any) -> None:
    from datetime import UTC, datetime

    from gateway.clock import ManualClock

    # A clock that stands still: on the wall clock a 5-minute boundary between the two solves
    # below shifts the plan's grid, and a changed profile would rightly be sent again.
    site = await gateway_factory(clock=ManualClock(datetime(2026, 7, 1, 8, 2, 30, tzinfo=UTC)),
                                 scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0)
    st, sink = await plug_in(site, "CS-A")

    async def got() -> bool:
        return len(sink.profiles) >= 1

    await wait_for(got)
    prof = sink.profiles[0]["chargingProfile"]
    assert prof["transactionId"] == "TX-CS-A" and prof["chargingProfilePurpose"] == "TxProfile"

    async def stored() -> bool:
        return len(await fetch(site.database_url, "SELECT status FROM profiles_sent")) >= 1

    await wait_for(stored)
    plans = await fetch(site.database_url, "SELECT status, fallback, inputs_hash, solve_s FROM plans")
    assert plans and not plans[-1]["fallback"] and len(plans[-1]["inputs_hash"]) == 64
    # Nothing changed: a new solve sends nothing new.
    n = len(sink.profiles)
    outcome = await site.gw.scheduler.replan("test")  # type: ignore[union-attr]
    assert outcome is not None and outcome.profiles_sent == 0
    assert len(sink.profiles) == n
    await st.close()


async def test_site_limit_holds_across_evses(gateway_factory: Any) -> None:
    from gateway.config import SiteConfig

    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0,
                              default_energy_kwh=60.0,
                              site=SiteConfig(import_limit_kw=12.0, export_limit_kw=0.0, demand_charge_per_kw=0.0))
    sinks = [await plug_in(h, f"CS-{i}") for i in range(3)]
    outcome = await h.gw.scheduler.replan("test")  # type: ignore[union-attr]
    assert outcome is not None
    total_first_step = sum(max(s.power_kw[0], 0.0) for s in outcome.plan.sessions)
    assert total_first_step <= 12.0 + 1e-6
    assert max(outcome.result.site_import_kw) <= 12.0 + 1e-6
    for st, _ in sinks:
        await st.close()


async def test_rejected_profile_falls_back_to_a_safe_limit(site: GatewayHarness) -> None:
    st, sink = await plug_in(site, "CS-R", status="Rejected")

    async def two() -> bool:
        return len(sink.profiles) >= 2

    await wait_for(two)
    safe = sink.profiles[1]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"]
    assert safe == [{"startPeriod": 0, "limit": site.settings.safe_limit_kw * 1000.0}]

    async def recorded() -> bool:  # profile records are written after the push, in order
        return len(await fetch(site.database_url, "SELECT status FROM profiles_sent")) >= 2

    await wait_for(recorded)
    rows = await fetch(site.database_url, "SELECT status FROM profiles_sent ORDER BY id")
    assert [r["status"] for r in rows][:2] == ["Rejected", "fallback:Rejected"]
    await st.close()


async def test_the_push_does_not_wait_for_the_plan_to_be_stored(site: GatewayHarness) -> None:
    """A slow database (here: storing the plan held until released) must not hold up the
    profiles; their records carry the plan's id once it is stored."""
    assert site.gw is not None
    planning = site.gw.planning
    store = planning.add_plan
    release = asyncio.Event()
    held = asyncio.Event()

    async def slow_add_plan(**kw: Any) -> Any:
        held.set()
        await release.wait()
        return await store(**kw)

    planning.add_plan = slow_add_plan  # type: ignore[method-assign]
    try:
        st, _ = await planned_plug_in(site, "CS-SLOWDB", "TX-SLOWDB")
        assert held.is_set() and not release.is_set()  # pushed while the plan was still being stored
    finally:
        release.set()

    async def recorded() -> bool:
        rows = await fetch(site.database_url, "SELECT plan_id FROM profiles_sent")
        return len(rows) >= 1 and all(r["plan_id"] is not None for r in rows)

    await wait_for(recorded)
    plan_ids = {r["id"] for r in await fetch(site.database_url, "SELECT id FROM plans")}
    assert {r["plan_id"] for r in await fetch(site.database_url, "SELECT plan_id FROM profiles_sent")} <= plan_ids
    await st.close()


async def test_a_plan_still_being_stored_does_not_hold_up_the_next_re_plan(site: GatewayHarness) -> None:
    """The re-plan lock used to be held until the plan was stored: a database at its pool's
    timeout kept the next re-plan (maybe the one that puts the site back under its limit) waiting
    that long. A plan stored after a later one is not published over it."""
    assert site.gw is not None and site.gw.scheduler is not None
    sched = site.gw.scheduler
    planning = site.gw.planning
    store = planning.add_plan
    release = asyncio.Event()
    calls = 0

    async def first_held(**kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
        return await store(**kw)

    planning.add_plan = first_held  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(sched.replan("test-first"))
        async def storing() -> bool:
            return calls == 1

        await wait_for(storing)
        second = await asyncio.wait_for(sched.replan("test-second"), EVENT_TIMEOUT_S)
        assert second is not None and second.plan_id is not None and not first.done()
        assert sched.latest is second
    finally:
        release.set()
    outcome = await asyncio.wait_for(first, EVENT_TIMEOUT_S)
    assert outcome is not None and outcome.plan_id is not None
    assert sched.latest is second  # the older plan, stored last, is not the latest


async def test_solver_timeout_still_pushes_a_fallback_plan(gateway_factory: Any) -> None:
    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0,
                              solver_time_limit_s=1e-9)
    st, sink = await plug_in(h, "CS-F")

    async def got() -> bool:
        return len(sink.profiles) >= 1

    await wait_for(got)

    async def stored() -> bool:  # a pushed plan is stored after its push, outside the re-plan lock
        return bool(await fetch(h.database_url, "SELECT 1 FROM plans"))

    await wait_for(stored)
    plans = await fetch(h.database_url, "SELECT fallback, status FROM plans ORDER BY id")
    assert plans[-1]["fallback"] is True
    assert sink.first_limits_w()[0] > 0  # the fallback charges, within limits
    await st.close()


async def test_a_solve_that_overruns_is_never_joined_by_a_second_one(gateway_factory: Any) -> None:
    import threading

    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=3600.0, replan_period_s=3600.0,
                              solver_time_limit_s=0.01)
    sched = h.gw.scheduler
    assert sched is not None
    real_solve = sched.planner.solve
    gate = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def held(site_in: Any, slots: Any) -> Any:  # the real solve, held until the gate opens
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            gate.wait(60.0)
            return real_solve(site_in, slots)
        finally:
            with lock:
                running -= 1

    sched.planner.solve = held  # type: ignore[method-assign]
    st, _ = await plug_in(h, "CS-O")
    try:
        first = await sched.replan("test")  # times out after the limit + 5 s: the fallback goes out
        assert first is not None and first.result.fallback
        second = await sched.replan("test")  # the first solve still runs: no second one beside it
        assert second is not None and second.result.status == "fallback: solver busy"
        assert most == 1
        gate.set()
        done = sched._solving
        assert done is not None
        await asyncio.wait_for(asyncio.shield(done), 60.0)
        third = await sched.replan("test")
        assert third is not None and not third.result.fallback
        assert most == 1
    finally:
        gate.set()
        await st.close()


async def test_an_offline_station_is_planned_at_the_limit_it_last_accepted(gateway_factory: Any) -> None:
    from gateway.config import SiteConfig

    # 20 kW for two 11-kW EVSEs. A station that drops off keeps charging on the last profile it
    # accepted: the plan must leave the other only what is left, or the two pass the limit.
    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0,
                              default_energy_kwh=60.0,
                              site=SiteConfig(import_limit_kw=20.0, export_limit_kw=0.0, demand_charge_per_kw=0.0))
    sched = h.gw.scheduler
    assert sched is not None
    await h.add_station("CS-B", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    a, _ = await planned_plug_in(h, "CS-A", "TX-A")
    b = await RawStation.connect(h.ocpp_url, "CS-B", PASSWORD)
    ProfileSink(b)
    await b.ok("TransactionEvent", tx_event("Started", 0, tid="TX-B", meterValue=energy(0.0)))
    before = await sched.replan("test")
    assert before is not None
    now = h.gw.clock.now()
    accepted = sched._sent[("CS-A", 1)]
    await a.close()

    async def gone() -> bool:
        return h.gw.ocpp.registry.get("CS-A") is None

    await wait_for(gone)
    most_kw = sched._uncontrolled(h.gw.clock.now())[("CS-A", 1)].most_kw
    assert most_kw >= (accepted.limit_at(now) or 0.0) / 1000.0
    after = await sched.replan("test")
    assert after is not None
    pa, pb = after.session("CS-A", "TX-A"), after.session("CS-B", "TX-B")
    assert pa is not None and pb is not None
    assert pa.power_kw[0] == pytest.approx(min(most_kw, 11.0), abs=1e-3)  # planned as what it may draw
    assert pb.power_kw[0] + min(most_kw, 11.0) <= 20.0 + 1e-3
    await b.close()


async def test_a_push_left_unanswered_counts_as_maybe_in_force(gateway_factory: Any) -> None:
    """A SetChargingProfile that timed out may have reached the station and been applied: until a
    push is answered the EVSE is planned at the most of its last accepted profile and that one."""
    from gateway.config import SiteConfig

    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0,
                              default_energy_kwh=60.0, call_timeout_s=0.5,
                              site=SiteConfig(import_limit_kw=20.0, export_limit_kw=0.0, demand_charge_per_kw=0.0))
    sched = h.gw.scheduler
    assert sched is not None
    await h.add_station("CS-U", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    u = await RawStation.connect(h.ocpp_url, "CS-U", PASSWORD)  # answers no call of ours
    await u.ok("TransactionEvent", tx_event("Started", 0, tid="TX-U", meterValue=energy(0.0)))
    out = await sched.replan("test")
    assert out is not None and out.profiles_failed >= 1
    maybe = sched._unanswered.get(("CS-U", 1))
    assert maybe is not None and maybe.transaction_id == "TX-U"
    now = h.gw.clock.now()
    attempted_kw = (maybe.limit_at(now) or 0.0) / 1000.0
    assert attempted_kw > sched._default_kw()  # so the check below tells the two apart
    assert sched._uncontrolled(now)[("CS-U", 1)].most_kw >= attempted_kw - 1e-9
    await u.close()


async def test_a_station_that_refuses_its_plan_is_planned_at_its_safe_limit_and_left_alone(
        site: GatewayHarness) -> None:
    from gateway.scheduler.mpc import REJECTED_RETRY

    sched = site.gw.scheduler
    assert sched is not None
    st, sink = await plug_in(site, "CS-Q", status="Rejected")  # the plan refused, the safe limit too
    await wait_for(lambda: _at_least(sink, 2))
    sink.status = "Accepted"  # it would take anything now, but is not asked before REJECTED_RETRY
    rejected_at = sched._rejected[("CS-Q", 1)]
    calls = len(sink.profiles)
    for _ in range(3):  # re-plans inside REJECTED_RETRY send it nothing
        again = await sched.replan("test")
        assert again is not None
    assert len(sink.profiles) == calls
    planned = again.session("CS-Q", "TX-CS-Q")
    assert planned is not None
    assert site.gw.clock.now() - rejected_at < REJECTED_RETRY
    # Planned at what it runs (no accepted profile: its default limit), not at what the LP would like.
    assert planned.power_kw[0] == pytest.approx(sched._default_kw(), abs=1e-3)
    await st.close()


Plugged = tuple[RawStation, ProfileSink]


async def _two_running(gateway_factory: Any, first: str, second: str) -> tuple[
        GatewayHarness, Any, Callable[[str, float], Any], Plugged, Plugged]:
    """Two one-way 11-kW EVSEs on a 20-kW site, planned once, each noted as running a flat profile:
    ``first`` at 11 kW, ``second`` at 9 kW. Returns the gateway, the plan, a maker of flat planned
    sessions, and each station with its sink."""
    from gateway.config import SiteConfig
    from gateway.domain import DischargeDialect, PlannedSession
    from gateway.ocpp import profiles

    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=3600.0, replan_period_s=3600.0,
                              site=SiteConfig(import_limit_kw=20.0, export_limit_kw=0.0, demand_charge_per_kw=0.0))
    sched = h.gw.scheduler
    assert sched is not None
    a = await plug_in(h, first, bidi=False)
    b = await plug_in(h, second, bidi=False)
    outcome = await sched.replan("test")
    assert outcome is not None
    plan, now = outcome.plan, h.gw.clock.now()

    def flat(station: str, kw: float) -> PlannedSession:
        return PlannedSession(station, 1, f"TX-{station}", tuple([kw] * len(plan.starts)))

    for station, kw in ((first, 11.0), (second, 9.0)):
        ps = flat(station, kw)
        sched._note_accepted((station, 1), profiles.build_profile(
            station_id=station, evse_id=1, transaction_id=ps.transaction_id, starts=plan.starts, end=plan.end,
            power_kw=ps.power_kw, max_charge_kw=11.0, max_discharge_kw=0.0, bidirectional=False,
            dialect=DischargeDialect.NONE, stack_level=sched.settings.profile_stack_level,
            max_periods=sched.settings.max_profile_periods), now)
    return h, plan, flat, a, b


async def test_raised_limits_wait_until_the_lowered_ones_have_landed(gateway_factory: Any) -> None:
    from dataclasses import replace

    from gateway.scheduler import live_inputs

    # What the stations run now: 11 kW and 9 kW. The new plan swaps them; the station asked to go
    # down refuses, so the other must not be raised (11 + 11 would pass the 20 kW).
    h, plan, flat, (a, sink_a), (b, sink_b) = await _two_running(gateway_factory, "CS-L1", "CS-L2")
    sched = h.gw.scheduler
    now = h.gw.clock.now()
    _, _, metas = live_inputs.build(h.gw.state, now, h.gw.settings, {})
    sink_a.status = "Rejected"
    seen_b = len(sink_b.profiles)
    sent, failed = await sched._push(now, replace(plan, sessions=(flat("CS-L1", 0.0), flat("CS-L2", 11.0))),
                                     metas, None)
    assert (sent, failed) == (0, 1)
    assert len(sink_b.profiles) == seen_b  # held back until the re-plan counts CS-L1 at its 11 kW
    assert sched._uncontrolled(now)[("CS-L1", 1)].most_kw == pytest.approx(11.0)
    # A transaction that has ended at the station (the EV left before the gateway heard) draws
    # nothing: its refusal holds nobody back.
    sink_a.reason = "TxNotFound"
    sched._rejected.clear()  # the refusal above would keep CS-L1 from being asked for 30 min
    sent, failed = await sched._push(now, replace(plan, sessions=(flat("CS-L1", 0.0), flat("CS-L2", 11.0))),
                                     metas, None)
    assert (sent, failed) == (1, 1)
    assert len(sink_b.profiles) == seen_b + 1
    await a.close()
    await b.close()


async def test_a_station_back_without_a_boot_is_judged_against_the_profile_it_ran(gateway_factory: Any) -> None:
    """A station whose link dropped runs the last profile it accepted: after it reconnects, a limit
    lowered from that one (but still above its default) goes out first, and a rise that needs the
    room waits for it. Once the station says it booted, it runs its default."""
    from dataclasses import replace

    from gateway.scheduler import live_inputs

    h, plan, flat, (a, sink_a), (b, sink_b) = await _two_running(gateway_factory, "CS-R1", "CS-R2")
    sched = h.gw.scheduler
    default_kw = sched._held_default_kw(("CS-R1", 1))
    assert default_kw < 10.5  # so CS-R1's new limit below is a lowering from 11 but a rise from the default
    await a.close()

    async def gone() -> bool:
        return h.gw.ocpp.registry.get("CS-R1") is None

    await wait_for(gone)
    a = await RawStation.connect(h.ocpp_url, "CS-R1", PASSWORD)  # back, no BootNotification
    sink_a.task.cancel()
    sink_a = ProfileSink(a, "Rejected")

    async def back() -> bool:  # the scheduler hears of it as the site state does
        return h.gw.state.evses[("CS-R1", 1)].online

    await wait_for(back)
    _, _, metas = live_inputs.build(h.gw.state, h.gw.clock.now(), h.gw.settings, {})
    seen_b = len(sink_b.profiles)
    swapped = replace(plan, sessions=(flat("CS-R1", default_kw + 0.5), flat("CS-R2", 19.5 - default_kw)))
    sent, failed = await sched._push(h.gw.clock.now(), swapped, metas, None)
    assert [p["evseId"] for p in sink_a.profiles[-2:]] == [1, 1]  # its plan (refused), then a safe limit
    assert (sent, failed) == (0, 1)
    assert len(sink_b.profiles) == seen_b  # 11 + (9.5 - ...) would pass the 20 kW while CS-R1 runs 11
    # A boot: the station restarted and lost what it ran.
    assert ("CS-R1", 1) in sched._sent
    await a.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})

    async def rebooted() -> bool:
        return ("CS-R1", 1) not in sched._sent

    await wait_for(rebooted)
    await a.close()
    await b.close()


async def test_more_export_waits_until_less_export_has_landed(gateway_factory: Any) -> None:
    """A discharge handed from one EVSE to another: the new discharger starts only once the old
    one has stopped; a charger turning into a discharger goes to 0 first and discharges only once
    every change towards zero has landed (profiles.Move)."""
    from dataclasses import replace

    from gateway.config import SiteConfig
    from gateway.domain import DischargeDialect, PlannedSession
    from gateway.ocpp import profiles
    from gateway.scheduler import live_inputs

    h = await gateway_factory(scheduler_enabled=True, replan_debounce_s=3600.0, replan_period_s=3600.0,
                              site=SiteConfig(import_limit_kw=20.0, export_limit_kw=10.0, demand_charge_per_kw=0.0))
    sched = h.gw.scheduler
    assert sched is not None
    stations = {sid: await plug_in(h, sid) for sid in ("CS-D1", "CS-D2", "CS-D3")}
    outcome = await sched.replan("test")
    assert outcome is not None
    plan, now = outcome.plan, h.gw.clock.now()
    _, _, metas = live_inputs.build(h.gw.state, now, h.gw.settings, {})
    sinks = {sid: sink for sid, (_, sink) in stations.items()}

    def flat(station: str, kw: float) -> PlannedSession:
        return PlannedSession(station, 1, f"TX-{station}", tuple([kw] * len(plan.starts)))

    def running(kws: dict[str, float]) -> dict[str, int]:
        sched._rejected.clear()
        for station, kw in kws.items():
            sinks[station].status = "Accepted"
            ps = flat(station, kw)
            sched._note_accepted((station, 1), profiles.build_profile(
                station_id=station, evse_id=1, transaction_id=ps.transaction_id, starts=plan.starts,
                end=plan.end, power_kw=ps.power_kw, max_charge_kw=11.0, max_discharge_kw=11.0,
                bidirectional=True, dialect=DischargeDialect.NEGATIVE_LIMIT,
                stack_level=sched.settings.profile_stack_level,
                max_periods=sched.settings.max_profile_periods), now)
        return {sid: len(sink.profiles) for sid, sink in sinks.items()}

    def first_limits(station: str, since: int) -> list[float]:
        return sinks[station].first_limits_w()[since:]

    # D1 exports 10 kW (the site's whole export limit), D2 charges 5, D3 idles. The new plan hands
    # the export to D2 (a flip) and gives D3 charge. D1 refuses to stop: D2 may go to 0 (less
    # import) but not discharge, and D3 may not start.
    swap = replace(plan, sessions=(flat("CS-D1", 0.0), flat("CS-D2", -10.0), flat("CS-D3", 5.0)))
    seen = running({"CS-D1": -10.0, "CS-D2": 5.0, "CS-D3": 0.0})
    sinks["CS-D1"].status = "Rejected"
    sent, failed = await sched._push(now, swap, metas, None)
    assert (sent, failed) == (1, 1)
    assert first_limits("CS-D2", seen["CS-D2"]) == [0.0]  # held at 0, its discharge held back
    assert first_limits("CS-D3", seen["CS-D3"]) == []

    # D1 stops as asked but D2 refuses to leave its charge: D3 may not add its 5 kW.
    seen = running({"CS-D1": -10.0, "CS-D2": 5.0, "CS-D3": 0.0})
    sinks["CS-D2"].status = "Rejected"
    sent, failed = await sched._push(now, swap, metas, None)
    assert (sent, failed) == (1, 1)
    assert first_limits("CS-D1", seen["CS-D1"]) == [0.0]
    assert first_limits("CS-D3", seen["CS-D3"]) == []

    # All accepted: towards zero first (D1, and D2 at 0), then away from it (D2's discharge, D3).
    seen = running({"CS-D1": -10.0, "CS-D2": 5.0, "CS-D3": 0.0})
    sent, failed = await sched._push(now, swap, metas, None)
    assert (sent, failed) == (4, 0)
    assert first_limits("CS-D2", seen["CS-D2"]) == [0.0, -10000.0]
    assert first_limits("CS-D3", seen["CS-D3"]) == [5000.0]

    # Two flips the opposite way: each goes to 0 before either takes its new direction, so the
    # site never imports (or exports) both at once.
    seen = running({"CS-D1": 7.0, "CS-D2": -7.0, "CS-D3": 0.0})
    crossed = replace(plan, sessions=(flat("CS-D1", -7.0), flat("CS-D2", 7.0), flat("CS-D3", 0.0)))
    sinks["CS-D2"].status = "Rejected"  # D2 cannot be stopped: D1 must not start exporting
    sent, failed = await sched._push(now, crossed, metas, None)
    assert first_limits("CS-D1", seen["CS-D1"]) == [0.0]
    seen = running({"CS-D1": 7.0, "CS-D2": -7.0, "CS-D3": 0.0})
    sent, failed = await sched._push(now, crossed, metas, None)
    assert (sent, failed) == (4, 0)
    assert first_limits("CS-D1", seen["CS-D1"]) == [0.0, -7000.0]
    assert first_limits("CS-D2", seen["CS-D2"]) == [0.0, 7000.0]
    for st, _ in stations.values():
        await st.close()


async def test_two_stations_counting_transactions_alike_are_planned_apart(site: GatewayHarness) -> None:
    """A transactionId is only unique at its station: two stations both on transaction "1" get a
    plan each, and the stored plan keeps both."""
    sched = site.gw.scheduler
    assert sched is not None
    one, sink1 = await plug_in(site, "CS-T1", tid="1")
    two, sink2 = await plug_in(site, "CS-T2", tid="1")
    await wait_for(lambda: _at_least(sink1, 1))
    await wait_for(lambda: _at_least(sink2, 1))
    outcome = await sched.replan("test")
    assert outcome is not None
    p1, p2 = sched.session_plan("CS-T1", "1"), sched.session_plan("CS-T2", "1")
    assert p1 is not None and p2 is not None and (p1.station_id, p2.station_id) == ("CS-T1", "CS-T2")

    async def stored_both() -> bool:
        rows = await fetch(site.database_url, "SELECT sessions FROM plans ORDER BY id DESC LIMIT 1")
        return bool(rows) and {"CS-T1/1", "CS-T2/1"} <= set(json.loads(rows[0]["sessions"])["sessions"])

    await wait_for(stored_both)
    await one.close()
    await two.close()


async def _at_least(sink: ProfileSink, n: int) -> bool:
    return len(sink.profiles) >= n


async def test_grid_event_discharges_only_where_allowed(site: GatewayHarness) -> None:
    gw = site.gw
    assert gw is not None
    bidi, sink_b = await plug_in(site, "CS-V2G", bidi=True)
    uni, sink_u = await plug_in(site, "CS-UNI", bidi=False)
    now = gw.clock.now()
    # Both EVs say they are 80 % full of 60 kWh and stay all day.
    for sid in ("CS-V2G", "CS-UNI"):
        s = gw.state.evses[(sid, 1)].session
        assert s is not None
        s.soc = 0.8
        from gateway.domain import EvNeeds

        gw.state.set_needs(sid, 1, EvNeeds(departure_time=now + timedelta(hours=12), energy_kwh=0.0,
                                           capacity_kwh=60.0, soc=0.8, ev_max_discharge_kw=11.0))
    # The payment must beat the demand charge of charging the energy back before departure.
    gw.state.grid_events["dr-1"] = GridEvent("dr-1", now, now + timedelta(hours=2), GridEventKind.EXPORT_REQUEST,
                                             payment_per_kwh=5.0)
    gw.bus.publish(ev.SiteInputsChanged(now, "grid_events"))

    async def discharging() -> bool:
        return any(lim < 0 for lim in sink_b.first_limits_w())

    await wait_for(discharging)
    assert all(lim >= 0 for p in sink_u.profiles
               for lim in (x["limit"] for x in p["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"]))
    await bidi.close()
    await uni.close()


async def test_a_restart_reads_the_last_four_weeks_of_sessions_however_many(site: GatewayHarness) -> None:
    """At start the forecast and the arrival model read every session that ended in the last
    BOOTSTRAP_DAYS (a fixed count was half a day of a 1,000-EVSE site), and a quiet site's last
    BOOTSTRAP_SESSIONS whatever their age."""
    import asyncpg

    from gateway.scheduler.mpc import BOOTSTRAP_DAYS, BOOTSTRAP_SESSIONS, MpcScheduler

    await site.add_station("CS-H", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    now = site.gw.clock.now()
    recent = BOOTSTRAP_SESSIONS + 100  # over the last 20 days
    ends = [now - timedelta(days=20) * (i / recent) - timedelta(minutes=1) for i in range(recent)]
    old = [now - timedelta(days=BOOTSTRAP_DAYS + 2 + i) for i in range(3)]
    rows = [("CS-H", f"TX-H{i}", end - timedelta(hours=8), end) for i, end in enumerate([*ends, *old])]
    conn = await asyncpg.connect(site.database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.executemany(
            "INSERT INTO transactions (station_id, transaction_id, evse_id, started_at, ended_at, energy_in_kwh,"
            " updated_at) VALUES ($1, $2, 1, $3, $4, 10.0, $4)", rows)
        fresh = MpcScheduler(site.gw)
        history = await fresh.history()
        assert history is not None and len(history) == recent  # all of the four weeks, none older
        assert await fresh.bootstrap(history) == recent
        assert await fresh.bootstrap_peaks(history) == recent  # the same read feeds the needed peaks
        # A quiet site (ten sessions in four weeks): its last BOOTSTRAP_SESSIONS, the older ones too.
        await conn.execute("DELETE FROM transactions WHERE station_id = 'CS-H' AND ended_at > $1",
                           now - timedelta(days=20) * ((recent - 10) / recent))
        quiet = MpcScheduler(site.gw)
        assert await quiet.bootstrap() == 10 + 3
    finally:
        await conn.close()


async def test_ended_sessions_feed_the_live_forecaster_and_seed_a_new_one(site: GatewayHarness) -> None:
    from gateway.scheduler.mpc import MpcScheduler

    sched = site.gw.scheduler
    assert sched is not None
    name = site.settings.site.name
    st, _ = await planned_plug_in(site, "CS-F", "TX-F")
    before = sched.observed
    await st.ok("TransactionEvent", tx_event("Ended", 1, tid="TX-F", meterValue=energy(4000.0)))

    async def fed() -> bool:
        return sched.observed > before

    await wait_for(fed)
    # The completed session is in the forecaster's history (nothing is kept for a later one).
    assert sum(len(v) for (s, _), v in sched.forecaster._dwell.items() if s == name) == 1
    assert not site.gw.state.completed

    async def ended_in_db() -> bool:
        return bool(await fetch(site.database_url, "SELECT 1 FROM transactions WHERE ended_at IS NOT NULL"))

    await wait_for(ended_in_db)
    # A scheduler that starts later (restart, failover) reads the same history from Postgres.
    fresh = MpcScheduler(site.gw)
    assert await fresh.bootstrap() == 1
    # The needed peaks read only the last four weeks: this session (stamped July 1st by the
    # station) is older than that, by the gateway's clock.
    assert await fresh.bootstrap_peaks() == 0
    assert sum(len(v) for (s, _), v in fresh.forecaster._dwell.items() if s == name) == 1
    # Both learned what arrivals in that hour want (what the EV took: 4 kWh at the meter).
    took = pytest.approx(4.0 * site.settings.ev_efficiency)
    assert [[r[0] for r in v] for v in sched.arrivals._stats.values()] == [[took]]
    assert [[r[0] for r in v] for v in fresh.arrivals._stats.values()] == [[took]]
    await st.close()


async def test_the_plan_keeps_room_for_the_evs_expected_to_arrive(site: GatewayHarness) -> None:
    from gateway.scheduler.arrivals import DWELL_GROUPS, EXPECTED_SLOTS

    sched = site.gw.scheduler
    assert sched is not None
    name = site.settings.site.name
    now = site.gw.clock.now()
    nxt = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    # Three watched days on which four EVs plugged in at the coming hour, 30 kWh each.
    sched.arrivals.watched(name, nxt - timedelta(days=3), nxt - timedelta(hours=1))
    for d in (1, 2, 3):
        for j in range(4):
            arr = nxt - timedelta(days=d, minutes=-5 * j)
            sched.arrivals.arrived(name, f"old-{d}-{j}", arr)
            sched.arrivals.observe(name, arr, arr + timedelta(hours=6), 30.0, 11.0)
    st, sink = await planned_plug_in(site, "CS-X", "TX-X")
    out = await sched.replan("test")
    assert out is not None
    rows = dict(zip(out.result.keys, out.result.power_kw.sum(axis=1), strict=True))
    expected = {k: v for k, v in rows.items() if k[0] == "~expected"}
    assert len(expected) == EXPECTED_SLOTS * DWELL_GROUPS
    assert {k[1] // DWELL_GROUPS for k, v in expected.items() if v > 0} == {1}  # the coming hour only
    # The real EV is planned and sent its profile; nothing is sent for the expected ones.
    assert [s.transaction_id for s in out.plan.sessions] == ["TX-X"]
    assert all(p["evseId"] == 1 for p in sink.profiles)
    await st.close()


async def test_an_ev_that_stops_taking_energy_is_planned_full_until_it_draws_again(site: GatewayHarness) -> None:
    sched = site.gw.scheduler
    assert sched is not None
    st, _ = await planned_plug_in(site, "CS-S", "TX-S")
    outcome = await sched.replan("test")
    assert outcome is not None and outcome.plan.sessions[0].power_kw[0] > 0
    # The station says the EV takes nothing although offered (its own charge limit): no capacity is
    # kept for it, and it stays so while its EVSE is held at zero.
    def reported(state: str) -> Any:
        async def seen() -> bool:  # the site state has the station's report (events apply in the background)
            s = site.gw.state.session_by_tx("CS-S", "TX-S")
            return s is not None and s.charging_state == state

        return seen

    for seq, state in ((1, "SuspendedEV"), (2, "SuspendedEVSE")):
        await st.ok("TransactionEvent", tx_event("Updated", seq, tid="TX-S", triggerReason="ChargingStateChanged",
                                                 transactionInfo={"transactionId": "TX-S", "chargingState": state},
                                                 meterValue=energy(4000.0, power_w=0.0)))
        await wait_for(reported(state))
        outcome = await sched.replan("test")
        assert outcome is not None and max(outcome.plan.sessions[0].power_kw) <= 1e-6
        assert sched.full.keys() == {("CS-S", "TX-S")}
    # A restarted gateway reads the last chargingState from Postgres.
    await st.close()
    await site.restart()
    sched = site.gw.scheduler
    assert sched is not None
    await wait_for(reported("SuspendedEVSE"))
    st = await RawStation.connect(site.ocpp_url, "CS-S", PASSWORD)
    ProfileSink(st)
    # It draws again (a new need, or it only paused): planned as before.
    await st.ok("TransactionEvent", tx_event("Updated", 3, tid="TX-S", triggerReason="ChargingStateChanged",
                                             transactionInfo={"transactionId": "TX-S", "chargingState": "Charging"},
                                             meterValue=energy(4100.0, power_w=3000.0)))
    await wait_for(reported("Charging"))
    outcome = await sched.replan("test")
    assert outcome is not None and outcome.plan.sessions[0].power_kw[0] > 0 and not sched.full
    await st.close()


async def test_a_draw_counts_as_ignoring_the_limit_only_above_every_recent_limit(site: GatewayHarness) -> None:
    from gateway.ocpp.profiles import Period, TxProfile
    from gateway.scheduler.mpc import NONCOMPLIANCE_WINDOW

    sched = site.gw.scheduler
    assert sched is not None
    key, t0 = ("CS-N", 1), site.gw.clock.now()

    def prof(*limits_w: float) -> TxProfile:
        periods = tuple(Period(t0 + timedelta(minutes=10 * i), w) for i, w in enumerate(limits_w))
        return TxProfile("CS-N", 1, "TX-N", 7, 1, periods, t0 + timedelta(hours=3))

    # 11 kW for ten minutes, then 2 kW: a reading of 11 kW a few minutes later may be older than the cut.
    sched._note_accepted(key, prof(11000.0, 2000.0), t0)
    assert sched._highest_recent_limit_kw(key, t0 + timedelta(minutes=15)) == 11.0
    assert sched._highest_recent_limit_kw(key, t0 + timedelta(minutes=10) + NONCOMPLIANCE_WINDOW) == 2.0
    # A new profile replaces it: the old one's higher limit still counts inside the window.
    sched._note_accepted(key, prof(0.0), t0 + timedelta(minutes=40))
    assert sched._highest_recent_limit_kw(key, t0 + timedelta(minutes=45)) == 2.0
    assert sched._highest_recent_limit_kw(key, t0 + timedelta(minutes=40) + NONCOMPLIANCE_WINDOW) == 0.0


async def test_an_evs_own_power_limit_is_learned_from_its_draw_once_a_limit_has_settled(site: GatewayHarness) -> None:
    from gateway import events as gev
    from gateway.ocpp.profiles import Period, TxProfile

    sched = site.gw.scheduler
    assert sched is not None
    key, t0 = ("CS-P", 1), site.gw.clock.now()
    # 3 kW for ten minutes, then 22 kW (the EVSE's rating).
    prof = TxProfile("CS-P", 1, "TX-P", 7, 1, (Period(t0, 3000.0), Period(t0 + timedelta(minutes=10), 22000.0)),
                     t0 + timedelta(hours=3))
    sched._note_accepted(key, prof, t0)

    def reading(minutes: float, kw: float) -> gev.SessionUpdated:
        return gev.SessionUpdated(t0 + timedelta(minutes=minutes), "CS-P", 1, "TX-P", power_kw=kw)

    sched._note_reading(reading(5, 2.9))  # held by its 3-kW limit
    sched._note_reading(reading(11, 3.1))  # the limit rose a minute ago: the car may still be ramping
    assert sched._drawn[("CS-P", "TX-P")].limit_kw() is None
    sched._note_reading(reading(15, 7.4))  # offered 22 kW for five minutes, takes 7.4: a 7.4-kW car
    assert sched._drawn[("CS-P", "TX-P")].limit_kw() == 7.4


async def test_a_first_plan_step_under_a_second_does_not_make_a_rejected_profile(site: GatewayHarness) -> None:
    from gateway.domain import Plan, PlannedSession
    from gateway.ocpp import profiles
    from gateway.scheduler.live_inputs import SlotMeta

    sched = site.gw.scheduler
    assert sched is not None
    st, sink = await planned_plug_in(site, "CS-T", "TX-T")
    session = site.gw.state.evses[("CS-T", 1)].session
    assert session is not None
    # A plan whose first step lasts 0.4 s: its period is merged into the next one.
    now = site.gw.clock.now()
    starts = (now, now + timedelta(seconds=0.4), now + timedelta(seconds=300.4))
    plan = Plan(created_at=now, starts=starts, end=now + timedelta(seconds=3600.4),
                sessions=(PlannedSession("CS-T", 1, "TX-T", (9.0, 4.0, 6.0)),))
    sent, failed = await sched._push(now, plan, [SlotMeta(("CS-T", 1), session, None, 0.0, None)], None)
    assert (sent, failed) == (1, 0)
    periods = sink.profiles[-1]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"]
    skew = profiles.CLOCK_SKEW_ALLOWANCE_S  # the schedule starts that much early (profiles.py)
    rise = round(300.4 + sched._rise_delay_s())  # and a rise a little after its boundary
    assert [p["startPeriod"] for p in periods] == [0, rise + skew] and [p["limit"] for p in periods] == [4000.0, 6000.0]
    await st.close()


async def test_without_a_pushed_forecast_the_plan_expects_the_buildings_usual_day(site: GatewayHarness) -> None:
    # Yesterday the building drew 300 kW from 5 to 8 hours from now, 10 kW otherwise; today's
    # reading (10 kW) comes in without a forecast: the plan expects the same afternoon.
    from gateway.bus.site_inputs import SiteInputs

    sched = site.gw.scheduler
    assert sched is not None
    now = site.gw.clock.now()
    for step in range(288):
        when = now - timedelta(days=1) + timedelta(minutes=5 * step)
        sched.building.observe(when, 300.0 if timedelta(hours=5) <= when - now + timedelta(days=1) < timedelta(hours=8)
                               else 10.0)
    await SiteInputs(site.gw).set_building_load(10.0, None, "test")
    st, _ = await planned_plug_in(site, "CS-B", "TX-B")
    out = await sched.replan("test")
    assert out is not None
    imp = out.result.site_import_kw
    assert imp[0] < 100.0 and imp.max() >= 300.0
    # ... and today's reading is learned for this time of day.
    assert sched.building.profile()[sched.building.slot(site.gw.clock.now())] == pytest.approx(10.0)
    await st.close()


async def _plugged_on_a_manual_clock(gateway_factory: Any, station_id: str, *,
                                     replan_period_s: float) -> tuple[Any, Any, Any]:
    """A scheduling gateway on a clock that moves only when told, one EV plugged in and its
    plug-in's re-plan done with nothing queued behind it: (clock, scheduler, station)."""
    from datetime import UTC, datetime

    from gateway.clock import ManualClock

    clock = ManualClock(datetime(2026, 7, 1, 8, 2, 30, tzinfo=UTC))
    h = await gateway_factory(clock=clock, scheduler_enabled=True, replan_debounce_s=0.05,
                              replan_period_s=replan_period_s)
    sched = h.gw.scheduler
    assert sched is not None
    st, sink = await plug_in(h, station_id)
    await wait_for(lambda: _at_least(sink, 1))

    async def settled() -> bool:
        return sched.solves >= 1 and not sched._lock.locked()

    await wait_for(settled)
    return clock, sched, st


async def test_under_a_manual_clock_the_periodic_replan_follows_simulated_time(gateway_factory: Any) -> None:
    """A clock that does not move by itself re-plans when its time passes a period, not every
    few milliseconds of real time (a full solve each)."""
    clock, sched, st = await _plugged_on_a_manual_clock(gateway_factory, "CS-MC", replan_period_s=300.0)
    solves = sched.solves
    await asyncio.sleep(0.3)  # an absence can only be seen by waiting: at 50 ms, six solves before
    assert sched.solves == solves
    clock.advance(300.0)

    async def periodic() -> bool:
        return sched.solves == solves + 1 and sched.latest is not None and sched.latest.trigger == "periodic"

    await wait_for(periodic)
    await st.close()


def test_a_replan_period_must_be_positive() -> None:
    from pydantic import ValidationError

    from gateway.config import Settings

    # Zero would make the periodic re-plan spin (a manual clock's sleep(0) never yields).
    with pytest.raises(ValidationError, match="replan_period_s"):
        Settings(replan_period_s=0.0)
    with pytest.raises(ValidationError, match="replan_debounce_s"):
        Settings(replan_debounce_s=-1.0)


async def test_the_learned_building_profile_survives_a_restart(gateway_factory: Any) -> None:
    from datetime import UTC, datetime

    from gateway.bus.site_inputs import SiteInputs
    from gateway.clock import ManualClock
    from gateway.scheduler.building import KEEP_DAYS
    from gateway.scheduler.mpc import BUILDING_READINGS_KEPT, slot_start

    t0 = datetime(2026, 7, 1, 8, 2, 30, tzinfo=UTC)
    clock = ManualClock(t0)
    h = await gateway_factory(clock=clock, scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0)
    gw = h.gw
    assert gw is not None and gw.scheduler is not None
    name = h.settings.site.name
    # A reading older than the profile keeps, planted as an earlier run would have left it.
    stale = slot_start(t0 - BUILDING_READINGS_KEPT - timedelta(days=1))
    await gw.planning.record_building(name, stale, 999.0)
    # Three slots of readings; two re-plans in the first slot (the later reading wins).
    readings = [(0, 100.0), (60, 110.0), (300, 150.0), (600, 180.0)]
    for offset_s, kw in readings:
        clock.set(t0 + timedelta(seconds=offset_s))
        await SiteInputs(gw).set_building_load(kw, None, "test")
        await gw.scheduler.replan("test")
    learned = dict(gw.scheduler.building.profile())
    assert sorted(learned.values()) == [110.0, 150.0, 180.0]

    async def two_stored() -> bool:  # the finished slots go to Postgres while the gateway runs
        rows = await fetch(h.database_url, "SELECT power_kw FROM building_readings WHERE power_kw < 999")
        return len(rows) == 2

    await wait_for(two_stored)
    await h.restart()  # the slot in progress is stored at stop
    gw = h.gw
    assert gw is not None and gw.scheduler is not None
    assert gw.scheduler.building.profile() == learned
    rows = await fetch(h.database_url, "SELECT slot_start, power_kw FROM building_readings ORDER BY slot_start")
    assert [(r["slot_start"], r["power_kw"]) for r in rows] == [
        (datetime(2026, 7, 1, 8, 0, tzinfo=UTC), 110.0), (datetime(2026, 7, 1, 8, 5, tzinfo=UTC), 150.0),
        (datetime(2026, 7, 1, 8, 10, tzinfo=UTC), 180.0)]  # the stale row was pruned at start
    # A day later the profile forecasts 08:05 from what it learned, not from the reading now.
    clock.set(t0 + timedelta(days=1))
    forecast = gw.scheduler.building.forecast(clock.now(), 100.0)
    assert forecast(t0 + timedelta(days=1, hours=12)) == pytest.approx(100.0)  # 20:02: never seen
    later = t0 + timedelta(days=1, seconds=300)
    fade = forecast(later) - 150.0
    assert 0.0 > fade > -10.0  # the profile's 150 kW, pulled a little toward the 100 kW now
    assert KEEP_DAYS < BUILDING_READINGS_KEPT.days


async def test_finished_days_price_a_rise_of_the_months_peak(gateway_factory: Any) -> None:
    from datetime import UTC, datetime

    from gateway.bus.site_inputs import SiteInputs
    from gateway.clock import ManualClock
    from gateway.scheduler import live_inputs
    from gateway.scheduler.peak_price import MIN_DAYS
    from gateway.state import CompletedSession

    t0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    clock = ManualClock(t0)
    h = await gateway_factory(clock=clock, scheduler_enabled=True, replan_debounce_s=0.05, replan_period_s=3600.0)
    gw = h.gw
    assert gw is not None and gw.scheduler is not None
    sched = gw.scheduler
    eff = h.settings.ev_efficiency
    # A week of days: 100 kW of building from 08:00 to 10:00 and one EV taking 11 kWh in that hour.
    for day in range(MIN_DAYS + 1):
        for minutes in range(0, 120, 5):
            clock.set(t0 + timedelta(days=day, minutes=minutes))
            await SiteInputs(gw).set_building_load(100.0, None, "test")
            await sched.replan("test")
        arrival = t0 + timedelta(days=day, hours=1)
        sched.observe(CompletedSession(("CS", 1), arrival, arrival + timedelta(hours=1), 11.0, None, 11.0 / eff, 11.0))
    # Each finished day needed the building's 100 kW plus the EV's 11 kWh / eff in its hour.
    assert len(sched.peaks.values()) == MIN_DAYS
    assert sched.peaks.values() == [pytest.approx(100.0 + 11.0 / eff, abs=1e-3)] * MIN_DAYS
    now = clock.now()
    site, _, _ = live_inputs.build(gw.state, now, gw.settings, {}, needed_peaks=sched.peaks.values())
    # Three weeks of July left after the horizon: up to the level every day needed a rise is
    # free, above it it costs the month's whole charge (a rise no later day will pay for).
    monthly = gw.state.tariff.demand_charge_per_kw * 31 / 30
    assert site.demand_charge_per_kw == 0.0
    assert site.peak_price_steps == ((pytest.approx(100.0 + 11.0 / eff, abs=1e-3), pytest.approx(monthly)),)
    # Without the days (a new site), a day's share of it, the rule before there is history.
    site, _, _ = live_inputs.build(gw.state, now, gw.settings, {})
    assert site.demand_charge_per_kw == pytest.approx(gw.state.tariff.demand_charge_per_kw / 30)
    assert site.peak_price_steps == ()


async def test_profiles_are_pushed_and_accepted_as_of_the_push_not_the_replans_start(
        gateway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A solve (and storing its plan) may take a minute: which way each limit moves, and when the
    station took it, are reckoned at the push."""
    clock, sched, st = await _plugged_on_a_manual_clock(gateway_factory, "CS-LATE", replan_period_s=3600.0)
    solve = sched._solve

    async def slow(*args: Any) -> Any:
        clock.advance(60.0)  # the solve takes a simulated minute
        return await solve(*args)

    monkeypatch.setattr(sched, "_solve", slow)
    sched._sent.clear()  # so this re-plan pushes again
    started = clock.now()
    out = await sched.replan("test")
    assert out is not None and out.profiles_sent == 1
    taken_at = sched._accepted[("CS-LATE", 1)][-1][0]
    assert taken_at == started + timedelta(seconds=60)
    await st.close()
