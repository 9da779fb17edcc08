"""The retry rule for writes whose answer waits on durability (docs/reliability.md D5)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.db.engine import GaveUp, until_committed
from tests.conftest import EVENT_TIMEOUT_S


async def test_retries_stop_when_the_caller_gives_up() -> None:
    give_up = asyncio.Event()
    attempts = 0

    async def away() -> None:
        nonlocal attempts
        attempts += 1
        give_up.set()  # the station's socket closes while this attempt fails
        raise ConnectionRefusedError("the database is away")

    # No second attempt once the caller has given up: nobody is left to answer.
    with pytest.raises(GaveUp):
        await asyncio.wait_for(until_committed(away, retry_interval_s=60.0, what="t", give_up=give_up),
                               EVENT_TIMEOUT_S)
    assert attempts == 1
