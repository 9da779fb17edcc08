"""``gateway evaluate``: replay episodes through charging policies offline and price the outcome.

A discrete-time loop on 5-minute steps (no sockets): the evaluator holds the truth (arrivals,
departures, needs, building load), shows each policy only what a live gateway would know (see
policies.View), clips its setpoints to the EV and EVSE limits, runs the batteries and meters the
site. ``optimal`` is one LP over the whole episode with the truth: the bound no online policy beats.

How results are priced (per policy, summed over episodes):
- bill = energy cost (import at the import price, export credited at the export price, per step)
  + demand charge on the episode's peak import; the billing period is the simulated window, so a
  demand charge quoted per kW-month is prorated to its length (``prorated_demand_charge``).
- grid-event revenue: during an export request, payment x (building load - site net import) per
  kWh, both signs (charging during the event costs the payment); the same settlement the LP uses.
- energy a policy fails to deliver is not free: ``shortfall_kwh`` = what was physically deliverable
  (min of the request, the battery room and full EV/EVSE power over the dwell) but not delivered,
  priced at the unmet-energy penalty. ``total_cost`` = bill - revenue + wear + shortfall price, and
  ``savings_capture`` compares bills, as the evaluator's JSON contract defines it:
  (bill_uncontrolled - bill) / (bill_uncontrolled - bill_optimal), null where the optimum's bill
  is not below uncontrolled's (it minimises the total, and V2G revenue can cost it bill);
  ``savings_capture_total`` compares total costs, so a policy that saves by leaving EVs short is
  not credited for it.
- grid events are settled per step as the LP plans them (``site_limits``).
- EV physics: the EV stops charging at its own target (the final request), never below its
  reserve when discharging; an EV is plugged in for the whole 5-minute steps within its stay.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from gateway.config import EV_EFFICIENCY, UNMET_PENALTY_PER_KWH
from gateway.episode import EV_CV_SOC, Arrival, Episode, ev_full_soc
from gateway.episode import load as load_episode
from gateway.scheduler.forecast import SessionForecaster, planning_forecaster
from gateway.scheduler.inputs import discharge_in_events_only, prorated_demand_charge, site_inputs
from gateway.scheduler.policies import (
    DISCHARGE_ONLY_IN_GRID_EVENTS,
    Context,
    Edf,
    Greedy,
    Key,
    Mpc,
    Planned,
    Policy,
    Uncontrolled,
    View,
    check_building_forecast,
)
from gateway.scheduler.problem import FloatArr, Planner, SlotInput, uniform_grid
from gateway.scheduler.slots import DrawSeen, taper_kw_per_kwh

STEP_S = 300.0
FULLY_SERVED_TOLERANCE_KWH = 0.5
# The efficiency the online policies count every EV with, as live (Settings.ev_efficiency).
ASSUMED_EFFICIENCY = EV_EFFICIENCY
POLICY_NAMES = ("uncontrolled", "greedy", "edf", "mpc", "optimal")


def mpc_forecaster() -> SessionForecaster:
    """The live scheduler's (:func:`planning_forecaster`), so the evaluator measures what runs."""
    return planning_forecaster()


@dataclass
class EvTruth:
    arrival: Arrival
    key: Key
    first: int  # first step plugged in
    last: int  # first step gone
    e0: float
    stop: float  # the EV stops charging here
    reserve: float
    max_charge_kw: float  # EV and EVSE together: what physics allows
    max_discharge_kw: float
    requested: float
    deliverable: float
    evse_max_kw: float = 0.0  # what the gateway knows of the power of an EV that does not tell its own
    energy: float = 0.0
    metered_in: float = 0.0  # kWh through the EVSE's meter into the EV, and out of it
    metered_out: float = 0.0
    high: float = 0.0  # the most the battery held after a step of charging (the view adds the energy now)
    drawn: DrawSeen = field(default_factory=DrawSeen)  # what it drew against what it was offered
    curve: list[float] = field(default_factory=list)

    @property
    def stored_seen(self) -> float:
        """What a gateway counts as gone into the battery: the meter's energy at the efficiency it
        assumes (``Session.stored_kwh``), not the battery's own (each EV's is its own)."""
        return self.metered_in * ASSUMED_EFFICIENCY - self.metered_out / ASSUMED_EFFICIENCY

    @property
    def offerable_kw(self) -> float:
        """The most its EVSE can offer it (the EVSE's rating; the EV's own limit where unknown)."""
        return max(self.evse_max_kw, self.max_charge_kw)


