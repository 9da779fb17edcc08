"""The one clock.

Every part of the gateway, the simulators and the evaluator asks a :class:`Clock` for the time
and sleeps through it, so a simulation can run a day in minutes (``ScaledClock``), the offline
evaluator can jump from event to event (``ManualClock``), and tests never sleep for real minutes.
Nothing else in the code base calls ``time.time()``, ``datetime.now()`` or ``asyncio.sleep`` for
*simulated* durations; short real-time waits (network back-off inside one call) may use
``asyncio.sleep`` directly when they are not part of the simulated world.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta


def utc(dt: datetime) -> datetime:
    """Return ``dt`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or an offset) into an aware UTC datetime.

    Everything RFC 3339 allows is accepted (schema validation lets it through): a lower-case
    ``t``/``z`` (§5.6 note) and a leap second ``:60`` (read as the last microsecond of the minute).
    An instant a datetime cannot hold (year 0000, or an offset moving it before 0001-01-01 or
    after 9999-12-31 UTC) raises ValueError, like any other unparsable text: RFC 3339 allows
    it, so callers must treat it as bad input, never as a bug.
    """
    text = text.upper().replace("Z", "+00:00")
    leap = len(text) > 19 and text[17:19] == "60"
    if leap:
        text = text[:17] + "59" + text[19:]
    try:
        parsed = utc(datetime.fromisoformat(text))
    except OverflowError as exc:  # astimezone past the year range
        raise ValueError(f"timestamp out of range: {exc}") from None
    return parsed.replace(microsecond=999_999) if leap else parsed


def to_rfc3339(dt: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with a ``Z`` suffix and millisecond precision."""
    return utc(dt).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Clock(ABC):
    """Simulated-or-real time. ``scale`` is simulated seconds per real second."""

    scale: float = 1.0

    @abstractmethod
    def now(self) -> datetime:
        """The current (possibly simulated) time, aware UTC."""

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time."""
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    async def sleep_until(self, when: datetime) -> None:
        await self.sleep((utc(when) - self.now()).total_seconds())

    def real_seconds(self, simulated_seconds: float) -> float:
        """How many real seconds ``simulated_seconds`` take on this clock."""
        return simulated_seconds / self.scale

    def monotonic(self) -> float:
        """Real monotonic seconds, for measuring latencies (never scaled)."""
        return time.monotonic()


class RealClock(Clock):
    scale = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)


class ScaledClock(Clock):
    """Simulated time that starts at ``start`` and runs ``scale`` times faster than real time.

    Two processes built with the same ``start`` and ``scale`` and started together agree on the
    time; ``anchor_real`` lets a second process join a clock started earlier (epoch seconds).
    """

    def __init__(self, start: datetime, scale: float, anchor_real: float | None = None) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.start = utc(start)
        self.scale = float(scale)
        self._anchor_wall = time.time() if anchor_real is None else anchor_real
        self._anchor_mono = time.monotonic() - (time.time() - self._anchor_wall)

    def now(self) -> datetime:
        elapsed_real = time.monotonic() - self._anchor_mono
        return self.start + timedelta(seconds=elapsed_real * self.scale)


class ManualClock(Clock):
    """A clock that only moves when told to; ``sleep`` waits until someone advances it.

    The offline evaluator and pure unit tests use it. ``scale`` is infinite in spirit: sleeping
    costs no real time, only an :meth:`advance` by another task.
    """

    scale = 1.0

    def __init__(self, start: datetime) -> None:
        self._now = utc(start)
        self._cond: asyncio.Condition | None = None

    def now(self) -> datetime:
        return self._now

    def set(self, when: datetime) -> None:
        when = utc(when)
        if when < self._now:
            raise ValueError("a manual clock never goes backwards")
        self._now = when
        if self._cond is not None:
            cond = self._cond

            async def _notify() -> None:
                async with cond:
                    cond.notify_all()

            asyncio.get_running_loop().create_task(_notify())

    def advance(self, seconds: float) -> None:
        self.set(self._now + timedelta(seconds=seconds))

    async def sleep(self, seconds: float) -> None:
        target = self._now + timedelta(seconds=max(0.0, seconds))
        if self._cond is None:
            self._cond = asyncio.Condition()
        async with self._cond:
            await self._cond.wait_for(lambda: self._now >= target)

    def real_seconds(self, simulated_seconds: float) -> float:
        return 0.0


def make_clock(time_scale: float = 1.0, sim_start: datetime | None = None) -> Clock:
    """The clock the CLI builds: real time unless a scale or a simulated start is given."""
    if time_scale == 1.0 and sim_start is None:
        return RealClock()
    start = sim_start if sim_start is not None else datetime.now(UTC)
    return ScaledClock(start, time_scale)
