"""A minimal CSMS peer for the simulators' own tests and benchmark: real WebSockets, plain OCPP-J.

It accepts any station on ``/ocpp/{id}`` (checking the subprotocol and, when given, the Basic-auth
password), answers what a station sends with schema-valid replies, records every CALL, and lets a
test send CALLs to a station, hold back replies, or drop a link. It is not the gateway: no
database, no scheduler, no validation beyond what a test needs.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.clock import Clock, to_rfc3339


def _well_formed(msg: Any) -> bool:
    """An OCPP-J frame with the elements its type needs: CALL [2, id, action, {payload}],
    CALLRESULT [3, id, {payload}], CALLERROR [4, id, code, description, {details}]."""
    if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[1], str):
        return False
    if msg[0] == 2:
        return len(msg) == 4 and isinstance(msg[2], str) and isinstance(msg[3], dict)
    if msg[0] == 3:
        return len(msg) == 3
    if msg[0] == 4:
        return len(msg) == 5
    return False


@dataclass(frozen=True, slots=True)
class Received:
    station_id: str
    action: str
    payload: dict[str, Any]
    message_id: str
    connection: int


@dataclass
class LoopbackCsms:
    clock: Clock
    password: str | None = None
    heartbeat_interval_s: int = 300
    received: list[Received] = field(default_factory=list)
    # action -> how many of the next CALLs of that action get no reply at all
    silence: dict[str, int] = field(default_factory=dict)
    # idToken -> idTokenInfo.status other than Accepted
    token_status: dict[str, str] = field(default_factory=dict)
    errors: list[list[Any]] = field(default_factory=list)  # CALLERRORs stations sent us
    _conns: dict[str, ServerConnection] = field(default_factory=dict)
    _conn_no: dict[str, int] = field(default_factory=dict)
    _pending: dict[str, asyncio.Future[list[Any]]] = field(default_factory=dict)
    _changed: asyncio.Condition | None = None
    _server: Server | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    on_call: Callable[[Received], None] | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ocpp"

    async def start(self, port: int = 0) -> None:
        self._changed = asyncio.Condition()
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            port,
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            process_request=self._check,
            compression=None,
            ping_interval=None,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.password is None:
            return None
        header = request.headers.get("Authorization", "")
        station = request.path.rsplit("/", 1)[-1]
        want = "Basic " + base64.b64encode(f"{station}:{self.password}".encode()).decode()
        if header != want:
            return Response(401, "Unauthorized", Headers([("WWW-Authenticate", 'Basic realm="ocpp"')]), b"")
        return None

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], wait_s: float = 30.0) -> None:
        assert self._changed is not None
        cond = self._changed

        async def wait() -> None:
            async with cond:
                await cond.wait_for(predicate)

        await asyncio.wait_for(wait(), wait_s)

    def calls(self, action: str, station_id: str | None = None) -> list[Received]:
        return [r for r in self.received if r.action == action and station_id in (None, r.station_id)]

    def connected(self, station_id: str) -> bool:
        return station_id in self._conns

    def drop(self, station_id: str) -> None:
        ws = self._conns.get(station_id)
        if ws is not None and ws.transport is not None:
            ws.transport.abort()

    async def call(self, station_id: str, action: str, payload: dict[str, Any], wait_s: float = 30.0) -> list[Any]:
        """Send a CALL to a station; return its CALLRESULT or CALLERROR frame."""
        ws = self._conns[station_id]
        mid = f"csms-{next(self._ids)}"
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        try:
            await ws.send(json.dumps([2, mid, action, payload]))
            return await asyncio.wait_for(fut, wait_s)
        finally:
            self._pending.pop(mid, None)  # answered, timed out or the send failed: forget it

    def _reply(self, r: Received) -> dict[str, Any]:
        now = to_rfc3339(self.clock.now())
        if r.action == "BootNotification":
            return {"currentTime": now, "interval": self.heartbeat_interval_s, "status": "Accepted"}
        if r.action == "Heartbeat":
            return {"currentTime": now}
        if r.action == "TransactionEvent" and "idToken" in r.payload:
            status = self.token_status.get(r.payload["idToken"]["idToken"], "Accepted")
            return {"idTokenInfo": {"status": status}}
        if r.action == "NotifyEVChargingNeeds":
            return {"status": "Accepted"}
        return {}

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        station_id = ws.request.path.rsplit("/", 1)[-1]
        self._conns[station_id] = ws
        self._conn_no[station_id] = self._conn_no.get(station_id, 0) + 1
        conn_no = self._conn_no[station_id]
        await self._notify()
        try:
            async for text in ws:
                try:
                    msg = json.loads(text)
                    kind = msg[0]
                except (ValueError, IndexError, KeyError, TypeError):
                    await ws.send(json.dumps([4, "-1", "RpcFrameworkError", "unreadable frame", {}]))
                    continue
                if not _well_formed(msg):
                    # A CALL (or a frame of no known type) too short or with fields of the wrong
                    # type draws a CALLERROR, with its message id when that can be read; a broken
                    # reply is dropped (a CALLERROR is never answered). The link stays up.
                    if kind not in (3, 4):
                        mid = msg[1] if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) else "-1"
                        await ws.send(json.dumps([4, mid, "RpcFrameworkError", "malformed frame", {}]))
                    continue
                if kind == 2:
                    r = Received(station_id, msg[2], msg[3], msg[1], conn_no)
                    self.received.append(r)
                    if self.on_call is not None:
                        self.on_call(r)
                    left = self.silence.get(r.action, 0)
                    if left > 0:
                        self.silence[r.action] = left - 1
                    else:
                        await ws.send(json.dumps([3, r.message_id, self._reply(r)]))
                    await self._notify()
                elif kind in (3, 4):
                    if kind == 4:
                        self.errors.append(msg)
                    fut = self._pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except ConnectionClosed:
            pass
        finally:
            if self._conns.get(station_id) is ws:
                del self._conns[station_id]
            await self._notify()
