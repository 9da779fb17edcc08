"""A2: one head, upgrade/downgrade round trip, and the models match the migrated DDL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db import migrate
from gateway.db.models import Base
from tests.conftest import _admin, _with_db


@pytest.fixture
def scratch_db(database_server_url: str) -> Iterator[str]:
    name = f"gw_mig_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(database_server_url, f'CREATE DATABASE "{name}"'))
    url = _with_db(database_server_url, name)
    url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    yield url
    asyncio.run(_admin(database_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_single_head() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql+asyncpg://x@y/z"))
    assert len(script.get_heads()) == 1


def _diff(url: str) -> list[object]:
    async def run() -> list[object]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:

            def compare(sync: Connection) -> list[object]:
                ctx = MigrationContext.configure(sync, opts={"compare_type": True})
                return list(compare_metadata(ctx, Base.metadata))

            result = await conn.run_sync(compare)
        await engine.dispose()
        return result

    return asyncio.run(run())


def test_upgrade_downgrade_and_models_match(scratch_db: str) -> None:
    migrate.upgrade(scratch_db)
    assert _diff(scratch_db) == []
    migrate.downgrade(scratch_db, "base")
    assert len(_diff(scratch_db)) > 0  # tables are gone, so the models differ
    migrate.upgrade(scratch_db)
    assert _diff(scratch_db) == []


def test_0010_gives_rows_written_before_it_their_starting_token(scratch_db: str) -> None:
    """A session written before 0010 had its token overwritten by the last event with one (a card
    shown to stop it); the upgrade gives it back the token of its earliest stored event with one."""
    import asyncpg

    migrate.upgrade(scratch_db, "0009")
    dsn = "postgresql://" + scratch_db.split("://", 1)[1]

    async def seed() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO stations (id) VALUES ('CS')")
            await conn.execute("INSERT INTO transactions (station_id, transaction_id, id_token, id_token_type, "
                               "updated_at) VALUES ('CS', 'TX', 'CARD-B', 'ISO14443', now())")
            for seq, token in ((0, None), (1, {"idToken": "CARD-A", "type": "ISO14443"}), (4, {"idToken": "CARD-B",
                               "type": "ISO14443"})):
                payload = {"seqNo": seq} if token is None else {"seqNo": seq, "idToken": token}
                await conn.execute(
                    "INSERT INTO transaction_events (station_id, transaction_id, seq_no, event_type, trigger_reason, "
                    "ts, received_at, payload, response) VALUES ('CS', 'TX', $1, 'Updated', 'Authorized', now(), "
                    "now(), $2::jsonb, '{}'::jsonb)", seq, json.dumps(payload))
        finally:
            await conn.close()

    async def read() -> tuple[str, str, int]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT id_token, id_token_type, id_token_seq_no FROM transactions")
            return row["id_token"], row["id_token_type"], row["id_token_seq_no"]
        finally:
            await conn.close()

    asyncio.run(seed())
    migrate.upgrade(scratch_db)
    assert asyncio.run(read()) == ("CARD-A", "ISO14443", 1)


def test_nodes_migrating_one_fresh_database_at_once_all_succeed(scratch_db: str) -> None:
    """Several gateways started with --migrate on one new database: one migrates, the others wait
    for it and find nothing left to do (without a lock they raced to create the same tables)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    gateway = str(Path(sys.executable).with_name("gateway"))
    env = {**os.environ, "GATEWAY_DATABASE_URL": scratch_db}
    # Processes, as nodes are (alembic's context is one per process: not threads).
    procs = [subprocess.Popen([gateway, "db", "upgrade"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert _diff(scratch_db) == []
