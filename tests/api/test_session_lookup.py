"""A transactionId is unique per station only: a second station that reuses one must neither hide
a driver's own session nor take over the operator's requests for it."""

from __future__ import annotations

import httpx

from tests.api.conftest import OPERATOR, plug_in
from tests.conftest import GatewayHarness

TX = "tx-shared-1"


async def _driver(api: httpx.AsyncClient, id_token: str) -> dict[str, str]:
    token = (await api.post("/api/v1/driver-tokens", headers=OPERATOR, json={"id_token": id_token})).json()
    return {"Authorization": f"Bearer {token['token']}"}


async def test_a_reused_transaction_id_does_not_hijack_the_session(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    a = await plug_in(gateway_server, "CS-LA", TX, "TOKEN-A")
    b = await plug_in(gateway_server, "CS-LB", TX, "TOKEN-B")  # same id, another station and driver
    driver_a, driver_b = await _driver(api, "TOKEN-A"), await _driver(api, "TOKEN-B")
    url = f"/api/v1/sessions/{TX}"

    # Each driver reaches their own session, never the other one.
    own_a = await api.get(url, headers=driver_a)
    assert own_a.status_code == 200, own_a.text
    assert own_a.json()["station_id"] == "CS-LA" and own_a.json()["id_token"] == "TOKEN-A"
    own_b = await api.get(url, headers=driver_b)
    assert own_b.status_code == 200 and own_b.json()["station_id"] == "CS-LB"
    put_a = await api.put(f"{url}/preferences", headers=driver_a, json={"energy_kwh": 10.0})
    assert put_a.status_code == 200, put_a.text
    assert put_a.json()["session"]["station_id"] == "CS-LA"
    assert put_a.json()["session"]["preferences"]["energy_kwh"] == 10.0
    # A station filter cannot reach past the driver's own sessions.
    assert (await api.get(f"{url}?station_id=CS-LB", headers=driver_a)).status_code == 404

    # Two open sessions share the id: the operator must say which one.
    both = await api.get(url, headers=OPERATOR)
    assert both.status_code == 409, both.text
    err = both.json()["error"]
    assert err["code"] == "ambiguous_session" and err["details"]["station_ids"] == ["CS-LA", "CS-LB"]
    assert "CS-LA" in err["message"] and "CS-LB" in err["message"] and "station_id" in err["message"]
    assert (await api.put(f"{url}/preferences", headers=OPERATOR, json={"mode": "smart"})).status_code == 409
    picked = await api.get(f"{url}?station_id=CS-LB", headers=OPERATOR)
    assert picked.status_code == 200 and picked.json()["station_id"] == "CS-LB"
    assert picked.json()["preferences"] is None  # A's change stayed with A
    assert (await api.get(f"{url}?station_id=CS-NOPE", headers=OPERATOR)).status_code == 404

    # B's session ends: the open one (A's) is the session the id names.
    await b.tx_event("Ended", TX, energy_wh=1000.0, trigger="EVCommunicationLost", offset_s=60)
    after = await api.get(url, headers=OPERATOR)
    assert after.status_code == 200 and after.json()["station_id"] == "CS-LA"
    put_op = await api.put(f"{url}/preferences", headers=OPERATOR, json={"energy_kwh": 12.0})
    assert put_op.status_code == 200, put_op.text
    assert put_op.json()["session"]["station_id"] == "CS-LA"
    ended_b = await api.get(f"{url}?station_id=CS-LB", headers=OPERATOR)
    assert ended_b.status_code == 200 and ended_b.json()["active"] is False
    assert (await api.put(f"{url}/preferences?station_id=CS-LB", headers=OPERATOR,
                          json={"energy_kwh": 1.0})).status_code == 409  # ended

    # Both ended: nothing is preferred, so the id is ambiguous again until a station is named.
    await a.tx_event("Ended", TX, energy_wh=2000.0, trigger="EVCommunicationLost", offset_s=60)
    assert (await api.get(url, headers=OPERATOR)).status_code == 409
    assert (await api.get(url, headers=driver_a)).json()["station_id"] == "CS-LA"
    await a.ws.close()
    await b.ws.close()


async def test_a_driver_s_id_token_matches_whatever_its_case(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    """OCPP 2.0.1: an idToken is case-insensitive (a reader may write the UID's hex in either
    case). A driver token issued for "04a1b2c3" reaches the session the station started with
    "04A1B2C3", and only that driver's."""
    await plug_in(gateway_server, "CS-CASE", "tx-case", "04A1B2C3")
    driver, other = await _driver(api, "04a1b2c3"), await _driver(api, "04a1b2c4")
    own = await api.get("/api/v1/sessions/tx-case", headers=driver)
    assert own.status_code == 200, own.text
    listed = await api.get("/api/v1/sessions", headers=driver)
    assert [s["transaction_id"] for s in listed.json()["items"]] == ["tx-case"]
    assert (await api.get("/api/v1/sessions/tx-case", headers=other)).status_code == 404
