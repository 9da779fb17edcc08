"""A gateway whose start fails half way closes what it had opened."""

from __future__ import annotations

import socket

import pytest

from gateway.app import run_until_signal
from tests.conftest import gateway_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_start_that_fails_on_a_taken_port_closes_the_ocpp_listener(clean_db: str) -> None:
    ocpp_port = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = gateway_settings(clean_db, ocpp_port=ocpp_port, api_port=taken.getsockname()[1])
        with pytest.raises(OSError):
            await run_until_signal(settings)
    # The OCPP listener was up before the API failed: it is closed, not left to the process's exit.
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", ocpp_port))
