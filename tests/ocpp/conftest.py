"""Fixtures for the OCPP transport tests: a real OcppServer on port 0 with in-memory peers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.clock import Clock, RealClock
from gateway.config import Settings
from gateway.ocpp.auth import hash_password
from gateway.ocpp.server import OcppServer
from tests.ocpp.peers import MemoryDirectory, RecordingObserver, RecordingSecuritySink, SimpleHandler

PASSWORD = "correct-horse-battery-staple-1"
PASSWORD_HASH = hash_password(PASSWORD)


@dataclass
class Gateway:
    server: OcppServer
    directory: MemoryDirectory
    security: RecordingSecuritySink
    handler: SimpleHandler
    observer: RecordingObserver
    url: str


def test_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "ocpp_host": "127.0.0.1",
        "ocpp_port": 0,
        "ws_ping_interval_s": None,
        "call_timeout_s": 5.0,
        "shutdown_drain_s": 3.0,
    }
    base.update(overrides)
    return Settings(**base)


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    started: list[OcppServer] = []

    async def start(
        directory: MemoryDirectory | None = None,
        clock: Clock | None = None,
        scheme: str = "ws",
        **overrides: Any,
    ) -> Gateway:
        directory = directory or MemoryDirectory()
        security, observer = RecordingSecuritySink(), RecordingObserver()
        handler = SimpleHandler()
        server = OcppServer(
            test_settings(**overrides), clock or RealClock(), directory, handler, security, observer
        )
        port = await server.start()
        started.append(server)
        return Gateway(server, directory, security, handler, observer, f"{scheme}://127.0.0.1:{port}/ocpp")

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def gw(start_gateway: StartGateway) -> Gateway:
    directory = MemoryDirectory()
    directory.add("CS1", PASSWORD, password_hash=PASSWORD_HASH)
    return await start_gateway(directory)