def final_request(a: Arrival) -> float:
    if a.need_change is not None and a.need_change.energy_kwh is not None:
        return a.need_change.energy_kwh
    return a.requested_kwh


def window(ep: Episode) -> tuple[datetime, int]:
    """The simulated window: the episode, extended until the last EV has left."""
    end = max([ep.end, *[a.departure for a in ep.arrivals]])
    return ep.start, math.ceil((end - ep.start).total_seconds() / STEP_S)


def truths(ep: Episode) -> list[EvTruth]:
    evse = {e.key: e for e in ep.evses}
    h = STEP_S / 3600.0
    out = []
    for a in ep.arrivals:
        spec = evse[(a.station_id, a.evse_id)]
        first = math.ceil((a.arrival - ep.start).total_seconds() / STEP_S)
        last = math.floor((a.departure - ep.start).total_seconds() / STEP_S)
        e0 = a.arrival_soc * a.capacity_kwh
        req = final_request(a)
        stop = min(a.capacity_kwh * ev_full_soc(), e0 + req)
        kw = min(a.max_charge_kw, spec.max_charge_kw)
        dis = (min(a.max_discharge_kw, spec.max_discharge_kw)
               if a.bidirectional and spec.bidirectional and a.iso15118 else 0.0)
        deliverable = min(req, charged_kwh(e0, kw, h * max(last - first, 0), a.capacity_kwh, a.max_charge_kw,
                                           a.eff_charge, stop))
        out.append(EvTruth(arrival=a, key=spec.key, first=first, last=last, e0=e0, stop=stop,
                           reserve=a.reserve_soc * a.capacity_kwh, max_charge_kw=kw, max_discharge_kw=dis,
                           requested=req, deliverable=max(deliverable, 0.0), evse_max_kw=spec.max_charge_kw,
                           energy=e0))
    return out


def charged_kwh(e: float, kw: float, hours: float, cap: float, ev_max_kw: float, eff: float, stop: float) -> float:
    """Battery energy an episode EV at ``e`` kWh takes in ``hours`` when offered ``kw`` (grid side,
    at most its own ``ev_max_kw``), stopping at ``stop``: constant power until its acceptance
    falls to ``kw``, then the taper's exponential approach (acceptance linear in the room left,
    ``gateway.episode.EV_CV_SOC``) until the cutoff (``EV_TAPER_CUTOFF``). The closed form of what
    the simulators' batteries integrate (simulators/ev.py)."""
    w = (1.0 - EV_CV_SOC) * cap
    stop = min(stop, cap * ev_full_soc())
    if kw <= 0 or hours <= 0 or e >= stop or eff <= 0 or ev_max_kw <= 0:
        return 0.0
    kw = min(kw, ev_max_kw)
    if w <= 0:
        return min(e + eff * kw * hours, stop) - e
    e_kw = cap - kw / ev_max_kw * w  # the acceptance falls to kw here
    if e < e_kw:
        need = (min(e_kw, stop) - e) / (eff * kw)
        if need >= hours:
            return min(e + eff * kw * hours, stop) - e
        e0, hours = min(e_kw, stop), hours - need
    else:
        e0 = e
    if e0 >= stop:
        return stop - e
    k = ev_max_kw / w
    return min(cap - (cap - e0) * math.exp(-eff * k * hours), stop) - e


def _announced(a: Arrival) -> datetime | None:
    """What the EV announced (a gateway learns the truth only when the EV leaves)."""
    return a.announced_departure if a.iso15118 else None


def _known_need(t: EvTruth) -> float | None:
    """The energy a gateway learns an EV wanted: its request (ISO 15118 or the driver's app);
    for other EVs only what they took, a lower bound that would bias a need forecast low."""
    a = t.arrival
    told = a.need_change is not None and a.need_change.energy_kwh is not None
    return t.requested if a.iso15118 or told else None


def _max_kw_done(t: EvTruth) -> float:
    """The power a finished session is remembered with, as live (``SiteState.completion``): the
    EV's own limit where it declared one (ISO 15118), else its EVSE's rating."""
    return t.max_charge_kw if t.arrival.iso15118 else t.evse_max_kw


