"""The push of a plan to the stations (MpcScheduler._push), against stations that answer as
told: which round a profile goes in, what a refusal leaves in force, and what a refusal that
comes after the EV has left must not do. No sockets: the station's answers are a function."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import events as ev
from gateway.config import Settings, SiteConfig
from gateway.domain import EvseSpec, Plan, PlannedSession
from gateway.ocpp import profiles
from gateway.ocpp.defaults import default_limit_kw
from gateway.ocpp.errors import CallErrorReceived, CallTimeout
from gateway.scheduler import live_inputs
from gateway.scheduler.live_inputs import SlotMeta
from gateway.scheduler.mpc import MpcScheduler
from gateway.state import EvseState, SiteState

NOW = datetime(2026, 7, 1, 10, 50, 10, tzinfo=UTC)
Answer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class _Clock:
    scale = 1.0

    def now(self) -> datetime:
        return NOW

    def real_seconds(self, s: float) -> float:
        return s


async def _nothing(**_: Any) -> None:
    return None


def _scheduler(limit_kw: float, stations: str, answer: Answer) -> tuple[MpcScheduler, SiteState, list[str]]:
    """A scheduler over one 22-kW EVSE per station id in ``stations``, each with a session
    TX-<id>; ``answer(station_id, profile)`` is the station's reply. Returns the scheduler, the
    site state and the list of re-plan triggers it asked for."""
    settings = Settings(site=SiteConfig(import_limit_kw=limit_kw, export_limit_kw=0.0), replan_debounce_s=3600)
    state = SiteState.from_settings(settings)
    for sid in stations:
        state.evses[(sid, 1)] = EvseState(EvseSpec(sid, 1, 22.0), online=True)
        state.apply(ev.SessionStarted(NOW - timedelta(hours=1), sid, 1, f"TX-{sid}", None))

    async def set_charging_profile(station_id: str, evse_id: int, prof: dict[str, Any]) -> dict[str, Any]:
        return await answer(station_id, prof)

    default = default_limit_kw(settings.safe_limit_kw, limit_kw, len(stations))
    gw = SimpleNamespace(
        settings=settings, state=state, clock=_Clock(), ocpp=SimpleNamespace(registry=dict.fromkeys(stations, 1)),
        commands=SimpleNamespace(set_charging_profile=set_charging_profile),
        planning=SimpleNamespace(add_profile_sent=_nothing), bus=SimpleNamespace(publish=lambda e: None),
        default_profiles=SimpleNamespace(limit_kw=lambda: default, limit_taken={}, sent={}))
    sched = MpcScheduler(gw)  # type: ignore[arg-type]
    asked: list[str] = []
    sched.request_replan = asked.append  # type: ignore[method-assign]
    return sched, state, asked


STARTS = tuple(NOW + timedelta(minutes=5 * i) for i in range(36))
END = NOW + timedelta(hours=3)


def _profile(state: SiteState, sid: str, kws: list[float]) -> profiles.TxProfile:
    return profiles.build_profile(station_id=sid, evse_id=1, transaction_id=f"TX-{sid}", starts=STARTS, end=END,
                                  power_kw=kws, max_charge_kw=22.0, max_discharge_kw=0.0, bidirectional=False,
                                  dialect=state.evses[(sid, 1)].dialect, stack_level=1, max_periods=24)


def _plan(state: SiteState, powers: dict[str, list[float]]) -> tuple[Plan, list[SlotMeta]]:
    sessions = tuple(PlannedSession(sid, 1, f"TX-{sid}", tuple(kws)) for sid, kws in powers.items())
    plan = Plan(created_at=NOW, starts=STARTS, end=END, sessions=sessions, status="ok", objective=0.0, terms={},
                solve_s=0.0, fallback=False)
    return plan, [SlotMeta((sid, 1), state.evses[(sid, 1)].session, None, 0.0, None) for sid in powers]


async def _settled(sched: MpcScheduler) -> None:
    for t in sched._writes.tasks():
        await t


def _in_force_kw(sched: MpcScheduler, at: datetime) -> float:
    return sum((p.limit_at(at) or 0.0) for p in sched._sent.values()) / 1000.0


async def test_a_safe_profile_never_raises_an_evse_above_what_it_runs_or_is_planned_now() -> None:
    """C runs 0 and the new plan keeps it at 0 now (more later); its station refuses the plan.
    Its safe profile must not raise it to the default share: A and B were just given the rest."""
    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        periods = prof["chargingSchedule"][0]["chargingSchedulePeriod"]
        return {"status": "Rejected" if sid == "C" and len(periods) > 1 else "Accepted"}

    sched, state, asked = _scheduler(20.0, "ABC", answer)
    for sid, kw in (("A", 11.0), ("B", 9.0), ("C", 0.0)):
        sched._note_accepted((sid, 1), _profile(state, sid, [kw] * 36), NOW - timedelta(minutes=5))
    plan, metas = _plan(state, {"A": [7.3] * 36, "B": [12.7] * 36, "C": [0.0] * 12 + [5.0] * 24})
    await sched._push(NOW, plan, metas, None)
    await _settled(sched)
    assert ("C", 1) in sched._rejected
    assert sched._sent[("C", 1)].limit_at(NOW) == 0.0  # the safe profile, at what it ran
    assert _in_force_kw(sched, NOW) <= 20.0 + 1e-9
    assert asked  # and the site is re-planned with C at its safe limit


async def test_a_refusal_by_callerror_gets_the_safe_profile_like_a_rejection() -> None:
    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        if len(prof["chargingSchedule"][0]["chargingSchedulePeriod"]) > 1:
            raise CallErrorReceived(sid, "SetChargingProfile", "PropertyConstraintViolation", "too many periods",
                                    None)
        return {"status": "Accepted"}

    sched, state, asked = _scheduler(20.0, "A", answer)
    plan, metas = _plan(state, {"A": [0.0] * 12 + [11.0] * 24})
    await sched._push(NOW, plan, metas, None)
    await _settled(sched)
    assert ("A", 1) in sched._rejected
    safe = sched._sent[("A", 1)]
    assert len(safe.periods) == 1 and safe.transaction_id == "TX-A"
    assert asked
    # Left alone until REJECTED_RETRY: the same refused profile is not sent at every re-plan.
    calls: list[str] = []

    async def counting(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        calls.append(sid)
        return {"status": "Accepted"}

    sched.gw.commands.set_charging_profile = lambda sid, evse, prof: counting(sid, prof)
    await sched._push(NOW + timedelta(minutes=5), plan, metas, None)
    assert calls == []


async def test_a_refusal_that_comes_after_the_ev_left_does_not_hold_the_next_session() -> None:
    """The SessionEnded is applied while the call waits its turn at the station, which then
    answers Rejected without a reasonCode (TxNotFound is optional in OCPP 2.0.1)."""
    sched: MpcScheduler | None = None

    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        assert sched is not None
        if prof["transactionId"] == "TX-C":
            if state.evses[("C", 1)].session is not None:  # the first call: the EV leaves
                ended = ev.SessionEnded(NOW, "C", 1, "TX-C")
                state.apply(ended)
                sched.on_event(ended, False)
            return {"status": "Rejected"}
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(50.0, "C", answer)
    plan, metas = _plan(state, {"C": [11.0] * 36})
    assert await sched._push(NOW, plan, metas, None) == (0, 1)
    await _settled(sched)
    assert ("C", 1) not in sched._rejected and ("C", 1) not in sched._retry
    assert ("C", 1) not in sched._sent  # no safe profile for a transaction that is gone
    # The next EV on the EVSE is planned and pushed at once.
    state.apply(ev.SessionStarted(NOW, "C", 1, "TX-C2", None))
    assert sched._uncontrolled(NOW) == {}
    sessions = (PlannedSession("C", 1, "TX-C2", (11.0,) * 36),)
    plan2 = Plan(created_at=NOW, starts=STARTS, end=END, sessions=sessions, status="ok", objective=0.0, terms={},
                 solve_s=0.0, fallback=False)
    metas2 = [SlotMeta(("C", 1), state.evses[("C", 1)].session, None, 0.0, None)]
    assert await sched._push(NOW, plan2, metas2, None) == (1, 0)


async def test_a_swap_planned_for_later_holds_the_rise_back_when_the_lowering_does_not_land() -> None:
    """Old plan: Y at 11 kW until 12:00, X after. New plan: the swap at 11:00. Neither limit
    changes now; Y's profile only lowers, so it goes first, and when it times out X's rise is
    held back (else at 11:00 both run 11 kW on an 11-kW site)."""
    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        if sid == "Y":
            raise CallTimeout(sid, "SetChargingProfile", 30.0)
        return {"status": "Accepted"}

    sched, state, asked = _scheduler(11.0, "XY", answer)
    sched._note_accepted(("X", 1), _profile(state, "X", [0.0] * 14 + [11.0] * 22), NOW - timedelta(minutes=5))
    sched._note_accepted(("Y", 1), _profile(state, "Y", [11.0] * 14 + [0.0] * 22), NOW - timedelta(minutes=5))
    old_x = sched._sent[("X", 1)]
    plan, metas = _plan(state, {"X": [0.0] * 2 + [11.0] * 34, "Y": [11.0] * 2 + [0.0] * 34})
    sent, failed = await sched._push(NOW, plan, metas, None)
    await _settled(sched)
    assert (sent, failed) == (0, 1)
    assert sched._sent[("X", 1)] is old_x  # X's rise was not sent
    assert asked
    assert _in_force_kw(sched, NOW + timedelta(minutes=11)) <= 11.0 + 1e-9


async def test_any_profile_not_taken_asks_for_a_re_plan() -> None:
    """A rise that times out leaves its EVSE below what the plan gave it: nothing to hold back,
    but the site no longer adds up as planned, and the re-plan is what puts it right."""
    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        raise CallTimeout(sid, "SetChargingProfile", 30.0)

    sched, state, asked = _scheduler(20.0, "A", answer)
    plan, metas = _plan(state, {"A": [11.0] * 36})
    assert await sched._push(NOW, plan, metas, None) == (0, 1)
    await _settled(sched)
    assert asked == ["profile not taken"]
    # Tried again at the re-plan (in the background, the station being one that does not answer)
    # and still unanswered: it is counted at what it runs already, and a station that keeps
    # timing out must not have the site re-planned after every call.
    assert await sched._push(NOW, plan, metas, None) == (0, 0)
    await asyncio.gather(*sched._tasks)
    await _settled(sched)
    assert asked == ["profile not taken"]
    assert sched._uncontrolled(NOW).keys() == {("A", 1)}


async def test_a_station_that_stopped_answering_does_not_hold_the_push_to_the_others() -> None:
    """H's push timed out: its socket lives, it answers nothing. The next push must not wait out
    H's call timeout (30 s by default, at every re-plan, with each driver's answer behind it): H is
    planned as uncontrolled, its profile goes in the background, one at a time, and its first
    answer takes it back into the plan."""
    release = asyncio.Event()
    calls: list[str] = []

    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        calls.append(sid)
        if sid == "H" and calls.count("H") == 1:
            raise CallTimeout(sid, "SetChargingProfile", 30.0)
        if sid == "H":
            await release.wait()
        return {"status": "Accepted"}

    sched, state, asked = _scheduler(20.0, "AH", answer)
    plan, metas = _plan(state, {"A": [9.0] * 36, "H": [9.0] * 36})
    assert await sched._push(NOW, plan, metas, None) == (1, 1)
    assert ("H", 1) in sched._uncontrolled(NOW)
    plan2, metas2 = _plan(state, {"A": [11.0] * 36, "H": [9.0] * 36})
    assert await asyncio.wait_for(sched._push(NOW, plan2, metas2, None), 10.0) == (1, 0)
    assert sorted(calls) == ["A", "A", "H", "H"] and ("H", 1) in sched._in_flight
    in_flight = sched._in_flight[("H", 1)]
    assert sched._uncontrolled(NOW)[("H", 1)].most_kw == 9.0  # what it may be running by now
    plan3, metas3 = _plan(state, {"A": [10.0] * 36, "H": [10.0] * 36})
    assert await asyncio.wait_for(sched._push(NOW, plan3, metas3, None), 10.0) == (1, 0)
    assert calls.count("H") == 2  # one push at a time
    release.set()
    await asyncio.gather(*sched._tasks)
    await _settled(sched)
    assert sched._sent[("H", 1)] is in_flight and ("H", 1) not in sched._in_flight
    assert "station answers again" in asked and sched._uncontrolled(NOW) == {}


@pytest.mark.parametrize("old_kw, later_kw, first_round", [(11.0, 0.0, True), (0.0, 11.0, False)])
def test_a_profile_changing_only_later_is_ordered_by_how_it_moves(old_kw: float, later_kw: float,
                                                                  first_round: bool) -> None:
    state = _scheduler(11.0, "X", lambda sid, prof: asyncio.sleep(0, {}))[1]
    old = _profile(state, "X", [old_kw] * 36)
    new = _profile(state, "X", [old_kw] * 2 + [later_kw] * 34)
    kinds = profiles.moves_later(old, new, 3700.0, NOW)
    assert kinds and all((k == profiles.Move.TOWARD_ZERO) == first_round for k in kinds)


def test_with_no_planned_profile_in_force_the_accepted_default_is_the_limit_a_draw_is_held_to() -> None:
    """A station that took its TxDefaultProfile but whose EV draws past it (no plan yet, or the
    plan's profile ran out) is planned at what it draws, so the others make room for it."""
    sched, state, _ = _scheduler(20.0, "AB", lambda sid, prof: asyncio.sleep(0, {}))
    sched.gw.default_profiles.limit_taken = {"A": 3.7}
    assert sched._limits_in_force(NOW) == {("A", 1): 3.7}  # B's station never took one
    session = state.evses[("A", 1)].session
    assert session is not None
    session.power_kw = 11.0
    _, _, metas = live_inputs.build(state, NOW, sched.settings, sched._limits_in_force(NOW))
    assert {m.key: m.fixed_kw for m in metas} == {("A", 1): 11.0, ("B", 1): None}


def test_an_offline_station_is_counted_at_the_default_it_holds_when_the_sites_is_lower() -> None:
    """An import cap lowers the default to 2 kW; the offline station still holds the 3.7 kW it
    took before, and may draw that."""
    sched, _, _ = _scheduler(20.0, "AB", lambda sid, prof: asyncio.sleep(0, {}))
    sched.gw.default_profiles.limit_kw = lambda: 2.0
    sched.gw.default_profiles.limit_taken = {"A": 3.7, "B": 1.0}
    sched.gw.ocpp.registry = {}  # both offline
    got = sched._uncontrolled(NOW)
    assert got[("A", 1)].most_kw == 3.7
    assert got[("B", 1)].most_kw == 2.0  # it holds less, but may be sent today's at any moment


async def test_a_late_end_of_a_superseded_transaction_leaves_the_next_sessions_profile_on_record() -> None:
    """TX-OLD's Ended comes after TX-C started on the same EVSE (E04: sent late). Wiping the
    EVSE's tables then judged C's lowering against the default, as a rise, sent beside A's rise:
    C's timed out and A's landed, 26 kW on a 20-kW site."""
    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        if sid == "C":
            raise CallTimeout(sid, "SetChargingProfile", 30.0)
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(20.0, "AC", answer)
    sched._note_accepted(("A", 1), _profile(state, "A", [9.0] * 36), NOW - timedelta(minutes=5))
    sched._note_accepted(("C", 1), _profile(state, "C", [11.0] * 36), NOW - timedelta(minutes=5))
    late = ev.SessionEnded(NOW, "C", 1, "TX-OLD")
    state.apply(late)
    sched.on_event(late, False)
    assert sched._sent[("C", 1)].transaction_id == "TX-C" and ("C", 1) in sched._accepted
    plan, metas = _plan(state, {"A": [15.0] * 36, "C": [5.0] * 36})
    await sched._push(NOW, plan, metas, None)
    await _settled(sched)
    assert _in_force_kw(sched, NOW) <= 20.0 + 1e-9


async def test_a_session_starting_over_an_unended_one_drops_what_the_evse_held_for_it() -> None:
    """TX-C is superseded by TX-C2 before its end is heard: its profile is not what the EVSE
    runs now, and its refusal must not keep the new EV on a safe limit; its end, heard later,
    leaves TX-C2's profile alone."""
    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(20.0, "C", answer)
    sched._note_accepted(("C", 1), _profile(state, "C", [11.0] * 36), NOW - timedelta(minutes=5))
    sched._rejected[("C", 1)] = NOW - timedelta(minutes=1)
    sched._retry.add(("C", 1))
    started = ev.SessionStarted(NOW, "C", 1, "TX-C2", None)
    state.apply(started)
    sched.on_event(started, False)
    assert ("C", 1) not in sched._sent and ("C", 1) not in sched._accepted
    assert ("C", 1) not in sched._rejected and ("C", 1) not in sched._retry
    new = profiles.build_profile(station_id="C", evse_id=1, transaction_id="TX-C2", starts=STARTS, end=END,
                                 power_kw=[7.0] * 36, max_charge_kw=22.0, max_discharge_kw=0.0, bidirectional=False,
                                 dialect=state.evses[("C", 1)].dialect, stack_level=1, max_periods=24)
    sched._note_accepted(("C", 1), new, NOW)
    late = ev.SessionEnded(NOW, "C", 1, "TX-C")
    state.apply(late)
    sched.on_event(late, False)
    assert sched._sent[("C", 1)] is new and [p for _, p in sched._accepted[("C", 1)]] == [new]


async def test_a_safe_profile_taken_after_the_ev_left_is_not_kept_for_the_next_session() -> None:
    sched: MpcScheduler | None = None

    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        assert sched is not None
        if len(prof["chargingSchedule"][0]["chargingSchedulePeriod"]) > 1:
            return {"status": "Rejected"}  # the plan
        ended = ev.SessionEnded(NOW, "C", 1, "TX-C")  # the EV leaves while the safe profile waits
        state.apply(ended)
        sched.on_event(ended, False)
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(20.0, "C", answer)
    plan, metas = _plan(state, {"C": [0.0] * 12 + [11.0] * 24})
    await sched._push(NOW, plan, metas, None)
    await _settled(sched)
    assert ("C", 1) not in sched._sent and ("C", 1) not in sched._accepted


@pytest.mark.parametrize(("answer", "most_kw"), [("CallErrorReceived", 22.0), ("Rejected", 22.0), ("Accepted", None)])
def test_a_station_that_refused_its_default_is_counted_at_its_rating(answer: str, most_kw: float | None) -> None:
    """A station without smart charging refuses the TxDefaultProfile (and every plan): with no
    profile of ours in force it charges unmanaged, up to its EVSE's rating, not at the default."""
    async def never(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("nothing is sent here")

    sched, _, _ = _scheduler(50.0, "C", never)
    defaults = sched.gw.default_profiles
    defaults.sent["C"] = answer
    if answer == "Accepted":
        defaults.limit_taken["C"] = 7.0
    sched._rejected[("C", 1)] = NOW
    counted = sched._uncontrolled(NOW)[("C", 1)].most_kw
    assert counted == (most_kw if most_kw is not None else max(7.0, sched._default_kw()))


async def test_charging_needs_from_the_ev_are_answered_with_a_profile_even_when_the_plan_is_the_same() -> None:
    """K15/K17: the station's ISO 15118 stack waits for a TxProfile after NotifyEVChargingNeeds
    was accepted; an unchanged plan used to send nothing, and an EVSE that refused its last plan
    nothing for REJECTED_RETRY."""
    sent: list[str] = []

    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        sent.append(sid)
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(50.0, "CD", answer)
    plan, metas = _plan(state, {"C": [11.0] * 36, "D": [11.0] * 36})
    assert await sched._push(NOW, plan, metas, None) == (2, 0)
    assert await sched._push(NOW, plan, metas, None) == (0, 0)  # unchanged: nothing to send
    sched._rejected[("D", 1)] = NOW
    sent.clear()
    for sid in "CD":
        sched.on_event(ev.NeedsUpdated(NOW, sid, 1, f"TX-{sid}", "ev"), False)
    sched.on_event(ev.NeedsUpdated(NOW, "C", 1, "TX-C", "driver"), False)
    assert await sched._push(NOW, plan, metas, None) == (2, 0)
    assert sorted(sent) == ["C", "D"]
    assert await sched._push(NOW, plan, metas, None) == (0, 0)  # once


async def test_a_re_plan_is_asked_for_before_a_profile_cut_short_runs_out() -> None:
    """A station that takes few periods gets a profile ending long before the plan; after it the
    EVSE runs its default, which the plan did not count: the next re-plan comes before that end
    (by the debounce and two solves), whatever routine re-plans come meanwhile, and right after
    it where the re-plan asked for could not reach past it."""
    async def accept(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    sched, state, asked = _scheduler(50.0, "C", accept)
    at = [NOW]
    sched.gw.clock = SimpleNamespace(now=lambda: at[0], real_seconds=lambda s: s, scale=1.0)
    short = profiles.build_profile(station_id="C", evse_id=1, transaction_id="TX-C", starts=STARTS, end=END,
                                   power_kw=[11.0, 7.0, 11.0] * 12, max_charge_kw=22.0, max_discharge_kw=0.0,
                                   bidirectional=False, dialect=state.evses[("C", 1)].dialect, stack_level=1,
                                   max_periods=2)
    end = NOW + timedelta(minutes=10)
    assert short.end == end
    sched._note_accepted(("C", 1), short, NOW)
    loop = asyncio.get_running_loop()
    lead = 2 * 2.0 + sched._debounce_real_s() + 1.0

    def timer_in() -> float:
        assert sched._ends_timer is not None
        return sched._ends_timer.when() - loop.time()

    sched._replan_around_profile_ends(END, solve_s=2.0)
    assert timer_in() == pytest.approx(600.0 - lead, abs=0.5)
    at[0] = NOW + timedelta(minutes=2)  # a routine re-plan meanwhile, the same end: still ahead of it
    sched._replan_around_profile_ends(END, solve_s=2.0)
    assert timer_in() == pytest.approx(480.0 - lead, abs=0.5)
    at[0] = end - timedelta(seconds=lead)  # the re-plan asked for; it could not reach past the end
    sched._ends_timer.cancel()
    sched._end_asked = end
    sched._replan_around_profile_ends(END, solve_s=2.0)
    assert timer_in() == pytest.approx(lead + 1.0, abs=0.5)  # right after the end
    soon = profiles.build_profile(station_id="C", evse_id=1, transaction_id="TX-C", starts=STARTS, end=END,
                                  power_kw=[11.0] + [7.0] * 35, max_charge_kw=22.0, max_discharge_kw=0.0,
                                  bidirectional=False, dialect=state.evses[("C", 1)].dialect, stack_level=1,
                                  max_periods=1)
    at[0] = NOW
    sched._note_accepted(("C", 1), soon, NOW)  # ends in 5 minutes, within the lead: at once
    sched._replan_around_profile_ends(END, solve_s=200.0)
    await asyncio.sleep(0.05)
    assert asked == ["profile ends"] and sched._end_asked == soon.end
    sched._note_accepted(("C", 1), _profile(state, "C", [11.0] * 36), NOW)  # to the plan's end: nothing
    sched._replan_around_profile_ends(END, solve_s=2.0)
    assert sched._ends_timer is None
    sched._note_accepted(("C", 1), short, NOW)
    sched.gw.clock = SimpleNamespace(now=lambda: NOW, real_seconds=lambda s: 0.0, scale=0.0)  # standing still
    sched._replan_around_profile_ends(END, solve_s=2.0)
    assert sched._ends_timer is None


@pytest.mark.parametrize("how", ["boot", "clear"])
async def test_a_reboot_or_a_clear_forgets_the_limits_the_evses_had_accepted(how: str) -> None:
    """Kept, an EV back on its default (3.7 kW) while the old profile said 11 would read as one
    that cannot take more, and be planned at what it draws from then on."""
    async def accept(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(50.0, "CD", accept)
    for sid in "CD":
        sched._note_accepted((sid, 1), _profile(state, sid, [11.0] * 36), NOW - timedelta(minutes=10))
    sched.gw.default_profiles.send = lambda sid: _nothing()  # the default is sent again: not here
    if how == "boot":
        sched.on_event(ev.StationBooted(NOW, "C"), False)
    else:
        sched.profiles_cleared("C")
    assert ("C", 1) not in sched._accepted and ("C", 1) not in sched._sent
    assert sched._limits_kw(("C", 1), NOW - timedelta(minutes=5), NOW) == [(NOW - timedelta(minutes=5), None)]
    assert ("D", 1) in sched._accepted  # another station's stay


async def test_an_evs_limit_on_schedule_entries_caps_its_profile() -> None:
    """NotifyEVChargingNeeds.maxScheduleTuples (K15): the EV takes no more schedule entries."""
    got: list[int] = []

    async def answer(sid: str, prof: dict[str, Any]) -> dict[str, Any]:
        got.append(len(prof["chargingSchedule"][0]["chargingSchedulePeriod"]))
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(50.0, "C", answer)
    session = state.evses[("C", 1)].session
    assert session is not None
    session.needs = dataclasses.replace(session.needs, max_schedule_tuples=3)
    plan, metas = _plan(state, {"C": [11.0, 7.0, 3.0, 11.0, 7.0, 3.0] * 6})
    await sched._push(NOW, plan, metas, None)
    assert got == [3]


def test_a_soc_reading_keeps_the_meter_as_it_stood_then() -> None:
    """A SoC from MeterValues comes without the registers: the scheduler keeps when it was read
    and the meter then (the last registers, and when they were read), so the battery is carried
    forward from the SoC and not from the older registers as well (live_inputs.session_view)."""
    async def accept(_sid: str, _prof: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    sched, state, _ = _scheduler(100.0, "A", accept)
    registers_at, soc_at = NOW - timedelta(minutes=15), NOW - timedelta(minutes=1)
    for e in (ev.SessionUpdated(registers_at, "A", 1, "TX-A", energy_in_kwh=10.0, energy_out_kwh=0.0,
                                power_kw=11.0, soc=40.0),
              ev.SessionUpdated(soc_at, "A", 1, "TX-A", power_kw=11.0, soc=44.0)):
        state.apply(e)
        sched._note_reading(e)
    obs = sched._observed(NOW)[("A", "TX-A")]
    assert obs.read_at == registers_at and obs.soc_at == soc_at
    assert obs.soc_meter_read_at == registers_at
    assert obs.soc_meter_kwh == pytest.approx(10.0 * state.settings.ev_efficiency)
    # The same SoC told again while power flows is the same reading.
    again = ev.SessionUpdated(NOW, "A", 1, "TX-A", power_kw=11.0, soc=44.0)
    state.apply(again)
    sched._note_reading(again)
    assert sched._observed(NOW)[("A", "TX-A")].soc_at == soc_at


def test_a_session_ending_before_it_began_is_not_learned_from() -> None:
    """Start-up skips such rows; the live path took one: a negative stay, and every later EV of
    that arrival hour was forecast as leaving now."""
    from gateway.state import CompletedSession

    async def accept(_sid: str, _prof: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    sched, _, _ = _scheduler(100.0, "A", accept)
    name = sched.settings.site.name
    for d in range(10):
        arr = NOW - timedelta(days=d + 1)
        sched.observe(CompletedSession(("A", 1), arr, arr + timedelta(hours=9), 10.0, None, 11.0, 10.0))
    before = sched.forecaster.forecast(name, NOW, NOW).departure
    sched.observe(CompletedSession(("A", 1), NOW, NOW - timedelta(hours=24), 10.0, None, 11.0, 10.0))
    assert sched.forecaster.forecast(name, NOW, NOW).departure == before
    assert sched.observed == 10
