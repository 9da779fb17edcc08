"""What the building will draw: a forecast anchored to the reading now, and a profile by time of
day learned from the site's own readings.

One rule turns any base forecast into the one planned with (:func:`anchored`): the base, shifted
toward the reading now by a weight that fades over ``SHIFT_FADE_S`` (building load wanders around
its daily pattern and comes back to it, so the reading now says most about the next hour and
little about tomorrow). The base is the energy system's pushed day-ahead forecast when there is
one (:func:`gateway.scheduler.live_inputs.building_forecast`), else the learned profile.

The learned profile is used by the live scheduler whenever the energy system has not pushed a
forecast, and by the evaluator's MPC (unless it is told to plan with the episode's energy-system
forecast), so both plan with the same forecast. A reading is kept per
five-minute slot of the site's day (its time zone) and per day, the latest of the day winning,
for the last ``KEEP_DAYS`` days: the profile is their mean, weekdays and weekends apart once the
window holds ``MIN_DAYS_OF_KIND`` days of the kind asked for (an office draws far less on a
Saturday, and Saturdays averaged into Monday's profile make Monday look emptier than it is),
else over all of them. Before there is a profile, the forecast is the reading now (persistence).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from gateway import sitetime

SLOT_MIN = 5
KEEP_DAYS = 28  # long enough to average out a day's weather, short enough to follow the seasons
SHIFT_FADE_S = 3 * 3600.0  # how fast a deviation from the base forecast is expected to die out
# A weekday's or a weekend day's own mean once the window holds this many days of its kind (28 days
# hold 8 weekend days; a new site's first weekend is planned from its weekdays, anchored to the
# reading now).
MIN_DAYS_OF_KIND = 2


def anchored(base: Callable[[datetime], float | None], now: datetime, now_kw: float,
             base_now: float | None = None) -> Callable[[datetime], float]:
    """``base`` pulled toward the reading now: at ``now`` and before, ``now_kw``; later, the base
    plus today's deviation from it (``now_kw - base(now)``, or ``now_kw - base_now`` where given),
    fading with ``exp(-dt / SHIFT_FADE_S)``. Where the base knows nothing (None), the reading now."""
    at_now = base(now) if base_now is None else base_now
    shift = 0.0 if at_now is None else now_kw - at_now

    def building(when: datetime) -> float:
        if when <= now:
            return now_kw
        b = base(when)
        if b is None:
            return now_kw
        return b + math.exp(-(when - now).total_seconds() / SHIFT_FADE_S) * shift

    return building


def _of_kind(rows: Iterable[tuple[date, float]], weekend: bool) -> float | None:
    """The mean of ``rows`` (day, reading) over the days of one kind where there are
    MIN_DAYS_OF_KIND of them, else over all days; None with no rows."""
    rows = list(rows)
    kind = [v for d, v in rows if sitetime.is_weekend(d) == weekend]
    if len(kind) >= MIN_DAYS_OF_KIND:
        return sum(kind) / len(kind)
    return sum(v for _, v in rows) / len(rows) if rows else None


@dataclass
class BuildingProfile:
    tz: str = sitetime.UTC_NAME
    _days: dict[int, deque[tuple[date, float]]] = field(default_factory=dict)
    # (weekend?, slot) -> the profile there (_of_kind), kept up to date by observe
    _base: dict[tuple[bool, int], float] = field(default_factory=dict)

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
        for weekend in (False, True):
            mean = _of_kind(rows, weekend)
            if mean is not None:  # always: the rows hold this reading
                self._base[(weekend, k)] = mean

    def base(self, when: datetime) -> float | None:
        """The profile at ``when``: its slot's mean over the days of its kind (weekday or
        weekend) where there are enough of them, else over all days; None for a slot never seen."""
        return self._base.get((sitetime.is_weekend(sitetime.local(when, self.tz).date()), self.slot(when)))

    def base_before(self, when: datetime) -> float | None:
        """:meth:`base` from the days before ``when``'s day only: what the profile said of this
        slot before today's reading of it was taken."""
        day = sitetime.local(when, self.tz).date()
        return _of_kind(((d, v) for d, v in self._days.get(self.slot(when), ()) if d < day), sitetime.is_weekend(day))

    def reading(self, when: datetime) -> float:
        """What the building drew in ``when``'s slot on its day (a past reading), else the
        profile there (:meth:`base`), else 0 (never seen: the hindsight LP of a finished day
        counts no building load)."""
        day = sitetime.local(when, self.tz).date()
        k = self.slot(when)
        for d, kw in reversed(self._days.get(k, ())):
            if d == day:
                return kw
            if d < day:
                break
        base = self.base(when)
        return 0.0 if base is None else base

    def profile(self) -> dict[int, float]:
        """Mean load per five-minute slot of the day over all days kept (slots never seen are
        absent)."""
        return {k: sum(v for _, v in rows) / len(rows) for k, rows in self._days.items() if rows}

    def forecast(self, now: datetime, now_kw: float) -> Callable[[datetime], float]:
        """The learned profile (:meth:`base`: weekdays and weekends apart) anchored to the
        reading now (:func:`anchored`); a slot never seen is forecast at the reading now.

        The deviation is measured against the profile of the days before today (:meth:`base_before`):
        the reading now is already in its slot's mean (it is observed before each plan), and the
        next slots' means do not hold today yet: measured against that mean the deviation would
        shrink by one part in (days + 1) and the forecast fall by as much from now to five minutes
        later, so every re-plan would see room in its next step that is not there and put charging
        off into it (most early in a site's life, or on the first days of a kind)."""
        return anchored(self.base, now, now_kw, self.base_before(now))
