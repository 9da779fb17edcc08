"""Background work that must run in order per key (one station's connected flags and registration
reads, one EVSE's profile records) without holding up the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class OrderedTasks(Generic[K]):
    """Runs each key's tasks one after the other, in the order they were asked for, each as a
    task of its own (made by ``spawn``); keys do not wait for one another."""

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = asyncio.create_task) -> None:
        self._spawn = spawn
        self._last: dict[K, asyncio.Task[None]] = {}

    def add(self, key: K, work: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run ``work()`` once the key's previous task has ended, whatever became of it."""
        before = self._last.get(key)

        async def after() -> None:
            if before is not None:
                await asyncio.wait({before})
            await work()

        task = self._spawn(after())
        self._last[key] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._last.get(key) is t:
                del self._last[key]

        task.add_done_callback(done)
        return task

    def pending(self, key: K) -> bool:
        return key in self._last

    def tasks(self) -> list[asyncio.Task[None]]:
        """Each key's newest task (it ends after the ones before it)."""
        return list(self._last.values())
