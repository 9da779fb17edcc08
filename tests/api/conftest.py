"""Helpers for the REST tests: an HTTP client on a real gateway and a RawStation that plugs in."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.clock import to_rfc3339
from tests.conftest import EVENT_TIMEOUT_S, GatewayHarness
from tests.ocpp_client import RawStation

OPERATOR = {"Authorization": "Bearer test-operator-key"}
PASSWORD = "station-password-0123456789"


@pytest.fixture
async def api(gateway_server: GatewayHarness) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_server.api_url, timeout=EVENT_TIMEOUT_S) as client:
        yield client


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = EVENT_TIMEOUT_S
) -> None:
    """Poll ``check`` until true; the state it waits for arrives asynchronously (events, COPY)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class PluggedStation:
    """A RawStation that boots and runs one transaction with monotonic meter readings."""

    def __init__(self, station: RawStation, now: Callable[[], datetime]) -> None:
        self.ws = station
        self._now = now
        self._seq = itertools.count()

    def ts(self, offset_s: float = 0.0) -> str:
        return to_rfc3339(self._now() + timedelta(seconds=offset_s))

    async def boot(self) -> None:
        reply = await self.ws.ok(
            "BootNotification",
            {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "Test"}},
        )
        assert reply["status"] == "Accepted"

    async def tx_event(
        self,
        event_type: str,
        tx_id: str,
        *,
        evse_id: int = 1,
        id_token: str | None = None,
        energy_wh: float | None = None,
        power_w: float | None = None,
        trigger: str = "MeterValuePeriodic",
        offset_s: float = 0.0,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        stamp = to_rfc3339(at) if at is not None else self.ts(offset_s)
        payload: dict[str, Any] = {
            "eventType": event_type,
            "timestamp": stamp,
            "triggerReason": trigger,
            "seqNo": next(self._seq),
            "transactionInfo": {"transactionId": tx_id, "chargingState": "Charging"},
            "evse": {"id": evse_id, "connectorId": 1},
        }
        if id_token is not None:
            payload["idToken"] = {"idToken": id_token, "type": "ISO14443"}
        values = []
        if energy_wh is not None:
            values.append({"value": energy_wh, "measurand": "Energy.Active.Import.Register"})
        if power_w is not None:
            values.append({"value": power_w, "measurand": "Power.Active.Import"})
        if values:
            payload["meterValue"] = [{"timestamp": stamp, "sampledValue": values}]
        if event_type == "Ended":
            payload["transactionInfo"]["stoppedReason"] = "EVDisconnected"
        return await self.ws.ok("TransactionEvent", payload)


async def plug_in(
    h: GatewayHarness,
    station_id: str,
    tx_id: str,
    id_token: str,
    evses: list[tuple[int, float, float, bool]] | None = None,
) -> PluggedStation:
    """Register, connect, boot, and start ``tx_id`` on EVSE 1 with 0 Wh on the meter."""
    assert h.gw is not None
    await h.add_station(station_id, PASSWORD, evses=evses or [(1, 11.0, 0.0, False)])
    st = PluggedStation(await RawStation.connect(h.ocpp_url, station_id, PASSWORD), h.gw.clock.now)
    await st.boot()
    await st.tx_event(
        "Started", tx_id, id_token=id_token, energy_wh=0.0, power_w=7000.0, trigger="CablePluggedIn"
    )
    return st