def known_max_kw(t: EvTruth, known: bool) -> float:
    """The charging power the gateway believes ``t`` can take. Live, it knows an EV's own limit
    only when ISO 15118 tells it; otherwise the EVSE's rating. Either way, once the EV has drawn
    clearly less than it was offered, what it takes now (:class:`gateway.scheduler.slots.DrawSeen`;
    live_inputs.session_view applies it to every EV)."""
    seen = t.drawn.limit_kw()
    most = t.max_charge_kw if known else t.offerable_kw
    return most if seen is None else min(most, seen)


def view_of(t: EvTruth, now: datetime, exact: bool) -> View:
    a = t.arrival
    nc = a.need_change
    changed = nc is not None and now >= nc.at
    departure = a.announced_departure if a.iso15118 else None
    need = a.requested_kwh if a.iso15118 else None
    if changed and nc is not None:
        departure = nc.departure or departure
        need = nc.energy_kwh if nc.energy_kwh is not None else need
    if exact:
        departure, need = a.departure, t.requested
    known = a.iso15118 or exact
    return View(
        key=t.key, arrival=a.arrival, delivered_kwh=t.stored_seen, max_charge_kw=known_max_kw(t, known),
        max_discharge_kw=t.max_discharge_kw, eff_charge=ASSUMED_EFFICIENCY, eff_discharge=ASSUMED_EFFICIENCY,
        full=t.energy >= t.stop - 1e-6, departure=departure,
        energy_kwh=t.energy if known else None, capacity_kwh=a.capacity_kwh if known else None,
        # Live, pinned at the first SoC reading, at plug-in (Session.pin_battery_start).
        start_kwh=t.e0 if known else None,
        high_kwh=max(t.high, t.energy) if known else None,
        need_kwh=need, reserve_kwh=t.reserve if known else 0.0, departure_firm=exact,
        # A battery the gateway sees tapers as the site's settings assume (live: Settings.battery_taper_soc).
        taper_kw_per_kwh=taper_kw_per_kwh(a.capacity_kwh, a.max_charge_kw, EV_CV_SOC) if known else 0.0,
    )


def site_limits(ep: Episode, start: datetime, n: int) -> tuple[FloatArr, FloatArr]:
    """(import limit, export-request payment) of each of the ``n`` steps from ``start``, by the
    rule the LP plans with (:func:`gateway.scheduler.inputs.site_inputs`): an import cap holds on
    every step it touches, an export request pays in proportion to the part of the step it
    covers. Read at each step's start instead, an event off the 5-minute grid would be settled
    otherwise than it was planned (a cap from 10:02 missing its first step)."""
    site = site_inputs(
        uniform_grid(start, STEP_S, n), tariff=ep.tariff, limits=ep.limits, events=ep.grid_events,
        building_kw=lambda _: 0.0, demand_charge_per_kw=0.0, peak_so_far_kw=0.0, wear_cost_per_kwh=0.0,
        unmet_penalty_per_kwh=0.0,
    )
    return (np.asarray(site.import_limit_kw, dtype=float).copy(),
            np.asarray(site.export_payment_per_kwh, dtype=float).copy())


@dataclass
class Run:
    """One policy on one episode: time series and per-EV outcomes."""

    policy: str
    episode: str
    times: list[datetime]
    net_kw: FloatArr
    building_kw: FloatArr
    limit_kw: FloatArr
    price: FloatArr
    evse_power: dict[Key, FloatArr]
    evs: list[EvTruth]
    solve_times: list[float]
    metrics: dict[str, float]
    # The plan played back was a fallback, not the LP's optimum (``optimal`` only).
    not_optimal: bool = False


