"""The batched telemetry writer: COPY in batches, and a row the database refuses is dropped and
counted instead of blocking every row behind it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from asyncpg import exceptions as pg_exc

from gateway import metrics
from gateway.db.engine import is_transient, make_engine
from gateway.db.telemetry import TelemetryWriter, row_refused
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


def test_only_a_refusal_of_the_data_itself_drops_a_row() -> None:
    assert row_refused(pg_exc.StringDataRightTruncationError("value too long"))  # 22001
    assert row_refused(pg_exc.UniqueViolationError("duplicate key"))  # 23505
    assert not row_refused(pg_exc.ReadOnlySQLTransactionError("read-only transaction"))  # 25006: a failover
    assert not row_refused(pg_exc.DiskFullError("could not extend file"))  # 53100
    assert not row_refused(pg_exc.UndefinedTableError("relation does not exist"))  # 42P01
    assert not row_refused(RuntimeError("a bug"))


async def test_rows_are_kept_while_the_database_refuses_every_write_and_written_after(clean_db: str) -> None:
    """A database that refuses every write for a while (read-only after a failover, disk full;
    here the table is away) is no bad row: before, the writer took it for one and dropped the
    whole buffer row by row within seconds."""
    engine = make_engine(clean_db, pool_size=2)
    writer = TelemetryWriter(engine, max_rows=1000, flush_rows=5, flush_interval_s=0.05, retry_interval_s=0.05)
    admin = await asyncpg.connect(clean_db.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute("ALTER TABLE meter_values RENAME TO meter_values_away")
        try:
            for i in range(20):
                writer.add_meter_value(T, "CS-1", 1, None, "Energy.Active.Import.Register", None, None, float(i), "Wh")
            writer.start()

            async def tried_and_kept() -> bool:
                return metrics.DB_RETRIES.labels("telemetry")._value.get() > retries + 2  # type: ignore[attr-defined]

            retries = metrics.DB_RETRIES.labels("telemetry")._value.get()  # type: ignore[attr-defined]
            await wait_for(tried_and_kept)
            assert writer.dropped["meter_values"] == 0 and writer.buffered == 20
        finally:
            await admin.execute("ALTER TABLE meter_values_away RENAME TO meter_values")

        async def written() -> bool:
            return len(await fetch(clean_db, "SELECT 1 FROM meter_values")) == 20

        await wait_for(written)
        assert writer.dropped["meter_values"] == 0
    finally:
        await admin.close()
        await writer.close()
        await engine.dispose()


async def test_a_batch_whose_commit_answer_was_lost_is_not_written_twice(clean_db: str) -> None:
    """The COPY committed and the connection broke before the answer (or a timeout hit then):
    the batch was put back and written again, and meter_values, which has no natural key, held
    those rows twice."""
    engine = make_engine(clean_db, pool_size=2)
    writer = TelemetryWriter(engine, max_rows=1000, flush_rows=50, flush_interval_s=0.05, retry_interval_s=0.05)
    real = writer._store
    lost = 0

    async def answer_lost(*a: Any) -> bool:
        nonlocal lost
        stored = await real(*a)
        if lost == 0:
            lost += 1
            raise pg_exc.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return stored

    writer._store = answer_lost  # type: ignore[method-assign]
    for i in range(20):
        writer.add_meter_value(T, "CS-1", 1, None, "Energy.Active.Import.Register", None, None, float(i), "Wh")
    writer.start()
    try:
        async def settled() -> bool:
            return writer.buffered == 0

        await wait_for(settled)
        rows = await fetch(clean_db, "SELECT value FROM meter_values ORDER BY value")
        assert [r["value"] for r in rows] == [float(i) for i in range(20)]
        assert lost == 1 and writer.written["meter_values"] == 20 and writer.dropped["meter_values"] == 0
    finally:
        await writer.close()
        await engine.dispose()
