"""Station registration over REST, then a real OCPP connection with that password."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.api.conftest import OPERATOR, PASSWORD, eventually
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.ocpp_client import RawStation


async def test_register_list_get_connect_disable(
    gateway_server: GatewayHarness,
    api: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {
        "id": "CS-REST-1",
        "password": PASSWORD,
        "security_profile": 1,
        "evses": [
            {"evse_id": 1, "max_charge_kw": 22.0, "max_discharge_kw": 11.0, "bidirectional": True},
            {"evse_id": 2, "max_charge_kw": 11.0},
        ],
    }
    created = await api.post("/api/v1/stations", headers=OPERATOR, json=body)
    assert created.status_code == 201, created.text
    st = created.json()
    assert "password" not in created.text and PASSWORD not in created.text
    assert [e["evse_id"] for e in st["evses"]] == [1, 2]
    assert st["evses"][0]["max_discharge_kw"] == 11.0 and st["connected"] is False
    assert (await api.post("/api/v1/stations", headers=OPERATOR, json=body)).status_code == 409

    no_pw = await api.post("/api/v1/stations", headers=OPERATOR, json={"id": "CS-X", "security_profile": 1})
    assert no_pw.status_code == 422 and "password" in no_pw.json()["error"]["message"]

    ws = await RawStation.connect(gateway_server.ocpp_url, "CS-REST-1", PASSWORD)
    await ws.ok(
        "BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
    )

    async def connected() -> bool:
        got = await api.get("/api/v1/stations/CS-REST-1", headers=OPERATOR)
        return bool(got.json()["connected"]) and got.json()["vendor"] == "V"

    await eventually(connected, "the station to show as connected")
    page = await api.get("/api/v1/stations?limit=1&offset=0", headers=OPERATOR)
    assert page.json()["total"] == 1 and page.json()["items"][0]["id"] == "CS-REST-1"
    assert (await api.get("/api/v1/stations/nope", headers=OPERATOR)).status_code == 404

    disabled = await api.post("/api/v1/stations/CS-REST-1/disable", headers=OPERATOR)
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    await asyncio.wait_for(ws.ws.wait_closed(), 30)
    with pytest.raises(InvalidStatus):
        await RawStation.connect(gateway_server.ocpp_url, "CS-REST-1", PASSWORD)
    enabled = await api.post("/api/v1/stations/CS-REST-1/enable", headers=OPERATOR)
    assert enabled.json()["enabled"] is True
    again = await RawStation.connect(gateway_server.ocpp_url, "CS-REST-1", PASSWORD)
    await again.close()
    assert PASSWORD not in caplog.text


async def test_wrong_password_after_rest_registration_is_refused(
    gateway_server: GatewayHarness,
    api: httpx.AsyncClient,
) -> None:
    created = await api.post(
        "/api/v1/stations", headers=OPERATOR, json={"id": "CS-REST-2", "password": PASSWORD}
    )
    assert created.status_code == 201
    with pytest.raises(InvalidStatus) as refused:
        await RawStation.connect(gateway_server.ocpp_url, "CS-REST-2", "another-password-000000")
    assert refused.value.response.status_code == 401


async def test_concurrent_registrations_of_one_id_store_exactly_one(
    gateway_server: GatewayHarness,
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.api.routes import stations as route

    # Both requests are past the existence check before either stores anything: each waits in
    # the (threaded) password hash until the other has arrived there too.
    arrived = threading.Barrier(2, timeout=EVENT_TIMEOUT_S)
    real_hash = route.hash_password

    def hash_together(password: str) -> str:
        arrived.wait()
        return real_hash(password)

    monkeypatch.setattr(route, "hash_password", hash_together)
    passwords = ["password-AAAAAAAAAAAAAAAA", "password-BBBBBBBBBBBBBBBB"]
    answers = await asyncio.gather(*[
        api.post("/api/v1/stations", headers=OPERATOR,
                 json={"id": "CS-RACE", "password": p, "evses": [{"evse_id": 1, "max_charge_kw": 11 + i}]})
        for i, p in enumerate(passwords)])
    assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
    loser = next(r for r in answers if r.status_code == 409).json()["error"]
    assert loser["code"] == "conflict" and "already exists" in loser["message"]
    winner = next(i for i, r in enumerate(answers) if r.status_code == 201)

    # Only the password (and EVSEs) of the registration that answered 201 were stored.
    stored = (await api.get("/api/v1/stations/CS-RACE", headers=OPERATOR)).json()
    assert stored["evses"][0]["max_charge_kw"] == 11 + winner
    ws = await RawStation.connect(gateway_server.ocpp_url, "CS-RACE", passwords[winner])
    await ws.close()
    with pytest.raises(InvalidStatus) as refused:
        await RawStation.connect(gateway_server.ocpp_url, "CS-RACE", passwords[1 - winner])
    assert refused.value.response.status_code == 401


async def test_a_station_can_discharge_evs_that_declared_no_discharge_power(gateway_factory: Any) -> None:
    """Per station, over the site's switch (GATEWAY_DISCHARGE_UNDECLARED_EVS): a DC charger for
    CHAdeMO V2G cars, which cannot declare a discharge power, beside AC chargers whose EVs must.
    Kept across a restart; left out, the site's switch holds (null)."""
    h: GatewayHarness = await gateway_factory()
    assert h.gw is not None
    evse = {"evse_id": 1, "max_charge_kw": 50.0, "max_discharge_kw": 50.0, "bidirectional": True}
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        dc = await api.post("/api/v1/stations", headers=OPERATOR, json={
            "id": "CS-DC", "password": PASSWORD, "discharge_undeclared_evs": True, "evses": [evse]})
        assert dc.status_code == 201, dc.text
        assert dc.json()["discharge_undeclared_evs"] is True
        ac = await api.post("/api/v1/stations", headers=OPERATOR, json={
            "id": "CS-AC", "password": PASSWORD, "evses": [{**evse, "max_charge_kw": 11.0}]})
        assert ac.json()["discharge_undeclared_evs"] is None
        bad = await api.post("/api/v1/stations", headers=OPERATOR, json={
            "id": "CS-BAD", "password": PASSWORD, "discharge_undeclared_evs": "sometimes"})
        assert bad.status_code == 422, bad.text
    assert h.gw.state.evses[("CS-DC", 1)].discharge_undeclared_evs is True
    assert h.gw.state.evses[("CS-AC", 1)].discharge_undeclared_evs is None
    await h.restart()
    assert h.gw is not None
    assert h.gw.state.evses[("CS-DC", 1)].discharge_undeclared_evs is True
    assert h.gw.state.evses[("CS-AC", 1)].discharge_undeclared_evs is None


