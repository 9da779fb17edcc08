"""Sessions over REST: energy from TransactionEvents, driver preferences (validation, who/when),
and with the scheduler on, a re-plan whose profile reaches the charger."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
import httpx

from gateway import events as ev
from gateway.clock import parse_rfc3339, to_rfc3339
from tests.api.conftest import OPERATOR, PluggedStation, eventually, plug_in
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness

DC_NEEDS = {
    "evseId": 1,
    "chargingNeeds": {
        "requestedEnergyTransfer": "DC",
        "dcChargingParameters": {
            "evMaxCurrent": 100,
            "evMaxVoltage": 400,
            "energyAmount": 20000,
            "evEnergyCapacity": 60000,
            "stateOfCharge": 50,
        },
    },
}


async def test_session_shows_with_energy_after_updates(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    st = await plug_in(gateway_server, "CS-S1", "tx-s1", "TOKEN-S1")
    await st.tx_event("Updated", "tx-s1", energy_wh=2500.0, power_w=7200.0, offset_s=60)
    await st.tx_event("Updated", "tx-s1", energy_wh=5000.0, power_w=7100.0, offset_s=120)

    got = await api.get("/api/v1/sessions/tx-s1", headers=OPERATOR)
    assert got.status_code == 200, got.text
    s = got.json()
    assert s["active"] is True and s["station_id"] == "CS-S1" and s["evse_id"] == 1
    assert s["energy_in_kwh"] == 5.0 and s["power_kw"] == 7.1
    assert s["started_at"].endswith("Z") and s["plan"] is None and s["scheduler_enabled"] is False
    assert s["resolved"]["energy_source"] == "forecast"

    active = await api.get("/api/v1/sessions?active=true", headers=OPERATOR)
    assert [x["transaction_id"] for x in active.json()["items"]] == ["tx-s1"]
    await st.tx_event("Ended", "tx-s1", energy_wh=6000.0, trigger="EVCommunicationLost", offset_s=180)
    past = await api.get("/api/v1/sessions?active=false", headers=OPERATOR)
    assert past.json()["total"] == 1
    ended = past.json()["items"][0]
    assert ended["energy_in_kwh"] == 6.0 and ended["active"] is False and ended["ended_at"].endswith("Z")
    late = await api.put("/api/v1/sessions/tx-s1/preferences", headers=OPERATOR, json={"energy_kwh": 1})
    assert late.status_code == 409
    await st.ws.close()


async def test_preferences_validation_and_who_when(
    gateway_server: GatewayHarness,
    api: httpx.AsyncClient,
    database_url: str,
) -> None:
    assert gateway_server.gw is not None
    st = await plug_in(gateway_server, "CS-P1", "tx-p1", "TOKEN-P1")
    await st.ws.ok("NotifyEVChargingNeeds", DC_NEEDS)
    now = gateway_server.gw.clock.now()
    url = "/api/v1/sessions/tx-p1/preferences"

    async def refused(body: dict[str, Any], field: str) -> str:
        r = await api.put(url, headers=OPERATOR, json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "validation_error"
        assert field in err["message"] or err["details"].get("field") == field, err
        return str(err["message"])

    assert "past" in await refused(
        {"departure_time": to_rfc3339(now - timedelta(minutes=5))}, "departure_time"
    )
    await refused({"departure_time": "2026-01-01T08:00:00"}, "departure_time")  # no offset
    assert "battery" in await refused({"energy_kwh": 45.0}, "energy_kwh")  # 60 kWh at 50%: room for 30
    await refused({"energy_kwh": -1.0}, "energy_kwh")
    await refused({"energy_kwh": 1e9}, "energy_kwh")
    await refused({"target_soc": 1.5}, "target_soc")
    await refused({"reserve_soc": -0.1}, "reserve_soc")
    await refused({"target_soc": 0.5, "reserve_soc": 0.6}, "reserve_soc")
    await refused({"mode": "turbo"}, "mode")
    await refused({"energy_kwh": 5, "colour": "red"}, "colour")

    departure = now + timedelta(hours=3)
    ok = await api.put(
        url,
        headers=OPERATOR,
        json={
            "departure_time": to_rfc3339(departure),
            "energy_kwh": 20.0,
            "reserve_soc": 0.2,
            "allow_discharge": False,
            "mode": "smart",
        },
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["delivery"]["energy_wanted_kwh"] == 20.0
    assert abs((parse_rfc3339(body["delivery"]["departure_time"]) - departure).total_seconds()) < 0.01
    assert body["delivery"]["energy_by_departure_kwh"] is None and body["delivery"]["fully_met"] is None
    prefs = body["session"]["preferences"]
    assert (
        prefs["set_by"] == "operator" and prefs["set_at"].endswith("Z") and prefs["allow_discharge"] is False
    )

    # Fields left out keep their value; the driver's own change is recorded as theirs.
    token = (await api.post("/api/v1/driver-tokens", headers=OPERATOR, json={"id_token": "TOKEN-P1"})).json()
    driver = {"Authorization": f"Bearer {token['token']}"}
    charge_now = await api.put(url, headers=driver, json={"mode": "charge_now"})
    assert charge_now.status_code == 200, charge_now.text
    p = charge_now.json()["session"]["preferences"]
    assert p["mode"] == "charge_now" and p["energy_kwh"] == 20.0 and p["set_by"] == f"driver:{token['id']}"
    assert charge_now.json()["session"]["resolved"]["allow_discharge"] is False

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT set_by, set_at, mode, energy_kwh FROM preferences "
            "WHERE transaction_id = 'tx-p1' ORDER BY id"
        )
    finally:
        await conn.close()
    assert [(r["set_by"], r["mode"], r["energy_kwh"]) for r in rows] == [
        ("operator", "smart", 20.0),
        (f"driver:{token['id']}", "charge_now", 20.0),
    ]
    assert all(abs((r["set_at"] - now).total_seconds()) < 60 for r in rows)

    # 25 kWh in since the EV read 50 %: the wish still counts from plug-in, where 30 kWh was the room.
    await st.tx_event("Updated", "tx-p1", energy_wh=25_000.0, power_w=7000.0, offset_s=60)
    assert "battery" in await refused({"energy_kwh": 40.0}, "energy_kwh")
    await st.ws.close()


async def _answer_profiles(st: PluggedStation, seen: asyncio.Queue[dict[str, Any]]) -> None:
    while True:
        call = await st.ws.incoming_calls.get()
        if call[2] == "SetChargingProfile":
            await seen.put(call[3])
            await st.ws.answer(call, {"status": "Accepted"})
        else:
            await st.ws.answer(call, {"status": "Accepted"})


async def test_driver_change_replans_and_reaches_the_charger(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2)
    assert h.gw is not None and h.gw.scheduler is not None
    st = await plug_in(h, "CS-MPC", "tx-mpc", "TOKEN-MPC", evses=[(1, 11.0, 0.0, False)])
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answering = asyncio.create_task(_answer_profiles(st, seen))
    gw = h.gw

    async def in_state() -> bool:
        return gw.state.session_by_tx("CS-MPC", "tx-mpc") is not None

    await eventually(in_state, "the scheduler to see the session")
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        # Whatever the plug-in already triggered is drained, so the next profile is the driver's.
        await eventually(lambda: _quiet(seen), "the plug-in re-plan to settle")
        departure = gw.clock.now() + timedelta(hours=4)
        r = await api.put(
            "/api/v1/sessions/tx-mpc/preferences",
            headers=OPERATOR,
            json={"departure_time": to_rfc3339(departure), "energy_kwh": 12.0},
        )
        assert r.status_code == 200, r.text
        delivery = r.json()["delivery"]
        assert delivery["replanned"] is True
        # 11 kW for 4 h is plenty: the plan delivers the 12 kWh asked for.
        assert delivery["energy_by_departure_kwh"] is not None
        assert abs(delivery["energy_by_departure_kwh"] - 12.0) < 0.5, delivery
        assert delivery["fully_met"] is True
        plan = r.json()["session"]["plan"]
        assert plan is not None and len(plan["power_kw"]) == len(plan["step_starts"]) > 0

        profile = await asyncio.wait_for(seen.get(), EVENT_TIMEOUT_S)
        assert profile["evseId"] == 1
        assert profile["chargingProfile"]["transactionId"] == "tx-mpc"

        # Now ask for more than 4 h at 11 kW can give: the answer says it is not fully met.
        r2 = await api.put(
            "/api/v1/sessions/tx-mpc/preferences",
            headers=OPERATOR,
            json={"departure_time": to_rfc3339(gw.clock.now() + timedelta(hours=1)), "energy_kwh": 40.0},
        )
        assert r2.status_code == 200, r2.text
        d2 = r2.json()["delivery"]
        assert d2["fully_met"] is False and d2["energy_by_departure_kwh"] < 40.0
    answering.cancel()
    await st.ws.close()


async def _plugged_and_settled(h: GatewayHarness, station_id: str, tx_id: str, id_token: str
                               ) -> tuple[PluggedStation, asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    """A station with one 11 kW EVSE and a session on it, answering every profile (into
    ``seen``), once the plug-in's re-plan has settled."""
    st = await plug_in(h, station_id, tx_id, id_token, evses=[(1, 11.0, 0.0, False)])
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answering = asyncio.create_task(_answer_profiles(st, seen))
    await eventually(lambda: _quiet(seen), "the plug-in re-plan to settle")
    return st, seen, answering


