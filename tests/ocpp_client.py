"""A minimal raw OCPP-J station for end-to-end tests of the gateway: it sends exactly the frames a
test asks for and exposes what comes back (no retries, no cleverness)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

TIMEOUT_S = 30.0


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class RawStation:
    def __init__(self, ws: ClientConnection, station_id: str) -> None:
        self.ws = ws
        self.station_id = station_id
        self._ids = itertools.count(1)
        self.incoming_calls: asyncio.Queue[list[Any]] = asyncio.Queue()
        self._replies: dict[str, asyncio.Future[list[Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, base_url: str, station_id: str, password: str | None, **kw: Any) -> RawStation:
        headers = basic_auth(station_id, password) if password is not None else {}
        ws = await connect(f"{base_url}/{station_id}", subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                           additional_headers=headers, open_timeout=TIMEOUT_S, **kw)
        return cls(ws, station_id)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    await self.incoming_calls.put(msg)
                else:
                    fut = self._replies.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except Exception:
            pass

    async def send_raw(self, text: str, expect_id: str | None = None) -> list[Any] | None:
        fut: asyncio.Future[list[Any]] | None = None
        if expect_id is not None:
            fut = asyncio.get_running_loop().create_future()
            self._replies[expect_id] = fut
        await self.ws.send(text)
        return await asyncio.wait_for(fut, TIMEOUT_S) if fut is not None else None

    async def call(self, action: str, payload: dict[str, Any], message_id: str | None = None) -> list[Any]:
        mid = message_id or f"{self.station_id}-{next(self._ids)}"
        reply = await self.send_raw(json.dumps([2, mid, action, payload]), expect_id=mid)
        assert reply is not None
        return reply

    async def ok(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        reply = await self.call(action, payload)
        assert reply[0] == 3, f"{action} answered {reply}"
        result: dict[str, Any] = reply[2]
        return result

    async def answer(self, call: list[Any], payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps([3, call[1], payload]))

    async def next_call(self) -> list[Any]:
        return await asyncio.wait_for(self.incoming_calls.get(), TIMEOUT_S)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
