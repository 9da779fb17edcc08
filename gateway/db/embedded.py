"""An embedded Postgres (the ``pgserver`` package) for `gateway demo` and tests when no database
URL is given. It is a real Postgres server listening on a Unix socket in ``data_dir``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def asyncpg_url(uri: str) -> str:
    """pgserver's ``postgresql://postgres:@/postgres?host=/dir`` as a SQLAlchemy asyncpg URL."""
    rest = uri.split("://", 1)[1].replace("postgres:@", "postgres@", 1)
    return "postgresql+asyncpg://" + rest


@contextlib.contextmanager
def embedded_postgres(data_dir: str | Path, *, keep: bool = False) -> Iterator[str]:
    """Run Postgres in ``data_dir`` and yield its asyncpg URL; stop it afterwards."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # pgserver's platform lookups warn without it (and tests turn warnings into errors).
        runtime = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import pgserver  # type: ignore[attr-defined,unused-ignore]

    Path(data_dir).mkdir(parents=True, exist_ok=True)
    server: Any = pgserver.get_server(  # type: ignore[attr-defined,unused-ignore]
       str(data_dir), cleanup_mode=None if keep else "stop")
    try:
        yield asyncpg_url(server.get_uri())
    finally:
        if not keep:
            server.cleanup()
