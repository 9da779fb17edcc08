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
from collections import deque
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import metrics
from gateway.db.engine import driver_connection, is_transient

log = logging.getLogger(__name__)

TABLES: dict[str, tuple[str, ...]] = {
    "meter_values": (
        "ts", "station_id", "evse_id", "transaction_id", "measurand", "phase", "context", "value", "unit",
        "location",
    ),
    "status_history": ("station_id", "evse_id", "connector_id", "status", "ts", "received_at"),
}


def row_refused(exc: BaseException) -> bool:
    """The database refused the data itself: SQLSTATE class 22 (a value it cannot take) or 23 (a
    constraint). Anything else (the database away, read-only, out of disk or memory) says
    nothing about the rows, which are kept and written later."""
    state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(state, str) and state[:2] in ("22", "23")


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
        """Write everything buffered now (raises if the database is away)."""
        for table in TABLES:
            while self._buffers[table]:
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
                    await self._drop_poison()
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
                        self.dropped[table] += len(buf)
                        metrics.DROPPED_ROWS.labels(table).inc(len(buf))
                    return
                await asyncio.sleep(self._retry)
                continue
            if self._closing:
                return

    async def _drop_poison(self) -> None:
        """Write the head batch of each table row by row; rows the database refuses are dropped
        and counted (they are the ones that made the batch fail)."""
        for table in TABLES:
            buf = self._buffers[table]
            for _ in range(min(len(buf), self._flush_rows)):
                row = buf.popleft()
                self._size -= 1
                try:
                    async with driver_connection(self._engine) as driver:
                        await driver.copy_records_to_table(table, records=[row], columns=list(TABLES[table]))
                    self.written[table] += 1
                except Exception as exc:
                    if not row_refused(exc):
                        buf.appendleft(row)
                        self._size += 1
                        return
                    self.dropped[table] += 1
                    metrics.DROPPED_ROWS.labels(table).inc()
                    log.error("telemetry row refused by the database and dropped (%s): %s", table, exc)

    async def _write_batch(self, table: str) -> None:
        buf = self._buffers[table]
        n = min(len(buf), self._flush_rows)
        rows = [buf.popleft() for _ in range(n)]
        self._size -= n
        started = time.perf_counter()
        try:
            async with driver_connection(self._engine) as driver:
                await driver.copy_records_to_table(table, records=rows, columns=list(TABLES[table]))
        except BaseException:
            # Not durable: put the batch back in front, in order, for the next attempt.
            buf.extendleft(reversed(rows))
            self._size += n
            raise
        metrics.DB_WRITE_SECONDS.labels(f"copy_{table}").observe(time.perf_counter() - started)
        self.written[table] += n
        metrics.BUFFERED_ROWS.labels(table).set(len(buf))
