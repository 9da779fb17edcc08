"""S4 under concurrency: a login attempt is counted as it is admitted, so concurrent handshakes
cannot run more password checks than the lock-out allows; good stations are not refused for it."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from websockets.exceptions import InvalidStatus

from gateway.clock import ManualClock
from gateway.ocpp.auth import AdmissionTimeout, LockedOut, LockoutTracker
from tests.ocpp.conftest import PASSWORD, PASSWORD_HASH, StartGateway
from tests.ocpp.peers import MemoryDirectory, open_station


async def _attempt(url: str, station_id: str, password: str) -> int | str:
    try:
        ws = await open_station(url, station_id, password)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return "connected"


async def test_concurrent_wrong_passwords_cost_at_most_the_lockout_limit(start_gateway: StartGateway) -> None:
    directory = MemoryDirectory()
    directory.add("CS1", PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory, auth_failures_per_minute_max=10, auth_lockout_s=60, handshake_timeout_s=20)
    checks = 0
    verify = gw.server.verifier.verify

    async def counting(*args: object) -> bool:
        nonlocal checks
        checks += 1
        return await verify(*args)  # type: ignore[arg-type]

    gw.server.verifier.verify = counting  # type: ignore[method-assign]
    results = Counter(await asyncio.gather(*(_attempt(gw.url, "CS1", f"wrong-{i:04d}") for i in range(80))))
    assert checks <= 10, f"{checks} password checks for one id within a minute"
    assert results == {401: 10, 429: 70}
    assert directory.lookups <= 10  # refused before the lookup too
    assert await _attempt(gw.url, "CS1", PASSWORD) == 429  # locked, even with the right password


async def test_concurrent_good_logins_from_one_address_all_get_in(start_gateway: StartGateway) -> None:
    directory = MemoryDirectory()
    ids = [f"CS{i}" for i in range(40)]
    for sid in ids:
        directory.add(sid, PASSWORD, password_hash=PASSWORD_HASH)
    gw = await start_gateway(directory, auth_failures_per_minute_max=10, auth_lockout_s=60, handshake_timeout_s=20)
    results = await asyncio.gather(*(_attempt(gw.url, sid, PASSWORD) for sid in ids))
    assert results == ["connected"] * len(ids)


async def test_tracker_slots_are_released_on_success_and_kept_as_failures() -> None:
    clock = ManualClock(datetime(2026, 7, 1, 8, 0, tzinfo=UTC))
    tracker = LockoutTracker(clock, failures_max=2, lockout_s=60)
    key = ("id", "CS1")
    first = await tracker.admit([key], timeout_s=5)
    second = await tracker.admit([key], timeout_s=5)
    waiting = asyncio.create_task(tracker.admit([key], timeout_s=5))
    await asyncio.sleep(0)  # let it queue
    assert not waiting.done() and tracker.in_flight(key) == 2
    first.succeeded()  # a success frees its slot for the waiter
    third = await asyncio.wait_for(waiting, 5)
    third.close()
    assert tracker.failures(key) == 0
    assert second.failed([key]) == []
    last = await tracker.admit([key], timeout_s=5)
    late = asyncio.create_task(tracker.admit([key], timeout_s=5))
    await asyncio.sleep(0)
    assert last.failed([key]) == [key]  # the second failure locks: the waiter is refused
    try:
        await asyncio.wait_for(late, 5)
        raise AssertionError("admitted while locked")
    except LockedOut:
        pass
    assert tracker.in_flight(key) == 0
    clock.advance(61)
    other = ("addr", "10.0.0.1")
    one = await tracker.admit([other], timeout_s=5)
    two = await tracker.admit([other], timeout_s=5)
    try:
        await tracker.admit([other], timeout_s=0.05)
        raise AssertionError("a third slot")
    except AdmissionTimeout:
        pass
    one.close()
    two.close()
    assert tracker.in_flight(other) == 0
