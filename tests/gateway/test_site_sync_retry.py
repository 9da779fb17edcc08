"""Site sync: EV needs that could not be read back are applied later, with a back-off."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from gateway import events as ev
from gateway.site_sync import SiteSync


class _Away:
    """latest_needs with the database away, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *_a: Any) -> None:
        self.calls += 1
        raise ConnectionRefusedError("the database is away")


async def _needs_not_read_back() -> tuple[SiteSync, SimpleNamespace, _Away]:
    """A site sync that has just failed to read back the needs of the session "tx" on CS/1
    (retry interval 60 s), with that session and the failing read."""
    away = _Away()
    session = SimpleNamespace(transaction_id="tx", battery_start_kwh=1.0)
    gw: Any = SimpleNamespace(planning=SimpleNamespace(latest_needs=away),
                              settings=SimpleNamespace(db_retry_interval_s=60.0),
                              state=SimpleNamespace(evses={("CS", 1): SimpleNamespace(session=session)}))
    sync = SiteSync(gw)
    await sync.apply(ev.NeedsUpdated(datetime.now(UTC), "CS", 1, "tx", "ev"))
    return sync, session, away


async def test_needs_not_read_back_are_retried_with_a_back_off_not_in_a_loop() -> None:
    sync, _, away = await _needs_not_read_back()
    assert away.calls == 1 and len(sync._retries) == 1
    retry = next(iter(sync._retries))
    for _ in range(100):  # loop turns, not time: a retry that queued itself again would run in each
        await asyncio.sleep(0)
    assert away.calls == 2  # the retry's first attempt, then its back-off (60 s here)
    assert sync._retries == {retry} and not retry.done()
    await sync.stop()
    assert retry.cancelled()


async def test_needs_not_read_back_are_dropped_when_their_ev_has_left() -> None:
    sync, session, away = await _needs_not_read_back()
    session.transaction_id = "tx-next"  # the EV left and the next one plugged in before the retry
    retry = next(iter(sync._retries))
    await asyncio.wait_for(retry, 5.0)
    assert away.calls == 1  # the newest needs of the EVSE were not read for the next EV
    await sync.stop()
