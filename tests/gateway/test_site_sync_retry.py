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


def _site_with_session(tid: str) -> Any:
    from datetime import timedelta

    from gateway.config import Settings
    from gateway.domain import EvseSpec
    from gateway.state import EvseState, SiteState

    state = SiteState.from_settings(Settings())
    state.evses[("CS", 1)] = EvseState(EvseSpec("CS", 1, max_charge_kw=11.0))
    state.apply(ev.SessionStarted(T0 - timedelta(hours=1), "CS", 1, tid, None))
    return state


T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


async def test_needs_read_back_while_their_ev_leaves_are_not_given_to_the_next_one() -> None:
    """A retried read runs beside the events' own loop: EV A leaves and EV B plugs in while it
    waits for the database. A's needs (a 60-kWh ask, its departure) went onto B's session."""
    from datetime import timedelta

    from gateway.db.planning import StoredNeeds
    from gateway.domain import EvNeeds

    state = _site_with_session("TX-A")
    a_needs = StoredNeeds(7, EvNeeds(departure_time=T0 + timedelta(hours=1), energy_kwh=60.0), 0.0)
    reading = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def latest_needs(*_a: Any) -> StoredNeeds:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError("the database is away")
        reading.set()
        await release.wait()
        return a_needs

    async def stored(_row: int, kwh: float) -> float:
        return kwh

    gw: Any = SimpleNamespace(state=state, settings=SimpleNamespace(db_retry_interval_s=0.01),
                              planning=SimpleNamespace(latest_needs=latest_needs, set_needs_baseline=stored))
    sync = SiteSync(gw)
    await sync.apply(ev.NeedsUpdated(T0, "CS", 1, "TX-A", "ev"))
    await asyncio.wait_for(reading.wait(), 5.0)
    state.apply(ev.SessionEnded(T0, "CS", 1, "TX-A", "EVDisconnected", None))
    state.apply(ev.SessionStarted(T0, "CS", 1, "TX-B", None))
    release.set()
    await asyncio.wait_for(asyncio.gather(*sync._retries), 5.0)
    s = state.evses[("CS", 1)].session
    assert s is not None and s.transaction_id == "TX-B"
    assert s.needs.energy_kwh is None and s.needs.departure_time is None
    await sync.stop()


async def test_needs_published_after_their_session_ended_are_not_kept_for_the_next() -> None:
    """Needs stored in the background after an outage are published once the database is back,
    which can be after their session ended: they were kept as needs sent before the next
    session, and the next EV to plug in took them."""
    from datetime import timedelta

    from gateway.db.planning import StoredNeeds
    from gateway.domain import EvNeeds

    state = _site_with_session("TX-A")
    state.apply(ev.SessionEnded(T0, "CS", 1, "TX-A", "EVDisconnected", None))
    reads = 0

    async def latest_needs(*_a: Any) -> StoredNeeds:
        nonlocal reads
        reads += 1
        return StoredNeeds(7, EvNeeds(departure_time=T0 + timedelta(hours=1), energy_kwh=60.0), 0.0)

    gw: Any = SimpleNamespace(state=state, settings=SimpleNamespace(db_retry_interval_s=0.01),
                              planning=SimpleNamespace(latest_needs=latest_needs))
    sync = SiteSync(gw)
    await sync.apply(ev.NeedsUpdated(T0, "CS", 1, "TX-A", "ev"))
    assert sync._early_needs == {} and reads == 0
    await sync.stop()
