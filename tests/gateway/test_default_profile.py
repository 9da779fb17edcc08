"""Every booted station gets a safe TxDefaultProfile before any plan exists."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx

from gateway.config import SiteConfig
from gateway.ocpp.defaults import default_limit_kw
from tests.api.conftest import OPERATOR
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.gateway.test_handlers import PASSWORD
from tests.ocpp_client import RawStation


def test_default_limit_shares_the_site_limit() -> None:
    assert default_limit_kw(3.7, 500.0, 10) == 3.7
    assert default_limit_kw(3.7, 20.0, 10) == 2.0  # ten EVSEs at full default would break 20 kW
    assert default_limit_kw(3.7, 20.0, 0) == 3.7


async def test_boot_is_followed_by_a_safe_default_profile(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory(site=SiteConfig(import_limit_kw=20.0), scheduler_enabled=True,
                                              replan_period_s=3600.0)
    for i in range(8):
        await h.add_station(f"CS-{i}", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    st = await RawStation.connect(h.ocpp_url, "CS-0", PASSWORD)
    boot = await st.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    assert boot["status"] == "Accepted"
    call = await st.next_call()
    assert call[2] == "SetChargingProfile"
    payload = call[3]
    assert payload["evseId"] == 0
    prof = payload["chargingProfile"]
    assert (prof["chargingProfilePurpose"], prof["chargingProfileKind"]) == ("TxDefaultProfile", "Relative")
    assert prof["chargingSchedule"][0]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 2500}]
    await st.answer(call, {"status": "Accepted"})
    await st.close()


async def test_a_new_site_limit_moves_the_default_of_every_connected_station(gateway_factory: Any) -> None:
    """The planner counts every idle EVSE at the current default: one still holding the default
    of a higher limit would draw more than it counts."""
    h: GatewayHarness = await gateway_factory(site=SiteConfig(import_limit_kw=20.0), scheduler_enabled=True,
                                              replan_period_s=3600.0)
    for i in range(8):
        await h.add_station(f"CS-{i}", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    st = await RawStation.connect(h.ocpp_url, "CS-0", PASSWORD)
    await st.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    call = await st.next_call()
    assert call[3]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 2500
    await st.answer(call, {"status": "Accepted"})
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.put("/api/v1/site/limits", headers=OPERATOR, json={"import_kw": 8.0, "export_kw": 0.0})
        assert r.status_code == 200, r.text
    while True:  # the re-plan's calls may come first
        call = await asyncio.wait_for(st.next_call(), EVENT_TIMEOUT_S)
        await st.answer(call, {"status": "Accepted"})
        prof = call[3].get("chargingProfile", {})
        if call[2] == "SetChargingProfile" and prof.get("chargingProfilePurpose") == "TxDefaultProfile":
            break
    assert call[3]["evseId"] == 0
    assert prof["chargingSchedule"][0]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 1000}]
    await st.close()


async def _booted_with_default(h: GatewayHarness, station_id: str) -> RawStation:
    """A station that booted and took its default (answered Accepted)."""
    st = await RawStation.connect(h.ocpp_url, station_id, PASSWORD)
    await st.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    await _next_default(st)
    return st


async def _next_default(st: RawStation) -> int:
    """The limit (W) of the next TxDefaultProfile the station is sent, every call answered Accepted."""
    while True:  # a re-plan's calls may come first
        call = await asyncio.wait_for(st.next_call(), EVENT_TIMEOUT_S)
        await st.answer(call, {"status": "Accepted"})
        prof = call[3].get("chargingProfile", {})
        if call[2] == "SetChargingProfile" and prof.get("chargingProfilePurpose") == "TxDefaultProfile":
            return int(prof["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"])


async def _eight_evse_site(gateway_factory: Any) -> GatewayHarness:
    h: GatewayHarness = await gateway_factory(site=SiteConfig(import_limit_kw=20.0), scheduler_enabled=True,
                                              replan_period_s=3600.0)
    for i in range(8):
        await h.add_station(f"CS-{i}", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    return h


async def test_what_a_station_holds_is_known_after_a_restart(gateway_factory: Any) -> None:
    """A station keeps its default across a gateway restart and reconnects without booting: a
    new site limit must still move it."""
    h = await _eight_evse_site(gateway_factory)
    st = await _booted_with_default(h, "CS-0")  # 20 kW / 8 = 2500 W
    await st.close()
    await h.restart()
    st = await RawStation.connect(h.ocpp_url, "CS-0", PASSWORD)  # no BootNotification
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.put("/api/v1/site/limits", headers=OPERATOR, json={"import_kw": 8.0, "export_kw": 0.0})
        assert r.status_code == 200, r.text
    assert await _next_default(st) == 1000
    await st.close()


async def test_more_evses_on_the_site_move_every_default(gateway_factory: Any) -> None:
    h = await _eight_evse_site(gateway_factory)
    st = await _booted_with_default(h, "CS-0")
    for i in range(8, 10):  # ten EVSEs share 20 kW now
        await h.add_station(f"CS-{i}", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.post("/api/v1/stations", headers=OPERATOR,
                           json={"id": "CS-10", "password": PASSWORD, "evses": [{"evse_id": 1, "max_charge_kw": 11.0}]})
        assert r.status_code == 201, r.text
    assert await _next_default(st) == round(20_000 / 11)
    await st.close()


async def test_an_import_cap_in_force_or_coming_lowers_the_defaults(gateway_factory: Any) -> None:
    h = await _eight_evse_site(gateway_factory)
    st = await _booted_with_default(h, "CS-0")
    assert h.gw is not None
    now = h.gw.clock.now()
    event = {"id": "cap-1", "start": (now + timedelta(minutes=2)).isoformat(),
             "end": (now + timedelta(hours=1)).isoformat(), "kind": "import_cap", "cap_kw": 4.0}
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.post("/api/v1/grid-events", headers=OPERATOR, json=event)
        assert r.status_code == 201, r.text
    assert await _next_default(st) == 500  # 4 kW / 8: the cap starts before the next re-plan
    await st.close()


async def test_a_default_left_unanswered_is_sent_again_at_the_next_re_plan(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory(site=SiteConfig(import_limit_kw=20.0), scheduler_enabled=True,
                                              replan_period_s=3600.0, call_timeout_s=0.5)
    for i in range(8):
        await h.add_station(f"CS-{i}", PASSWORD, evses=[(1, 11.0, 0.0, False)])
    st = await RawStation.connect(h.ocpp_url, "CS-0", PASSWORD)
    await st.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    unanswered = await asyncio.wait_for(st.next_call(), EVENT_TIMEOUT_S)  # the default: left to time out
    assert unanswered[3]["chargingProfile"]["chargingProfilePurpose"] == "TxDefaultProfile"
    assert h.gw is not None and h.gw.scheduler is not None

    async def timed_out() -> bool:
        return h.gw.default_profiles.sent.get("CS-0") == "CallTimeout"  # type: ignore[union-attr]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT_S
    while not await timed_out():
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    await h.gw.scheduler.replan("test")
    assert await _next_default(st) == 2500
    await st.close()


async def test_a_refused_default_is_known_after_a_restart(gateway_factory: Any) -> None:
    """A station that refused its default charges unmanaged, at its rating, and is planned so.
    After a restart it reconnects without booting: the refusal was forgotten (only acceptances
    were stored), and its EVSE was counted at the 2.5-kW default instead of its 11 kW."""
    h = await _eight_evse_site(gateway_factory)
    st = await RawStation.connect(h.ocpp_url, "CS-0", PASSWORD)
    await st.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    call = await asyncio.wait_for(st.next_call(), EVENT_TIMEOUT_S)
    assert call[3]["chargingProfile"]["chargingProfilePurpose"] == "TxDefaultProfile"
    await st.answer(call, {"status": "Rejected"})
    assert h.gw is not None

    async def stored() -> bool:
        assert h.gw is not None
        rows = await h.gw.stations.list(limit=100)
        return any(r.id == "CS-0" and r.default_answer == "Rejected" for r in rows)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT_S
    while not await stored():
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    await st.close()
    await h.restart()
    st = await RawStation.connect(h.ocpp_url, "CS-0", PASSWORD)  # no BootNotification
    assert h.gw is not None and h.gw.scheduler is not None
    assert h.gw.default_profiles.sent.get("CS-0") == "Rejected"
    assert h.gw.scheduler._held_default_kw(("CS-0", 1)) == 11.0
    await st.close()


async def test_an_evse_named_by_a_status_before_the_site_state_knows_it_moves_the_defaults() -> None:
    """The site sync applies a StatusNotification's event from its own queue, maybe after the
    defaults do: the EVSE it names is counted all the same (nothing looked again until the next
    re-plan, every default a ninth too high meanwhile)."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from gateway import events as ev
    from gateway.config import Settings
    from gateway.domain import EvseSpec
    from gateway.ocpp.defaults import DefaultProfiles
    from gateway.state import EvseState, SiteState

    now = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    settings = Settings(site=SiteConfig(import_limit_kw=20.0), replan_period_s=3600.0)
    state = SiteState.from_settings(settings)
    for i in range(8):
        state.evses[(f"CS-{i}", 1)] = EvseState(EvseSpec(f"CS-{i}", 1, 11.0))
    sent: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def set_charging_profile(station_id: str, _evse: int, prof: dict[str, Any]) -> dict[str, Any]:
        sent.put_nowait((station_id, prof["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"]))
        return {"status": "Accepted"}

    async def set_default_answer(*_a: Any) -> None:
        return None

    bus = ev.EventBus()
    gw: Any = SimpleNamespace(settings=settings, state=state, bus=bus, clock=SimpleNamespace(now=lambda: now),
                              ocpp=SimpleNamespace(registry={"CS-0": object()}),
                              commands=SimpleNamespace(set_charging_profile=set_charging_profile),
                              stations=SimpleNamespace(set_default_answer=set_default_answer))
    defaults = DefaultProfiles(gw)
    defaults.limit_taken["CS-0"] = 2.5  # 20 kW shared by 8
    defaults.start()
    try:
        bus.publish(ev.StatusChanged(now, "CS-9", 1, 1, "Available"))  # not in the site state yet
        assert await asyncio.wait_for(sent.get(), EVENT_TIMEOUT_S) == ("CS-0", round(20_000 / 9))
    finally:
        await defaults.stop()
