"""Alembic, driven from code: ``gateway db upgrade|downgrade|current`` and ``serve --migrate``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from gateway.config import Settings
from gateway.db.engine import normalize_url

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["database_url"] = normalize_url(database_url)
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    # env.py runs its own event loop, so it must not run on ours.
    await asyncio.to_thread(upgrade, database_url, revision)


def cli(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.database_url:
        print("error: no database URL (--database-url or GATEWAY_DATABASE_URL)", file=sys.stderr)
        return 2
    if args.db_command == "upgrade":
        upgrade(settings.database_url, args.revision)
    elif args.db_command == "downgrade":
        downgrade(settings.database_url, args.revision)
    else:
        command.current(alembic_config(settings.database_url), verbose=True)
    return 0