async def test_a_replan_outlasting_the_answer_is_not_cut_off(gateway_factory: Any, monkeypatch: Any) -> None:
    """The answer waits for the driver's re-plan only so long (REPLAN_WAIT_S); the re-plan goes
    on past it and pushes its profile: cut off mid-push, stations would run a plan never stored."""
    from gateway.api.routes import sessions

    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2)
    assert h.gw is not None and h.gw.scheduler is not None
    gw = h.gw
    st, _, answering = await _plugged_and_settled(h, "CS-SLOWPUSH", "tx-slow", "TOKEN-SLOW")
    answering.cancel()
    monkeypatch.setattr(sessions, "REPLAN_WAIT_S", 0.2)
    plans = gw.bus.subscribe(ev.PlanPublished)
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.put("/api/v1/sessions/tx-slow/preferences", headers=OPERATOR,
                          json={"departure_time": to_rfc3339(gw.clock.now() + timedelta(hours=2)),
                                "energy_kwh": 15.0})
    assert r.status_code == 200, r.text
    assert r.json()["delivery"]["replanned"] is False  # answered before the station took the profile
    call = await asyncio.wait_for(st.ws.incoming_calls.get(), EVENT_TIMEOUT_S)
    assert call[2] == "SetChargingProfile"
    await st.ws.answer(call, {"status": "Accepted"})
    while True:
        published = await asyncio.wait_for(plans.get(), EVENT_TIMEOUT_S)
        assert isinstance(published, ev.PlanPublished)
        if published.summary["trigger"] == "driver":
            break
    assert published.summary["profiles_sent"] == 1 and published.summary["profiles_failed"] == 0
    plans.close()
    await st.ws.close()


