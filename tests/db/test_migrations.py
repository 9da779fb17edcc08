"""A2: one head, upgrade/downgrade round trip, and the models match the migrated DDL."""

from __future__ import annotations

import asyncio
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
