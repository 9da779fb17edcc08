"""The measure a demand charge is billed on: the billing period's peak demand, the highest average
site import over any demand interval (15 minutes by default) of the period. Pure: no I/O.

The site's import is known as a series of readings (building load, every EV's power); between
readings it is taken as constant. Each interval's average closes when the first reading after
its end arrives. The billing period is a calendar month starting on ``billing_day`` at 00:00 on the
site's clock (its time zone, gateway/sitetime.py);
its peak starts at zero and is kept in Postgres (``billing_peaks``) so a restart, or another node,
plans against the same peak so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway import sitetime

# Of an interval the gateway did not watch whole (it started, or readings stopped), the average
# is taken over the part it watched, if at least this share; a shorter look says too little.
MIN_WATCHED_SHARE = 0.5


def period_start(at: datetime, billing_day: int, tz: str = sitetime.UTC_NAME) -> datetime:
    """Start of the billing period holding ``at`` (months start on ``billing_day``, 1-28, at local
    midnight in ``tz``), in UTC."""
    here = sitetime.local(at, tz)
    start = here.replace(day=billing_day, hour=0, minute=0, second=0, microsecond=0)
    if start > here:
        start = _add_month(start, -1)
    return start.astimezone(UTC)


def period_end(at: datetime, billing_day: int, tz: str = sitetime.UTC_NAME) -> datetime:
    start = sitetime.local(period_start(at, billing_day, tz), tz)
    return _add_month(start, 1).astimezone(UTC)


def _add_month(d: datetime, months: int) -> datetime:
    m = d.month - 1 + months
    return d.replace(year=d.year + m // 12, month=m % 12 + 1)


# A sample stamped at most this much before the last one is the site's power from the last one on.
LATE_SAMPLE_S = 10.0


@dataclass
class DemandMeter:
    interval_s: float = 900.0
    billing_day: int = 1
    timezone: str = sitetime.UTC_NAME  # the site's: the billing month starts at its midnight
    period: datetime | None = None  # start of the billing period ``peak_kw`` belongs to
    peak_kw: float = 0.0
    # The peak rose since it was last stored (the caller stores it and clears this).
    unsaved: bool = False
    _interval: float | None = None  # start of the open interval (POSIX seconds)
    _kws: float = 0.0  # kW x seconds of it so far
    _watched_s: float = 0.0
    _last: tuple[float, float] | None = field(default=None)  # (POSIX seconds, kW) of the last reading

    def sample(self, at: datetime, kw: float) -> None:
        """The site imports ``kw`` from ``at`` on (negative: it exports)."""
        t = at.timestamp()
        if self._last is not None and t < self._last[0]:
            if self._last[0] - t > LATE_SAMPLE_S:
                return  # an older reading than one already counted changes nothing
            # Stamped a little before the last one (the site's power is sampled as each input is
            # applied, and a session's change can be stamped when it was published, before a
            # building reading applied meanwhile): the site's power from now on, not dropped,
            # or a 50-kW start counted only from the next reading (the interval read 0.06 kW).
            t = self._last[0]
        if self._last is not None:
            t0, kw0 = self._last
            while self._interval is not None and t >= self._interval + self.interval_s:
                end = self._interval + self.interval_s
                self._add(t0, end, kw0)
                self._close()
                t0 = max(t0, end)
                self._interval = end
            self._add(t0, t, kw0)
        if self._interval is None:
            # On the site's clock: a 60-minute interval in a zone 5:30 from UTC is 06:00-07:00
            # local, not 06:30-07:30 (intervals follow on from this one, interval_s apart).
            offset = sitetime.local(at, self.timezone).utcoffset()
            off = 0.0 if offset is None else offset.total_seconds()
            self._interval = t - (t + off) % self.interval_s
        self._last = (t, kw)

    def restore(self, period: datetime, peak_kw: float) -> None:
        """A peak stored for ``period`` (after a restart, or by another node)."""
        if self.period is None or period > self.period:
            self.period, self.peak_kw = period, peak_kw
        elif period == self.period:
            self.peak_kw = max(self.peak_kw, peak_kw)

    def peak_at(self, at: datetime) -> float:
        """The peak so far of the billing period holding ``at`` (0 once a new one has begun)."""
        return self.peak_kw if self.period == period_start(at, self.billing_day, self.timezone) else 0.0

    def _add(self, t0: float, t1: float, kw: float) -> None:
        if self._interval is None or t1 <= t0:
            return
        lo = max(t0, self._interval)
        if t1 > lo:
            self._kws += kw * (t1 - lo)
            self._watched_s += t1 - lo

    def _close(self) -> None:
        assert self._interval is not None
        if self._watched_s >= MIN_WATCHED_SHARE * self.interval_s:
            avg = self._kws / self._watched_s
            start = datetime.fromtimestamp(self._interval, tz=UTC)
            period = period_start(start, self.billing_day, self.timezone)
            if self.period is None or period > self.period:
                self.period, self.peak_kw, self.unsaved = period, 0.0, True
            if period == self.period and avg > self.peak_kw:
                self.peak_kw, self.unsaved = avg, True
        self._kws = self._watched_s = 0.0

