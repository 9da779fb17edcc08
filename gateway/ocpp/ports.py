"""The boundary between the OCPP transport and the rest of the gateway.

The transport (``server.py``, ``connection.py``) knows WebSockets, OCPP-J framing, auth and the
one-outstanding-CALL rule; it knows nothing of Postgres or the scheduler. It reaches them only
through these protocols, which the composition root (``gateway/app.py``) fills in with the
database-backed implementations (``gateway/db``) and the message handlers (``handlers.py``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class StationCredentials:
    station_id: str
    password_hash: str | None  # argon2 hash; None: no password set (cannot log in)
    security_profile: int = 1  # 1: Basic over ws; 2: Basic over TLS; 3: client certificate
    enabled: bool = True


@dataclass(slots=True)
class StationContext:
    """What a handler knows of the station it serves. One per live connection."""

    station_id: str
    remote_address: str | None
    security_profile: int
    connected_at: datetime
    ocpp_version: str = "2.0.1"
    connection_id: int = 0
    # Free for handlers to cache per-connection facts (e.g. boot state); never used by transport.
    scratch: dict[str, Any] = field(default_factory=dict)
    # Set by the transport when the connection closes: a handler still waiting for the database
    # may stop, as no reply can reach the station any more (it replays on its next connection).
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Messages the CSMS asked for with TriggerMessage on this connection: a station whose boot was
    # answered Pending may send these (B02.FR.09), and nothing else but BootNotification.
    triggered: set[str] = field(default_factory=set)
    # When the connection was opened on the wall clock the nodes share (connected_at is on the
    # gateway's clock, which a simulation runs faster): orders connections across nodes.
    opened_at: datetime | None = None


class StationDirectory(Protocol):
    async def credentials(self, station_id: str) -> StationCredentials | None:
        """The station's stored credentials, or None when the id is not registered."""
        ...


class SecurityEventSink(Protocol):
    async def security_event(
        self, station_id: str | None, kind: str, detail: str, remote_address: str | None
    ) -> None:
        """Record a security-relevant event (failed login, take-over, lock-out). Never raises."""
        ...


class MessageHandler(Protocol):
    async def __call__(self, ctx: StationContext, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Answer one schema-valid CALL from a station with the CALLRESULT payload.

        Raise a :class:`gateway.ocpp.errors.OcppError` subclass to answer with a CALLERROR.
        The transport validates the request before and the reply after this call.
        """
        ...


class ConnectionObserver(Protocol):
    async def station_connected(self, ctx: StationContext) -> None: ...

    async def station_disconnected(self, ctx: StationContext, close_code: int | None) -> None: ...
