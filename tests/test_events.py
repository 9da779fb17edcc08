"""The event bus's per-subscriber queue (gateway/events.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from gateway import events as ev

T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


def _reading(i: int) -> ev.SessionUpdated:
    return ev.SessionUpdated(T0, "CS", 1, "TX-1", energy_in_kwh=float(i))


async def test_a_subscriber_that_falls_behind_loses_readings_before_a_sessions_start_or_end() -> None:
    """A dropped SessionEnded left a finished session planned and pushed profiles until the next
    start on its EVSE; a reading is followed by a newer one."""
    bus = ev.EventBus()
    sub = bus.subscribe(maxsize=3)
    bus.publish(ev.SessionStarted(T0, "CS", 1, "TX-1", None))
    for i in range(5):
        bus.publish(_reading(i))
    bus.publish(ev.SessionEnded(T0, "CS", 1, "TX-1"))
    got = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert got == [ev.SessionStarted(T0, "CS", 1, "TX-1", None), _reading(4), ev.SessionEnded(T0, "CS", 1, "TX-1")]
    assert sub.dropped == 4
    # With nothing else queued, the oldest of all goes: the bound holds.
    for i in range(4):
        bus.publish(ev.SessionStarted(T0, "CS", 1, f"TX-{i}", None))
    assert [e.transaction_id for e in (sub.queue.get_nowait() for _ in range(3))] == ["TX-1", "TX-2", "TX-3"]
    assert sub.queue.empty() and sub.dropped == 5


async def test_a_waiting_subscriber_gets_events_in_order() -> None:
    bus = ev.EventBus()
    sub = bus.subscribe(ev.SessionStarted, ev.SessionUpdated)
    waiting = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)
    bus.publish(_reading(1))
    bus.publish(ev.SessionStarted(T0, "CS", 1, "TX-2", None))
    bus.publish(ev.StatusChanged(T0, "CS", 1, 1, "Occupied"))  # not subscribed
    assert await asyncio.wait_for(waiting, 5.0) == _reading(1)
    assert await asyncio.wait_for(sub.get(), 5.0) == ev.SessionStarted(T0, "CS", 1, "TX-2", None)
    assert sub.queue.empty()
    late = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)
    assert not late.done()
    bus.publish(_reading(3))
    assert await asyncio.wait_for(late, 5.0) == _reading(3)