async def test_a_login_checked_before_a_disable_does_not_stay_connected(gateway_server: GatewayHarness) -> None:
    """The credential check (and its argon2 hash) comes before the connection is registered: a
    disable landing in between found no connection to close, and the station stayed connected.
    Here the login's check passed (the stored flag still says enabled) after the disable."""
    h = gateway_server
    assert h.gw is not None
    gw = h.gw
    await asyncio.wait_for(gw.station_changes.listening.wait(), EVENT_TIMEOUT_S)
    heard = gw.station_changes.heard
    await h.add_station("CS-RACE", PASSWORD)
    # The registration's own notification read first (that read lets an enabled station in).
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while gw.station_changes.heard == heard or gw._refreshes.pending("CS-RACE"):
            await asyncio.sleep(0.01)
    await h.gw.ocpp.shut_out("CS-RACE")  # the disable, with the login already past its check
    st = await RawStation.connect(h.ocpp_url, "CS-RACE", PASSWORD)
    await asyncio.wait_for(st.ws.wait_closed(), EVENT_TIMEOUT_S)
    assert st.ws.close_code == 1008 and h.gw.ocpp.registry.get("CS-RACE") is None
    h.gw.ocpp.let_in("CS-RACE")  # enabled again
    st = await RawStation.connect(h.ocpp_url, "CS-RACE", PASSWORD)
    assert "currentTime" in await st.ok("Heartbeat", {})
    await st.close()


async def test_ids_in_the_path_are_held_to_the_rules_of_ids_in_bodies(api: httpx.AsyncClient) -> None:
    """An id in the path is checked like one in a body: a NUL, a ':' or one too long is a 422
    naming the field, never a 500 from the database nor a 404 for an id that cannot exist."""
    bad_station = ["a%00b", "a:b", "x" * 49]
    bad_tx = ["a%00b", "x" * 37]
    bad_event = ["a%00b", "x" * 65]
    calls = [("GET", f"/api/v1/stations/{s}", None) for s in bad_station]
    calls += [("POST", f"/api/v1/stations/{s}/disable", None) for s in bad_station]
    calls += [("POST", f"/api/v1/stations/{s}/commands/reset", {}) for s in bad_station]
    calls += [("GET", f"/api/v1/sessions/{t}", None) for t in bad_tx]
    calls += [("PUT", f"/api/v1/sessions/{t}/preferences", {}) for t in bad_tx]
    calls += [("GET", f"/api/v1/grid-events/{e}", None) for e in bad_event]
    calls += [("DELETE", f"/api/v1/grid-events/{e}", None) for e in bad_event]
    for method, url, body in calls:
        r = await api.request(method, url, headers=OPERATOR, json=body)
        assert r.status_code == 422, (method, url, r.status_code, r.text)
        error = r.json()["error"]
        assert error["code"] == "validation_error" and error["details"]["errors"][0]["loc"][0] == "path", r.text


async def test_a_station_id_that_a_path_would_fold_away_is_refused(api: httpx.AsyncClient) -> None:
    """"." and ".." were registered, then out of reach of every client that folds dot segments
    (GET /stations/.. is GET /stations)."""
    for sid in (".", ".."):
        r = await api.post("/api/v1/stations", headers=OPERATOR, json={"id": sid, "password": "a-long-password-1"})
        assert r.status_code == 422, r.text
        assert "cannot be '.' or '..'" in r.text
    r = await api.get("/api/v1/stations/%2E%2E", headers=OPERATOR)
    assert r.status_code == 422, r.text


async def test_every_operation_says_it_may_answer_503(api: httpx.AsyncClient) -> None:
    """The database away is a 503 on any operation that reads or writes it (as the building
    load's not_stored): the description listed it for none of them."""
    spec = (await api.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "503" in op["responses"], (method, path)

