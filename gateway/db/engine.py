"""The async engine and the rule for what counts as "the database is away, try again"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from asyncpg import exceptions as pg_exc
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)
T = TypeVar("T")


def normalize_url(url: str) -> str:
    """Accept postgres:// and postgresql:// and use the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise ValueError("database URL must be postgresql+asyncpg://user@host:port/db")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping (a round trip per checkout on the hot path): a pooled connection whose
        # server side is gone is found by the check below, which costs no round trip.
        pool_pre_ping=False,
        pool_timeout=10,
        connect_args={"timeout": 5, "command_timeout": 30},
        # Bound values stay out of error messages: an idToken (or a password being set) in
        # "[parameters: ...]" reached the logs through every error logged with its text.
        hide_parameters=True,
    )
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    return engine


def _refuse_closed(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection asyncpg knows is closed (the server restarted or ended the session;
    asyncpg notices at once, or at the failed use) is not handed out: the pool opens a new one.
    Without this, a connection that failed inside code using asyncpg directly (the telemetry
    COPY, TransactionEvent's SQL function) went back to the pool and was handed to every retry,
    which kept failing with "connection is closed" while the database was up."""
    raw = getattr(dbapi_conn, "driver_connection", None)
    if raw is not None and raw.is_closed():
        raise sa_exc.DisconnectionError("pooled connection is closed")


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection under a pooled one, for what the ORM does not do (COPY, a SQL
    function's row). A failure on it, or a cancellation in the middle of a call, invalidates the
    pooled connection: SQLAlchemy never saw the error, and would hand the same connection (closed,
    or left half-way through an operation) to the caller's retry."""
    async with engine.connect() as sa_conn:
        raw = await sa_conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        try:
            yield driver
        except BaseException:
            with contextlib.suppress(Exception):
                await sa_conn.invalidate()
            raise


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# SQLSTATEs that say "not now", not "never": too many connections (53300: three nodes' pools
# pass Postgres' default of 100), the server out of disk or memory (53100, 53200), read-only after
# a failover (25006), a serialization failure or deadlock (40001, 40P01), the server shutting
# down or refusing connections for now (57P01-03). Their messages carry none of the words below
# ("sorry, too many clients already"): by text alone they were taken for bugs, and a
# TransactionEvent was answered InternalError (or dropped) instead of held until stored.
TRANSIENT_SQLSTATES = frozenset({"53300", "53100", "53200", "25006", "40001", "40P01", "57P01", "57P02", "57P03"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, through SQLAlchemy's wrapping where there is one."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and code:
            return code
        e = getattr(e, "orig", None) or e.__cause__
    return None


def is_transient(exc: BaseException) -> bool:
    """True when the failure is the database being unreachable or restarting, not our bug."""
    if isinstance(exc, (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError)):
        return True
    code = sqlstate(exc)
    if code is not None and (code.startswith("08") or code in TRANSIENT_SQLSTATES):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    # asyncpg's own errors, where the driver is used directly (the telemetry writer's COPY): the
    # connection lost (class 08), the server shutting down or refusing connections for now
    # (57P01-03), or a pooled connection found closed. Dropping rows over these lost data.
    if isinstance(exc, (pg_exc.PostgresConnectionError, pg_exc.OperatorInterventionError)):
        return True
    if isinstance(exc, pg_exc.InterfaceError):
        return "connection is closed" in str(exc).lower()
    if isinstance(exc, pg_exc.InternalClientError):
        # The connection was left in the middle of an operation (the server ended the session
        # under it, or a call on it was cancelled): it is invalidated, and a retry takes another.
        return "operation" in str(exc).lower() and "in progress" in str(exc).lower()
    if isinstance(exc, sa_exc.DBAPIError):
        text = f"{type(exc.orig).__name__} {exc.orig}".lower()
        markers = ("connection", "cannotconnectnow", "adminshutdown", "shutdown", "closed", "terminat")
        return any(m in text for m in markers)
    return False


class GaveUp(Exception):
    """The caller stopped waiting while the database was away. Whether an attempt committed
    before the database went is unknown: the caller must be ready to find its row later."""


async def until_committed(
    op: Callable[[], Awaitable[T]], *, retry_interval_s: float, what: str,
    on_retry: Callable[[BaseException], None] | None = None,
    give_up: asyncio.Event | None = None,
) -> T:
    """Run ``op`` until it succeeds, retrying while the database is away (docs/reliability.md D5).

    Used where an answer must wait for durability (TransactionEvent): the caller's reply is
    withheld meanwhile, so the station retries on its own timeout and nothing is lost.
    Non-transient errors propagate at once. When ``give_up`` is set (the station's connection
    closed, so no answer can reach it) the retries stop with :class:`GaveUp`, never in the middle
    of an attempt.
    """
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            if on_retry is not None:
                on_retry(exc)
            if attempt == 1 or attempt % 30 == 0:
                log.warning("database unavailable while %s (attempt %d): %s", what, attempt, exc)
            # Real seconds: this waits on an outside service, not on simulated time.
            delay = min(retry_interval_s * attempt, 5.0)
            if give_up is None:
                await asyncio.sleep(delay)
                continue
            try:
                async with asyncio.timeout(delay):
                    await give_up.wait()
            except TimeoutError:
                continue
            raise GaveUp(f"{what}: stopped after {attempt} failed attempt(s)") from exc
