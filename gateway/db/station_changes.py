"""Registration changes heard by every running gateway, whichever process wrote them.

A station's registration (password, enabled flag, discharge dialect, its EVSEs' ratings) is written
by the REST API of any node, by ``gateway station add|disable`` and by ``gateway sim --register``.
Each such write sends a Postgres NOTIFY in its own transaction (delivered at commit, never for a
rolled-back write), and each gateway LISTENs on one connection of its own: the node holding the
station's connection applies the change at once (a disable closes the connection, new ratings are
planned with) instead of at the station's next connection.

A notification sent while the listening connection is down is lost (Postgres does not queue
them for absent listeners), so each (re)connection re-reads every station connected here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from gateway import metrics

log = logging.getLogger(__name__)

CHANNEL = "gateway_station_changed"
# How often an idle listening connection is checked (a network partition closes no socket).
KEEPALIVE_S = 30.0
# The longest wait between two attempts to listen again while the database is away.
RETRY_MAX_S = 60.0


async def announce(s: AsyncSession, station_id: str) -> None:
    """Notify every gateway that ``station_id``'s registration changed, when ``s``'s transaction
    commits (NOTIFY is transactional)."""
    await s.execute(select(func.pg_notify(CHANNEL, station_id)))


class StationChangeListener:
    """LISTENs for :data:`CHANNEL` on a connection of its own; calls ``on_change(station_id)`` for
    each notification and ``on_listening()`` each time it (re)starts listening, for what it may
    have missed while it was not."""

    def __init__(self, engine: AsyncEngine, on_change: Callable[[str], None], on_listening: Callable[[], None],
                 retry_interval_s: float = 1.0) -> None:
        # The pool's own connection parameters (host, socket directory, TLS, credentials), less
        # those only SQLAlchemy's adapter takes (prepared_statement_cache_size, common behind
        # PgBouncer, made every attempt fail with a TypeError).
        self._args, kwargs = engine.dialect.create_connect_args(engine.url)
        accepted = inspect.signature(asyncpg.connect).parameters
        self._kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        self._on_change = on_change
        self._on_listening = on_listening
        self._retry_s = retry_interval_s
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while a LISTEN is in force (tests wait on it)
        self.heard = 0  # notifications heard

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="station-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.heard += 1
        self._on_change(payload)

    async def _run(self) -> None:
        wait = self._retry_s
        while True:
            try:
                named = {**self._kwargs.get("server_settings", {}), "application_name": "gateway-station-changes"}
                conn = await asyncpg.connect(*self._args, **{**self._kwargs, "timeout": 5.0, "server_settings": named})
            except Exception as exc:  # the database away, or refusing: try again, never give up
                log.warning("not listening for registration changes yet: %s", exc)
                await asyncio.sleep(wait)
                wait = min(2 * wait, RETRY_MAX_S)
                continue
            wait = self._retry_s
            try:
                await self._listen(conn)
                log.warning("listening connection for registration changes closed; listening again")
            except Exception as exc:
                log.warning("listening for registration changes stopped: %s; listening again", exc)
            finally:
                self.listening.clear()
                metrics.REGISTRATIONS_LISTENING.set(0)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5.0)
            await asyncio.sleep(self._retry_s)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CHANNEL, self._heard)
        self.listening.set()
        metrics.REGISTRATIONS_LISTENING.set(1)
        self._on_listening()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), KEEPALIVE_S)
            except TimeoutError:
                await conn.fetchval("SELECT 1", timeout=5.0)
