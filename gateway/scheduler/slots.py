"""One EV session as the gateway knows it -> the LP's slot. Pure: no I/O.

The single rule set for what the planner assumes about a session, used by the live loop
(:mod:`gateway.scheduler.live_inputs`) and by the offline evaluator's MPC
(:class:`gateway.scheduler.policies.Mpc`), so what the evaluator measures is what runs live:

- departure: a driver's own departure is planned as given. Otherwise, once the site has history,
  as a spread (:func:`departure_scenarios`): where sessions like this one ended (the EV's
  announcement shifted by how far this site's announcements were off, or, with no announcement,
  the dwells of sessions arriving at the same hour), given the EV is still here, cut down to a
  few points (:mod:`gateway.scheduler.departure_points`); the plan runs to the last and prices a
  shortfall at the earlier ones by their probability. Without
  history: one believed departure, the EV's announcement ``margin`` early or a short forecast
  dwell. Once the believed departure has passed the EV is due (no discharge; with no spread
  left, a short rolling deadline);
- energy: the announced need (driver or EV), else the forecast need, and at least a top-up more
  for an EV that still takes energy once the guess is met;
- battery scale: SoC x capacity when the EV tells (ISO 15118), else energy since plug-in;
- an EV leaving after the horizon needs by its end only what it cannot get afterwards;
- charge-now: a deadline as early as full power could make it, no discharge;
- a charger drawing more than it was told is planned at its measured draw (fixed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from gateway.scheduler.departure_points import departure_points
from gateway.scheduler.forecast import FloatArr, SessionForecaster, believed_departure
from gateway.scheduler.inputs import connected_mask, target_within_horizon
from gateway.scheduler.problem import SlotInput, TimeGrid

Key = tuple[str, int]

# An EV that still accepts energy once its forecast need is met is assumed to want this much more.
TOPUP_KWH = 5.0
# Plan to finish this long before an announced departure until history shows how late EVs announce.
ANNOUNCED_MARGIN = timedelta(minutes=90)
# A need the gateway guessed (the EV and driver told none) is learned only when the EV stops
# taking energy. Spread to the departure, it shows at the end: too late for an EV that needs more,
# and the night's peak was set for energy most EVs never take (the guess is a high percentile).
# So the plan is asked, at a small price per kWh short (this share of the unmet price), to have
# the guess in by this share of the way to the earliest possible departure: the EVs that need less
# show it early, those that need more still have the rest of the stay. Measured:
# docs/benchmarks-scheduler.md ("A guessed need, wanted early").
REVEAL_WEIGHT = 0.02
REVEAL_AT = 2.0 / 3.0
# The battery's gain on its own readings (SoC x capacity) and on the meter (x the assumed
# efficiency) agree within this share plus this much, or the readings are not trusted.
START_AGREES_SHARE = 0.25
START_AGREES_KWH = 1.0
# Charge-now: the shortest deadline planned, so a nearly full EV still gets a few steps.
CHARGE_NOW_MIN = timedelta(minutes=15)


@dataclass
class SessionView:
    """An EV session as the gateway sees it. ``None`` means the gateway does not know it."""

    key: Key
    arrival: datetime
    delivered_kwh: float  # battery side, since plug-in (the meter and EV losses give this)
    max_charge_kw: float  # EV and EVSE together
    max_discharge_kw: float  # 0 unless both sides can discharge (hardware, dialect and driver allow)
    eff_charge: float
    eff_discharge: float
    full: bool  # the EV stopped accepting energy (reached its own target)
    departure: datetime | None  # announced by the EV / driver (maybe wrong)
    energy_kwh: float | None  # battery energy now (ISO 15118 EVs: SoC x capacity)
    capacity_kwh: float | None
    need_kwh: float | None  # energy asked for in total since plug-in
    reserve_kwh: float
    charge_now: bool = False  # the driver wants it as fast as the site allows
    fixed_kw: float | None = None  # a draw the plan does not control (ignored limit, or none settable now)
    # The departure is the driver's own, set for this session (the app): planned as given, with no
    # margin, so "by 18:00" means by 18:00 and not 90 minutes before under a demand charge.
    departure_firm: bool = False
    # The battery's energy at plug-in on the scale of ``energy_kwh`` where the EV's readings give
    # it (domain.Session.battery_start_kwh); else it is taken as ``energy_kwh - delivered_kwh``.
    start_kwh: float | None = None
    # The battery's constant-voltage taper, kW per kWh of room below ``capacity_kwh`` (known
    # batteries only; 0: none planned, the draw shows it: DrawSeen).
    taper_kw_per_kwh: float = 0.0
    # The most energy the battery held in this session, on the scale of ``energy_kwh`` (None:
    # ``energy_kwh``): lent to an export request, it is to be back by the believed departure.
    high_kwh: float | None = None


# An EV drawing at least this much less than it is offered shows its own power limit (AC EVs
# that say nothing of themselves: the gateway knows only the EVSE's rating).
EV_LIMIT_TOLERANCE_KW = 1.0
MIN_DRAW_KW = 0.5  # below this the EV is paused or full (SuspendedEV), not limited
# An EV limited by itself is offered this much above what it takes now (DrawSeen.limit_kw).
PROBE_SHARE = 0.25
PROBE_KW = 0.5


@dataclass
class DrawSeen:
    """What an EV drew against what it was offered, live (meter values against the profile in
    force) and offline alike. The plan assumes the EVSE's rating for an EV that does not tell its
    own limit; a 7.4-kW car on a 22-kW EVSE planned at 22 kW leaves the rest of the site short and
    itself behind. Once it has drawn clearly less than it was offered, its limit is what it takes
    now: a battery in its constant-voltage phase takes less and less as it fills (in the demo, EVs
    above 80 % SoC drew 35-37 % of the limits in force while the plan counted on all of it:
    ``bench/demo_draw.py --highest-draw``), so the latest such draw counts, not the highest. The
    limit planned is a little above it (``PROBE_SHARE``, ``PROBE_KW``), so an EV whose draw dipped
    shows when it can take more again."""

    max_kw: float = 0.0
    limited_by_ev: bool = False
    accepts_kw: float = 0.0  # what it takes now, as its latest readings showed
    refused_kw: float = math.inf  # the lowest offer it drew clearly less than
    refused_drawing_kw: float = 0.0  # what it drew then
    took_offer: bool = False  # its latest reading took what it was offered

    def note(self, drawn_kw: float, offered_kw: float | None) -> None:
        self.max_kw = max(self.max_kw, drawn_kw)
        if offered_kw is None or drawn_kw <= MIN_DRAW_KW:
            return
        if offered_kw - drawn_kw > EV_LIMIT_TOLERANCE_KW:
            self.limited_by_ev = True
            self.accepts_kw = drawn_kw
            if offered_kw < self.refused_kw:
                self.refused_kw, self.refused_drawing_kw = offered_kw, drawn_kw
            self.took_offer = False
        else:  # it took what it was offered: it takes at least that
            self.accepts_kw = max(self.accepts_kw, drawn_kw)
            self.took_offer = True
            if drawn_kw > self.refused_drawing_kw + EV_LIMIT_TOLERANCE_KW:
                # It takes clearly more than when it refused: that refusal was a state it has left.
                self.refused_kw = math.inf

    def limit_kw(self) -> float | None:
        """The EV's own limit once its draw showed one (then above ``MIN_DRAW_KW``), else None:
        what it takes now, plus the probe, capped at its highest draw. Above that only when it took
        all of its latest offer and the probe is below every offer it refused: a 7.4-kW car is
        planned at 7.4 kW once one probe above showed it takes no more, and one whose first draw
        was a dip (a cold battery) climbs back by probes instead of being held at the dip for the
        rest of its stay."""
        if not self.limited_by_ev:
            return None
        probe = self.accepts_kw * (1.0 + PROBE_SHARE) + PROBE_KW
        if self.took_offer and probe < self.refused_kw:
            return probe
        return min(self.max_kw, probe)


def taper_kw_per_kwh(capacity_kwh: float, ev_max_kw: float, cv_soc: float) -> float:
    """The slope of a linear constant-voltage taper: the kW a battery takes per kWh of room left
    once past ``cv_soc`` (0 without one)."""
    span = (1.0 - cv_soc) * capacity_kwh
    return ev_max_kw / span if span > 0 and ev_max_kw > 0 else 0.0


@dataclass(frozen=True)
class SlotRules:
    """The knobs of :func:`slot_input` (the same defaults live and offline)."""

    announced_margin: timedelta = ANNOUNCED_MARGIN  # used until history shows how late EVs announce
    learn_margin: bool = True
    # How early, among past sessions, an EV left against its announcement that the plan still covers.
    # 0.99 was measured too (docs/benchmarks-scheduler.md): +0 to +2 points on workplace draws,
    # -0.4 on the depot, so not adopted.
    margin_quantile: float = 0.95
    topup_kwh: float = TOPUP_KWH
    # Plan against the spread of departures that history shows (a shortfall priced at each by its
    # probability) instead of one cautious believed departure, once there is history.
    departure_scenarios: bool = True
    # The price (share of the unmet price) of a guessed need not in by REVEAL_AT of the way to the
    # earliest departure; 0: none.
    reveal_weight: float = REVEAL_WEIGHT
    # Energy lent to an export request must be back by the believed departure (full unmet price;
    # SlotInput.lent_back_by). False: only the departure spread prices that risk.
    lent_back: bool = True
    # An unannounced EV that took more than its guessed need is planned for the usual need among
    # the past needs above what it took, not TOPUP_KWH more at a time.
    need_above: bool = False


@dataclass(frozen=True)
class Scenarios:
    """Where the EV may leave: ``times`` ascending, ``weights`` their probabilities (sum 1)."""

    times: list[datetime]
    weights: list[float]


def departure_scenarios(samples: FloatArr | None, now: datetime) -> Scenarios | None:
    """The departure distribution from ``samples`` (POSIX seconds, ascending) given the EV is still
    here at ``now``; ``None`` with no history, or when the EV has outstayed all of it (then it is
    due, see :func:`gateway.scheduler.forecast.believed_departure`)."""
    if samples is None:
        return None
    left = samples[int(np.searchsorted(samples, now.timestamp(), side="right")):]
    if len(left) == 0:
        return None
    times, weights = departure_points(left)
    return Scenarios(times=[datetime.fromtimestamp(t, tz=now.tzinfo) for t in times], weights=weights)


def step_ending_by(ends: FloatArr, t: float, last: int) -> int:
    """The last whole step (of those ending at ``ends``, POSIX seconds) ending by ``t``, within
    [0, ``last``]: the energy an EV leaves with at ``t`` is the energy at that step's end."""
    return min(max(int(np.searchsorted(ends, t, side="right")) - 1, 0), last)


