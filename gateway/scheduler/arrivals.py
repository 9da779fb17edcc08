"""EVs that have not arrived yet: how many the site expects per hour of the day, and the
aggregate slots that keep their energy, power and peak in every plan.

Without them an MPC spends the morning's low peak on the first EVs and pays for the later rush
(the demand charge is on the billing period's highest import, so a later arrival that forces the
peak up makes the early, cautious hours a waste).

Counting is done where a bias would hide: an arrival is counted when the EV plugs in, against
the hours of the day the gateway watched whole. Counting completed sessions against the days seen
would undercount every hour whose EVs are still plugged in, including the whole of today (on a
site's second day, half the real arrivals).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np

from gateway import sitetime
from gateway.config import EV_EFFICIENCY
from gateway.scheduler.problem import SlotInput, TimeGrid

HOUR = timedelta(hours=1)
# An hour counts as watched whole when the gateway looked at the site within this much of both
# of its ends (re-plans run every 5 minutes).
WATCH_TOLERANCE = timedelta(minutes=10)
EXPECTED_SLOTS = 24  # one per coming hour, always this many so the LP's shape is stable
DWELL_GROUPS = 3  # each hour's arrivals split by length of stay
ARRIVAL_OFFSET = timedelta(minutes=30)  # an hour's expected EVs are planned from its middle
# An expected EV left short costs the plan this share of a real one's price: still far above any
# energy or demand price (so the plan keeps their room), but where the site cannot serve everyone
# the EVs that are here come first.
EXPECTED_UNMET_WEIGHT = 0.5
# The plan keeps room for this share of the EVs history expects, not for all of them: planned in
# full, a day with fewer arrivals than the average pays for a morning peak set to leave them room
# (the EVs that are here charge harder early), while a busier one costs a later rise of the peak.
# Measured (docs/benchmarks-scheduler.md): 0.8 beat 1.0 on both 20-day workplace draws by 1.7 and
# 2.8 points and was within 0.2 on the depot; 0.6 was no better than 0.8, 1.2 worse than 1.0.
PLANNED_SHARE = 0.8
KEEP_DAYS = 60  # history kept per site (older hours are forgotten)


@dataclass
class ArrivalGroup:
    """Part of an hour's arrivals that stay about as long as each other."""

    share: float  # of the hour's sessions
    energy_kwh: float  # mean energy per session
    dwell_h: float  # median dwell
    max_kw: float  # mean charging power limit


@dataclass
class ExpectedArrivals:
    per_day: float  # sessions starting in this hour of day, per watched day of the same kind
    groups: list[ArrivalGroup]  # by length of stay, shortest first


def day_kind(site: str, when: datetime) -> str:
    """Weekdays and weekends are counted apart (``when`` on the site's clock)."""
    return f"{site}/{'weekend' if sitetime.is_weekend(when.date()) else 'weekday'}"


