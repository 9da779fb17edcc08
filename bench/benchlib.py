"""Shared by the benchmarks: a fresh database on a Postgres server, registered stations, and a
`gateway serve` child process on free ports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = str(ROOT / ".venv/bin/gateway")


def episode_parser(doc: str | None, days: int) -> argparse.ArgumentParser:
    """A parser with the evaluator's episode set (``gateway evaluate``'s site, days, seed, stations,
    exact); each script adds its own choices."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default="workplace")
    ap.add_argument("--days", type=int, default=days)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stations", type=int, default=50)
    ap.add_argument("--exact", action="store_true", help="every policy knows the true departures and needs")
    return ap


def use_departures_at_whole_steps() -> None:
    """Each possible departure planned at the last whole step before it (the version before
    ``slots.steps_around``), instead of shared between the two step ends around it: the
    ``--departure-in-step whole`` of the benchmarks that compare the two."""
    from gateway.scheduler import slots

    slots.steps_around = lambda ends, t, last: [(slots.step_ending_by(ends, t, last), 1.0)]


def use_lent_back(on: bool) -> None:
    """``SlotRules.lent_back`` for the run (off: energy lent to an export request is priced only
    by the departure spread, the version before)."""
    import functools

    from gateway.scheduler import policies

    policies.SlotRules = functools.partial(policies.SlotRules, lent_back=on)  # type: ignore[misc]


def lenders(runs: list[Any]) -> dict[str, float]:
    """The EVs a policy discharged: how many, the kWh they gave, and the kWh they were left short
    of their deliverable energy."""
    import numpy as np

    from gateway.scheduler import evaluate as ev

    n, lent, short = 0, 0.0, 0.0
    h = ev.STEP_S / 3600.0
    for run in runs:
        for t in run.evs:
            out = float(np.maximum(-run.evse_power[t.key][t.first:t.last], 0.0).sum()) * h
            if out > 0.1:
                n += 1
                lent += out
                short += max(t.deliverable - (t.energy - t.e0), 0.0)
    return {"evs": n, "discharged_kwh": round(lent, 1), "short_kwh": round(short, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, migrated database on the server of ``server_url``; dropped afterwards."""
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_plain(server_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        subprocess.run([GATEWAY, "db", "upgrade", "--database-url", url], check=True)
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def register_stations(database_url: str, ids: list[str], password: str) -> None:
    """Register stations the way `gateway station add` does (one argon2 hash shared, for speed)."""
    from gateway.ocpp.auth import hash_password

    hashed = hash_password(password)

    async def insert() -> None:
        conn = await asyncpg.connect(_plain(database_url))
        try:
            await conn.executemany(
                "INSERT INTO stations (id, password_hash, security_profile, enabled, discharge_dialect) "
                "VALUES ($1, $2, 1, true, 'negative_limit') ON CONFLICT (id) DO UPDATE SET password_hash = $2",
                [(i, hashed) for i in ids])
        finally:
            await conn.close()

    asyncio.run(insert())


def spawn_gateway(database_url: str, *extra: str, port: int | None = None) -> tuple[subprocess.Popen[str], int]:
    """`gateway serve` on ``port`` or a free one (REST on another); returns (process, OCPP port)."""
    port = port or free_port()
    cmd = [GATEWAY, "serve", "--ocpp-host", "127.0.0.1", "--ocpp-port", str(port), "--api-host", "127.0.0.1",
           "--api-port", str(free_port()), "--database-url", database_url, "--log-level", "WARNING", *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            raise SystemExit("gateway exited during start-up")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"gateway did not listen on {port} within 60 s")