def steps_around(ends: FloatArr, t: float, last: int) -> list[tuple[int, float]]:
    """A departure at ``t`` (POSIX seconds) as shares of the two step ends around it, by where in
    its step it falls: ``[(k, 1 - f), (k + 1, f)]``, ``f`` the share of step ``k + 1`` the EV is
    still there for. Planned at the last whole step before it (:func:`step_ending_by`) alone, a
    departure late in an hourly step was planned up to an hour early: on an export request
    ending at 18:00, an EV announced for 19:18 was planned as gone before the end with
    probability 0.55 (0.32 shared; ``bench/slot_trace.py``, docs/benchmarks-scheduler.md, "A
    departure inside a step"). The plan holds power constant over a step, so the energy at ``t``
    lies between the two ends; a shortfall priced at each end with these shares is that, or a
    little more."""
    k = step_ending_by(ends, t, last)
    if k >= last or t <= ends[k]:
        return [(k, 1.0)]
    f = float((t - ends[k]) / (ends[k + 1] - ends[k]))
    return [(k, 1.0 - f), (k + 1, f)] if f < 1.0 else [(k + 1, 1.0)]


def reveal_step(ends: FloatArr, now: datetime, last: int, early: tuple[tuple[int, float, float], ...]) -> int:
    """The step by whose end a guessed need is wanted (:data:`REVEAL_AT` of the way to the
    earliest possible departure, or to the plan's end without a spread)."""
    first = ends[early[0][0]] if early else ends[last]
    return step_ending_by(ends, now.timestamp() + REVEAL_AT * (first - now.timestamp()), last)