class Progress:
    """A plain progress bar on stderr (no dependency)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled, self._shown = max(total, 1), 0, enabled, -1

    def step(self, n: int, label: str) -> None:
        self.done += n
        pct = int(100 * self.done / self.total)
        if self.enabled and pct != self._shown:
            self._shown = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r[{bar:<25}] {pct:3d}% {label[:50]:<50}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def simulate(ep: Episode, policy: Policy, *, exact: bool, penalty: float, progress: Progress) -> Run:
    start, n = window(ep)
    h = STEP_S / 3600.0
    evs = truths(ep)
    by_first: dict[int, list[EvTruth]] = {}
    for t in evs:
        if t.last > t.first:
            by_first.setdefault(t.first, []).append(t)
        t.curve = [math.nan] * n
    keys = [e.key for e in ep.evses]
    evse_power = {k: np.zeros(n) for k in keys}
    net = np.zeros(n)
    building = np.zeros(n)
    limit, pay = site_limits(ep, start, n)
    price = np.zeros(n)
    p_exp = np.zeros(n)
    history: dict[datetime, float] = {}
    present: dict[Key, EvTruth] = {}
    policy.begin(ep)
    # A policy object lives through every episode of a run (the MPC learns from the days before):
    # only the solves of this episode are this run's.
    solves_before = len(getattr(policy, "solve_times", []))
    peak = 0.0
    times = [start + timedelta(seconds=STEP_S * i) for i in range(n)]
    for i, now in enumerate(times):
        for k in [k for k, t in present.items() if t.last <= i]:
            gone = present.pop(k)
            a = gone.arrival
            policy.session_done(ep, a.arrival, a.departure, _known_need(gone), _announced(a), _max_kw_done(gone),
                                gone.stored_seen)
        for t in by_first.get(i, []):
            present[t.key] = t
        building[i] = ep.building_load_at(now)
        price[i], p_exp[i] = ep.tariff.prices_at(now)
        views = [view_of(t, now, exact) for t in present.values()]
        ctx = Context(now=now, step_s=STEP_S, building_kw=building[i], import_limit_kw=limit[i],
                      peak_so_far_kw=peak, views=views, building_history=history)
        setpoints = policy.act(ctx)
        total = 0.0
        for k, t in present.items():
            kw = setpoints.get(k, 0.0)
            a = t.arrival
            if kw > 0:
                offered = min(kw, t.offerable_kw)
                got = charged_kwh(t.energy, min(kw, t.max_charge_kw), h, a.capacity_kwh, a.max_charge_kw,
                                  a.eff_charge, t.stop)
                kw = got / (a.eff_charge * h)
                t.energy += got
                t.metered_in += kw * h
                t.high = max(t.high, t.energy)
                t.drawn.note(kw, offered)
            elif kw < 0:
                kw = -min(-kw, t.max_discharge_kw, max(t.energy - t.reserve, 0.0) * a.eff_discharge / h)
                t.energy += kw / a.eff_discharge * h
                t.metered_out -= kw * h
            evse_power[k][i] = kw
            total += kw
            t.curve[i] = t.energy / a.capacity_kwh
        net[i] = building[i] + total
        peak = max(peak, net[i])
        history[now] = building[i]
        progress.step(1, f"{policy.name} {ep.name}")
    for t in present.values():
        policy.session_done(ep, t.arrival.arrival, t.arrival.departure, _known_need(t), _announced(t.arrival),
                            _max_kw_done(t), t.stored_seen)
    metrics = price_run(ep, evs, net, building, limit, price, p_exp, pay, evse_power, penalty, n)
    solve_times = list(getattr(policy, "solve_times", []))[solves_before:]
    return Run(policy=policy.name, episode=ep.name, times=times, net_kw=net, building_kw=building,
               limit_kw=limit, price=price, evse_power=evse_power, evs=evs, solve_times=solve_times,
               metrics=metrics, not_optimal=isinstance(policy, Planned) and policy.fallback)


def price_run(ep: Episode, evs: list[EvTruth], net: FloatArr, building: FloatArr, limit: FloatArr,
              price: FloatArr, p_exp: FloatArr, pay: FloatArr, evse_power: dict[Key, FloatArr],
              penalty: float, n: int) -> dict[str, float]:
    h = STEP_S / 3600.0
    imp = np.maximum(net, 0.0)
    exp = np.maximum(-net, 0.0)
    demand = prorated_demand_charge(ep.tariff.demand_charge_per_kw, timedelta(seconds=STEP_S * n))
    peak = float(imp.max(initial=0.0))
    energy_cost = float(h * (price @ imp - p_exp @ exp))
    demand_cost = demand * peak
    revenue = float(h * pay @ (building - net))
    discharged = sum(float(np.maximum(-p, 0.0).sum()) * h for p in evse_power.values())
    wear = ep.wear_cost_per_kwh * discharged
    delivered = np.array([max(t.energy - t.e0, 0.0) for t in evs])
    requested = np.array([t.requested for t in evs])
    deliverable = np.array([t.deliverable for t in evs])
    # Fully served: the request, or all the battery takes where that is less (the charge ends at
    # ``stop``, 99.6 % for a request to 100 %: a big battery would miss the tolerance whatever any
    # policy did). The battery-room part of ``deliverable``, without its dwell and power limits.
    fillable = np.array([min(t.requested, max(t.stop - t.e0, 0.0)) for t in evs])
    shortfall = float(np.maximum(deliverable - delivered, 0.0).sum())
    excess = np.maximum(np.maximum(net - limit, exp - ep.limits.export_kw), 0.0)
    bill = energy_cost + demand_cost
    return {
        "bill": bill, "energy_cost": energy_cost, "demand_charge": demand_cost,
        "grid_event_revenue": revenue, "wear_cost": wear, "discharged_kwh": discharged,
        "energy_requested_kwh": float(requested.sum()), "energy_deliverable_kwh": float(deliverable.sum()),
        "energy_delivered_kwh": float(np.minimum(delivered, requested).sum()),
        "shortfall_kwh": shortfall, "shortfall_cost": shortfall * penalty,
        "total_cost": bill - revenue + wear + shortfall * penalty,
        "evs": float(len(evs)),
        "evs_fully_served": float((delivered >= fillable - FULLY_SERVED_TOLERANCE_KWH).sum()),
        "evs_deliverable_served": float((delivered >= deliverable - FULLY_SERVED_TOLERANCE_KWH).sum()),
        "peak_import_kw": peak, "limit_excess_kw_max": float(excess.max(initial=0.0)),
        "limit_excess_steps": float((excess > 1e-6).sum()),
        "site_import_kwh": float(imp.sum() * h),
    }


def optimal_policy(ep: Episode, penalty: float, time_limit_s: float) -> Planned:
    """One LP over the whole window with the truth, one slot per EV; played back step by step."""
    start, n = window(ep)
    grid = uniform_grid(start, STEP_S, n)
    evs = [t for t in truths(ep) if t.last > t.first]
    site = site_inputs(
        grid, tariff=ep.tariff, limits=ep.limits, events=ep.grid_events, building_kw=ep.building_load_at,
        demand_charge_per_kw=prorated_demand_charge(ep.tariff.demand_charge_per_kw,
                                                    timedelta(seconds=STEP_S * n)),
        peak_so_far_kw=0.0, wear_cost_per_kwh=ep.wear_cost_per_kwh, unmet_penalty_per_kwh=penalty,
    )
    if DISCHARGE_ONLY_IN_GRID_EVENTS:  # the bound has the MPC's choices, no more
        discharge_in_events_only(site)
    steps = np.arange(n)
    slots = [
        SlotInput(key=t.key, connected=(steps >= t.first) & (steps < t.last), energy_kwh=t.e0,
                  capacity_kwh=t.stop, target_energy_kwh=t.stop, reserve_energy_kwh=t.reserve,
                  max_charge_kw=t.max_charge_kw, max_discharge_kw=t.max_discharge_kw,
                  eff_charge=t.arrival.eff_charge, eff_discharge=t.arrival.eff_discharge,
                  discharge_allowed=t.max_discharge_kw > 0,
                  taper_kw_per_kwh=taper_kw_per_kwh(t.arrival.capacity_kwh, t.arrival.max_charge_kw, EV_CV_SOC),
                  taper_full_kwh=t.arrival.capacity_kwh)
        for t in evs
    ]
    # The bound: one LP over every EV, never split into groups.
    plan = Planner(backend="highs", time_limit_s=time_limit_s, decompose_above_slots=None).solve(site, slots)
    pol = Planned()
    pol.solve_times = [plan.solve_s]
    pol.status, pol.fallback = plan.status, plan.fallback
    times = grid.starts()
    for i, t in enumerate(evs):
        for j in range(t.first, t.last):
            pol.setpoints[(t.key, times[j])] = float(plan.power_kw[i, j])
    return pol


def make_policy(name: str, penalty: float, forecaster: SessionForecaster) -> Policy:
    if name == "uncontrolled":
        return Uncontrolled()
    if name == "greedy":
        return Greedy()
    if name == "edf":
        return Edf(forecaster)
    if name == "mpc":
        return Mpc(unmet_penalty_per_kwh=penalty, forecaster=forecaster)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")


def bill_by(mpc: Mpc, ep: Episode) -> None:
    """The MPC plans the demand charge of ``ep``'s billing period (the whole episode)."""
    mpc.period = timedelta(seconds=STEP_S * window(ep)[1])
    mpc.period_end = window(ep)[0] + mpc.period