async def _default_and_planned_profiles_sent(seen: asyncio.Queue[dict[str, Any]]) -> None:
    """Until the station has been sent its default and its transaction's planned profile again."""
    purposes = set()
    while purposes != {"TxDefaultProfile", "TxProfile"}:
        sent = await asyncio.wait_for(seen.get(), EVENT_TIMEOUT_S)
        purposes.add(sent["chargingProfile"]["chargingProfilePurpose"])


async def test_cleared_profiles_are_sent_again(gateway_factory: Any) -> None:
    """An operator's ClearChargingProfile may leave the station without the plan's limit (or any):
    the default and the transaction's planned profile go out again though the plan is unchanged."""
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2)
    assert h.gw is not None
    st, seen, answering = await _plugged_and_settled(h, "CS-CLEAR", "tx-clear", "TOKEN-CLEAR")
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.post("/api/v1/stations/CS-CLEAR/commands/clear-charging-profile", headers=OPERATOR, json={})
    assert r.status_code == 200 and r.json()["response"] == {"status": "Accepted"}, r.text
    await _default_and_planned_profiles_sent(seen)
    answering.cancel()
    await st.ws.close()


def _hold_solves(sched: Any, monkeypatch: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """The scheduler's solves wait, once started (``solving``), until ``release`` is set."""
    solving, release = asyncio.Event(), asyncio.Event()
    solve = sched._solve

    async def held(*args: Any) -> Any:
        solving.set()
        await release.wait()
        return await solve(*args)

    monkeypatch.setattr(sched, "_solve", held)
    return solving, release


async def test_a_plan_for_a_session_that_ended_while_it_was_solved_is_not_pushed(
        gateway_factory: Any, monkeypatch: Any) -> None:
    """The EV left while the site was being solved: its profile would be refused (no such
    transaction) and the refusal would hold the EVSE's next session at its safe limit."""
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2)
    assert h.gw is not None and h.gw.scheduler is not None
    gw, sched = h.gw, h.gw.scheduler
    st, seen, answering = await _plugged_and_settled(h, "CS-GONE", "tx-gone", "TOKEN-GONE")
    solving, release = _hold_solves(sched, monkeypatch)
    replan = sched.replan_task("test")
    await asyncio.wait_for(solving.wait(), EVENT_TIMEOUT_S)
    await st.tx_event("Ended", "tx-gone", energy_wh=1000.0, offset_s=60)

    async def ended() -> bool:
        return gw.state.session_by_tx("CS-GONE", "tx-gone") is None

    await eventually(ended, "the session to end")
    release.set()
    outcome = await asyncio.wait_for(replan, EVENT_TIMEOUT_S)
    assert outcome is not None and outcome.profiles_sent == 0 and outcome.profiles_failed == 0
    assert seen.empty() and not sched._rejected
    answering.cancel()
    await st.ws.close()


