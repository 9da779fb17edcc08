"""Charging policies the offline evaluator compares. Each sees only what a live gateway would.

A policy gets a :class:`Context` once per 5-minute step and answers a setpoint (kW, + charge,
- discharge) per EVSE; the evaluator clips it to the EV and EVSE limits and applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from gateway.config import UNMET_PENALTY_PER_KWH, Settings
from gateway.episode import Episode
from gateway.ocpp.defaults import default_limit_kw
from gateway.scheduler.arrivals import ArrivalModel
from gateway.scheduler.building import BuildingProfile, anchored
from gateway.scheduler.forecast import SessionForecaster, believed_departure
from gateway.scheduler.inputs import breakpoints, discharge_in_events_only, keep_room_for_plug_ins, site_inputs
from gateway.scheduler.peak_price import DoneSession, NeededPeaks, demand_pricing
from gateway.scheduler.problem import Planner, PlanResult, SlotInput, TimeGrid, make_grid
from gateway.scheduler.slots import ANNOUNCED_MARGIN, SessionView, SlotRules, slot_input

Key = tuple[str, int]
# The live gateway's default, so the evaluator's MPC and optimum discharge when the live one would.
DISCHARGE_ONLY_IN_GRID_EVENTS: bool = Settings.model_fields["discharge_only_in_grid_events"].default
SAFE_LIMIT_KW: float = Settings.model_fields["safe_limit_kw"].default  # the TxDefaultProfile's cap, as live
PLUG_IN_RESERVE_EVSES: int = Settings.model_fields["plug_in_reserve_evses"].default
# What the MPC plans the building with: the profile learned from the readings it saw (what a live
# gateway has without an energy system) or the episode's day-ahead forecast (what an energy system
# pushes), either anchored to the reading now.
BUILDING_FORECASTS = ("learned", "ems")


def check_building_forecast(name: str) -> str:
    if name not in BUILDING_FORECASTS:
        raise ValueError(f"unknown building forecast {name!r}; choose from {', '.join(BUILDING_FORECASTS)}")
    return name


# An EV as the gateway sees it: the same view the live loop builds (gateway.scheduler.slots).
View = SessionView


@dataclass
class Context:
    now: datetime
    step_s: float
    building_kw: float  # measured now
    import_limit_kw: float  # with any import cap in force now
    peak_so_far_kw: float
    views: list[View]
    building_history: dict[datetime, float]  # what the meter showed at past step starts


class Policy(Protocol):
    name: str

    def begin(self, episode: Episode) -> None: ...

    def act(self, ctx: Context) -> dict[Key, float]: ...

    def session_done(self, episode: Episode, arrival: datetime, departure: datetime,
                     requested_kwh: float | None, announced: datetime | None, max_kw: float,
                     delivered_kwh: float) -> None: ...


class _Base:
    name = "base"
    solve_times: list[float]

    def __init__(self) -> None:
        self.solve_times = []

    def begin(self, episode: Episode) -> None:
        self.episode = episode

    def session_done(self, episode: Episode, arrival: datetime, departure: datetime,
                     requested_kwh: float | None, announced: datetime | None, max_kw: float,
                     delivered_kwh: float) -> None:
        return None


class Uncontrolled(_Base):
    """Full power from plug-in until the EV stops, whatever the site limit."""

    name = "uncontrolled"

    def act(self, ctx: Context) -> dict[Key, float]:
        return {v.key: (0.0 if v.full else v.max_charge_kw) for v in ctx.views}


# Held above what an EV's battery readings say it still takes: its own efficiency is not the one
# assumed, and an EV offered a little less than it needs in its last step is left short.
TAKE_MARGIN = 1.1


def _can_take_kw(v: View, step_s: float) -> float:
    """The most ``v`` takes over a step: its power, less where its battery's readings (ISO 15118:
    the energy now against its need since plug-in, and its room) show less than a step at full
    power is left. Not from the meter: counted at the assumed efficiency, the need of an EV whose
    own is lower looked met before the EV was (greedy left 10 % of the workplace EVs short)."""
    if v.full:
        return 0.0
    kw = v.max_charge_kw
    per_kw = v.eff_charge * step_s / 3600.0 / TAKE_MARGIN  # battery kWh per grid kW over the step
    if per_kw <= 0 or v.energy_kwh is None:
        return kw
    if v.need_kwh is not None and v.start_kwh is not None:
        kw = min(kw, max(v.start_kwh + v.need_kwh - v.energy_kwh, 0.0) / per_kw)
    if v.capacity_kwh is not None:
        kw = min(kw, max(v.capacity_kwh - v.energy_kwh, 0.0) / per_kw)
    return kw


def _fill(order: list[View], headroom_kw: float, step_s: float) -> dict[Key, float]:
    """Each EV in ``order`` gets what it can take within what is left: an EV a few minutes from
    full holds no more of the site's headroom than it will draw (holding its whole power left
    the EVs after it idle for the step, and the baseline worse than it is)."""
    out: dict[Key, float] = {}
    for v in order:
        kw = min(_can_take_kw(v, step_s), max(headroom_kw, 0.0))
        out[v.key] = kw
        headroom_kw -= kw
    return out


class Greedy(_Base):
    """Full power, first come first served, within the site's headroom now."""

    name = "greedy"

    def act(self, ctx: Context) -> dict[Key, float]:
        order = sorted(ctx.views, key=lambda v: v.arrival)
        return _fill(order, ctx.import_limit_kw - ctx.building_kw, ctx.step_s)


