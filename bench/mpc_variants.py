"""The MPC's design choices measured against each other on the evaluator's episodes.

    .venv/bin/python bench/mpc_variants.py --site workplace --days 20 --seed 1
        [--scenarios merged|lower|fine|mid|off] [--departure-points K] [--reveal-weight W]
        [--peak-floor none|oracle|learned] [--solver simplex|ipm] [--arrivals on|off] [--arrival-scale F]
        [--need-quantile Q] [--plan-penalty P] [--oracle-needs] [--oracle-building] [--exact] [--list-short]
        [--iso15118-share F] [--oracle-arrival-counts] [--building-forecast learned|ems|oracle]
        [--building-anchor shift|ratio] [--building-fade H] [--building-hold H] [--charge-bias B] [--per-day]
        [--coarse-step S] [--medium-hours H] [--new-site-margin MIN] [--reveal-at F] [--urgency-spread S]
        [--building-weekend F] [--building-profile by-kind|all-days] [--building-quantile Q] [--discharge-with-spread]
        [--dwell-history site|near] [--lent-back on|off] [--need-above]
        [--bidirectional-share F] [--grid-event auto|always] [--plug-in-reserve N]

Runs uncontrolled, mpc and optimal (``gateway.scheduler.evaluate``) with one choice changed and
prints one JSON line: the MPC's savings capture, bill parts, undelivered energy and the choice.
- ``--scenarios``: the points a departure spread is planned at: ``merged`` (the code's,
  ``gateway/scheduler/departure_points.py``: the samples merged greedily into at most
  ``--departure-points`` points, 6 by default); the earlier rule, fixed quantile buckets planned
  at their lower edges: six (``lower``: 5 % at the earliest, 10 % at the 5th percentile, 20 % each at
  the 15th, 35th and 55th, 25 % at the 75th, where the plan ends) or eleven narrower ones (``fine``),
  or the six buckets' middles (``mid``); ``off``: one believed departure.
- ``--reveal-weight``: the price (share of the unmet price) of a guessed need not in by two thirds
  of the way to the earliest departure (``slots.REVEAL_WEIGHT``, 0.02; 0: off).
- ``--peak-floor``: the peak the MPC may reach at no demand charge. ``oracle``: the optimum's peak of
  the same day (what knowing the day's arrivals is worth, not something a gateway can know);
  ``learned``: the median of the optimum's peaks of the last five days of the same kind (weekday
  or weekend), which a gateway could compute from its own records.
- ``--solver``: HiGHS' dual simplex (the default) or its interior-point method without crossover.
- ``--arrivals``: plan the EVs expected to arrive (``gateway/scheduler/arrivals.py``) or not;
  ``--arrival-scale``: plan that many times the count the MPC plans for (``arrivals.PLANNED_SHARE``
  of the expected count).
- ``--need-quantile``: the quantile of past needs an EV that announced none is planned for
  (``forecast.PLANNED_NEED_QUANTILE``, 0.75; 0.9 until this version).
- ``--plan-penalty``: the unmet-energy price the MPC plans with (it is scored at 5/kWh all the same).
- ``--building-forecast``: what the MPC plans the building with: ``learned`` (the profile learned
  from the readings, the default), ``ems`` (the episode's day-ahead forecast, as a building energy
  system would push it, anchored to the reading now as the live gateway anchors a pushed one) or
  ``oracle`` (the true load, as ``--oracle-building``).
- Oracles, to split the MPC's gap to the optimum by what it does not know: ``--oracle-needs``
  (every EV's true need), ``--oracle-building`` (the true building load instead of the forecast),
  ``--exact`` (true departures and needs for every policy, as ``gateway evaluate --exact``),
  ``--oracle-arrival-counts`` (the expected-arrival slots planned for the day's true count of
  arrivals in each hour, with the energy and stay history gives them).
- ``--iso15118-share``: the share of EVs that announce a departure (noisy) and their need (the
  scenario generator's ``iso15118_share``, 0.6 by default; 1.0 = every EV announces, the "noisy
  departures and needs" information model of the quality target). V2G needs ISO 15118 in the
  simulator, so it changes the discharge-capable fleet too (every policy sees the same episodes).
- How the building forecast is anchored to the reading now (``building.anchored``):
  ``--building-anchor ratio`` scales the base by today's ratio to it instead of shifting it by
  today's difference; ``--building-fade H``: the deviation fades over H hours (3 in the code);
  ``--building-hold H``: the building is never planned below the reading now for the next H hours.
- ``--building-weekend F``: episodes whose building draws F times a weekday's load on Saturdays and
  Sundays (the generator's ``building_weekend_factor``; 1.0 by default, every day alike);
  ``--building-profile all-days``: the MPC's learned building profile averages every day, as
  before weekdays and weekends were kept apart (``building.BuildingProfile.base``);
  ``--building-quantile Q``: the profile at the Q quantile of its days instead of their mean.
- ``--discharge-with-spread``: an announced EV past its believed departure (announcement less the
  learned margin) may still discharge into an export request while its departure spread has
  points left (the code: no discharge once the believed departure has passed).
- ``--dwell-history near``: an unannounced EV whose arrival hour has no history within three hours
  is planned as leaving soon (charged as soon as possible), instead of with the stays of the whole
  site (``site``, the code's; measured and not kept, docs/benchmarks-scheduler.md).
- ``--lent-back off``: energy an EV lends to an export request is priced only by its departure
  spread, as before ``SlotRules.lent_back`` (on: it must be back by the believed departure, at
  the full unmet price). ``lenders`` in the output: the EVs that discharged (count, kWh
  discharged, kWh they were left short of their deliverable energy).
- ``--plug-in-reserve N``: room kept for N EVs plugging into idle EVSEs at once
  (``Settings.plug_in_reserve_evses``, 4); -1: for every idle EVSE, the live rule until it had a bound.
- ``--need-above``: an unannounced EV that took more than its guessed need is planned for the
  usual need among the past needs above what it took (``SlotRules.need_above``; not adopted,
  docs/benchmarks-scheduler.md), instead of 5 kWh more at a time.
- ``--bidirectional-share F``, ``--grid-event always``: episodes with that share of
  bidirectional EVSEs and an export request every day (the demo's day has 1.0 and ``always``;
  the generator's defaults otherwise).
- ``--charge-bias B``: the MPC's cost per kWh charged and hour from now
  (``SiteInputs.early_charge_bias_per_kwh_h``, 0.001; the optimum keeps the code's).
- ``--demand-weight W``: the MPC plans the demand charge (and the peak's price steps) at W times
  the tariff's; the bill is counted at the tariff's (not adopted, docs/benchmarks-scheduler.md).
- ``--coarse-step S``: the MPC's planning grid with steps of S seconds after the first hour
  (``problem.make_grid``'s ``coarse_step_s``, 3600 in the code; 900: quarter hours to the end).
- ``--medium-hours H``: quarter-hour steps for H hours from now and on to the full hour, hourly
  after (``problem.make_grid``'s ``medium_span_s``).
- ``--new-site-margin MIN``: how early an announced departure is planned until the site has
  history of announcement errors (``slots.ANNOUNCED_MARGIN``, 90 minutes).
- ``--reveal-at F``: how far to the earliest possible departure a guessed need is wanted
  (``slots.REVEAL_AT``, 2/3).
- ``--urgency-spread S``: how much more the EV that may leave first prefers early charging than
  the last one does (``problem.URGENCY_SPREAD``, 0.1; 0: EVs sharing a limit are a tie), for the
  MPC and the optimum alike.
- ``grid_steps_p50_p95_max`` in the output: the steps of the MPC's planning grids (its LP's
  size; grid events' edges and, with ``--exact``, firm departures add to the plain grid's).
- ``--list-short``: one more JSON line per EV the MPC left short (stay, announcement error, need).
- ``--per-day``: one more JSON line per day: its savings range and the MPC's gap by part.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import highspy
import numpy as np
from benchlib import episode_parser, lenders, use_departures_at_whole_steps, use_lent_back

from gateway import sitetime
from gateway.scheduler import arrivals, building, departure_points, forecast, policies, problem, slots
from gateway.scheduler import evaluate as ev
from gateway.scheduler.arrivals import ArrivalModel
from gateway.scheduler.policies import Context, Mpc
from gateway.scheduler.problem import Planner, PlanResult, SiteInputs, SlotInput, TimeGrid

# The earlier rule: (quantile of the point, probability of the bucket), lower edges.
LOWER_SCENARIOS = ((0.0, 0.05), (0.05, 0.10), (0.15, 0.20), (0.35, 0.20), (0.55, 0.20), (0.75, 0.25))
MID_SCENARIOS = ((0.025, 0.05), (0.1, 0.10), (0.25, 0.20), (0.45, 0.20), (0.65, 0.20), (0.875, 0.25))
# The lower edges of eleven narrower buckets (less pessimistic than LOWER_SCENARIOS' six, the same
# tail and plan end).
FINE_SCENARIOS = ((0.0, 0.02), (0.02, 0.03), (0.05, 0.05), (0.10, 0.05), (0.15, 0.10), (0.25, 0.10), (0.35, 0.10),
                  (0.45, 0.10), (0.55, 0.10), (0.65, 0.10), (0.75, 0.25))


QUANTILE_SCENARIOS = {"lower": LOWER_SCENARIOS, "mid": MID_SCENARIOS, "fine": FINE_SCENARIOS}


def use_quantile_buckets(buckets: tuple[tuple[float, float], ...]) -> None:
    """The earlier rule: each bucket of the conditional departure distribution planned at one point."""

    def scenarios(samples: Any, now: Any) -> slots.Scenarios | None:
        if samples is None:
            return None
        left = samples[int(np.searchsorted(samples, now.timestamp(), side="right")):]
        if len(left) == 0:
            return None
        merged: dict[float, float] = {}
        for q, p in buckets:
            # The earliest departure with at least a share q of the sessions left at or before it.
            t = float(left[min(max(math.ceil(q * len(left)) - 1, 0), len(left) - 1)])
            merged[t] = merged.get(t, 0.0) + p
        ts = sorted(merged)
        return slots.Scenarios(times=[datetime.fromtimestamp(t, tz=now.tzinfo) for t in ts],
                               weights=[merged[t] for t in ts])

    slots.departure_scenarios = scenarios  # type: ignore[assignment]


def use_reveal_weight(weight: float) -> None:
    policies.SlotRules = functools.partial(slots.SlotRules, reveal_weight=weight)  # type: ignore[misc]


def count_grid_steps() -> list[int]:
    """The steps of every planning grid the MPC makes from now on (its LP's size), in a list."""
    sizes: list[int] = []
    make = policies.make_grid

    def counted(*args: Any, **kwargs: Any) -> TimeGrid:
        grid = make(*args, **kwargs)
        sizes.append(len(grid))
        return grid

    policies.make_grid = counted  # type: ignore[assignment]
    return sizes


def use_new_site_margin(margin: timedelta) -> None:
    learned = forecast.SessionForecaster.announcement_margin

    def announcement_margin(self: forecast.SessionForecaster, site: str, default: timedelta,
                            quantile: float = 0.95) -> timedelta:
        return learned(self, site, margin, quantile)

    forecast.SessionForecaster.announcement_margin = announcement_margin  # type: ignore[method-assign]


def use_departure_points(points: int) -> None:
    merge = departure_points.departure_points
    slots.departure_points = lambda samples: merge(samples, points)  # type: ignore[assignment]


def use_solver(name: str) -> None:
    if name == "simplex":
        return
    original = highspy.Highs.setOptionValue

    def set_option(self: Any, key: str, value: Any) -> Any:
        return original(self, key, name if key == "solver" else value)

    highspy.Highs.setOptionValue = set_option  # type: ignore[method-assign]


def use_peak_floor(kind: str, episodes: list[Any]) -> None:
    if kind == "none":
        return
    peaks = []
    for e in episodes:  # the optimum's peak of each day, played back as the evaluator does
        run = ev.simulate(e, ev.optimal_policy(e, 5.0, 600.0), exact=False, penalty=5.0,
                          progress=ev.Progress(1, False))
        peaks.append(run.metrics["peak_import_kw"])
    index = {e.name: i for i, e in enumerate(episodes)}

    def weekend(i: int) -> bool:
        return bool(episodes[i].start.weekday() >= 5)

    act: Callable[[Mpc, Context], dict[Any, float]] = Mpc.act

    def act_with_floor(self: Mpc, ctx: Context) -> dict[Any, float]:
        i = index[self.episode.name]
        if kind == "oracle":
            floor = peaks[i]
        else:
            past = [peaks[j] for j in range(i) if weekend(j) == weekend(i)][-5:]
            floor = float(np.median(past)) if past else 0.0
        ctx.peak_so_far_kw = max(ctx.peak_so_far_kw, floor)
        return act(self, ctx)

    Mpc.act = act_with_floor  # type: ignore[method-assign]


def use_arrivals(on: bool, scale: float) -> None:
    if not on:
        original_init = Mpc.__post_init__

        def init_without(self: Mpc) -> None:
            original_init(self)
            self.anticipate_arrivals = False

        Mpc.__post_init__ = init_without  # type: ignore[method-assign]
    if scale != 1.0:
        expected = ArrivalModel.expected

        def scaled(self: ArrivalModel, site: str, when: Any) -> Any:
            exp = expected(self, site, when)
            if exp is not None:
                exp.per_day *= scale
            return exp

        ArrivalModel.expected = scaled  # type: ignore[method-assign]


def use_need_quantile(q: float) -> None:
    """Plan an unannounced need at this quantile of past needs (instead of the live forecaster's)."""
    made = ev.mpc_forecaster

    def forecaster() -> Any:
        f = made()
        f.energy_quantile = q
        return f

    ev.mpc_forecaster = forecaster


def use_oracle_needs() -> None:
    """Every EV's true need known to the MPC (departures as usual): what a perfect need forecast is worth."""
    made = ev.view_of

    def view_of(t: Any, now: Any, exact: bool) -> Any:
        v = made(t, now, exact)
        v.need_kwh = t.requested if v.need_kwh is None else v.need_kwh
        return v

    ev.view_of = view_of


def use_oracle_building() -> None:
    """The MPC forecasts the building load perfectly (the episode's own)."""

    def forecast(self: Mpc, ctx: Context) -> Callable[[Any], float]:
        return self.episode.building_load_at  # type: ignore[no-any-return]

    Mpc._building_forecast = forecast  # type: ignore[method-assign]


def use_oracle_arrival_counts(episodes: list[Any]) -> None:
    """The expected-arrival slots plan each hour's true count (history's energies and stays)."""
    counts: Counter[Any] = Counter(a.arrival.replace(minute=0, second=0, microsecond=0)
                                   for e in episodes for a in e.arrivals)
    expected = ArrivalModel.expected

    def oracle(self: ArrivalModel, site: str, when: Any) -> Any:
        exp = expected(self, site, when)
        if exp is not None:  # planned at arrivals.PLANNED_SHARE of per_day: undo it
            exp.per_day = counts.get(when.replace(minute=0, second=0, microsecond=0), 0) / arrivals.PLANNED_SHARE
        return exp

    ArrivalModel.expected = oracle  # type: ignore[method-assign]


def use_plan_penalty(price: float) -> None:
    """The MPC plans with another unmet-energy price than the one it is scored with."""
    made = ev.make_policy

    def make(name: str, penalty: float, forecaster: Any) -> Any:
        return made(name, price if name == "mpc" else penalty, forecaster)

    ev.make_policy = make


def use_building_anchor(kind: str, fade_h: float | None, hold_h: float | None) -> None:
    """Another rule for pulling the building's base forecast toward the reading now, for the MPC."""
    fade_s = building.SHIFT_FADE_S if fade_h is None else fade_h * 3600.0
    hold_s = 0.0 if hold_h is None else hold_h * 3600.0

    def anchored(base: Callable[[datetime], float | None], now: datetime,
                 now_kw: float) -> Callable[[datetime], float]:
        at_now = base(now)
        ratio = now_kw / at_now if at_now is not None and at_now > 1e-6 else 1.0
        shift = 0.0 if at_now is None else now_kw - at_now

        def load(when: datetime) -> float:
            b = base(when)
            if when <= now or b is None:
                return now_kw
            fade = math.exp(-(when - now).total_seconds() / fade_s)
            kw = b * (1.0 + (ratio - 1.0) * fade) if kind == "ratio" else b + fade * shift
            return max(kw, now_kw) if (when - now).total_seconds() < hold_s else kw

        return load

    building.anchored = anchored  # the learned profile's forecast (BuildingProfile.forecast)
    policies.anchored = anchored  # the episode's day-ahead forecast (imported by name)


def use_charge_bias(bias: float) -> None:
    """The MPC's cost per kWh charged and hour from now (the optimum's planner keeps the code's)."""

    class Biased(Planner):
        def solve(self, site: SiteInputs, slots: list[SlotInput]) -> PlanResult:  # type: ignore[override]
            return super().solve(dataclasses.replace(site, early_charge_bias_per_kwh_h=bias), slots)

    policies.Planner = Biased  # type: ignore[misc]


def use_demand_weight(weight: float) -> None:
    """The MPC plans the demand charge (and the peak's price steps) at ``weight`` times the tariff's;
    the bill is still counted at the tariff's."""

    class Weighted(Planner):
        def solve(self, site: SiteInputs, slots: list[SlotInput]) -> PlanResult:  # type: ignore[override]
            steps = tuple((level, weight * extra) for level, extra in site.peak_price_steps)
            return super().solve(dataclasses.replace(site, demand_charge_per_kw=weight * site.demand_charge_per_kw,
                                                     peak_price_steps=steps), slots)

    policies.Planner = Weighted  # type: ignore[misc]


def use_plug_in_reserve(evses: int) -> None:
    """The MPC keeps room for ``evses`` EVs plugging in at once (``Mpc.plug_in_reserve_evses``;
    -1: for every idle EVSE)."""
    make = ev.make_policy

    def make_with(name: str, penalty: float, forecaster: Any) -> Any:
        pol = make(name, penalty, forecaster)
        if isinstance(pol, policies.Mpc):
            pol.plug_in_reserve_evses = evses if evses >= 0 else 10**9
        return pol

    ev.make_policy = make_with  # type: ignore[assignment]


def use_building_quantile(q: float) -> None:
    """The learned building profile at a quantile of its days (of the same kind) instead of their mean."""

    def base(self: building.BuildingProfile, when: datetime) -> float | None:
        rows = self._days.get(self.slot(when))
        if not rows:
            return None
        weekend = sitetime.is_weekend(sitetime.local(when, self.tz).date())
        kind = [v for d, v in rows if sitetime.is_weekend(d) == weekend]
        return float(np.quantile(kind if len(kind) >= building.MIN_DAYS_OF_KIND else [v for _, v in rows], q))

    building.BuildingProfile.base = base  # type: ignore[method-assign]


def use_dwell_history_near_only() -> None:
    """Stays looked up in the arrival hour and the three hours either side only, never the whole
    site's (``forecast.SessionForecaster._similar``); with none there, the forecaster's default
    (the planning forecaster's: leaving soon)."""
    from gateway.scheduler import forecast

    similar = forecast.SessionForecaster._similar

    def near_only(self: forecast.SessionForecaster, table: Any, site: str, hour: int,
                  site_wide: bool = True) -> tuple[list[float], str]:
        return similar(self, table, site, hour, site_wide and table is not self._dwell)

    forecast.SessionForecaster._similar = near_only  # type: ignore[method-assign]


def use_discharge_with_spread() -> None:
    """An announced EV past its believed departure may still be lent to an export request while
    its departure spread has points left (the LP prices the risk), instead of never."""
    made = slots.departure_for

    def departure_for(v: Any, now: Any, forecaster: Any, site: str, rules: Any) -> Any:
        dep, may = made(v, now, forecaster, site, rules)
        if not may and slots.scenarios_for(v, now, forecaster, site, rules) is not None:
            may = True
        return dep, may

    slots.departure_for = departure_for  # type: ignore[assignment]


def use_last_departure_shared() -> None:
    """The last possible departure too (the connected mask's end) shared between the two step
    ends around it: the EV planned as plugged in for the step it falls in, the target shared
    (measured, not kept: docs/benchmarks-scheduler.md, "A departure inside a step")."""
    made = policies.slot_input

    def slot_input(v: Any, key: Any, grid: TimeGrid, now: datetime, forecaster: Any, site: str,
                   rules: slots.SlotRules = slots.SlotRules()) -> SlotInput:
        sl = made(v, key, grid, now, forecaster, site, rules)
        if v is None or v.charge_now or v.fixed_kw is not None or not sl.connected.any():
            return sl
        scen = slots.scenarios_for(v, now, forecaster, site, rules)
        dep = scen.times[-1] if scen is not None else slots.departure_for(v, now, forecaster, site, rules)[0]
        ends = grid.start.timestamp() + np.cumsum(grid.durations_s)
        last = int(np.flatnonzero(sl.connected)[-1])
        shares = slots.steps_around(ends, dep.timestamp(), len(ends) - 1)
        if len(shares) != 2 or shares[0][0] != last:
            return sl
        connected = sl.connected.copy()
        connected[last + 1] = True
        early = tuple(sorted((*sl.early_targets, (last, sl.target_energy_kwh, sl.unmet_weight * shares[0][1]))))
        return dataclasses.replace(sl, connected=connected, early_targets=early,
                                   unmet_weight=sl.unmet_weight * shares[1][1])

    policies.slot_input = slot_input  # type: ignore[assignment]


def use_one_building_profile() -> None:
    """The learned building profile as before weekdays and weekends were kept apart: one mean
    (a kind never has enough days of its own, so every slot's profile is its all-days mean)."""
    building.MIN_DAYS_OF_KIND = 10**9


def print_short(runs: Any) -> None:
    """Who the MPC left short, and what it knew of them (what docs/benchmarks-scheduler.md cites)."""
    for run in runs:
        for t in run.evs:
            got = t.energy - t.e0
            if t.deliverable - got <= ev.FULLY_SERVED_TOLERANCE_KWH:
                continue
            a = t.arrival
            early = (None if a.announced_departure is None
                     else round((a.announced_departure - a.departure).total_seconds() / 3600.0, 2))
            print(json.dumps({"episode": run.episode, "arrival": a.arrival.isoformat(),
                              "stay_h": round((a.departure - a.arrival).total_seconds() / 3600.0, 2),
                              "announced_h_late": early, "need_told": a.iso15118,
                              "requested_kwh": round(t.requested, 1), "deliverable_kwh": round(t.deliverable, 1),
                              "delivered_kwh": round(got, 1), "short_kwh": round(t.deliverable - got, 1)}))


def print_days(runs: list[Any]) -> None:
    """Where the MPC's gap to the optimum lies, day by day: the day's savings range (uncontrolled's
    total cost minus the optimum's), the MPC's gap to the optimum and its parts, and the two peaks."""
    by: dict[str, dict[str, Any]] = {}
    for run in runs:
        by.setdefault(run.episode, {})[run.policy] = run
    parts = ("energy_cost", "demand_charge", "grid_event_revenue", "shortfall_cost")
    for name, day in by.items():
        u, m, o = (day[p].metrics for p in ("uncontrolled", "mpc", "optimal"))
        start = day["mpc"].times[0]
        print(json.dumps({"episode": name, "day": start.strftime("%a %Y-%m-%d"),
                          "savings_range": round(u["total_cost"] - o["total_cost"], 1),
                          "gap": round(m["total_cost"] - o["total_cost"], 1),
                          **{f"gap_{k}": round(m[k] - o[k], 1) for k in parts},
                          "peak_kw": round(m["peak_import_kw"]), "peak_kw_optimal": round(o["peak_import_kw"])}))


def use_no_taper_plan() -> None:
    """The MPC's views without the battery's taper, as before the LP had one (the evaluator's EVs
    taper all the same, and the optimum plans it: its slots are built from the truth)."""
    view_of = ev.view_of

    def untapered(t: Any, now: Any, exact: bool) -> Any:
        return dataclasses.replace(view_of(t, now, exact), taper_kw_per_kwh=0.0)

    ev.view_of = untapered  # type: ignore[assignment]


def main() -> None:
    ap = episode_parser(__doc__, days=5)
    ap.add_argument("--scenarios", choices=("merged", "lower", "fine", "mid", "off"), default="merged")
    ap.add_argument("--urgency-spread", type=float, default=None,
                    help="problem.URGENCY_SPREAD for the run (0: no tie-break between EVs sharing a limit)")
    ap.add_argument("--reveal-at", type=float, default=None,
                    help="share of the way to the earliest departure a guessed need is wanted by")
    ap.add_argument("--medium-hours", type=float, default=None,
                    help="quarter-hour steps for this many hours from now and on to the full hour, hourly after")
    ap.add_argument("--new-site-margin", type=float, default=None,
                    help="minutes an announced departure is planned early until the site has history")
    ap.add_argument("--coarse-step", type=float, default=None,
                    help="seconds per step after the first hour (the code's: 3600)")
    ap.add_argument("--reveal-weight", type=float, default=None,
                    help="price share of a guessed need not in two thirds of the way (the code's: 0.02)")
    ap.add_argument("--departure-points", type=int, default=None,
                    help="with --scenarios merged: the most points per departure spread (the code's: 6)")
    ap.add_argument("--peak-floor", choices=("none", "oracle", "learned"), default="none")
    ap.add_argument("--solver", choices=("simplex", "ipm"), default="simplex")
    ap.add_argument("--arrivals", choices=("on", "off"), default="on")
    ap.add_argument("--arrival-scale", type=float, default=1.0)
    ap.add_argument("--need-quantile", type=float, default=None)
    ap.add_argument("--oracle-needs", action="store_true")
    ap.add_argument("--oracle-building", action="store_true", help="the same as --building-forecast oracle")
    ap.add_argument("--building-forecast", choices=("learned", "ems", "oracle"), default=None,
                    help="what the MPC plans the building with (default: learned)")
    ap.add_argument("--plan-penalty", type=float, default=None,
                    help="the MPC's price per kWh short at departure (scored at 5/kWh whatever it is)")
    ap.add_argument("--oracle-arrival-counts", action="store_true",
                    help="plan each hour's true count of arrivals (not something a gateway can know)")
    ap.add_argument("--iso15118-share", type=float, default=None,
                    help="share of EVs that announce departure and need (the generator's default: 0.6)")
    ap.add_argument("--list-short", action="store_true",
                    help="also print one JSON line per EV the MPC left short of its deliverable energy")
    ap.add_argument("--building-anchor", choices=("shift", "ratio"), default="shift")
    ap.add_argument("--building-weekend", type=float, default=None,
                    help="the episodes' building load on weekends against a weekday's (the generator's: 1.0)")
    ap.add_argument("--building-profile", choices=("by-kind", "all-days"), default="by-kind",
                    help="the learned building profile: weekdays and weekends apart (the code's) or one mean")
    ap.add_argument("--building-fade", type=float, default=None, help="hours (the code's: 3)")
    ap.add_argument("--dwell-history", choices=("site", "near"), default="site",
                    help="near: no stays from the whole site for an hour without history of its own (not kept)")
    ap.add_argument("--discharge-with-spread", action="store_true",
                    help="an announced EV past its believed departure may still discharge while its spread lasts")
    ap.add_argument("--building-quantile", type=float, default=None,
                    help="plan the building at this quantile of the profile's days (the code's: their mean)")
    ap.add_argument("--building-hold", type=float, default=None, help="hours (the code's: none)")
    ap.add_argument("--charge-bias", type=float, default=None, help="per kWh and hour (the code's: 0.001)")
    ap.add_argument("--demand-weight", type=float, default=None,
                    help="the MPC plans the demand charge at this multiple of the tariff's (the code's: 1)")
    ap.add_argument("--departure-in-step", choices=("split", "whole", "split-last"), default="split",
                    help="whole: a possible departure planned at the last whole step before it (before); "
                         "split-last: the last one shared between step ends too (not kept)")
    ap.add_argument("--per-day", action="store_true",
                    help="also print one JSON line per day: its savings range and the MPC's gap by part")
    ap.add_argument("--plug-in-reserve", type=int, default=None,
                    help="room kept for this many EVs plugging into idle EVSEs at once (Settings."
                         "plug_in_reserve_evses, 4); -1: every idle EVSE (the rule before)")
    ap.add_argument("--need-above", action="store_true",
                    help="an unannounced EV past its guessed need planned for the usual need above what it took")
    ap.add_argument("--lent-back", choices=("on", "off"), default="on",
                    help="off: energy lent to an export request priced only by the departure spread (before)")
    ap.add_argument("--bidirectional-share", type=float, default=None,
                    help="share of bidirectional EVSEs in the episodes (the demo's: 1.0)")
    ap.add_argument("--grid-event", choices=("auto", "always"), default=None,
                    help="always: an export request every day (the demo's); auto: the generator's")
    ap.add_argument("--taper-plan", choices=("on", "off"), default="on",
                    help="off: the MPC plans known batteries at full power to the top (before), "
                         "the EVs still taper (the optimum plans the taper either way)")
    a = ap.parse_args()
    building = a.building_forecast or ("oracle" if a.oracle_building else "learned")
    if a.oracle_building and building != "oracle":
        ap.error(f"--oracle-building contradicts --building-forecast {building}")
    if a.need_quantile is not None:
        use_need_quantile(a.need_quantile)
    if a.oracle_needs:
        use_oracle_needs()
    if building == "oracle":
        use_oracle_building()
    if a.plan_penalty is not None:
        use_plan_penalty(a.plan_penalty)
    if a.reveal_weight is not None:
        use_reveal_weight(a.reveal_weight)
    if a.reveal_at is not None:
        slots.REVEAL_AT = a.reveal_at  # type: ignore[misc]
    if a.urgency_spread is not None:
        problem.URGENCY_SPREAD = a.urgency_spread
    if a.medium_hours is not None:
        policies.make_grid = functools.partial(policies.make_grid, medium_span_s=a.medium_hours * 3600.0)  # type: ignore[assignment]
    if a.new_site_margin is not None:
        use_new_site_margin(timedelta(minutes=a.new_site_margin))
    if a.coarse_step is not None:
        policies.make_grid = functools.partial(policies.make_grid, coarse_step_s=a.coarse_step)  # type: ignore[assignment]
    if a.scenarios in QUANTILE_SCENARIOS:
        use_quantile_buckets(QUANTILE_SCENARIOS[a.scenarios])
    elif a.departure_points is not None:
        use_departure_points(a.departure_points)
    if a.scenarios == "off":
        slots.scenarios_for = lambda *args, **kw: None  # type: ignore[assignment]
    if a.building_anchor != "shift" or a.building_fade is not None or a.building_hold is not None:
        use_building_anchor(a.building_anchor, a.building_fade, a.building_hold)
    if a.charge_bias is not None:
        use_charge_bias(a.charge_bias)
    if a.demand_weight is not None:
        use_demand_weight(a.demand_weight)
    use_solver(a.solver)
    use_arrivals(a.arrivals == "on", a.arrival_scale)
    options: dict[str, Any] = {} if a.iso15118_share is None else {"iso15118_share": a.iso15118_share}
    if a.building_weekend is not None:
        options["building_weekend_factor"] = a.building_weekend
    if a.bidirectional_share is not None:
        options["bidirectional_share"] = a.bidirectional_share
    if a.grid_event is not None:
        options["grid_event"] = a.grid_event
    if a.building_profile == "all-days":
        use_one_building_profile()
    if a.building_quantile is not None:
        use_building_quantile(a.building_quantile)
    if a.discharge_with_spread:
        use_discharge_with_spread()
    if a.dwell_history == "near":
        use_dwell_history_near_only()
    if a.departure_in_step == "split-last":
        use_last_departure_shared()
    if a.departure_in_step == "whole":
        use_departures_at_whole_steps()
    if a.taper_plan == "off":
        use_no_taper_plan()
    if a.lent_back == "off":
        use_lent_back(False)
    if a.need_above:
        policies.SlotRules = functools.partial(policies.SlotRules, need_above=True)  # type: ignore[misc]
    if a.plug_in_reserve is not None:
        use_plug_in_reserve(a.plug_in_reserve)
    steps = count_grid_steps()
    episodes = ev.generate_episodes(a.site, a.days, a.seed, a.stations, **options)
    use_peak_floor(a.peak_floor, episodes)
    if a.oracle_arrival_counts:
        use_oracle_arrival_counts(episodes)
    result, runs = ev.evaluate(episodes, ["uncontrolled", "mpc", "optimal"], exact=a.exact,
                               building_forecast="learned" if building == "oracle" else building)
    if a.list_short:
        print_short(r for r in runs if r.policy == "mpc")
    if a.per_day:
        print_days(runs)
    mpc = result["policies"]["mpc"]
    keys = ("savings_capture_total", "savings_capture", "energy_cost", "demand_charge", "grid_event_revenue",
            "shortfall_cost", "total_cost", "deliverable_served_share")
    print(json.dumps({"site": a.site, "days": a.days, "seed": a.seed, "scenarios": a.scenarios,
                      "departure_points": a.departure_points, "reveal_weight": a.reveal_weight,
                      "peak_floor": a.peak_floor, "solver": a.solver, "arrivals": a.arrivals,
                      "arrival_scale": a.arrival_scale, "need_quantile": a.need_quantile,
                      "oracle_needs": a.oracle_needs, "oracle_building": building == "oracle",
                      "building_forecast": building, "exact": a.exact,
                      "plan_penalty": a.plan_penalty, "iso15118_share": a.iso15118_share,
                      "oracle_arrival_counts": a.oracle_arrival_counts, "building_anchor": a.building_anchor,
                      "building_fade_h": a.building_fade, "building_hold_h": a.building_hold,
                      "charge_bias": a.charge_bias, "demand_weight": a.demand_weight,
                      "coarse_step_s": a.coarse_step, "medium_hours": a.medium_hours,
                      "new_site_margin_min": a.new_site_margin, "reveal_at": a.reveal_at,
                      "urgency_spread": a.urgency_spread,
                      "building_weekend": a.building_weekend,
                      "building_profile": a.building_profile, "building_quantile": a.building_quantile,
                      "discharge_with_spread": a.discharge_with_spread, "departure_in_step": a.departure_in_step,
                      "dwell_history": a.dwell_history, "taper_plan": a.taper_plan, "lent_back": a.lent_back,
                      "need_above": a.need_above, "plug_in_reserve": a.plug_in_reserve,
                      "bidirectional_share": a.bidirectional_share, "grid_event": a.grid_event,
                      "lenders": lenders([r for r in runs if r.policy == "mpc"]),
                      **{k: None if mpc[k] is None else round(float(mpc[k]), 4) for k in keys},
                      "warnings": result["warnings"],
                      "grid_steps_p50_p95_max": [float(np.percentile(steps, q)) for q in (50, 95, 100)],
                      "optimal_total_cost": round(float(result["policies"]["optimal"]["total_cost"]), 2)}))


if __name__ == "__main__":
    main()
