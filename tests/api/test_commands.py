"""Commands to a station over REST: the station's answer, or a clear error when there is none."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gateway import metrics
from tests.api.conftest import OPERATOR, PASSWORD
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.ocpp_client import RawStation


def _count(action: str, outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("gateway_ocpp_calls_sent_total", {"action": action, "outcome": outcome})
        or 0.0
    )


async def _connect(h: GatewayHarness, station_id: str) -> RawStation:
    await h.add_station(station_id, PASSWORD, evses=[(1, 11.0, 0.0, False)])
    ws = await RawStation.connect(h.ocpp_url, station_id, PASSWORD)
    await ws.ok("BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}})
    return ws


async def test_answer_callerror_offline_and_unknown(gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    ws = await _connect(gateway_server, "CS-CMD")
    base = "/api/v1/stations/CS-CMD/commands"

    async def station() -> None:
        call = await ws.next_call()
        assert call[2] == "Reset" and call[3] == {"type": "OnIdle"}
        await ws.answer(call, {"status": "Scheduled"})
        call = await ws.next_call()
        assert call[2] == "UnlockConnector" and call[3] == {"evseId": 1, "connectorId": 1}
        await ws.ws.send(f'[4,"{call[1]}","NotSupported","no lock on this connector",{{}}]')

    answering = asyncio.create_task(station())
    ok_before = _count("Reset", "ok")
    reset = await api.post(f"{base}/reset", headers=OPERATOR, json={"type": "OnIdle"})
    assert reset.status_code == 200, reset.text
    assert reset.json() == {"station_id": "CS-CMD", "action": "Reset", "response": {"status": "Scheduled"}}
    assert _count("Reset", "ok") == ok_before + 1

    unlock = await api.post(f"{base}/unlock-connector", headers=OPERATOR, json={"evse_id": 1, "connector_id": 1})
    assert unlock.status_code == 502, unlock.text
    err = unlock.json()["error"]
    assert err["code"] == "station_error" and err["details"]["ocpp_error_code"] == "NotSupported"
    assert err["details"]["ocpp_error_description"] == "no lock on this connector"
    await asyncio.wait_for(answering, EVENT_TIMEOUT_S)

    await ws.close()

    async def offline() -> httpx.Response:
        return await api.post(
            f"{base}/trigger-message",
            headers=OPERATOR,
            json={"requested_message": "StatusNotification", "evse_id": 1},
        )

    r = await offline()
    while r.status_code != 409:  # the close reaches the gateway a moment later
        await asyncio.sleep(0.05)
        r = await offline()
    assert r.json()["error"]["code"] == "station_offline"
    unknown = await api.post("/api/v1/stations/NOPE/commands/reset", headers=OPERATOR, json={})
    assert unknown.status_code == 404
    bad = await api.post(f"{base}/trigger-message", headers=OPERATOR, json={"requested_message": "Coffee"})
    assert bad.status_code == 422
    # A connector without its EVSE would be dropped and the command reach the whole station.
    for path, body in (("change-availability", {"operational_status": "Inoperative", "connector_id": 2}),
                       ("trigger-message", {"requested_message": "StatusNotification", "connector_id": 1})):
        r = await api.post(f"{base}/{path}", headers=OPERATOR, json=body)
        assert r.status_code == 422, r.text
        assert "connector_id needs evse_id" in r.text
    # EVSEType's id is > 0: EVSE 0 is refused here with a reason, not by the station as a 502.
    # ResetRequest's evseId names one EVSE instead of the station: EVSE 0 went to the station.
    for path, body in (("change-availability", {"operational_status": "Inoperative", "evse_id": 0}),
                       ("trigger-message", {"requested_message": "StatusNotification", "evse_id": 0}),
                       ("reset", {"type": "Immediate", "evse_id": 0})):
        r = await api.post(f"{base}/{path}", headers=OPERATOR, json=body)
        assert r.status_code == 422, r.text
        assert "evse_id" in r.text


async def test_timeout_is_504(gateway_factory: Any) -> None:
    h: GatewayHarness = await gateway_factory(call_timeout_s=0.5)
    ws = await _connect(h, "CS-SLOW")
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        r = await api.post(
            "/api/v1/stations/CS-SLOW/commands/change-availability",
            headers=OPERATOR,
            json={"operational_status": "Inoperative", "evse_id": 1},
        )
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert err["code"] == "station_timeout" and err["details"]["timeout_s"] == 0.5
    call = await ws.next_call()  # the station did receive it; it just never answered
    assert call[2] == "ChangeAvailability"
    await ws.close()


async def test_concurrent_commands_queue_one_call_in_flight(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    """docs/reliability.md R3: 20 REST commands at once reach the station one CALL at a time."""
    ws = await _connect(gateway_server, "CS-R3")
    in_flight_max = 0

    async def station() -> None:
        nonlocal in_flight_max
        for _ in range(20):
            call = await ws.next_call()
            # Give a second CALL the chance to arrive before this one is answered: it must not.
            await asyncio.sleep(0.02)
            in_flight_max = max(in_flight_max, 1 + ws.incoming_calls.qsize())
            await ws.answer(call, {"status": "Accepted", "statusInfo": {"reasonCode": f"evse{call[3]['evseId']}"}})

    answering = asyncio.create_task(station())
    replies = await asyncio.gather(
        *(
            api.post("/api/v1/stations/CS-R3/commands/reset", headers=OPERATOR, json={"type": "OnIdle", "evse_id": i})
            for i in range(1, 21)
        )
    )
    await asyncio.wait_for(answering, EVENT_TIMEOUT_S)
    assert in_flight_max == 1
    assert [r.status_code for r in replies] == [200] * 20
    # Each request got the answer to its own CALL.
    assert [r.json()["response"]["statusInfo"]["reasonCode"] for r in replies] == [f"evse{i}" for i in range(1, 21)]
    await ws.close()