def empty_slot(key: Key, n: int, max_charge_kw: float = 0.0) -> SlotInput:
    """A slot with nothing plugged in: never connected, so it costs the LP nothing but keeps the shape."""
    return SlotInput(key=key, connected=np.zeros(n, dtype=bool), energy_kwh=0.0, capacity_kwh=0.0,
                     target_energy_kwh=0.0, reserve_energy_kwh=0.0, max_charge_kw=max_charge_kw,
                     max_discharge_kw=0.0)


def departure_for(v: SessionView, now: datetime, forecaster: SessionForecaster, site: str,
                  rules: SlotRules) -> tuple[datetime, bool]:
    """(departure to plan for, still free to discharge)."""
    fc = forecaster.forecast(site, v.arrival, now)
    margin = timedelta(0) if v.departure_firm else announcement_margin(forecaster, site, rules)
    return believed_departure(v.departure, fc.departure, now, margin)


def announcement_margin(forecaster: SessionForecaster, site: str, rules: SlotRules = SlotRules()) -> timedelta:
    """How long before an EV's announced departure the plan aims to finish (no history: the default)."""
    if not rules.learn_margin:
        return rules.announced_margin
    return forecaster.announcement_margin(site, rules.announced_margin, rules.margin_quantile)


def scenarios_for(v: SessionView, now: datetime, forecaster: SessionForecaster, site: str,
                  rules: SlotRules) -> Scenarios | None:
    """The departure spread to plan against, or ``None`` to plan for one believed departure: a
    driver's own departure is planned as given, and without history there is no spread."""
    if not rules.departure_scenarios or v.departure_firm or v.charge_now:
        return None
    # On a new site an unannounced EV is planned against the stays others announced, each planned
    # as early as an announcement is (the same margin).
    samples = forecaster.departure_samples(site, v.arrival, v.departure,
                                           peer_margin=announcement_margin(forecaster, site, rules))
    return departure_scenarios(samples, now)