@dataclass
class ArrivalModel:
    """Arrivals per (day kind, hour of day), from plug-ins seen in hours watched whole, and the
    energy, dwell and power of completed sessions by arrival hour. Days, weekdays and hours are
    the site's (``tz``): a morning rush stays at 08:00 across a change of daylight saving time."""

    tz: str = sitetime.UTC_NAME

    # (kind, date, hour, fold) -> EVs that plugged in then. The fold tells the two hours apart
    # that a night the clocks go back has under one local hour: counted as one hour watched once,
    # that hour's arrivals came out twice as many as any other day's.
    _counts: dict[tuple[str, date, int, int], int] = field(default_factory=lambda: defaultdict(int))
    # (kind, hour) -> (date, fold) on which that hour was watched whole
    _watched: dict[tuple[str, int], set[tuple[date, int]]] = field(default_factory=lambda: defaultdict(set))
    _stats: dict[tuple[str, int], list[tuple[float, float, float]]] = field(
        default_factory=lambda: defaultdict(list))
    # the hour being watched now: (site, start of the hour, first look, last look)
    _open: dict[str, tuple[datetime, datetime, datetime]] = field(default_factory=dict)
    _seen: dict[object, datetime] = field(default_factory=dict)
    _forgot_on: date | None = None

    def arrived(self, site: str, session: object, arrival: datetime) -> None:
        """An EV plugged in (``session`` identifies it, so a session seen at every re-plan counts
        once)."""
        if session in self._seen:
            return
        self._seen[session] = arrival
        at = self._local(arrival)
        self._counts[(day_kind(site, at), at.date(), at.hour, at.fold)] += 1

    def observe(self, site: str, arrival: datetime, departure: datetime, energy_kwh: float,
                max_kw: float) -> None:
        """A completed session: the energy it took (into the battery), how long it stayed and its
        power limit. What sessions took, not what they asked: requests include wishes no stay
        could meet, and a forecast need is a high quantile; either would keep room for energy
        that never flows."""
        dwell_h = (departure - arrival).total_seconds() / 3600.0
        at = self._local(arrival)
        rows = self._stats[(day_kind(site, at), at.hour)]
        rows.append((energy_kwh, dwell_h, max_kw))
        del rows[:-KEEP_DAYS * 20]  # a bounded, recent sample per hour

    def watch(self, site: str, now: datetime) -> None:
        """The gateway looked at the site now; closes the previous hour if it was watched whole."""
        block = self._block(now)
        cur = self._open.get(site)
        if cur is None or cur[0] != block:
            if cur is not None:
                self._close(site, *cur)
            self._open[site] = (block, now, now)
        else:
            self._open[site] = (block, cur[1], now)
        self._forget(now)

    def watched(self, site: str, start: datetime, end: datetime) -> None:
        """Mark every whole hour in [start, end) as watched (history loaded at start-up)."""
        block = self._block(start)
        if block < start:
            block += HOUR
        while block + HOUR <= end:
            self._mark_watched(site, block)
            block += HOUR

    def _local(self, when: datetime) -> datetime:
        return sitetime.local(when, self.tz)

    def _block(self, when: datetime) -> datetime:
        """The start of ``when``'s hour on the site's clock (half an hour off UTC in India): the
        hours arrivals are counted by, so the hour planned is the hour counted."""
        return self._local(when).replace(minute=0, second=0, microsecond=0).astimezone(when.tzinfo)

    def _mark_watched(self, site: str, block: datetime) -> None:
        at = self._local(block)
        self._watched[(day_kind(site, at), at.hour)].add((at.date(), at.fold))

    def _close(self, site: str, block: datetime, first: datetime, last: datetime) -> None:
        if first - block <= WATCH_TOLERANCE and block + HOUR - last <= WATCH_TOLERANCE:
            self._mark_watched(site, block)

    def _forget(self, now: datetime) -> None:
        """Once a day: drop the hours, counts and sessions that arrived more than KEEP_DAYS ago
        (a long-running gateway keeps a bounded history; a session still plugged in after that
        would only count toward a day no longer used)."""
        if self._forgot_on == now.date():
            return
        self._forgot_on = now.date()
        oldest = (now - timedelta(days=KEEP_DAYS)).date()
        self._seen = {k: v for k, v in self._seen.items() if v.date() >= oldest}
        for key in [k for k in self._counts if k[1] < oldest]:
            del self._counts[key]
        for dates in self._watched.values():
            for d in [d for d in dates if d[0] < oldest]:
                dates.discard(d)

    def remembered(self) -> int:
        """Plug-ins counted plus sessions remembered: bounded by KEEP_DAYS on a long-running gateway."""
        return sum(self._counts.values()) + len(self._seen)

    def expected(self, site: str, when: datetime) -> ExpectedArrivals | None:
        """Arrivals expected in the hour starting at ``when``."""
        at = self._local(when)
        kind, hour = day_kind(site, at), at.hour
        days = self._watched.get((kind, hour), set())
        rows = self._stats.get((kind, hour), [])
        if not days or not rows:
            return None
        count = sum(self._counts.get((kind, d, hour, fold), 0) for d, fold in days)
        a = np.asarray(sorted(rows, key=lambda r: r[1]), dtype=float)
        groups = []
        for part in np.array_split(a, min(DWELL_GROUPS, len(a))):
            groups.append(ArrivalGroup(share=len(part) / len(a), energy_kwh=float(part[:, 0].mean()),
                                       dwell_h=float(np.median(part[:, 1])), max_kw=float(part[:, 2].mean())))
        return ExpectedArrivals(per_day=count / len(days), groups=groups)

    def slots(self, site: str, grid: TimeGrid, now: datetime, eff_charge: float = EV_EFFICIENCY) -> list[SlotInput]:
        """Aggregate slots for the EVs expected to arrive in each coming hour, one per group of
        similar stays (an hour's short visits need their energy sooner than its long stays).
        Never applied to a charger: they only keep the arrivals' energy, power and peak in the
        plan. Always ``EXPECTED_SLOTS`` x ``DWELL_GROUPS`` slots, so the problem's shape does not
        change between re-plans. ``eff_charge``: the efficiency the site's EVs are planned with
        (their needs are battery-side energy)."""
        n = len(grid)
        starts = np.array([s.timestamp() for s in grid.starts()])
        ends = starts + grid.durations_s
        hour0 = self._block(now)
        out = []
        for j in range(EXPECTED_SLOTS):
            b0 = hour0 + j * HOUR
            exp = self.expected(site, b0)
            # Of the current hour only what is left of it is still to come.
            share = 1.0 - (now - b0).total_seconds() / 3600.0 if j == 0 else 1.0
            groups = exp.groups if exp is not None else []
            for g in range(DWELL_GROUPS):
                conn = np.zeros(n, dtype=bool)
                need = kw = 0.0
                if exp is not None and g < len(groups):
                    grp = groups[g]
                    count = PLANNED_SHARE * exp.per_day * share * grp.share
                    # Never in the first step: that one is applied to the EVs that are here.
                    arrive = max((b0 + ARRIVAL_OFFSET).timestamp(), float(ends[0]))
                    leave = arrive + grp.dwell_h * 3600.0
                    # Present in the steps they spend at least half of (hourly steps later on:
                    # an EV due at half past is there for half of its hour).
                    overlap = np.minimum(ends, leave) - np.maximum(starts, arrive)
                    conn = overlap >= 0.5 * grid.durations_s - 1e-6
                    if not conn.any() and overlap.max() > 0:
                        # A stay shorter than half of every step it touches (under half an hour
                        # on the hourly steps): in the step it spends most of, rather than left
                        # out of every plan (a site of short visits kept no room for any).
                        conn[int(np.argmax(overlap))] = True
                    # Only the part of their stay inside the horizon is theirs to charge in it.
                    inside = (min(leave, ends[-1]) - arrive) / max(leave - arrive, 1.0)
                    need = count * grp.energy_kwh * max(inside, 0.0)
                    kw = count * grp.max_kw
                    if need <= 0.1 or not conn.any():
                        conn, need, kw = np.zeros(n, dtype=bool), 0.0, 0.0
                out.append(SlotInput(key=("~expected", j * DWELL_GROUPS + g), connected=conn, energy_kwh=0.0,
                                     capacity_kwh=need, target_energy_kwh=need, reserve_energy_kwh=0.0,
                                     max_charge_kw=kw, max_discharge_kw=0.0, unmet_weight=EXPECTED_UNMET_WEIGHT,
                                     eff_charge=eff_charge))
        return out
