"""The batched telemetry writer: COPY in batches, and a row the database refuses is dropped and
counted instead of blocking every row behind it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from asyncpg import exceptions as pg_exc

from gateway import metrics
from gateway.db.engine import is_transient, make_engine
from gateway.db.telemetry import TelemetryWriter, row_refused
from tests.conftest import EVENT_TIMEOUT_S
from tests.gateway.test_handlers import fetch, wait_for

T = datetime(2026, 7, 1, 8, tzinfo=UTC)
STATUS = ("CS-1", 1, 1, "Occupied", T, T)
# A meter value the database refuses: its measurand is NOT NULL.
NO_MEASURAND = (T, "CS-1", 1, None, None, None, None, 99.0, "Wh", None)


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


async def test_a_refused_row_does_not_write_another_tables_batch_again(clean_db: str) -> None:
    """A status_history batch committed with its answer lost, then a meter value refused: every
    table's pending batch was taken as refused (rolled back) and written again row by row with
    fresh ids, so that status history was stored twice."""
    engine = make_engine(clean_db, pool_size=2)
    writer = TelemetryWriter(engine, max_rows=1000, flush_rows=50, flush_interval_s=0.05, retry_interval_s=0.05)
    real = writer._store
    lost = 0

    async def answer_lost(table: str, *a: Any) -> bool:
        nonlocal lost
        stored = await real(table, *a)
        if table == "status_history" and lost == 0:
            lost += 1
            raise pg_exc.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return stored

    writer._store = answer_lost  # type: ignore[method-assign]
    writer.add("status_history", STATUS)
    writer.add("status_history", STATUS)
    with pytest.raises(pg_exc.ConnectionDoesNotExistError):
        await writer.flush()  # stored; pending, as its answer was lost
    writer.add("meter_values", NO_MEASURAND)
    writer.start()
    try:
        async def settled() -> bool:
            return writer.buffered == 0

        await wait_for(settled)
        assert len(await fetch(clean_db, "SELECT 1 FROM status_history")) == 2
        assert writer.written["status_history"] == 2 and writer.dropped["status_history"] == 0
        assert writer.dropped["meter_values"] == 1
    finally:
        await writer.close()
        await engine.dispose()


async def test_a_row_written_alone_whose_answer_was_lost_is_not_written_twice(clean_db: str) -> None:
    """While a refused batch is written row by row, a row's commit's answer is lost: the row went
    back to the buffer and was written again under a fresh id, so it was stored twice."""
    engine = make_engine(clean_db, pool_size=2)
    writer = TelemetryWriter(engine, max_rows=1000, flush_rows=50, flush_interval_s=0.05, retry_interval_s=0.05)
    real = writer._store
    lost = 0

    async def answer_lost(table: str, batch_id: uuid.UUID, rows: list[tuple[Any, ...]], *a: Any) -> bool:
        nonlocal lost
        stored = await real(table, batch_id, rows, *a)
        if len(rows) == 1 and lost == 0:
            lost += 1
            raise pg_exc.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return stored

    writer._store = answer_lost  # type: ignore[method-assign]
    for i in range(5):
        writer.add_meter_value(T, "CS-1", 1, None, "Energy.Active.Import.Register", None, None, float(i), "Wh")
    writer.add("meter_values", NO_MEASURAND)
    for i in range(5, 10):
        writer.add_meter_value(T, "CS-1", 1, None, "Energy.Active.Import.Register", None, None, float(i), "Wh")
    writer.start()
    try:
        async def settled() -> bool:
            return writer.buffered == 0

        await wait_for(settled)
        rows = await fetch(clean_db, "SELECT value FROM meter_values ORDER BY value")
        assert [r["value"] for r in rows] == [float(i) for i in range(10)]
        assert lost == 1 and writer.written["meter_values"] == 10 and writer.dropped["meter_values"] == 1
    finally:
        await writer.close()
        await engine.dispose()


async def test_status_history_is_written_while_meter_values_keep_coming(clean_db: str) -> None:
    """flush() wrote one table until it was empty before the next: under sustained meter load,
    status history waited for as long as the load lasted. Here more meter values come during
    every meter write until the status row is written (at most 50 times, so a writer that never
    gets to it still ends)."""
    engine = make_engine(clean_db, pool_size=2)
    writer = TelemetryWriter(engine, max_rows=1000, flush_rows=5, flush_interval_s=0.05, retry_interval_s=0.05)
    real = writer._store
    order: list[str] = []

    async def under_load(table: str, *a: Any) -> bool:
        stored = await real(table, *a)
        order.append(table)
        if table == "meter_values" and "status_history" not in order and len(order) < 50:
            for i in range(5):
                writer.add_meter_value(T, "CS-1", 1, None, "Power.Active.Import", None, None, float(i), "W")
        return stored

    writer._store = under_load  # type: ignore[method-assign]
    for i in range(5):
        writer.add_meter_value(T, "CS-1", 1, None, "Power.Active.Import", None, None, float(i), "W")
    writer.add("status_history", STATUS)
    try:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            await writer.flush()
        # One batch of each table a round: the status row goes in the first round.
        assert order[:2] == ["meter_values", "status_history"]
        assert writer.buffered == 0 and writer.written == {"meter_values": 10, "status_history": 1}
    finally:
        await engine.dispose()