async def test_drivers_changes_during_a_re_plan_share_the_next_one(gateway_factory: Any, monkeypatch: Any) -> None:
    """Twenty drivers' changes while a re-plan runs queue one re-plan, which reads all of them
    as it starts, not twenty (each a full solve and push, ahead of the periodic ones)."""
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2)
    assert h.gw is not None and h.gw.scheduler is not None
    sched = h.gw.scheduler
    st, _, answering = await _plugged_and_settled(h, "CS-MANY", "tx-many", "TOKEN-MANY")
    solving, release = _hold_solves(sched, monkeypatch)
    running = sched.replan_task("driver")
    await asyncio.wait_for(solving.wait(), EVENT_TIMEOUT_S)
    before = sched.solves
    queued = [sched.replan_task("driver") for _ in range(20)]
    assert all(t is queued[0] for t in queued) and queued[0] is not running
    release.set()
    await asyncio.wait_for(asyncio.gather(running, *queued), EVENT_TIMEOUT_S)
    assert sched.solves - before <= 3  # the held one, the shared one (and perhaps an event's), not 21
    answering.cancel()
    await st.ws.close()


async def test_a_change_to_a_session_that_ended_unseen_leaves_the_live_one_alone(gateway_factory: Any) -> None:
    """The old session's Ended never came and a new one runs on the EVSE: a driver's change to
    the old one is stored, and the live session stays the new one (it would otherwise be replaced
    and its updates ignored, so never planned)."""
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2)
    assert h.gw is not None
    gw = h.gw
    st = await plug_in(h, "CS-UNSEEN", "tx-old", "TOKEN-OLD", evses=[(1, 11.0, 0.0, False)])
    answering = asyncio.create_task(_answer_profiles(st, asyncio.Queue()))
    await st.tx_event("Started", "tx-new", id_token="TOKEN-NEW", energy_wh=0.0, trigger="CablePluggedIn",
                      offset_s=600)

    async def new_is_live() -> bool:
        s = gw.state.evses[("CS-UNSEEN", 1)].session
        return s is not None and s.transaction_id == "tx-new"

    await eventually(new_is_live, "the new session to be live")
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.put("/api/v1/sessions/tx-old/preferences?station_id=CS-UNSEEN", headers=OPERATOR,
                          json={"energy_kwh": 10.0})
    assert r.status_code in (200, 409), r.text
    assert await new_is_live()
    answering.cancel()
    await st.ws.close()


async def _quiet(seen: asyncio.Queue[dict[str, Any]]) -> bool:
    """True once no profile arrived for a while (drains what came)."""
    while not seen.empty():
        seen.get_nowait()
    await asyncio.sleep(1.0)
    return seen.empty()


