"""The loopback CSMS the simulator tests talk to: it must survive what a station sends it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from websockets.asyncio.client import connect

from gateway.clock import ScaledClock
from simulators.loopback_csms import LoopbackCsms

WAIT_S = 30.0


@pytest.fixture
async def csms() -> AsyncIterator[LoopbackCsms]:
    c = LoopbackCsms(ScaledClock(datetime(2026, 7, 1, 8, tzinfo=UTC), 1.0))
    await c.start()
    yield c
    await c.stop()


async def test_a_short_call_draws_a_callerror_and_the_link_stays_up(csms: LoopbackCsms) -> None:
    """[2, id, action] without its payload raised IndexError and closed the socket (1011)."""
    async with connect(csms.url + "/X", subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps([2, "m1", "Heartbeat"]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert reply[:3] == [4, "m1", "RpcFrameworkError"]
        await ws.send(json.dumps([2, "m2", "Heartbeat", {}]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert reply[:2] == [3, "m2"] and "currentTime" in reply[2]


async def test_an_unanswered_call_is_not_left_pending(csms: LoopbackCsms) -> None:
    async with connect(csms.url + "/X", subprotocols=["ocpp2.0.1"]) as _silent:  # type: ignore[list-item]
        await csms.wait_for(lambda: csms.connected("X"), WAIT_S)
        with pytest.raises(TimeoutError):
            await csms.call("X", "Reset", {"type": "Immediate"}, wait_s=0.2)  # the station never answers
        assert csms._pending == {}