def check_names(names: Sequence[str]) -> None:
    """Each policy once: runs are summed by policy name, so a repeated one would count twice."""
    if not names:
        raise ValueError(f"no policies to evaluate; choose from {', '.join(POLICY_NAMES)}")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"policy {name!r} is named more than once")


def evaluate(episodes: Sequence[Episode], names: Sequence[str], *, exact: bool = False,
             penalty: float = UNMET_PENALTY_PER_KWH, progress: bool = False, optimal_time_limit_s: float = 600.0,
             building_forecast: str = "learned") -> tuple[dict[str, Any], list[Run]]:
    """Run every policy over every episode (in order, so forecasters learn from earlier ones).
    ``building_forecast``: what the MPC plans the building with (``policies.BUILDING_FORECASTS``:
    the profile it learns, or the episode's energy-system forecast where there is one)."""
    check_building_forecast(building_forecast)
    check_names(names)
    if not episodes:
        raise ValueError("no episodes to evaluate")
    total = sum(window(ep)[1] for ep in episodes) * len(names)
    bar = Progress(total, progress)
    runs: list[Run] = []
    online: dict[str, Policy] = {}
    for name in names:
        if name != "optimal":
            # Each policy learns from its own history; none shares the truth with another.
            made = make_policy(name, penalty, mpc_forecaster())
            if isinstance(made, Mpc):
                made.building_forecast = building_forecast
            online[name] = made
    for ep in episodes:
        for name in names:
            if name == "optimal":
                pol: Policy = optimal_policy(ep, penalty, optimal_time_limit_s)
            else:
                pol = online[name]
                if isinstance(pol, Mpc):
                    bill_by(pol, ep)  # (with ``exact`` every view's departure is firm: no margin, no spread)
            runs.append(simulate(ep, pol, exact=exact, penalty=penalty, progress=bar))
    bar.close()
    return summarise(runs, names), runs


