"""Real in-memory peers for the OCPP transport: a station directory, a security-event sink, a
handler answering a few station messages with schema-valid replies, an observer, and a raw
OCPP-J station client. Used by the tests and by ``bench/ocpp_load.py``."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.clock import Clock, RealClock, to_rfc3339
from gateway.ocpp.auth import hash_password
from gateway.ocpp.errors import NotSupported, OcppError
from gateway.ocpp.ports import StationContext, StationCredentials

WAIT_S = 5.0  # generous upper bound for anything a test waits on; never a fixed sleep


class MemoryDirectory:
    """Registered stations with real argon2 hashes."""

    def __init__(self) -> None:
        self.stations: dict[str, StationCredentials] = {}
        self.lookups = 0

    def add(
        self,
        station_id: str,
        password: str | None,
        *,
        profile: int = 1,
        enabled: bool = True,
        password_hash: str | None = None,
    ) -> None:
        h = password_hash or (hash_password(password) if password is not None else None)
        self.stations[station_id] = StationCredentials(station_id, h, profile, enabled)

    async def credentials(self, station_id: str) -> StationCredentials | None:
        self.lookups += 1
        return self.stations.get(station_id)


@dataclass
class SecurityEvent:
    station_id: str | None
    kind: str
    detail: str
    remote_address: str | None


class RecordingSecuritySink:
    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []
        self._changed = asyncio.Event()

    async def security_event(
        self, station_id: str | None, kind: str, detail: str, remote_address: str | None
    ) -> None:
        self.events.append(SecurityEvent(station_id, kind, detail, remote_address))
        self._changed.set()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    async def wait_for(self, kind: str, count: int = 1, timeout_s: float = WAIT_S) -> list[SecurityEvent]:
        async with asyncio.timeout(timeout_s):
            while True:
                found = [e for e in self.events if e.kind == kind]
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()


@dataclass
class SimpleHandler:
    """Answers Boot/Heartbeat/Status/Authorize/MeterValues/TransactionEvent; records every call.

    ``stall`` holds actions whose handling waits until the matching event is set;
    ``replies`` overrides the reply for an action (to test invalid replies from our side).
    """

    clock: Clock = field(default_factory=RealClock)
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stall: dict[str, asyncio.Event] = field(default_factory=dict)
    replies: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, ctx: StationContext, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((ctx.station_id, action, payload))
        self.started.set()
        gate = self.stall.get(action)
        if gate is not None:
            await gate.wait()
        if action in self.replies:
            return self.replies[action](payload)
        now = to_rfc3339(self.clock.now())
        if action == "BootNotification":
            return {"currentTime": now, "interval": 300, "status": "Accepted"}
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "Authorize":
            return {"idTokenInfo": {"status": "Accepted"}}
        if action == "TransactionEvent":
            return {"idTokenInfo": {"status": "Accepted"}} if "idToken" in payload else {}
        if action in ("StatusNotification", "MeterValues", "NotifyEVChargingNeeds"):
            return {"status": "Accepted"} if action == "NotifyEVChargingNeeds" else {}
        raise NotSupported(f"{action} is not handled here")


class RecordingObserver:
    def __init__(self) -> None:
        self.connected: list[StationContext] = []
        self.disconnected: list[tuple[StationContext, int | None]] = []
        self._changed = asyncio.Event()

    async def station_connected(self, ctx: StationContext) -> None:
        self.connected.append(ctx)
        self._changed.set()

    async def station_disconnected(self, ctx: StationContext, close_code: int | None) -> None:
        self.disconnected.append((ctx, close_code))
        self._changed.set()

    async def wait(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def open_station(
    base_url: str,
    station_id: str,
    password: str | None,
    *,
    path_id: str | None = None,
    subprotocols: list[str] | None = None,
    username: str | None = None,
    **kwargs: Any,
) -> ClientConnection:
    """A raw OCPP-J WebSocket client for ``station_id`` (``path_id`` overrides the URL segment)."""
    headers = {} if password is None else {"Authorization": basic(username or station_id, password)}
    offered = ["ocpp2.0.1"] if subprotocols is None else subprotocols
    return await connect(
        f"{base_url}/{path_id or station_id}",
        subprotocols=[Subprotocol(s) for s in offered] or None,
        additional_headers=headers,
        compression=None,
        open_timeout=WAIT_S,
        **kwargs,
    )


class Station:
    """OCPP-J over a client socket: send CALLs, await replies by id, answer the CSMS's CALLs."""

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.replies: dict[str, asyncio.Future[list[Any]]] = {}
        self.incoming: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.answer: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            await self._read_frames()
        except ConnectionClosed:
            pass

    async def _read_frames(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg[0] == 2:
                if self.answer is not None:
                    reply = self.answer(msg[2], msg[3])
                    if reply is not None:
                        await self.ws.send(json.dumps([3, msg[1], reply]))
                        continue
                await self.incoming.put(msg)
            else:
                fut = self.replies.pop(msg[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                else:
                    await self.incoming.put(msg)

    async def send_raw(self, frame: str | bytes, expect_id: str | None = None) -> list[Any] | None:
        fut: asyncio.Future[list[Any]] | None = None
        if expect_id is not None:
            fut = asyncio.get_running_loop().create_future()
            self.replies[expect_id] = fut
        await self.ws.send(frame)
        if fut is None:
            return None
        async with asyncio.timeout(WAIT_S):
            return await fut

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        mid = f"m{next(self._ids)}"
        reply = await self.send_raw(json.dumps([2, mid, action, payload]), expect_id=mid)
        assert reply is not None
        return reply

    async def next_incoming(self) -> list[Any]:
        async with asyncio.timeout(WAIT_S):
            return await self.incoming.get()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def boot_payload() -> dict[str, Any]:
    return {"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V"}}


def raise_ocpp(err: OcppError) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def reply(_: dict[str, Any]) -> dict[str, Any]:
        raise err

    return reply
