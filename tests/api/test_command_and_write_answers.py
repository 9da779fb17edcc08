"""REST answers that must say what happened: a command to a station another node holds, a clear
that never went out, a write whose database went away after its commit, bounded telemetry
windows, a delivery no re-plan answered, the active filter, connector numbers, times with Z."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx

from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.db import models as m
from tests.api.conftest import OPERATOR, PASSWORD, eventually, plug_in
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.ocpp_client import RawStation


async def _connect(h: GatewayHarness, station_id: str) -> RawStation:
    await h.add_station(station_id, PASSWORD, evses=[(1, 11.0, 0.0, False)])
    ws = await RawStation.connect(h.ocpp_url, station_id, PASSWORD)
    await ws.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    return ws


async def test_a_command_to_a_station_on_another_node_names_that_node(
        gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    gw = gateway_server.gw
    assert gw is not None
    await gateway_server.add_station("CS-REMOTE", PASSWORD)
    # Another node sharing the database holds its connection (the flag that node writes).
    await gw.stations.set_connected("CS-REMOTE", True, gw.clock.now(), "node-2")
    shown = (await api.get("/api/v1/stations/CS-REMOTE", headers=OPERATOR)).json()
    assert shown["connected"] is True and shown["connected_node"] == "node-2"
    r = await api.post("/api/v1/stations/CS-REMOTE/commands/reset", headers=OPERATOR, json={})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "station_on_other_node", r.text
    assert err["details"]["connected_node"] == "node-2" and "node-2" in err["message"]
    # Not connected anywhere: still the plain "not connected".
    await gw.stations.set_connected("CS-REMOTE", False, gw.clock.now(), "node-2")
    r = await api.post("/api/v1/stations/CS-REMOTE/commands/reset", headers=OPERATOR, json={})
    assert r.status_code == 409 and r.json()["error"]["code"] == "station_offline", r.text


async def test_a_clear_that_was_never_sent_is_not_counted_as_a_clear(
        gateway_factory: Any, monkeypatch: Any) -> None:
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True, call_timeout_s=0.5)
    gw = h.gw
    assert gw is not None and gw.scheduler is not None
    cleared: list[str] = []
    monkeypatch.setattr(gw.scheduler, "profiles_cleared", cleared.append)
    ws = await _connect(h, "CS-BUSY")
    held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    actions: list[str] = []

    async def station() -> None:
        while True:
            call = await ws.next_call()
            actions.append(call[2])
            if call[2] == "Reset":
                held.set_result(call)  # left unanswered: the one call in flight stays taken
            else:
                await ws.answer(call, {"status": "Accepted"})

    answering = asyncio.create_task(station())
    # A call the station takes its time over holds the station's one slot (OCPP-J: one CALL in flight).
    slow = asyncio.create_task(gw.commands.call("CS-BUSY", "Reset", {"type": "OnIdle"}, EVENT_TIMEOUT_S))
    await asyncio.wait_for(held, EVENT_TIMEOUT_S)
    from gateway.metrics import REGISTRY

    def not_sent() -> float:
        labels = {"action": "ClearChargingProfile", "outcome": "not_sent"}
        return REGISTRY.get_sample_value("gateway_ocpp_calls_sent_total", labels) or 0.0

    before = not_sent()
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.post("/api/v1/stations/CS-BUSY/commands/clear-charging-profile", headers=OPERATOR, json={})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "call_not_sent", r.text
    assert not_sent() == before + 1  # counted as not sent, not as a failure of the station
    assert "ClearChargingProfile" not in actions  # it never went out ...
    assert cleared == []  # ... so the profiles in force are not taken as cleared
    await ws.answer(await held, {"status": "Accepted"})
    assert (await asyncio.wait_for(slow, EVENT_TIMEOUT_S)) == {"status": "Accepted"}
    answering.cancel()
    await ws.close()


async def _cut_after(proxy: Any, monkeypatch: Any, repo: Any, method: str) -> None:
    """The database goes away right after ``repo.method`` committed."""
    original = getattr(repo, method)

    async def then_cut(*a: Any, **k: Any) -> Any:
        out = await original(*a, **k)
        await proxy.cut()
        return out

    monkeypatch.setattr(repo, method, then_cut)


async def test_a_grid_event_stored_is_answered_as_stored_if_the_database_goes_right_after(
        gateway_factory: Any, proxy_and_url: tuple[Any, str], monkeypatch: Any) -> None:
    proxy, url = proxy_and_url
    h: GatewayHarness = await gateway_factory(database_url=url)
    gw = h.gw
    assert gw is not None
    start = gw.clock.now().replace(microsecond=0) + timedelta(hours=1)
    body = {"start": to_rfc3339(start), "end": to_rfc3339(start + timedelta(hours=2)), "kind": "import_cap",
            "cap_kw": 40.0}
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        await _cut_after(proxy, monkeypatch, gw.planning, "upsert_grid_event")
        r = await api.post("/api/v1/grid-events", headers=OPERATOR, json=body)
        assert r.status_code == 201, r.text  # stored: not "unavailable, try again" (a retry made a second)
        made = r.json()
        assert made["kind"] == "import_cap" and made["cap_kw"] == 40.0 and made["source"] == "rest"
        assert made["start"] == body["start"] and made["cancelled_at"] is None
        monkeypatch.undo()
        await proxy.restore()
        listed = (await api.get("/api/v1/grid-events", headers=OPERATOR)).json()
        assert [e["id"] for e in listed["items"]] == [made["id"]]

        await _cut_after(proxy, monkeypatch, gw.planning, "cancel_grid_event")
        r = await api.delete(f"/api/v1/grid-events/{made['id']}", headers=OPERATOR)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == made["id"] and r.json()["cancelled_at"] is not None
        monkeypatch.undo()
        await proxy.restore()
        assert (await api.get("/api/v1/grid-events", headers=OPERATOR)).json()["total"] == 0


async def test_a_station_written_is_answered_as_written_if_the_database_goes_right_after(
        gateway_factory: Any, proxy_and_url: tuple[Any, str], monkeypatch: Any) -> None:
    proxy, url = proxy_and_url
    h: GatewayHarness = await gateway_factory(database_url=url)
    gw = h.gw
    assert gw is not None
    body = {"id": "CS-W", "password": PASSWORD, "evses": [{"evse_id": 2, "max_charge_kw": 22.0, "phases": 1},
                                                          {"evse_id": 1, "max_charge_kw": 11.0}]}
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        await _cut_after(proxy, monkeypatch, gw.stations, "create")
        r = await api.post("/api/v1/stations", headers=OPERATOR, json=body)
        assert r.status_code == 201, r.text
        made = r.json()
        monkeypatch.undo()
        await proxy.restore()
        shown = (await api.get("/api/v1/stations/CS-W", headers=OPERATOR)).json()
        assert made == shown  # the answer is what a read shows

        await _cut_after(proxy, monkeypatch, gw.stations, "set_enabled")
        r = await api.post("/api/v1/stations/CS-W/disable", headers=OPERATOR)
        assert r.status_code == 200, r.text
        assert r.json() == {**shown, "enabled": False}
        monkeypatch.undo()
        await proxy.restore()
        assert (await api.get("/api/v1/stations/CS-W", headers=OPERATOR)).json()["enabled"] is False


async def test_telemetry_windows_and_buckets_are_bounded(
        gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    gw = gateway_server.gw
    assert gw is not None
    now = gw.clock.now()
    raw = "/api/v1/telemetry/meter-values?station_id=CS-X"
    buckets = "/api/v1/telemetry/meter-values/buckets?station_id=CS-X"

    def window(days: float) -> str:
        return f"&start={to_rfc3339(now - timedelta(days=days))}&end={to_rfc3339(now)}"

    for path in (raw, f"{buckets}&bucket_s=3600"):
        r = await api.get(f"{path}&start=1970-01-01T00:00:00Z&end=8999-01-01T00:00:00Z", headers=OPERATOR)
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "start", r.text
        r = await api.get(f"{path}&start={to_rfc3339(now - timedelta(days=40))}", headers=OPERATOR)
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "start", r.text
        assert (await api.get(f"{path}{window(31)}", headers=OPERATOR)).status_code == 200
    # The default day in 1-s buckets is allowed; a month of them is millions of groups.
    assert (await api.get(f"{buckets}&bucket_s=1", headers=OPERATOR)).status_code == 200
    r = await api.get(f"{buckets}&bucket_s=1{window(31)}", headers=OPERATOR)
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "bucket_s", r.text
    assert (await api.get(f"{buckets}&bucket_s=60{window(31)}", headers=OPERATOR)).status_code == 200


async def test_a_delivery_no_replan_answered_is_not_shown_as_the_new_one(
        gateway_factory: Any, monkeypatch: Any) -> None:
    h: GatewayHarness = await gateway_factory(scheduler_enabled=True)
    gw = h.gw
    assert gw is not None and gw.scheduler is not None
    st = await plug_in(h, "CS-D", "TX-D", "CARD-D")

    async def station() -> None:  # takes every profile the plans send
        while True:
            await st.ws.answer(await st.ws.next_call(), {"status": "Accepted"})

    answering = asyncio.create_task(station())
    path = "/api/v1/sessions/TX-D/preferences"
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S * 4) as api:
        r = await api.put(path, headers=OPERATOR, json={"energy_kwh": 5.0})
        assert r.status_code == 200, r.text
        first = r.json()["delivery"]
        assert first["replanned"] is True and first["energy_by_departure_kwh"] is not None

        async def solver_down() -> None:
            raise RuntimeError("solver down")

        monkeypatch.setattr(gw.scheduler, "replan_task", lambda _trigger: asyncio.ensure_future(solver_down()))
        r = await api.put(path, headers=OPERATOR, json={"energy_kwh": 60.0})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["delivery"]["replanned"] is False
        # The plan in force was made for 5 kWh: its energy is no answer to the 60 asked now.
        assert out["delivery"]["energy_by_departure_kwh"] is None and out["delivery"]["fully_met"] is None
        assert out["delivery"]["energy_wanted_kwh"] == 60.0
    answering.cancel()
    await st.ws.close()


async def test_the_active_filter_agrees_with_the_active_shown(
        gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    gw = gateway_server.gw
    assert gw is not None
    st = await plug_in(gateway_server, "CS-A", "TX-STARTED", "CARD-A")
    # A row with no start, not shown active: record_transaction_event makes one so before it
    # applies the event, and an older row may still be so; inserted as that statement does.
    async with gw.sessions.begin() as s:
        s.add(m.Transaction(station_id="CS-A", transaction_id="TX-EARLY", updated_at=gw.clock.now()))

    async def both_listed() -> bool:
        r = await api.get("/api/v1/sessions", headers=OPERATOR)
        return {s["transaction_id"] for s in r.json()["items"]} >= {"TX-STARTED", "TX-EARLY"}

    await eventually(both_listed, "both sessions stored")
    for active in (True, False):
        r = await api.get(f"/api/v1/sessions?active={str(active).lower()}", headers=OPERATOR)
        items = r.json()["items"]
        assert all(s["active"] is active for s in items), items
        assert r.json()["total"] == len(items)
        assert {s["transaction_id"] for s in items} == ({"TX-STARTED"} if active else {"TX-EARLY"})
    await st.ws.close()


async def test_connector_zero_is_refused(gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    await gateway_server.add_station("CS-C0", PASSWORD)
    base = "/api/v1/stations/CS-C0/commands"
    for path, body in (("trigger-message", {"requested_message": "StatusNotification", "evse_id": 1,
                                            "connector_id": 0}),
                       ("change-availability", {"operational_status": "Inoperative", "evse_id": 1,
                                                "connector_id": 0})):
        r = await api.post(f"{base}/{path}", headers=OPERATOR, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["errors"][0]["loc"][-1] == "connector_id"


async def test_a_departure_in_the_past_names_now_in_rfc3339_z(
        gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    gw = gateway_server.gw
    assert gw is not None
    st = await plug_in(gateway_server, "CS-P", "TX-P", "CARD-P")
    past = to_rfc3339(gw.clock.now() - timedelta(hours=1))
    r = await api.put("/api/v1/sessions/TX-P/preferences", headers=OPERATOR, json={"departure_time": past})
    assert r.status_code == 422, r.text
    now = r.json()["error"]["details"]["now"]
    assert now.endswith("Z") and parse_rfc3339(now) > parse_rfc3339(past), now
    await st.ws.close()
