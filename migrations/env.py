"""Alembic environment: async (asyncpg). The URL comes from the config attribute set by
gateway/db/migrate.py, else from GATEWAY_DATABASE_URL."""

from __future__ import annotations

import asyncio
import logging
import os

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("GATEWAY_DATABASE_URL")
    if not url:
        raise SystemExit("no database URL: pass --database-url or set GATEWAY_DATABASE_URL")
    return str(url)


# Any constant: the key of the lock every migrating process takes (pg_advisory_xact_lock).
MIGRATION_LOCK_KEY = 0x6761_7465_7761_79  # "gateway"


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        # Nodes started with --migrate on one database at once: one migrates, the others wait
        # here until it commits and then read a version with nothing left to do (the version is
        # read after the lock is taken). Released with the transaction.
        key = {"key": MIGRATION_LOCK_KEY}
        if not connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), key).scalar():
            # Said, so a node that waits on a stuck migration is not a silent hang.
            logging.getLogger("gateway.migrate").warning(
                "another process is migrating this database: waiting for it to finish")
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), key)
        context.run_migrations()


async def _online() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