def summarise(runs: list[Run], names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r.policy == name]
        tot = {k: sum(r.metrics[k] for r in mine) for k in mine[0].metrics}
        st = np.array([s for r in mine for s in r.solve_times]) if mine else np.zeros(0)
        out[name] = {
            "bill": tot["bill"], "energy_cost": tot["energy_cost"], "demand_charge": tot["demand_charge"],
            "grid_event_revenue": tot["grid_event_revenue"], "wear_cost": tot["wear_cost"],
            "discharged_kwh": tot["discharged_kwh"], "total_cost": tot["total_cost"],
            "shortfall_kwh": tot["shortfall_kwh"], "shortfall_cost": tot["shortfall_cost"],
            "energy_requested_kwh": tot["energy_requested_kwh"],
            "energy_deliverable_kwh": tot["energy_deliverable_kwh"],
            "energy_delivered_kwh": tot["energy_delivered_kwh"],
            "deliverable_served_share": (1.0 - tot["shortfall_kwh"] / tot["energy_deliverable_kwh"]
                                         if tot["energy_deliverable_kwh"] > 0 else 1.0),
            "evs": int(tot["evs"]),
            "evs_fully_served_share": tot["evs_fully_served"] / tot["evs"] if tot["evs"] else 1.0,
            "evs_deliverable_served_share": tot["evs_deliverable_served"] / tot["evs"] if tot["evs"] else 1.0,
            "peak_import_kw": max(r.metrics["peak_import_kw"] for r in mine),
            "peak_import_kw_mean": float(np.mean([r.metrics["peak_import_kw"] for r in mine])),
            "limit_excess_kw_max": max(r.metrics["limit_excess_kw_max"] for r in mine),
            "limit_excess_steps": int(tot["limit_excess_steps"]),
            "solve_s_p50": float(np.percentile(st, 50)) if len(st) else 0.0,
            "solve_s_p95": float(np.percentile(st, 95)) if len(st) else 0.0,
            "solves": len(st),
            "not_optimal_episodes": sorted(r.episode for r in mine if r.not_optimal),
        }
    for res in out.values():
        # The key is always there (the JSON's stable shape); null where it cannot be had (both
        # uncontrolled and optimal must run, and differ).
        res["savings_capture"] = res["savings_capture_total"] = res["peak_reduction_capture"] = None
    warnings = []
    failed = out.get("optimal", {}).get("not_optimal_episodes")
    if failed:
        # A greedy plan in the optimum's place would make every policy's capture look better
        # than it is: no capture from it.
        warnings.append(f"the perfect-foresight LP found no optimum on {len(failed)} episode(s) "
                        f"({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}): it played a "
                        "fallback plan, so no savings capture is computed; give it more time")
    elif "uncontrolled" in out and "optimal" in out:
        u, o = out["uncontrolled"], out["optimal"]
        for res in out.values():
            res["savings_capture"] = _capture(u["bill"], res["bill"], o["bill"])
            res["savings_capture_total"] = _capture(u["total_cost"], res["total_cost"], o["total_cost"])
            res["peak_reduction_capture"] = _capture(u["peak_import_kw_mean"], res["peak_import_kw_mean"],
                                                     o["peak_import_kw_mean"])
    return {"policies": out, "episodes": sorted({r.episode for r in runs}), "warnings": warnings}


