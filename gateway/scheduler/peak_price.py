"""What raising a long billing period's peak costs, from the peaks the site's days have needed.

The demand charge is paid once per billing period (a month) on its highest interval. A plan sees
one day ahead; priced at the whole period's charge, a rise early in the month would be refused
even where later days will raise the peak that far anyway (EVs left short to save nothing);
priced at one day's share (:func:`gateway.scheduler.inputs.planned_demand_charge`), the peak
creeps up day after day. What a rise to ``x`` kW really costs is the period's charge times the
chance that no later day of the period takes the peak to ``x`` anyway: with ``k`` days of the
period left after the plan's horizon and ``F`` the distribution of the peak a day needs,
``charge * F(x) ** k``, a price rising with the level (convex, so one LP holds it:
``SiteInputs.peak_price_steps``). Early in the month a rise up to the levels busy days need is
nearly free and one above every day seen costs the full charge; on the period's last day every kW
costs the full charge.

``F`` comes from :class:`NeededPeaks`: for every finished day, the lowest peak that would have
delivered what that day's EVs took within their stays over the building's metered load (one LP
with the truth of that day, :func:`needed_peak`), not the peak the site reached, which would teach
the plan its own habits. The same rule runs live (:mod:`gateway.scheduler.mpc`) and in the
evaluator's MPC (:class:`gateway.scheduler.policies.Mpc`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np

from gateway import sitetime
from gateway.scheduler import inputs
from gateway.scheduler.problem import Planner, SiteInputs, SlotInput, uniform_grid

# Days of needed peaks before the level price replaces the day's-share rule (a week: both kinds
# of day seen), and how many are kept (the season moves on).
MIN_DAYS = 7
KEEP_DAYS = 28
# A session plugged in longer than this no longer holds its arrival day open: a station gone
# away mid-transaction (or a car left for weeks) kept every later day unfinished for good, the
# peak's price on old days, and every later session in memory.
HOLD_DAYS_MAX = 7
STEP_S = 900.0  # the hindsight LP's steps: the demand interval most tariffs bill
# A kWh a finished day's EV took that the hindsight LP cannot deliver is priced far above any
# peak, so the needed peak is what delivering it takes (up to the site limit).
UNDELIVERED_PER_KWH = 100.0
# Extra prices below this share of the charge are dropped (rows and columns the LP need not carry).
MIN_STEP_SHARE = 1e-3


@dataclass(frozen=True, slots=True)
class DoneSession:
    arrival: datetime
    departure: datetime
    took_kwh: float  # battery side
    max_kw: float  # AC


def needed_peak(sessions: Sequence[DoneSession], building_kw: Callable[[datetime], float], start: datetime,
                end: datetime, import_limit_kw: float, eff: float) -> float:
    """The lowest peak import (kW, 15-minute steps) over [start, end) that delivers what each
    session took within its stay, over the building's load: the hindsight LP of one day."""
    t0 = datetime.fromtimestamp(start.timestamp() - start.timestamp() % STEP_S, tz=start.tzinfo)
    n = max(1, math.ceil((end - t0).total_seconds() / STEP_S))
    grid = uniform_grid(t0, STEP_S, n)
    starts = np.array([(t0 + timedelta(seconds=STEP_S * i)).timestamp() for i in range(n)])
    building = np.array([building_kw(t0 + timedelta(seconds=STEP_S * (i + 0.5))) for i in range(n)])
    slots: list[SlotInput] = []
    for i, s in enumerate(sessions):
        if s.took_kwh <= 1e-6:
            continue
        conn = (starts >= s.arrival.timestamp() - 1e-6) & (starts + STEP_S <= s.departure.timestamp() + 1e-6)
        if not conn.any():  # a stay shorter than a step: the step it started in
            conn[min(max(int((s.arrival.timestamp() - t0.timestamp()) // STEP_S), 0), n - 1)] = True
        # Its power as if spread over the whole steps it covers: a stay that began mid-step gets
        # the same energy in fewer steps, so the bound is raised to keep it deliverable.
        hours = max(((min(s.departure, end) - max(s.arrival, t0)).total_seconds()) / 3600.0, 1e-9)
        kw = max(s.max_kw, 0.0) * max(1.0, hours / (conn.sum() * STEP_S / 3600.0))
        slots.append(SlotInput(key=("day", i), connected=conn, energy_kwh=0.0, capacity_kwh=s.took_kwh,
                               target_energy_kwh=s.took_kwh, reserve_energy_kwh=0.0, max_charge_kw=kw,
                               max_discharge_kw=0.0, eff_charge=eff, eff_discharge=eff))
    if not slots:
        return float(building.max(initial=0.0))
    site = SiteInputs(grid=grid, import_price=np.zeros(n), export_price=np.zeros(n), building_load_kw=building,
                      import_limit_kw=np.full(n, max(import_limit_kw, float(building.max()))),
                      export_limit_kw=np.zeros(n), demand_charge_per_kw=1.0, peak_so_far_kw=0.0,
                      export_payment_per_kwh=np.zeros(n), wear_cost_per_kwh=0.0,
                      unmet_penalty_per_kwh=UNDELIVERED_PER_KWH, early_charge_bias_per_kwh_h=0.0)
    res = Planner().solve(site, slots)
    return float(res.site_import_kw.max(initial=0.0))


@dataclass
class NeededPeaks:
    """Finished days' needed peaks, learned from the sessions that end and the building's readings.

    A day (of the site's time zone) is the sessions that arrived on it, over the span from its
    first arrival to its last departure (a depot's evening arrivals leave the next morning). A day
    is finished once no session that arrived on it is still plugged in; a day on which no EV came
    needed the building's own peak."""

    tz: str = sitetime.UTC_NAME
    eff: float = 0.92  # charger to battery (what the sessions took is on the battery side)
    _open: dict[date, list[DoneSession]] = field(default_factory=dict)
    _peaks: deque[tuple[date, float]] = field(default_factory=lambda: deque(maxlen=KEEP_DAYS))
    _first: date | None = None  # the first day watched
    _closed: date | None = None  # the last day finished

    def day(self, when: datetime) -> date:
        return sitetime.local(when, self.tz).date()

    def watch(self, now: datetime) -> None:
        """The site is watched from ``now`` on (days before it are not counted as empty)."""
        if self._first is None:
            self._first = self.day(now)

    def observe(self, s: DoneSession) -> None:
        d = self.day(s.arrival)
        if self._closed is not None and d <= self._closed:
            return  # a day already finished (a late record): its peak stands
        self._open.setdefault(d, []).append(s)
        if self._first is None or d < self._first:
            self._first = d

    def due(self, now: datetime) -> bool:
        """Whether a day before today is still to be finished (cheap: the re-plan asks each time)."""
        if self._first is None:
            return False
        nxt = self._first if self._closed is None else self._closed + timedelta(days=1)
        return nxt < self.day(now)

    def close_days(self, now: datetime, still_plugged: Iterable[datetime],
                   building_kw: Callable[[datetime], float], import_limit_kw: float) -> int:
        """Finish every past day none of whose EVs is still plugged in (``still_plugged``: the
        arrivals of the sessions in progress), in order; returns how many were finished."""
        if self._first is None:
            return 0
        today = self.day(now)
        busy = {d for d in (self.day(a) for a in still_plugged) if (today - d).days <= HOLD_DAYS_MAX}
        d = self._first if self._closed is None else self._closed + timedelta(days=1)
        done = 0
        while d < today and d not in busy:
            sessions = self._open.pop(d, [])
            day_start = datetime.combine(d, time(0), tzinfo=sitetime.zone(self.tz))
            if sessions:
                span_start = min(s.arrival for s in sessions)
                span_end = max(s.departure for s in sessions)
            else:
                span_start, span_end = day_start, day_start + timedelta(days=1)
            self._peaks.append((d, needed_peak(sessions, building_kw, span_start, span_end, import_limit_kw,
                                                    self.eff)))
            self._closed = d
            d += timedelta(days=1)
            done += 1
        return done

    def values(self) -> list[float]:
        return [kw for _, kw in self._peaks]


def peak_price_steps(needed: Sequence[float], period_charge_per_kw: float, days_after: float,
                     peak_so_far_kw: float) -> tuple[float, tuple[tuple[float, float], ...]] | None:
    """(price per kW from the peak so far, (level, extra price per kW above it), ...) for a rise of
    the period's peak, ``charge * F(x) ** k`` with ``k = days_after`` (whole days of the period
    after the plan's horizon) and ``F`` the empirical distribution of ``needed``; None with fewer
    than MIN_DAYS days (the caller keeps the day's-share rule)."""
    if len(needed) < MIN_DAYS:
        return None
    k = max(math.floor(days_after + 1e-9), 0)
    levels = np.sort(np.asarray(needed, dtype=float))
    count = len(levels)

    def price(x: float) -> float:
        share = float(np.searchsorted(levels, x, side="right")) / count
        return period_charge_per_kw * share**k

    base = price(peak_so_far_kw)
    steps: list[tuple[float, float]] = []
    last = base
    for lv in levels:
        if lv <= peak_so_far_kw:
            continue
        p = price(float(lv))
        if p - last > MIN_STEP_SHARE * period_charge_per_kw:
            steps.append((float(lv), p - last))
            last = p
    return base, tuple(steps)


def demand_pricing(per_kw_month: float, now: datetime, horizon: timedelta, period_start: datetime,
                   period_end: datetime, peak_so_far_kw: float,
                   needed: Sequence[float]) -> tuple[float, tuple[tuple[float, float], ...]]:
    """The plan's price of a rise of the period's peak, live and in the evaluator: (price per kW
    from the peak so far, priced levels above it). From the needed peaks once there are MIN_DAYS
    of them (:func:`peak_price_steps`), else a day's share of the charge
    (:func:`gateway.scheduler.inputs.planned_demand_charge`)."""
    period = period_end - period_start
    days_after = (period_end - (now + horizon)).total_seconds() / 86400.0
    priced = peak_price_steps(needed, inputs.prorated_demand_charge(per_kw_month, period), days_after,
                              peak_so_far_kw)
    if priced is None:
        return inputs.planned_demand_charge(per_kw_month, horizon, period), ()
    return priced
