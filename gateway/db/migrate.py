"""Alembic, driven from code: ``gateway db upgrade|downgrade|current`` and ``serve --migrate``."""

from __future__ import annotations

import argparse
import asyncio
import site
import sys
import sysconfig
from pathlib import Path

from alembic import command
from alembic.config import Config

from gateway.config import Settings
from gateway.db.engine import normalize_url

# Beside the source (a checkout, an editable install), else where a wheel installs them
# (pyproject.toml's data-files, under the install's prefix: a venv, the system, the user's base).
_INSTALLED = Path("share") / "ocpp-site-gateway" / "migrations"
PLACES = (Path(__file__).resolve().parents[2] / "migrations", Path(sys.prefix) / _INSTALLED,
          # where the scheme puts data files when that is not the prefix (Debian's /usr/local)
          Path(sysconfig.get_path("data")) / _INSTALLED, Path(site.getuserbase()) / _INSTALLED)


def migrations_dir() -> Path:
    for place in PLACES:
        if (place / "env.py").is_file():
            return place
    raise FileNotFoundError("the Alembic migrations were not found in any of: "
                            + ", ".join(str(p) for p in PLACES))


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
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
