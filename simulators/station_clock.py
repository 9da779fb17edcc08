"""A station's own clock: the shared simulation clock plus the offset the CSMS told it at boot.

Real stations set their clock from BootNotificationResponse.currentTime (OCPP 2.0.1 B01); the
simulated ones do the same, so a fleet and a gateway started at different moments still agree.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.clock import Clock, utc


class StationClock(Clock):
    """``base`` shifted by an offset; sleeps run at the base clock's pace."""

    def __init__(self, base: Clock, min_step_s: float | None = None) -> None:
        self.base = base
        self.scale = base.scale
        self.offset = timedelta(0)
        # Ignore corrections smaller than this (simulated seconds; default 50 ms of real time)
        # or the network round trip of each boot would make the clock jitter.
        self.min_step_s = min_step_s if min_step_s is not None else max(1.0, 0.05 * base.scale)

    def now(self) -> datetime:
        return self.base.now() + self.offset

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    def real_seconds(self, simulated_seconds: float) -> float:
        return self.base.real_seconds(simulated_seconds)

    def set_time(self, current: datetime, sent_at_base: datetime) -> None:
        """Adopt ``current`` as the time at the midpoint of the round trip begun at ``sent_at_base``."""
        received = self.base.now()
        half_trip = (received - sent_at_base) / 2
        midpoint = sent_at_base + half_trip
        offset = utc(current) - midpoint
        # The CSMS read ``current`` somewhere in the round trip, so the true offset lies within half
        # the trip of this estimate: a clock already that close is kept, or a slow answer would set it
        # wrong by up to half the trip (simulated minutes at a high time scale).
        change = abs((offset - self.offset).total_seconds())
        if change >= max(self.min_step_s, half_trip.total_seconds()):
            self.offset = offset