async def test_energy_and_target_soc_replace_each_other(gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    """Two ways of saying how much: the one set last is the one in force. Kept side by side, a
    kWh set earlier won over a target SoC set later, and both showed as the driver's."""
    st = await plug_in(gateway_server, "CS-P9", "tx-p9", "TOKEN-P9")
    await st.ws.ok("NotifyEVChargingNeeds", DC_NEEDS)  # 60 kWh battery at 50 %
    url = "/api/v1/sessions/tx-p9/preferences"
    first = await api.put(url, headers=OPERATOR, json={"energy_kwh": 5.0})
    assert first.status_code == 200, first.text
    second = await api.put(url, headers=OPERATOR, json={"target_soc": 0.9})
    assert second.status_code == 200, second.text
    prefs = second.json()["session"]["preferences"]
    assert prefs["energy_kwh"] is None and prefs["target_soc"] == 0.9
    resolved = second.json()["session"]["resolved"]
    assert resolved["energy_source"] == "driver" and abs(resolved["energy_wanted_kwh"] - 24.0) < 1e-6
    third = await api.put(url, headers=OPERATOR, json={"energy_kwh": 7.0})
    prefs = third.json()["session"]["preferences"]
    assert prefs["energy_kwh"] == 7.0 and prefs["target_soc"] is None
    # A null clears only itself.
    await api.put(url, headers=OPERATOR, json={"target_soc": 0.8})
    fourth = await api.put(url, headers=OPERATOR, json={"energy_kwh": None})
    prefs = fourth.json()["session"]["preferences"]
    assert prefs["energy_kwh"] is None and prefs["target_soc"] == 0.8


async def test_profiles_are_sent_again_after_a_clear_the_station_never_answered(gateway_factory: Any) -> None:
    """A ClearChargingProfile that timed out may have been carried out (the reply lost): the
    default and the planned profile go out again, as after an Accepted."""
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2, call_timeout_s=1.0)
    assert h.gw is not None
    st, seen, answering = await _plugged_and_settled(h, "CS-CLEARLOST", "tx-cl", "TOKEN-CL")
    answering.cancel()

    async def answer_profiles_only() -> None:
        while True:
            call = await st.ws.incoming_calls.get()
            if call[2] == "SetChargingProfile":
                await seen.put(call[3])
                await st.ws.answer(call, {"status": "Accepted"})  # a ClearChargingProfile: no reply

    answering = asyncio.create_task(answer_profiles_only())
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.post("/api/v1/stations/CS-CLEARLOST/commands/clear-charging-profile",
                           headers=OPERATOR, json={})
    assert r.status_code == 504 and r.json()["error"]["code"] == "station_timeout", r.text
    await _default_and_planned_profiles_sent(seen)
    answering.cancel()
    await st.ws.close()


async def test_a_stored_change_is_not_answered_as_a_database_failure(
        gateway_server: GatewayHarness, api: httpx.AsyncClient, monkeypatch: Any) -> None:
    """The answer read the needs again after the commit: a database failing just then answered
    503 database_unavailable ("nothing was stored, try again") for a change stored and in force."""
    from sqlalchemy.exc import OperationalError

    assert gateway_server.gw is not None
    await plug_in(gateway_server, "CS-P10", "tx-p10", "TOKEN-P10")
    planning = gateway_server.gw.planning
    real = planning.session_needs
    calls = 0

    async def first_only(*a: Any, **k: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OperationalError("SELECT", {}, ConnectionResetError("the database went away"))
        return await real(*a, **k)

    monkeypatch.setattr(planning, "session_needs", first_only)
    r = await api.put("/api/v1/sessions/tx-p10/preferences", headers=OPERATOR, json={"mode": "charge_now"})
    assert r.status_code == 200, r.text
    assert r.json()["session"]["preferences"]["mode"] == "charge_now"


async def test_a_change_that_fails_to_commit_keeps_a_session_its_start_event_confirmed_meanwhile(
        gateway_factory: Any, monkeypatch: Any) -> None:
    """The change came before the live state had the session (its SessionStarted still in the
    scheduler's queue), so it put the session there; the SessionStarted was folded in while the
    commit ran (and kept it), then the commit failed. Undoing the change used to take the session
    out of the live state again: planned as an idle EVSE until the station said more."""
    from sqlalchemy.exc import OperationalError

    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, replan_debounce_s=0.2)
    gw = h.gw
    assert gw is not None and gw.scheduler is not None
    st = await plug_in(h, "CS-P11", "tx-p11", "TOKEN-P11")

    async def live() -> bool:
        return gw.state.session_by_tx("CS-P11", "tx-p11") is not None

    await eventually(live, "the session in the live state")
    evse = gw.state.evse("CS-P11", 1)
    session = evse.session
    assert session is not None
    evse.session = None  # as if its SessionStarted had not been folded in yet
    real = gw.transactions.change_preferences

    async def commit_fails(*a: Any, applied: Any = None, **k: Any) -> Any:
        def applied_then_started(prefs: Any) -> None:
            applied(prefs)
            gw.state.apply(ev.SessionStarted(gw.clock.now(), "CS-P11", 1, "tx-p11", None, session.started_at))
        await real(*a, applied=applied_then_started, **k)
        raise OperationalError("COMMIT", {}, ConnectionResetError("the database went away"))

    monkeypatch.setattr(gw.transactions, "change_preferences", commit_fails)
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.put("/api/v1/sessions/tx-p11/preferences", headers=OPERATOR, json={"mode": "charge_now"})
    assert r.status_code >= 500, r.text  # (a 500 here: raised by the test, not the database layer)
    kept = gw.state.session_by_tx("CS-P11", "tx-p11")
    assert kept is not None  # still planned
    assert kept.preferences.mode is None  # the change is undone
    await st.ws.close()
