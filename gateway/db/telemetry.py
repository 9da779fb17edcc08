"""The batched telemetry writer: meter values and status history go to Postgres with COPY,
a batch at a time, so a burst of samples costs one round-trip per batch, not one per sample.

The buffer is bounded (``meter_buffer_rows_max`` rows over all tables). While the database is
away rows wait in it; when it is full the oldest rows are dropped and counted
(``gateway_db_dropped_rows_total``), never the OCPP path's time (docs/reliability.md D5).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import metrics
from gateway.db.engine import driver_connection, is_transient, sqlstate

log = logging.getLogger(__name__)

TABLES: dict[str, tuple[str, ...]] = {
    "meter_values": (
        "ts", "station_id", "evse_id", "transaction_id", "measurand", "phase", "context", "value", "unit",
        "location",
    ),
    "status_history": ("station_id", "evse_id", "connector_id", "status", "ts", "received_at"),
}
# How long a written batch's id is kept (telemetry_batches, migration 0019): longer than any
# retry of a batch whose commit's answer was lost can come after it.
BATCH_IDS_KEPT = "7 days"
PRUNE_EVERY_S = 3600.0


def row_refused(exc: BaseException) -> bool:
    """The database refused the data itself: SQLSTATE class 22 (a value it cannot take) or 23 (a
    constraint). Anything else (the database away, read-only, out of disk or memory) says
    nothing about the rows, which are kept and written later."""
    state = sqlstate(exc)
    return state is not None and state[:2] in ("22", "23")


class TelemetryWriter:
    def __init__(
        self, engine: AsyncEngine, *, max_rows: int, flush_rows: int, flush_interval_s: float,
        retry_interval_s: float,
    ) -> None:
        self._engine = engine
        self._max_rows = max_rows
        self._flush_rows = flush_rows
        self._interval = flush_interval_s
        self._retry = retry_interval_s
        self._buffers: dict[str, deque[tuple[Any, ...]]] = {t: deque() for t in TABLES}
        # The batch of each table being written, with its id, until it is known to be stored: one
        # tried again after a failure is the same batch, so a commit whose answer was lost is not
        # written twice. Its rows still count as buffered.
        self._pending: dict[str, tuple[uuid.UUID, list[tuple[Any, ...]]] | None] = dict.fromkeys(TABLES)
        # The table whose write raised last: a refusal is about its batch alone (another table's
        # pending batch may be stored, its commit's answer lost).
        self._raised_in: str | None = None
        self._pruned_at: float | None = None
        self._size = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped: dict[str, int] = dict.fromkeys(TABLES, 0)
        self.written: dict[str, int] = dict.fromkeys(TABLES, 0)

    @property
    def buffered(self) -> int:
        return self._size

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        buf = self._buffers[table]
        if self._size >= self._max_rows:
            # Drop the oldest row of the fullest table: keep what is newest, count what is lost.
            victim = max(self._buffers, key=lambda t: len(self._buffers[t]))
            if not self._buffers[victim]:
                # Every row kept is in a batch being written (which may be stored already, so
                # none of it is dropped): this one is what is lost.
                self.dropped[table] += 1
                metrics.DROPPED_ROWS.labels(table).inc()
                return
            self._buffers[victim].popleft()
            self._size -= 1
            self.dropped[victim] += 1
            metrics.DROPPED_ROWS.labels(victim).inc()
        buf.append(row)
        self._size += 1
        if self._size >= self._flush_rows:
            self._wake.set()

    def add_meter_value(
        self, ts: datetime, station_id: str, evse_id: int, transaction_id: str | None, measurand: str,
        phase: str | None, context: str | None, value: float, unit: str | None, location: str | None = None,
    ) -> None:
        self.add("meter_values", (ts, station_id, evse_id, transaction_id, measurand, phase, context,
                                  value, unit, location))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is buffered (within ``timeout_s``) and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                log.warning("telemetry writer closed with %d rows unwritten", self._size)

    async def flush(self) -> None:
        """Write everything buffered now (raises if the database is away). One batch of each
        table a round: a table under sustained load (meter values) does not hold the others'
        rows (status history) back until it is drained."""
        while True:
            tables = [t for t in TABLES if self._pending[t] is not None or self._buffers[t]]
            if not tables:
                return
            for table in tables:
                await self._write_batch(table)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                if row_refused(exc):
                    # A row the database refuses (bad data, a constraint). Find it, or it would
                    # block every row behind it forever.
                    assert self._raised_in is not None  # only a table's write talks to the database
                    await self._drop_poison(self._raised_in)
                    continue
                # The database away, or refusing every write for now (read-only after a
                # failover, disk full, out of memory): nothing is dropped, it is tried again.
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "telemetry write deferred (%d rows kept): %s", self._size, exc)
                metrics.DB_RETRIES.labels("telemetry").inc()
                if self._closing:
                    # Lost with the process: counted as dropped, so the loss is on record.
                    log.error("telemetry writer stopped with %d rows unwritten", self._size)
                    for table, buf in self._buffers.items():
                        pending = self._pending[table]
                        lost = len(buf) + (len(pending[1]) if pending is not None else 0)
                        self.dropped[table] += lost
                        metrics.DROPPED_ROWS.labels(table).inc(lost)
                    return
                await asyncio.sleep(self._retry)
                continue
            if self._closing:
                return

    async def _drop_poison(self, table: str) -> None:
        """Write the head batch of ``table`` (whose write the database refused) row by row; rows
        the database refuses are dropped and counted (they are the ones that made the batch fail).

        Only this table's batch is known to be rolled back: another table's pending batch may be
        stored, its commit's answer lost, and stays pending to be tried again with its own id."""
        buf = self._buffers[table]
        pending = self._pending[table]
        if pending is not None:
            # Refused, so rolled back: nothing of it is stored, its rows go one by one.
            buf.extendleft(reversed(pending[1]))
            self._pending[table] = None
        for _ in range(min(len(buf), self._flush_rows)):
            # Each row is a batch of its own, pending with its id until it is known to be stored:
            # one whose commit's answer is lost is tried again with the same id, not written twice.
            self._pending[table] = (uuid.uuid4(), [buf.popleft()])
            try:
                await self._write_batch(table)
            except Exception as exc:
                if not row_refused(exc):
                    # Kept (pending, or back in the buffer when no connection was had): the next
                    # flush goes on with it.
                    return
                # Refused, so rolled back: nothing of it is stored.
                self._pending[table] = None
                self._size -= 1
                self.dropped[table] += 1
                metrics.DROPPED_ROWS.labels(table).inc()
                log.error("telemetry row refused by the database and dropped (%s): %s", table, exc)

    async def _write_batch(self, table: str) -> None:
        pending = self._pending[table]
        if pending is None:
            buf = self._buffers[table]
            pending = self._pending[table] = (uuid.uuid4(), [buf.popleft() for _ in range(min(len(buf),
                                                                                             self._flush_rows))])
        batch_id, rows = pending
        started = time.perf_counter()
        sent: list[bool] = []
        try:
            fresh = await self._store(table, batch_id, rows, sent)
        except BaseException:
            self._raised_in = table
            if not sent:
                # No connection was had: nothing of it can be stored. Back in front of the rest,
                # where a full buffer may drop its oldest rows as before.
                self._buffers[table].extendleft(reversed(rows))
                self._pending[table] = None
            # Else it may have been stored: it stays pending, the same batch for the next attempt.
            raise
        self._pending[table] = None
        self._size -= len(rows)
        if not fresh:
            log.info("telemetry batch of %d %s rows was stored by an attempt whose answer was lost: not "
                     "written again", len(rows), table)
        metrics.DB_WRITE_SECONDS.labels(f"copy_{table}").observe(time.perf_counter() - started)
        self.written[table] += len(rows)
        metrics.BUFFERED_ROWS.labels(table).set(len(self._buffers[table]))

    async def _store(self, table: str, batch_id: uuid.UUID, rows: list[tuple[Any, ...]],
                     sent: list[bool] | None = None) -> bool:
        """COPY ``rows`` with the batch's id in one transaction; False (nothing written) where
        that id is already stored. ``sent`` is appended to once a connection is had (from then
        on a failure may come after the commit)."""
        async with driver_connection(self._engine) as driver:
            if sent is not None:
                sent.append(True)
            async with driver.transaction():
                fresh = await driver.fetchval(
                    "INSERT INTO telemetry_batches (id, written_at) VALUES ($1, now()) ON CONFLICT (id) DO NOTHING "
                    "RETURNING true", batch_id)
                if fresh:
                    await driver.copy_records_to_table(table, records=rows, columns=list(TABLES[table]))
                now = time.monotonic()
                if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S:
                    await driver.execute(f"DELETE FROM telemetry_batches WHERE written_at < now() - interval "
                                         f"'{BATCH_IDS_KEPT}'")
                    self._pruned_at = now
        return bool(fresh)
