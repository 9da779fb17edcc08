"""How long the gateway takes at start to read back its open transactions, each with the highest
SoC its meter values stored (``TransactionRepository.active``: what a battery lent to the grid
held, to have back by its believed departure after a restart).

    .venv/bin/python bench/open_sessions_read.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test \\
        [--sessions 1000] [--hours 10] [--every-s 30] [--no-soc-index]

Fills a fresh database (created on the server of --database-url, dropped at the end) with
``--sessions`` open transactions, each with ``--hours`` of samples every ``--every-s`` seconds of
six measurands (SoC among them), and prints one JSON object: the rows, the median of three reads
of the open transactions with and without the highest SoC, and what the index costs the meter
path: the median time to insert one reading (the six samples of one session, one statement) over
one reading per session. ``--no-soc-index``: drop the partial index of migration 0009 first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import asyncpg
from benchlib import fresh_database
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from gateway.db import models as m
from gateway.db.transactions import TransactionRepository

MEASURANDS = ["SoC", "Energy.Active.Import.Register", "Energy.Active.Export.Register", "Power.Active.Import",
              "Current.Import", "Voltage"]


async def fill(url: str, sessions: int, samples: int, every_s: int, drop_index: bool) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute("INSERT INTO stations (id, password_hash) SELECT 'CS-' || g, 'x' "
                           "FROM generate_series(1, $1) g", sessions)
        await conn.execute("INSERT INTO transactions (station_id, transaction_id, evse_id, started_at, updated_at, "
                           "last_soc) SELECT 'CS-' || g, 'tx-' || g, 1, now() - interval '1 day', now(), 50 "
                           "FROM generate_series(1, $1) g", sessions)
        await conn.execute(
            "INSERT INTO meter_values (ts, station_id, evse_id, transaction_id, measurand, value) "
            "SELECT now() - make_interval(secs => k * $3), 'CS-' || g, 1, 'tx-' || g, ms, "
            "CASE WHEN ms = 'SoC' THEN 20 + k % 60 ELSE k END "
            "FROM generate_series(1, $1) g, generate_series(1, $2) k, unnest($4::text[]) ms",
            sessions, samples, float(every_s), MEASURANDS)
        if drop_index:
            await conn.execute("DROP INDEX ix_meter_values_soc_high")
        await conn.execute("ANALYZE")
        return int(await conn.fetchval("SELECT count(*) FROM meter_values"))
    finally:
        await conn.close()


async def reads(url: str) -> dict[str, float]:
    engine = create_async_engine(url)
    repo = TransactionRepository(async_sessionmaker(engine))
    with_high, plain = [], []
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            await repo.active()
            with_high.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            async with repo._sessions() as s:
                (await s.execute(select(m.Transaction).where(m.Transaction.ended_at.is_(None)))).scalars().all()
            plain.append(time.perf_counter() - t0)
    finally:
        await engine.dispose()
    return {"read_with_high_soc_s": round(statistics.median(with_high), 3),
            "read_without_s": round(statistics.median(plain), 3)}


async def writes(url: str, sessions: int) -> dict[str, float]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    took = []
    try:
        for g in range(1, sessions + 1):
            t0 = time.perf_counter()
            await conn.execute("INSERT INTO meter_values (ts, station_id, evse_id, transaction_id, measurand, value) "
                               "SELECT now(), $1, 1, $2, ms, 50 FROM unnest($3::text[]) ms",
                               f"CS-{g}", f"tx-{g}", MEASURANDS)
            took.append(time.perf_counter() - t0)
    finally:
        await conn.close()
    return {"insert_reading_ms_p50": round(1000 * statistics.median(took), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--every-s", type=int, default=30)
    ap.add_argument("--no-soc-index", action="store_true")
    a = ap.parse_args()
    samples = int(a.hours * 3600 / a.every_s)
    with fresh_database(a.database_url) as url:
        rows = asyncio.run(fill(url, a.sessions, samples, a.every_s, a.no_soc_index))
        out = asyncio.run(reads(url))
        out.update(asyncio.run(writes(url, a.sessions)))
    print(json.dumps({"sessions": a.sessions, "meter_values": rows, "soc_index": not a.no_soc_index, **out}))


if __name__ == "__main__":
    main()
