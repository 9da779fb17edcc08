"""In-process domain events: the OCPP handlers, the REST API and the MQTT bridge publish them;
the scheduler and the MQTT bridge subscribe. Publishing never blocks and never fails the publisher.

Nothing polls the database to find work: an event is how one part tells another that something
changed. Subscribers get their own bounded queue; a subscriber that falls behind loses events and
the loss is counted (``dropped``), never the publisher's time. The oldest reading or status goes
first (a newer one of the same kind follows it); a session's start or end, a connect, a boot or
new needs only once the queue holds nothing else, since nothing repeats them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime


@dataclass(frozen=True, slots=True)
class StationConnected(Event):
    station_id: str


@dataclass(frozen=True, slots=True)
class StationDisconnected(Event):
    station_id: str


@dataclass(frozen=True, slots=True)
class StationBooted(Event):
    """A BootNotification was accepted (the station may now be sent commands, B02.FR.??)."""

    station_id: str


@dataclass(frozen=True, slots=True)
class StatusChanged(Event):
    station_id: str
    evse_id: int
    connector_id: int
    status: str


@dataclass(frozen=True, slots=True)
class SessionStarted(Event):
    station_id: str
    evse_id: int
    transaction_id: str
    id_token: str | None
    # When the station says it started, if that was while it was offline (the event queued and
    # sent on reconnection, so ``at`` is late); None: at ``at``.
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionUpdated(Event):
    """New meter readings for a session (cumulative energies, instantaneous power, SoC)."""

    station_id: str
    evse_id: int
    transaction_id: str
    energy_in_kwh: float | None = None
    energy_out_kwh: float | None = None
    power_kw: float | None = None
    soc: float | None = None
    # TransactionEvent's chargingState when the station reported one (None: unchanged).
    charging_state: str | None = None


@dataclass(frozen=True, slots=True)
class SessionEnded(Event):
    station_id: str
    evse_id: int
    transaction_id: str
    reason: str | None = None
    # When the station says it ended, if that was while it was offline (see SessionStarted).
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NeedsUpdated(Event):
    """NotifyEVChargingNeeds arrived, or a driver changed preferences."""

    station_id: str
    evse_id: int
    transaction_id: str | None
    source: str  # "ev" or "driver"


@dataclass(frozen=True, slots=True)
class SiteInputsChanged(Event):
    """Prices, building load, limits or grid events changed (REST or MQTT)."""

    what: str


@dataclass(frozen=True, slots=True)
class PlanPublished(Event):
    plan_id: int | None
    status: str
    summary: dict[str, Any] = field(default_factory=dict)


# Events that state what is so now, each followed by a newer one of its kind: the first to go
# when a subscriber falls behind.
REPEATED: tuple[type[Event], ...] = (SessionUpdated, StatusChanged, PlanPublished)


class EventQueue:
    """FIFO of one subscriber's events, bounded at ``maxsize`` (0: not bounded, as for
    asyncio.Queue): when full, the oldest of the ``REPEATED`` kinds is dropped, or, with none
    queued, the oldest of all. Two deques of (sequence, event) keep every operation O(1)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._seq = 0
        self._repeated: deque[tuple[int, Event]] = deque()
        self._others: deque[tuple[int, Event]] = deque()
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        return len(self._repeated) + len(self._others)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def drop_one(self) -> None:
        (self._repeated or self._others).popleft()

    def put_nowait(self, event: Event) -> None:
        self._seq += 1
        (self._repeated if isinstance(event, REPEATED) else self._others).append((self._seq, event))
        self._ready.set()

    def get_nowait(self) -> Event:
        a, b = self._repeated, self._others
        if not a and not b:
            raise asyncio.QueueEmpty
        first = a if a and (not b or a[0][0] < b[0][0]) else b
        event = first.popleft()[1]
        if not a and not b:
            self._ready.clear()
        return event

    async def get(self) -> Event:
        while self.empty():
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()


class Subscription:
    def __init__(self, bus: EventBus, types: tuple[type[Event], ...], maxsize: int) -> None:
        self._bus = bus
        self.types = types
        self.queue = EventQueue(maxsize)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if self.types and not isinstance(event, self.types):
            return
        if self.queue.full():
            self.queue.drop_one()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def subscribe(self, *types: type[Event], maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, types, maxsize)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            try:
                sub.offer(event)
            except Exception:  # pragma: no cover - a subscriber bug must not hurt the publisher
                log.exception("event subscriber failed")
