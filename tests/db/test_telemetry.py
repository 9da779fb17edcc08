"""The batched telemetry writer: COPY in batches, and a row the database refuses is dropped and
counted instead of blocking every row behind it."""

from __future__ import annotations

from datetime import UTC, datetime

from asyncpg import exceptions as pg_exc

from gateway.db.engine import is_transient, make_engine
from gateway.db.telemetry import TelemetryWriter
from tests.gateway.test_handlers import fetch, wait_for

T = datetime(2026, 7, 1, 8, tzinfo=UTC)


async def test_poison_row_is_isolated_and_the_rest_is_written(clean_db: str) -> None:
    engine = make_engine(clean_db, pool_size=2)
    writer = TelemetryWriter(engine, max_rows=1000, flush_rows=50, flush_interval_s=0.05, retry_interval_s=0.05)
    for i in range(10):
        writer.add_meter_value(T, "CS-1", 1, None, "Energy.Active.Import.Register", None, None, float(i), "Wh")
    # A station id longer than the column: the database refuses this row (and so its batch).
    writer.add_meter_value(T, "X" * 60, 1, None, "Energy.Active.Import.Register", None, None, 99.0, "Wh")
    for i in range(10, 20):
        writer.add_meter_value(T, "CS-1", 1, None, "Energy.Active.Import.Register", None, None, float(i), "Wh")
    writer.start()
    try:
        async def written() -> bool:
            return len(await fetch(clean_db, "SELECT 1 FROM meter_values")) == 20

        await wait_for(written)
        assert writer.dropped["meter_values"] == 1
        assert writer.buffered == 0
    finally:
        await writer.close()
        await engine.dispose()


def test_a_lost_connection_is_transient_a_refused_row_is_not() -> None:
    # The telemetry writer uses asyncpg directly: its own errors for a connection that went away
    # must mean "try again", or buffered rows are dropped as poison during an outage.
    assert is_transient(pg_exc.InterfaceError("connection is closed"))
    assert is_transient(pg_exc.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert is_transient(pg_exc.CannotConnectNowError("the database system is starting up"))
    assert is_transient(pg_exc.AdminShutdownError("terminating connection due to administrator command"))
    assert not is_transient(pg_exc.InterfaceError("cannot perform operation: another operation is in progress"))
    assert not is_transient(pg_exc.NotNullViolationError("null value in column"))