class Edf(_Base):
    """Earliest (believed) departure first, full power within the site's headroom now."""

    name = "edf"

    def __init__(self, forecaster: SessionForecaster | None = None) -> None:
        super().__init__()
        self.forecaster = forecaster or SessionForecaster()

    def begin(self, episode: Episode) -> None:
        super().begin(episode)
        self.forecaster.tz = episode.tariff.timezone

    def act(self, ctx: Context) -> dict[Key, float]:
        site = self.episode.site_type or self.episode.name

        def deadline(v: View) -> datetime:
            fc = self.forecaster.forecast(site, v.arrival, ctx.now)
            return believed_departure(v.departure, fc.departure, ctx.now)[0]

        return _fill(sorted(ctx.views, key=deadline), ctx.import_limit_kw - ctx.building_kw, ctx.step_s)

    def session_done(self, episode: Episode, arrival: datetime, departure: datetime,
                     requested_kwh: float | None, announced: datetime | None, max_kw: float,
                     delivered_kwh: float) -> None:
        site = episode.site_type or episode.name
        self.forecaster.observe(site, arrival, departure, requested_kwh, announced)


@dataclass
class Mpc(_Base):
    """Re-plans the whole site every step with the LP over 24 h and applies the first step."""

    unmet_penalty_per_kwh: float = UNMET_PENALTY_PER_KWH
    horizon_s: float = 24 * 3600.0
    time_limit_s: float = 60.0
    announced_margin: timedelta = ANNOUNCED_MARGIN  # used until history shows how late EVs announce
    learn_margin: bool = True
    forecaster: SessionForecaster = field(default_factory=lambda: SessionForecaster(dwell_quantile=0.25))
    name: str = "mpc"
    # The billing period the demand charge is prorated to (the evaluator sets the episode's).
    period: timedelta = timedelta(days=30)
    period_end: datetime | None = None
    last_plan: PlanResult | None = None
    anticipate_arrivals: bool = True
    # Plan against the spread of past departures (off when the evaluator hands the truth).
    departure_scenarios: bool = True
    # As the live gateway's default (Settings.discharge_only_in_grid_events).
    discharge_only_in_grid_events: bool = DISCHARGE_ONLY_IN_GRID_EVENTS
    building_forecast: str = "learned"  # one of BUILDING_FORECASTS
    # Price a rise of a billing period longer than the horizon by the peaks past days needed
    # (gateway/scheduler/peak_price.py); off: a day's share of the charge, the rule before.
    price_peak_levels: bool = True
    # As live (Settings.plug_in_reserve_evses): room kept for this many EVs plugging in at once.
    plug_in_reserve_evses: int = PLUG_IN_RESERVE_EVSES

    def __post_init__(self) -> None:
        check_building_forecast(self.building_forecast)
        self.solve_times = []
        self.arrivals = ArrivalModel()
        self.building = BuildingProfile()
        # The peaks finished days needed: what a rise of a long billing period's peak is priced by.
        self.peaks = NeededPeaks()
        self.planner = Planner(time_limit_s=self.time_limit_s)
        self.fallbacks = 0

    def begin(self, episode: Episode) -> None:
        self.episode = episode
        # Hours of the day and weekdays on the site's clock, as the live scheduler keeps them.
        self.arrivals.tz = self.forecaster.tz = self.building.tz = self.peaks.tz = episode.tariff.timezone
        self.keys = [e.key for e in episode.evses]
        self.evse = {e.key: e for e in episode.evses}

    def session_done(self, episode: Episode, arrival: datetime, departure: datetime,
                     requested_kwh: float | None, announced: datetime | None, max_kw: float,
                     delivered_kwh: float) -> None:
        site = episode.site_type or episode.name
        self.forecaster.observe(site, arrival, departure, requested_kwh, announced)
        self.arrivals.observe(site, arrival, departure, delivered_kwh, max_kw)
        self.peaks.observe(DoneSession(arrival, departure, max(delivered_kwh, 0.0), max_kw))

    def _building_forecast(self, ctx: Context) -> Callable[[datetime], float]:
        """The live scheduler's forecast (gateway/scheduler/live_inputs.py): with ``"ems"`` the
        episode's day-ahead forecast as if pushed, anchored to the reading now; else (or when the
        episode has none) the profile learned from the readings. The profile learns either way,
        as the live one does."""
        self.building.observe(ctx.now, ctx.building_kw)
        if self.building_forecast == "ems" and self.episode.has_building_forecast:
            return anchored(self.episode.building_forecast_at, ctx.now, ctx.building_kw)
        return self.building.forecast(ctx.now, ctx.building_kw)

    def act(self, ctx: Context) -> dict[Key, float]:
        ep = self.episode
        site_name = ep.site_type or ep.name
        self.arrivals.watch(site_name, ctx.now)
        for v in ctx.views:
            self.arrivals.arrived(site_name, (v.key, v.arrival), v.arrival)
        building = self._building_forecast(ctx)
        self.peaks.watch(ctx.now)
        self.peaks.close_days(ctx.now, [v.arrival for v in ctx.views], self.building.reading, ep.limits.import_kw)
        if not ctx.views:
            return {}
        firm = [v.departure for v in ctx.views if v.departure_firm and v.departure is not None]
        cuts = breakpoints(ep.grid_events, firm_departures=firm, now=ctx.now, tariff=ep.tariff,
                           until=ctx.now + timedelta(seconds=self.horizon_s))
        grid = make_grid(ctx.now, self.horizon_s, breakpoints=cuts)
        horizon = timedelta(seconds=self.horizon_s)
        # With no period end known, a day's share of the charge (no needed peaks passed).
        period_end = self.period_end if self.period_end is not None else ctx.now + self.period
        use_levels = self.price_peak_levels and self.period_end is not None
        demand, peak_steps = demand_pricing(ep.tariff.demand_charge_per_kw, ctx.now, horizon, period_end - self.period,
                                            period_end, ctx.peak_so_far_kw, self.peaks.values() if use_levels else ())
        site = site_inputs(
            grid, tariff=ep.tariff, limits=ep.limits, events=ep.grid_events, building_kw=building,
            demand_charge_per_kw=demand, peak_price_steps=peak_steps,
            peak_so_far_kw=ctx.peak_so_far_kw, wear_cost_per_kwh=ep.wear_cost_per_kwh,
            unmet_penalty_per_kwh=self.unmet_penalty_per_kwh, period_end=self.period_end,
        )
        if self.discharge_only_in_grid_events:
            discharge_in_events_only(site)
        # As live (live_inputs.reserve_for_plug_ins): room for EVs plugging into the idle EVSEs.
        keep_room_for_plug_ins(site, min(len(self.keys) - len(ctx.views), self.plug_in_reserve_evses),
                               default_limit_kw(SAFE_LIMIT_KW, ep.limits.import_kw, len(self.keys)))
        views = {v.key: v for v in ctx.views}
        slots = [self._slot(k, views.get(k), grid, ctx.now) for k in self.keys]
        if self.anticipate_arrivals:
            slots += self.arrivals.slots(site_name, grid, ctx.now)
        plan = self.planner.solve(site, slots)
        self.solve_times.append(plan.solve_s)
        self.fallbacks += int(plan.fallback)
        self.last_plan = plan
        return {k: float(plan.power_kw[i, 0]) for i, k in enumerate(self.keys) if k in views}

    def _slot(self, key: Key, v: View | None, grid: TimeGrid, now: datetime) -> SlotInput:
        site = self.episode.site_type or self.episode.name
        rules = SlotRules(announced_margin=self.announced_margin, learn_margin=self.learn_margin,
                          departure_scenarios=self.departure_scenarios)
        if v is not None:
            self.forecaster.note_present(site, (key, v.arrival), v.arrival, v.departure, v.need_kwh)
        return slot_input(v, key, grid, now, self.forecaster, site, rules)


class Planned(_Base):
    """Plays back a plan computed in advance (the perfect-foresight optimum)."""

    name = "optimal"

    def __init__(self) -> None:
        super().__init__()
        self.setpoints: dict[tuple[Key, datetime], float] = {}
        self.status = ""
        self.fallback = False  # the LP gave no optimum (a time-out): these setpoints are no bound

    def act(self, ctx: Context) -> dict[Key, float]:
        return {v.key: self.setpoints.get((v.key, ctx.now), 0.0) for v in ctx.views}