CAPTURE_MIN_GAP = 1e-9


def _capture(base: float, value: float, best: float) -> float | None:
    """The share of uncontrolled's excess over the optimum that ``value`` saves; None where the
    optimum is not below uncontrolled. It minimises the total cost, not each part: with V2G
    revenue its bill (or its peak) may exceed uncontrolled's, and the ratio would then be
    inverted (a policy saving more scoring less) or divided by next to nothing."""
    gap = base - best
    return (base - value) / gap if gap > CAPTURE_MIN_GAP else None


def generate_episodes(site: str, days: int, seed: int, stations: int, **options: Any) -> list[Episode]:
    """``days`` one-day episodes from the scenario generator (seeds ``seed``, ``seed+1``, ...,
    consecutive days): each day is its own billing period, so the perfect-foresight LP stays one
    day long and the days are comparable samples (as OPTIMUS samples days). ``options``: more
    ``ScenarioOptions`` fields (the benchmarks vary, e.g., ``iso15118_share``)."""
    from simulators.scenario import DEFAULT_START, ScenarioOptions, generate

    return [
        generate(ScenarioOptions(site=site, stations=stations, days=1, seed=seed + d,
                                 start=DEFAULT_START + timedelta(days=d), **options))
        for d in range(days)
    ]


def cli(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    for n in names:
        if n not in POLICY_NAMES:
            raise SystemExit(f"unknown policy {n!r}; choose from {', '.join(POLICY_NAMES)}")
    try:
        check_names(names)  # before the episodes are read or generated: a typo costs no run
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.episode:
        episodes = [load_episode(p) for p in args.episode]
    else:
        episodes = generate_episodes(args.site, args.days, args.seed, args.stations)
    penalty = getattr(args, "unmet_penalty", None) or UNMET_PENALTY_PER_KWH
    building = getattr(args, "building_forecast", None) or "learned"
    result, runs = evaluate(episodes, names, exact=args.exact, penalty=penalty,
                            progress=not args.no_progress, building_forecast=building)
    result["settings"] = {"exact": bool(args.exact), "unmet_penalty_per_kwh": penalty, "step_s": STEP_S,
                          "building_forecast": building}
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    if args.report:
        from gateway.scheduler.report import write_report

        write_report(args.report, result, runs)
    # The table is for reading; stdout carries it unless the JSON is printed there for a program.
    _print_table(result, sys.stdout if args.json else sys.stderr)
    return 0


TABLE_KEYS = ("bill", "grid_event_revenue", "total_cost", "peak_import_kw", "deliverable_served_share",
              "evs_fully_served_share", "limit_excess_kw_max", "savings_capture", "savings_capture_total",
              "solve_s_p50")


def format_table(result: dict[str, Any]) -> str:
    """The results as a table: one row per metric, named by its key in the JSON, and one column
    per policy. Metrics run down the side because their full names are long: as columns, ten of
    them would not fit a terminal's width."""
    names = list(result["policies"])

    def cell(v: Any) -> str:
        if v is None:
            # No capture without both uncontrolled and optimal, or where the optimum is not below
            # uncontrolled (see summarise and _capture).
            return "n/a"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [[key, *(cell(result["policies"][n].get(key)) for n in names)] for key in TABLE_KEYS]
    header = ["metric", *names]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])
        for r in (header, *rows))


def _print_table(result: dict[str, Any], out: TextIO) -> None:
    out.write(format_table(result) + "\n")
    out.flush()
    for warning in result.get("warnings", []):
        sys.stderr.write(f"warning: {warning}\n")
