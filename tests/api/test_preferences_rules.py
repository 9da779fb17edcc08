"""Driver preferences: concurrent changes of different fields all survive, rules apply to the
fields a request sets (not to what is stored), and times and numbers are what the docs say."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gateway.clock import ManualClock, to_rfc3339
from tests.api.conftest import OPERATOR, plug_in
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness


class _Rendezvous:
    """Holds the first ``n`` callers of a wrapped coroutine until all ``n`` have arrived, so the
    requests under test are all past their first reads before any of them goes on."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.all_in = asyncio.Event()

    def wrap(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def held(*args: Any, **kwargs: Any) -> Any:
            if self.left > 0:
                self.left -= 1
                if self.left == 0:
                    self.all_in.set()
                await asyncio.wait_for(self.all_in.wait(), EVENT_TIMEOUT_S)
            return await fn(*args, **kwargs)

        return held


async def test_concurrent_changes_of_different_fields_are_all_kept(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    gw = gateway_server.gw
    assert gw is not None
    st = await plug_in(gateway_server, "CS-CC", "tx-cc", "TOKEN-CC")
    token = (await api.post("/api/v1/driver-tokens", headers=OPERATOR, json={"id_token": "TOKEN-CC"})).json()
    driver = {"Authorization": f"Bearer {token['token']}"}
    url = "/api/v1/sessions/tx-cc/preferences"
    latest_needs = gw.planning.latest_needs
    for i in range(5):
        reset = await api.put(url, headers=OPERATOR, json={"energy_kwh": None, "mode": None})
        assert reset.status_code == 200, reset.text
        # Both requests read the session and what is stored before either writes: the window in
        # which a read-merge-write without a lock loses one of the two changes.
        gate = _Rendezvous(2)
        gw.planning.latest_needs = gate.wrap(latest_needs)  # type: ignore[method-assign]
        try:
            energy, mode = await asyncio.gather(
                api.put(url, headers=OPERATOR, json={"energy_kwh": 12.0 + i}),
                api.put(url, headers=driver, json={"mode": "charge_now"}),
            )
        finally:
            gw.planning.latest_needs = latest_needs  # type: ignore[method-assign]
        assert energy.status_code == 200 and mode.status_code == 200, (energy.text, mode.text)
        stored = (await api.get("/api/v1/sessions/tx-cc", headers=OPERATOR)).json()["preferences"]
        assert stored["energy_kwh"] == 12.0 + i and stored["mode"] == "charge_now", (i, stored)
        # Each answer shows the row its request stored: its own change, plus the other one's
        # only if that was stored first.
        answers = [energy.json()["session"]["preferences"], mode.json()["session"]["preferences"]]
        assert answers[0]["energy_kwh"] == 12.0 + i and answers[1]["mode"] == "charge_now"
        assert stored in answers
        # The live state (what the planner works from) holds the merged change too.
        live = gw.state.evses[("CS-CC", 1)].session
        assert live is not None and live.preferences.energy_kwh == 12.0 + i
        assert live.preferences.mode is not None and live.preferences.mode.value == "charge_now"
    await st.ws.close()


async def test_a_stored_departure_that_has_passed_does_not_block_other_changes(gateway_factory: Any) -> None:
    clock = ManualClock(datetime(2026, 7, 1, 8, 0, tzinfo=UTC))
    h: GatewayHarness = await gateway_factory(clock=clock)
    st = await plug_in(h, "CS-DP", "tx-dp", "TOKEN-DP")
    async with httpx.AsyncClient(base_url=h.api_url, timeout=EVENT_TIMEOUT_S) as api:
        url = "/api/v1/sessions/tx-dp/preferences"
        departure = clock.now() + timedelta(hours=1)
        first = await api.put(url, headers=OPERATOR, json={"departure_time": to_rfc3339(departure)})
        assert first.status_code == 200, first.text
        clock.advance(2 * 3600)  # the EV stays past the departure it was given

        later = await api.put(url, headers=OPERATOR, json={"mode": "charge_now"})
        assert later.status_code == 200, later.text
        prefs = later.json()["session"]["preferences"]
        assert prefs["mode"] == "charge_now" and prefs["departure_time"] == to_rfc3339(departure)
        # Setting the departure itself to a past time is still refused.
        again = await api.put(url, headers=OPERATOR, json={"departure_time": to_rfc3339(departure)})
        assert again.status_code == 422 and "past" in again.json()["error"]["message"]
        cleared = await api.put(url, headers=OPERATOR, json={"departure_time": None})
        assert cleared.status_code == 200 and cleared.json()["session"]["preferences"]["departure_time"] is None
    await st.ws.close()


async def _plugged(h: GatewayHarness, api: httpx.AsyncClient, station_id: str, tx: str) -> Any:
    st = await plug_in(h, station_id, tx, f"TOKEN-{station_id}")

    async def put_raw(text: str) -> httpx.Response:
        return await api.put(f"/api/v1/sessions/{tx}/preferences",
                             headers={**OPERATOR, "content-type": "application/json"}, content=text)

    return st, put_raw


async def test_times_must_be_rfc3339_strings(gateway_server: GatewayHarness, api: httpx.AsyncClient) -> None:
    assert gateway_server.gw is not None
    st, put_raw = await _plugged(gateway_server, api, "CS-TS", "tx-ts")
    soon = gateway_server.gw.clock.now() + timedelta(hours=2)
    # Unix time, as a number or a string of digits, is not what the docs promise to read.
    for when in (int(soon.timestamp()), soon.timestamp(), str(int(soon.timestamp()))):
        r = await put_raw(json.dumps({"departure_time": when}))
        assert r.status_code == 422, (when, r.text)
        assert "RFC 3339" in r.json()["error"]["message"], r.text
    ok = await put_raw(json.dumps({"departure_time": to_rfc3339(soon)}))
    assert ok.status_code == 200, ok.text
    assert ok.json()["session"]["preferences"]["departure_time"] == to_rfc3339(soon)
    await st.ws.close()


async def test_non_finite_numbers_are_refused_as_such(
    gateway_server: GatewayHarness, api: httpx.AsyncClient
) -> None:
    st, put_raw = await _plugged(gateway_server, api, "CS-NF", "tx-nf")
    for number in ("NaN", "Infinity", "-Infinity"):
        for field in ("energy_kwh", "target_soc", "reserve_soc"):
            r = await put_raw(f'{{"{field}": {number}}}')
            assert r.status_code == 422, (field, number, r.text)
            message = r.json()["error"]["message"]
            assert field in message and "finite" in message, message
    ok = await put_raw('{"energy_kwh": 5}')
    assert ok.status_code == 200 and ok.json()["session"]["preferences"]["energy_kwh"] == 5, ok.text
    await st.ws.close()