def slot_input(v: SessionView | None, key: Key, grid: TimeGrid, now: datetime, forecaster: SessionForecaster,
               site: str, rules: SlotRules = SlotRules()) -> SlotInput:
    """The LP slot for the session ``v`` on the EVSE ``key`` (``None``: nothing plugged in)."""
    n = len(grid)
    if v is None or (v.full and v.max_discharge_kw <= 0 and v.fixed_kw is None):
        return empty_slot(key, n)
    fc = forecaster.forecast(site, v.arrival, now)
    scen = scenarios_for(v, now, forecaster, site, rules)
    dep, may_discharge = departure_for(v, now, forecaster, site, rules)
    believed = dep
    if scen is not None:
        # Planned until the last scenario; discharge stays off once the one believed departure
        # has passed (an EV that may leave any minute is not a battery to lend).
        dep = scen.times[-1]
    need = v.need_kwh if v.need_kwh is not None else max(fc.energy_kwh, v.delivered_kwh + rules.topup_kwh)
    if v.need_kwh is None and rules.need_above and v.delivered_kwh + rules.topup_kwh > fc.energy_kwh:
        above = forecaster.need_above(site, v.arrival, v.delivered_kwh)
        if above is not None:
            need = max(need, above)
    if v.energy_kwh is not None and v.capacity_kwh is not None:
        e_now, cap = v.energy_kwh, v.capacity_kwh
        start = e_now - v.delivered_kwh
        if v.start_kwh is not None and abs(e_now - v.start_kwh - v.delivered_kwh) <= (
                START_AGREES_SHARE * v.delivered_kwh + START_AGREES_KWH):
            # The EV's own readings count what it still wants; where they disagree with the
            # meter by more than any efficiency would (a SoC stuck or reset), the meter does.
            start = v.start_kwh
    else:  # energy so far, on a 0-based scale with room for the need and some more
        e_now, cap = v.delivered_kwh, max(need, v.delivered_kwh) + rules.topup_kwh
        start = 0.0
    target = min(start + need, cap)
    cap = max(target, e_now)  # the EV stops taking energy at its target
    if v.full:
        target = min(target, e_now)
    max_c, max_d = v.max_charge_kw, v.max_discharge_kw
    deadline: datetime | None = None
    if v.charge_now:
        # "As fast as the site allows": the whole need wanted as early as full power could make
        # it, at the full unmet price (an early target below). The EV stays plugged in until its
        # departure all the same: whatever the site cannot give by then is planned after it, so
        # the plan (and the driver's answer) shows what the stay delivers. A departure cut to the
        # deadline dropped the step the deadline falls in, on hourly steps up to an hour of it:
        # a driver was told 9.8 of 12 kWh by departure though 12 came.
        remaining = max(target - e_now, 0.0)
        hours = remaining / (max_c * v.eff_charge) if max_c > 0 and remaining > 0 else 0.0
        deadline = now + max(timedelta(hours=hours), CHARGE_NOW_MIN)
        may_discharge, max_d = False, 0.0
    full_target = target
    target = target_within_horizon(e_now, target, max_c, v.eff_charge, grid.end(), dep)
    connected = connected_mask(grid, dep)
    early: tuple[tuple[int, float, float], ...] = ()
    main_weight = 1.0
    last = int(np.flatnonzero(connected)[-1]) if connected.any() else 0
    ends = grid.start.timestamp() + np.cumsum(grid.durations_s)
    if scen is not None and len(scen.times) > 1:
        # A shortfall at each earlier possible departure, priced by its probability; the last
        # (the connected mask's end) carries the rest.
        early = tuple(
            (k, full_target, w * share)
            for t, w in zip(scen.times[:-1], scen.weights[:-1], strict=True) if t < grid.end()
            for k, share in steps_around(ends, t.timestamp(), last) if share > 0
        )
        main_weight = 1.0 - sum(w for _, _, w in early)
    if (rules.reveal_weight > 0 and v.need_kwh is None and not v.charge_now and connected.any()
            and target > e_now + 1e-6):
        reveal = (reveal_step(ends, now, last, early), target, rules.reveal_weight)
        early = tuple(sorted((*early, reveal)))
    if deadline is not None and deadline < dep and connected.any() and target > e_now + 1e-6:
        # Wanted by the last step ending before the deadline, and by the end of the step it falls
        # in: what full power cannot fit before it goes into that step, not the day's cheapest hour.
        k = step_ending_by(ends, deadline.timestamp(), last)
        wanted = [(k, full_target, 1.0)]
        if ends[k] < deadline.timestamp() and k + 1 <= last:
            wanted.append((k + 1, full_target, 1.0))
        early = tuple(sorted((*early, *wanted)))
    min_c = 0.0
    taper = v.taper_kw_per_kwh if v.capacity_kwh is not None and v.energy_kwh is not None else 0.0
    if v.fixed_kw is not None:
        # The charger draws more than it was told, or its limit cannot be set now: plan its draw
        # as fixed so the other slots make room for it and the site limit still holds; it is
        # not lent to the grid either.
        min_c = max_c = max(v.fixed_kw, 0.0)
        max_d, may_discharge = 0.0, False
        cap = max(cap, e_now + max_c * float(np.sum(grid.hours())))
        taper = 0.0  # a draw the plan does not control
    lent_back_by = None
    if rules.lent_back and may_discharge and max_d > 0 and believed < grid.end():
        # What the battery has held (before it lent any) is to be there by the believed departure,
        # up to what the EV wants: energy charged beyond that is still planned against the spread.
        held = max(e_now, v.high_kwh if v.high_kwh is not None else e_now)
        lent_back_by = (step_ending_by(ends, believed.timestamp(), last), min(full_target, held))
    return SlotInput(
        key=key, connected=connected, energy_kwh=e_now, capacity_kwh=cap,
        target_energy_kwh=target, reserve_energy_kwh=min(v.reserve_kwh, cap),
        max_charge_kw=max(max_c, 0.0), max_discharge_kw=max_d, min_charge_kw=min_c,
        eff_charge=v.eff_charge, eff_discharge=v.eff_discharge,
        discharge_allowed=may_discharge and max_d > 0, early_targets=early, unmet_weight=main_weight,
        taper_kw_per_kwh=taper, taper_full_kwh=v.capacity_kwh if taper > 0 and v.capacity_kwh is not None else 0.0,
        lent_back_by=lent_back_by,
    )
