"""Build the planner's inputs from the site's tariff, limits and grid events. Pure: no I/O.

Shared by the offline evaluator and usable by the live loop, so both price a plan the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, time, timedelta

import numpy as np

from gateway import sitetime
from gateway.domain import GridEvent, GridEventKind, SiteLimits, Tariff
from gateway.scheduler.problem import BoolArr, SiteInputs, TimeGrid


def site_inputs(
    grid: TimeGrid,
    *,
    tariff: Tariff,
    limits: SiteLimits,
    events: Sequence[GridEvent],
    building_kw: Callable[[datetime], float],
    demand_charge_per_kw: float,
    peak_so_far_kw: float,
    wear_cost_per_kwh: float,
    unmet_penalty_per_kwh: float,
    period_end: datetime | None = None,
    price_overrides: Sequence[tuple[datetime, datetime, float, float]] = (),
    peak_price_steps: tuple[tuple[float, float], ...] = (),
) -> SiteInputs:
    """Prices are taken at each step's start (steps start where time-of-use windows and price
    overrides change: :func:`breakpoints`), a price override ``(from, to, import, export)`` replacing the tariff there;
    ``building_kw`` is the forecast at a step's start. An import cap holds on every step it
    touches (the limit must hold all through); an export request pays on a step in proportion to
    the part of the step it covers."""
    starts = grid.starts()
    prices = np.array([tariff.prices_at(s) for s in starts], dtype=float).reshape(len(starts), 2)
    for i, s in enumerate(starts):
        for lo, hi, ip, xp in price_overrides:
            if lo <= s < hi:
                prices[i] = (ip, xp)
    imp_lim = np.full(len(starts), limits.import_kw)
    pay = np.zeros(len(starts))
    for i, s in enumerate(starts):
        dur = float(grid.durations_s[i])
        end = s + timedelta(seconds=dur)
        for ev in events:
            overlap = (min(end, ev.end) - max(s, ev.start)).total_seconds()
            if overlap <= 0:
                continue
            if ev.kind == GridEventKind.IMPORT_CAP and ev.cap_kw is not None:
                imp_lim[i] = min(imp_lim[i], ev.cap_kw)
            elif ev.kind == GridEventKind.EXPORT_REQUEST:
                pay[i] = max(pay[i], ev.payment_per_kwh * min(overlap / dur, 1.0))
    return SiteInputs(
        grid=grid, import_price=prices[:, 0], export_price=prices[:, 1],
        building_load_kw=np.array([building_kw(s) for s in starts], dtype=float),
        import_limit_kw=imp_lim, export_limit_kw=np.full(len(starts), limits.export_kw),
        demand_charge_per_kw=demand_charge_per_kw, peak_so_far_kw=peak_so_far_kw,
        export_payment_per_kwh=pay, wear_cost_per_kwh=wear_cost_per_kwh,
        unmet_penalty_per_kwh=unmet_penalty_per_kwh,
        demand_mask=None if period_end is None else np.array([s < period_end for s in starts], dtype=bool),
        peak_price_steps=peak_price_steps,
    )


# A firm departure becomes a step boundary at the quarter hour before it: the plan finishes up to
# 15 minutes early rather than up to an hour (hourly steps). The nearest this many such quarter
# hours are used, so a site of many drivers adds at most that many steps to the LP (the later ones
# get theirs as the horizon moves on).
FIRM_DEPARTURE_STEP_S = 900.0
MAX_FIRM_BREAKPOINTS = 24


def tou_edges(tariff: Tariff, start: datetime, end: datetime) -> list[datetime]:
    """Where ``tariff``'s time-of-use windows open and close in (start, end). On the hour in most
    zones, where the plan's hourly steps change anyway; not in a zone half an hour off UTC (India),
    nor for a window from 7:30, and a step is priced at its start."""
    tz = sitetime.zone(tariff.timezone)
    hours = sorted({h % 24.0 for p in tariff.periods for h in (p.start_hour, p.end_hour)})
    day = sitetime.local(start, tariff.timezone).date() - timedelta(days=1)
    out: list[datetime] = []
    while hours and datetime.combine(day, time(0), tzinfo=tz) < end:
        midnight = datetime.combine(day, time(0), tzinfo=tz)
        out += [t for t in (midnight + timedelta(hours=h) for h in hours) if start < t < end]
        day += timedelta(days=1)
    return out


def breakpoints(events: Iterable[GridEvent],
                price_overrides: Iterable[tuple[datetime, datetime, float, float]] = (),
                firm_departures: Iterable[datetime] = (), now: datetime | None = None,
                tariff: Tariff | None = None, until: datetime | None = None) -> list[datetime]:
    """Where the plan's inputs change off the hour, for ``problem.make_grid`` to put step
    boundaries on: grid events' and price overrides' edges, the tariff's windows' edges between
    ``now`` and ``until``, and departures a driver set after ``now`` (an EV is planned plugged in
    for the whole steps before it leaves, so on hourly steps a driver leaving at 17:50 would be
    planned as leaving at 17:00 until the fine steps reach it)."""
    out = [t for ev in events for t in (ev.start, ev.end)] + [t for lo, hi, _, _ in price_overrides for t in (lo, hi)]
    if tariff is not None and now is not None and until is not None:
        out += tou_edges(tariff, now, until)
    step = FIRM_DEPARTURE_STEP_S
    quarters = sorted({math.floor(t.timestamp() / step) * step for t in firm_departures
                       if now is None or t > now})
    out += [datetime.fromtimestamp(q, tz=UTC) for q in quarters[:MAX_FIRM_BREAKPOINTS]]
    return out


def discharge_in_events_only(site: SiteInputs) -> None:
    """EVs discharge only while an export request pays for it (``Settings.discharge_only_in_grid_events``,
    live and offline): a driver lends the battery to the grid's events, not to the day's price spread."""
    site.discharge_mask = np.asarray(site.export_payment_per_kwh, dtype=float) > 0


def connected_mask(grid: TimeGrid, departure: datetime) -> BoolArr:
    """Steps the EV is plugged in for all of (the first step always, if it has not left):
    conservative, so energy is not planned into time the EV is gone."""
    ends = [grid.start + timedelta(seconds=float(e)) for e in np.cumsum(grid.durations_s)]
    mask = np.array([e <= departure for e in ends], dtype=bool)
    if len(mask) and departure > grid.start:
        mask[0] = True
    return mask


def target_within_horizon(energy_now: float, target: float, max_kw: float, eff: float,
                          grid_end: datetime, departure: datetime) -> float:
    """An EV leaving after the horizon needs by its end only what it cannot get afterwards."""
    after_h = max((departure - grid_end).total_seconds(), 0.0) / 3600.0
    return max(energy_now, target - max_kw * eff * after_h) if after_h > 0 else target


def prorated_demand_charge(per_kw_month: float, period: timedelta) -> float:
    """A demand charge quoted per kW-month, for a billing period of another length (30-day month)."""
    return per_kw_month * period.total_seconds() / (30 * 86400.0)


def planned_demand_charge(per_kw_month: float, horizon: timedelta, period: timedelta) -> float:
    """What the plan prices a rise of the billing period's peak at, live and in the evaluator: the
    share of the charge one horizon of the period carries (a day of a 30-day month), the whole
    period's if it is shorter. Priced in full, a rise of the peak would outweigh any driver's
    missed kWh and the plan would drain parked cars to shave the building's peak (measured: the
    demo delivered a third of the energy asked for). On a billing period of many days that
    undervalues a rise, day after day: once a week of finished days is known, the price comes
    from the peaks they needed instead (gateway/scheduler/peak_price.py)."""
    return prorated_demand_charge(per_kw_month, min(horizon, period))


def keep_room_for_plug_ins(site: SiteInputs, evses: int, per_evse_kw: float) -> None:
    """Keep room under the import limit for ``evses`` EVs plugging into idle EVSEs: each draws
    its TxDefaultProfile limit (gateway/ocpp/defaults.py) until its own plan arrives, and the
    profiles already sent to the others hold until the re-plan, at whatever step the plug-in falls.
    So the room is kept over the whole horizon; the next re-plan after a plug-in gives it to the
    newcomer. Live and offline alike."""
    if evses > 0:
        site.import_limit_kw = np.maximum(site.import_limit_kw - evses * per_evse_kw, 0.0)
