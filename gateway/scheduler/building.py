"""What the building will draw: a profile by time of day learned from the site's own readings.

Used by the live scheduler whenever the energy system has not pushed a forecast, and by the
evaluator's MPC, so both plan with the same forecast. A reading is kept per five-minute slot of
the site's day (its time zone) and per day, the latest of the day winning, for the last
``KEEP_DAYS`` days: the profile is their mean. The forecast is that profile, shifted toward the
reading now by a weight that fades over a few hours (building load wanders around its daily
pattern and comes back to it); before there is a profile, the reading now (persistence).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime

from gateway import sitetime

SLOT_MIN = 5
KEEP_DAYS = 28  # long enough to average out a day's weather, short enough to follow the seasons
SHIFT_FADE_S = 3 * 3600.0  # how fast a deviation from the profile is expected to die out


@dataclass
class BuildingProfile:
    tz: str = sitetime.UTC_NAME
    _days: dict[int, deque[tuple[date, float]]] = field(default_factory=dict)
    _mean: dict[int, float] = field(default_factory=dict)  # per slot, kept up to date by observe

    def slot(self, when: datetime) -> int:
        """Five-minute slot of the site's day."""
        at = sitetime.local(when, self.tz)
        return (at.hour * 60 + at.minute) // SLOT_MIN

    def observe(self, when: datetime, kw: float) -> None:
        """The building drew ``kw`` at ``when`` (a later reading in the same slot of the same day
        replaces the earlier one, so re-plans in quick succession do not outweigh a quiet day)."""
        day = sitetime.local(when, self.tz).date()
        k = self.slot(when)
        rows = self._days.setdefault(k, deque(maxlen=KEEP_DAYS))
        if rows and rows[-1][0] == day:
            rows.pop()
        rows.append((day, float(kw)))
        self._mean[k] = sum(v for _, v in rows) / len(rows)

    def profile(self) -> dict[int, float]:
        """Mean load per five-minute slot of the day (slots never seen are absent)."""
        return self._mean

    def forecast(self, now: datetime, now_kw: float) -> Callable[[datetime], float]:
        prof = self.profile()
        shift = now_kw - prof.get(self.slot(now), now_kw)

        def building(when: datetime) -> float:
            k = self.slot(when)
            if when <= now or k not in prof:
                return now_kw
            return prof[k] + math.exp(-(when - now).total_seconds() / SHIFT_FADE_S) * shift

        return building
