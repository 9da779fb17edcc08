"""Shared fixtures: a real Postgres (GATEWAY_DATABASE_URL, else an embedded one), a real MQTT
broker URL, and a real gateway on port 0 that tests can restart."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from gateway.app import Gateway
from gateway.clock import Clock
from gateway.config import Settings
from gateway.db import migrate
from gateway.db.embedded import embedded_postgres
from gateway.db.stations import EvseRow
from gateway.ocpp.auth import hash_password

# Generous: tests wait on events, never on fixed sleeps, and a slow CI box must not flake.
EVENT_TIMEOUT_S = 30.0


def _server_url() -> Iterator[str]:
    url = os.environ.get("GATEWAY_DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="gw-pg-") as d, embedded_postgres(d) as emb:
        yield emb


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_db(url: str, dbname: str) -> str:
    head, _, tail = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{dbname}" + (f"?{tail}" if tail else "")


async def _admin(url: str, sql: str) -> None:
    """Run ``sql`` (CREATE / DROP DATABASE) on the server of ``url``: through its database, or
    the server's ``postgres`` database where that one does not exist (a stock server has no
    ``test``)."""
    try:
        conn = await asyncpg.connect(_plain(url))
    except asyncpg.InvalidCatalogNameError:
        conn = await asyncpg.connect(_plain(_with_db(url, "postgres")))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_server_url() -> Iterator[str]:
    yield from _server_url()


@pytest.fixture(scope="session")
def database_url(database_server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test run (dropped at the end)."""
    name = f"gw_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin(database_server_url, f'CREATE DATABASE "{name}"'))
    url = _with_db(database_server_url, name)
    if not url.startswith("postgresql+asyncpg://"):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    migrate.upgrade(url)
    yield url
    asyncio.run(_admin(database_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def clean_db(database_url: str) -> AsyncIterator[str]:
    """The test database with every table emptied before the test."""
    conn = await asyncpg.connect(_plain(database_url))
    try:
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'")]
        await conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    yield database_url


@pytest.fixture
async def proxy_and_url(clean_db: str) -> AsyncIterator[tuple[Any, str]]:
    """A TCP proxy in front of the test database (cut it to make Postgres go away) and the
    database URL through it."""
    from tests.tcp_proxy import proxied_database_url

    proxy, url_for = proxied_database_url(clean_db)
    port = await proxy.start()
    yield proxy, url_for(port)
    await proxy.close()


@pytest.fixture
def mqtt_url() -> str:
    return os.environ.get("GATEWAY_MQTT_URL", "mqtt://127.0.0.1:1883")


@dataclass
class GatewayHarness:
    """A real gateway on port 0 against the test database."""

    database_url: str
    settings: Settings
    clock: Clock | None = None
    gw: Gateway | None = None
    _hash_cache: dict[str, str] = field(default_factory=dict)

    @property
    def ocpp_url(self) -> str:
        assert self.gw is not None
        return f"ws://127.0.0.1:{self.gw.ocpp_port}/ocpp"

    @property
    def api_url(self) -> str:
        assert self.gw is not None
        return f"http://127.0.0.1:{self.gw.api_port}"

    @property
    def commands(self) -> Any:
        assert self.gw is not None
        return self.gw.commands

    async def start(self) -> None:
        self.gw = Gateway(self.settings, self.clock)
        await self.gw.start()

    async def stop(self) -> None:
        if self.gw is not None:
            await self.gw.stop()

    async def restart(self) -> None:
        """Stop and start again on the same ports (stations reconnect to the same URL)."""
        assert self.gw is not None
        ports = {"ocpp_port": self.gw.ocpp_port, "api_port": self.gw.api_port}
        await self.stop()
        self.settings = self.settings.model_copy(update=ports)
        await self.start()

    async def add_station(
        self, station_id: str, password: str, *, security_profile: int = 1,
        evses: list[tuple[int, float, float, bool]] | None = None, discharge_dialect: str = "negative_limit",
    ) -> None:
        """Register a station (and optionally its EVSEs: (evse_id, charge kW, discharge kW, bidi))."""
        assert self.gw is not None
        if password not in self._hash_cache:
            self._hash_cache[password] = hash_password(password)
        now = self.gw.clock.now()
        await self.gw.stations.add(station_id, self._hash_cache[password], security_profile=security_profile,
                                   discharge_dialect=discharge_dialect, now=now,
                                   evses=[EvseRow(*e) for e in evses or []])
        for evse_id, charge, discharge, bidi in evses or []:
            self.gw.state.with_spec(station_id, evse_id, max_charge_kw=charge, max_discharge_kw=discharge,
                                    bidirectional=bidi)


def gateway_settings(database_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": database_url, "ocpp_host": "127.0.0.1", "ocpp_port": 0, "api_host": "127.0.0.1",
        "api_port": 0, "scheduler_enabled": False, "api_key": "test-operator-key",
        "meter_flush_interval_s": 0.05, "db_retry_interval_s": 0.2, "call_timeout_s": 10.0,
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
async def gateway_server(clean_db: str) -> AsyncIterator[GatewayHarness]:
    """A real gateway (OCPP + REST, no scheduler) on port 0 backed by a fresh real database."""
    h = GatewayHarness(clean_db, gateway_settings(clean_db))
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


STATION_PASSWORD = "correct-horse-battery"


@pytest.fixture
async def station(gateway_server: GatewayHarness) -> AsyncIterator[Any]:
    """A registered station "CS-1" connected to ``gateway_server`` with Basic auth (a RawStation)."""
    from tests.ocpp_client import RawStation

    await gateway_server.add_station("CS-1", STATION_PASSWORD)
    st = await RawStation.connect(gateway_server.ocpp_url, "CS-1", STATION_PASSWORD)
    yield st
    await st.close()


@pytest.fixture
async def gateway_factory(clean_db: str) -> AsyncIterator[Any]:
    """Build gateways with custom settings: ``h = await gateway_factory(scheduler_enabled=True)``."""
    made: list[GatewayHarness] = []

    async def make(clock: Clock | None = None, **overrides: Any) -> GatewayHarness:
        url = overrides.pop("database_url", clean_db)
        h = GatewayHarness(clean_db, gateway_settings(url, **overrides), clock=clock)
        await h.start()
        made.append(h)
        return h

    yield make
    for h in reversed(made):
        await h.stop()
