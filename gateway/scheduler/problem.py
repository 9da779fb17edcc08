"""The site plan as a linear program: inputs, answer, and the planner that solves it. Pure: no I/O.

One LP per site and re-plan. Decision variables per slot (one EVSE, or one EV offline) and step:
AC charge power ``c >= 0`` and AC discharge power ``d >= 0`` (kW), battery energy at the end of
the step ``E`` (kWh); per slot unmet energy ``u >= 0`` (kWh) and the shortfall ``r >= 0`` at each
of its earlier possible departures; per step site import/export
``imp, exp >= 0`` (kW) and limit excess slacks ``xi, xe >= 0``; one scalar ``peak`` (kW).

Objective (currency units)::

    sum_t h_t (p_imp_t imp_t - p_exp_t exp_t)          energy cost
  + demand_charge * (peak - peak_so_far)              demand charge on the rise of the period's peak
  + sum_j extra_j * max(0, peak - level_j)            its price rising with the level (peak_price_steps)
  + wear * sum h_t d                                  battery wear per AC kWh discharged
  - sum_t pay_t h_t (building_t - imp_t + exp_t)      grid-event revenue
  + sum_i unmet_penalty_i w_i u_i                     mobility as a price (site's, or the slot's own)
  + sum_(i,k) unmet_penalty_i w_ik r_ik               the same at each earlier possible departure k
  + EXCESS_PENALTY * sum h (xi + xe) + EPS * sum h (c + d + imp + exp)
  + early_bias * sum u_i h_t c_it * (hours from now to the middle of step t)
                                                      (u_i: 1 to 2, higher for the EV due first)

Departures are uncertain: a slot may carry earlier possible departures (``early_targets``), each
a step at whose end the EV might leave with its probability ``w_ik``; ``r_ik >= target - E``
there is the shortfall if it does, and the target at the last connected step carries the rest of
the probability (``unmet_weight`` = ``w_i``). So the plan defers an EV's energy only where what
deferring saves beats the expected price of leaving it short (the expected unmet energy over
the departure distribution, in one LP; see gateway/scheduler/slots.py for where the points
come from).

A slot that may discharge in this plan is not lent after ``lent_back_by`` (its believed
departure) and wants back by then, at the full unmet price, the energy it held before it lent
(up to its target): energy lent to the grid is not a gamble on the driver staying late.

Grid-event revenue is settled on the *net* site import below the baseline (the building load
forecast, i.e. the site without EV activity), both ways: each kWh below it earns the payment, each
kWh above it (charging during the event) costs it. That is linear (the payment adds to both
prices during the event) and pays nothing for charging and discharging at once, which paying gross
discharge would (the LP would cycle).

The site limit is hard for the EVs: ``xi``/``xe`` only take up what building load alone forces
over the limit (their price dwarfs everything else), so the LP is never infeasible and the excess
is reported. The reserve is a hard floor on battery energy (``min(reserve, E0)`` so an EV that
arrives below its reserve is feasible; its target is raised to the reserve so it is charged up).

A battery in its constant-voltage phase takes less as it fills: for a slot with
``taper_kw_per_kwh`` = k > 0 (its battery known), charge power at most ``k (F - E_t)``, ``F``
its ``taper_full_kwh`` (the battery's capacity, not the target the EV stops at): a linear taper
from the knee ``F - max_charge / k`` to nothing at full. At the energy the step ends with, not
its middle: a limit is constant over a step while the battery takes less as it fills, so only
a limit the battery still takes at the step's end is drawn all through it (at the middle, the
evaluator's optimum was planned 0.05 kWh more than it got on many EVs). Rows only where the
battery could pass the knee.

The peak covers the steps of the current billing period (``SiteInputs.demand_mask``).
``min_charge_kw`` (a pilot floor) is a lower bound on charge only while the battery has room for
it and scaled down where the floors alone would break the site limit: convex, so no binaries.

Unknown capacity/SoC: callers pass ``energy_kwh`` as energy so far (0 at plug-in) with
``capacity_kwh`` = that plus the room they assume, and targets on the same scale; the LP only uses
differences, so that works the same.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.scheduler import highs_banner

FloatArr = NDArray[np.float64]
BoolArr = NDArray[np.bool_]

highs_banner.silence()  # at import, while single-threaded: see the module

# Above any plausible unmet-energy price, so the LP only exceeds a limit when building load forces it.
EXCESS_PENALTY_PER_KWH = 1000.0
# Above this many slots (the expected arrivals' included) the site is planned as groups
# (gateway/scheduler/decompose.py): one LP grows faster than its slots. Measured where groups of
# 250 start to pay (bench/scheduler_scaling.py, 31 steps, 2026-11-25): at 1,000 EVSEs one LP
# 2.0 s against 2.9 s split (and split plans a little worse: 0.4 % on its objective); at 2,000,
# 8.5 s against 7.2 s; at 3,000, 14.5 s against 9.1 s.
DECOMPOSE_ABOVE_SLOTS = 1500
# Breaks ties toward no needless flow; keeps charge and discharge apart under negative prices.
EPS_PER_KWH = 1e-4


@dataclass(frozen=True)
class TimeGrid:
    """Consecutive steps from ``start``; step ``i`` lasts ``durations_s[i]`` seconds."""

    start: datetime
    durations_s: FloatArr

    def starts(self) -> list[datetime]:
        offsets = np.concatenate(([0.0], np.cumsum(self.durations_s)[:-1]))
        return [self.start + timedelta(seconds=float(o)) for o in offsets]

    def end(self) -> datetime:
        return self.start + timedelta(seconds=float(np.sum(self.durations_s)))

    def hours(self) -> FloatArr:
        return np.asarray(self.durations_s, dtype=float) / 3600.0

    def index_at(self, when: datetime) -> int:
        """Step containing ``when`` (clamped to the grid)."""
        off = (when - self.start).total_seconds()
        edges = np.cumsum(self.durations_s)
        i = int(np.searchsorted(edges, off, side="right"))
        return min(max(i, 0), len(self.durations_s) - 1)

    def __len__(self) -> int:
        return len(self.durations_s)


MIN_FIRST_STEP_S = 30.0  # a shorter first step is merged into the next one
# The planning grid: 5-minute steps for the first half hour (the re-plan period is 5 minutes and
# profiles are followed to the minute there), 15-minute steps to the next full hour, then hourly.
FINE_STEP_S = 300.0
FINE_STEPS = 6
MEDIUM_STEP_S = 900.0
MIN_BREAK_S = 60.0  # a breakpoint closer than this to a step boundary is left out


def make_grid(
    now: datetime,
    horizon_s: float,
    fine_step_s: float = FINE_STEP_S,
    fine_steps: int = FINE_STEPS,
    medium_step_s: float = MEDIUM_STEP_S,
    coarse_step_s: float = 3600,
    align_s: float = 300,
    breakpoints: Iterable[datetime] = (),
    medium_span_s: float = 0.0,
) -> TimeGrid:
    """Fine steps near ``now``, medium ones up to the next coarse boundary, coarse ones after;
    boundaries fall on multiples of ``align_s`` (first step shortened), medium steps on multiples of
    ``medium_step_s`` and coarse steps on multiples of ``coarse_step_s``, so time-of-use boundaries
    are not smeared. The count of steps stays within a few of the same for any ``now`` (the LP's
    size, and its solve time, barely depend on the minute of the hour). ``breakpoints`` (a grid
    event's start and end, a price override's) become step boundaries too, so an export request
    from 16:30 does not price half of the 16:00-17:00 step at half its payment, nor an import cap
    hold on the whole hour it touches; one within a minute of a boundary moves nothing.
    ``medium_span_s``: medium steps on to at least that long from now (0 in the code; measured as a
    variant, ``bench/mpc_variants.py --medium-hours``)."""
    t0 = now.timestamp()
    end = t0 + horizon_s
    edges = [t0]
    t = (math.floor(t0 / align_s) + 1) * align_s if align_s > 0 else t0 + fine_step_s
    if align_s > 0 and t - t0 < MIN_FIRST_STEP_S:
        # A first step of a few seconds would become a profile period whose whole-second
        # startPeriod collides with the next one's (K01.FR.35: the station rejects the profile).
        t += align_s
    n_fine = 1
    edges.append(min(t, end))
    while edges[-1] < end and n_fine < fine_steps:
        edges.append(min(edges[-1] + fine_step_s, end))
        n_fine += 1

    def up_to(step_s: float, boundary_s: float) -> None:
        """Steps of at most ``step_s`` ending on multiples of it, until a multiple of ``boundary_s``."""
        while edges[-1] < end and boundary_s > 0 and edges[-1] % boundary_s > 1e-6:
            nxt = min(math.floor(edges[-1] / step_s + 1e-9) * step_s + step_s,
                      math.ceil(edges[-1] / boundary_s) * boundary_s, end)
            edges.append(nxt)

    up_to(fine_step_s, medium_step_s)  # onto the medium step's boundary,
    up_to(medium_step_s, coarse_step_s)  # then medium steps onto the coarse one
    if edges[-1] < min(t0 + medium_span_s, end):  # (and on, ``medium_span_s`` from now, to a coarse boundary)
        while edges[-1] < min(t0 + medium_span_s, end):
            edges.append(min(edges[-1] + medium_step_s, end))
        up_to(medium_step_s, coarse_step_s)
    while edges[-1] < end:
        edges.append(min(edges[-1] + coarse_step_s, end))
    for b in sorted({b.timestamp() for b in breakpoints}):
        i = bisect.bisect(edges, b)
        if 0 < i < len(edges) and b - edges[i - 1] >= MIN_BREAK_S and edges[i] - b >= MIN_BREAK_S:
            edges.insert(i, b)
    return TimeGrid(start=now, durations_s=np.diff(np.asarray(edges, dtype=float)))


def uniform_grid(start: datetime, step_s: float, steps: int) -> TimeGrid:
    return TimeGrid(start=start, durations_s=np.full(steps, float(step_s)))


@dataclass
class SiteInputs:
    """Site-wide inputs, one value per grid step.

    ``export_payment_per_kwh``: what an export request pays per kWh by which the site's net import
    (import minus export) falls below the baseline = ``building_load_kw``, and charges per kWh above
    it (0 outside events). ``import_limit_kw`` already includes any import cap event.
    Export prices above the import price are clipped to it in the LP (else it would import and
    export at once, which a meter nets anyway).
    """

    grid: TimeGrid
    import_price: FloatArr
    export_price: FloatArr
    building_load_kw: FloatArr
    import_limit_kw: FloatArr
    export_limit_kw: FloatArr
    demand_charge_per_kw: float
    peak_so_far_kw: float
    export_payment_per_kwh: FloatArr
    wear_cost_per_kwh: float
    unmet_penalty_per_kwh: float
    # A small cost per kWh charged and hour from now: when prices tie, charge early, which leaves
    # slack for an EV that leaves before it said. Not only at ties: over a 24-h horizon, times an
    # urgency of up to 2, it reaches about 0.05 per kWh, and outweighs a cheaper hour that far off
    # by less than that; the rate was chosen on the evaluator's sets for that trade
    # (docs/benchmarks-scheduler.md, "Tried and not kept": 0 and 5 times it both did worse).
    early_charge_bias_per_kwh_h: float = 1e-3
    # Steps whose import counts toward this billing period's peak (None: all). A horizon that runs
    # into the next period must not let that period's peak excuse a higher one in this period.
    demand_mask: BoolArr | None = None
    # Steps in which any EV may discharge (None: all). The live loop limits discharge to grid
    # events (Settings.discharge_only_in_grid_events).
    discharge_mask: BoolArr | None = None
    # (level kW, extra price per kW of peak above it): a price of the period's peak that rises with
    # the level (convex: extras >= 0), on top of ``demand_charge_per_kw`` from the peak so far. A
    # monthly bill's peak is cheap to raise early in the month up to where later days would take
    # it anyway, and dear above (gateway/scheduler/peak_price.py).
    peak_price_steps: tuple[tuple[float, float], ...] = ()


@dataclass
class SlotInput:
    key: tuple[str, int]
    connected: BoolArr
    energy_kwh: float
    capacity_kwh: float
    target_energy_kwh: float
    reserve_energy_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    min_charge_kw: float = 0.0
    eff_charge: float = 0.92
    eff_discharge: float = 0.92
    discharge_allowed: bool = False
    # This slot's price of energy missing at departure (None: the site's). Lower for a need that
    # is only a guess, so the plan does not buy it at any price.
    unmet_penalty_per_kwh: float | None = None
    # Earlier possible departures: (step at whose end the EV may leave, energy it wants then, the
    # probability); a shortfall there costs the unmet price times that probability. The target
    # at the connected mask's end is weighted ``unmet_weight`` (the rest of the probability).
    early_targets: tuple[tuple[int, float, float], ...] = ()
    unmet_weight: float = 1.0
    # The constant-voltage taper (see the module docstring): above its knee the battery takes at
    # most this many kW per kWh of room left (capacity_kwh - energy). 0: none planned (a battery
    # the gateway cannot see, whose draw shows its taper instead: slots.DrawSeen). The taper
    # reaches nothing at ``taper_full_kwh`` (the battery's capacity on the scale of energy_kwh).
    taper_kw_per_kwh: float = 0.0
    taper_full_kwh: float = 0.0
    # A battery lent to an export request is given back by the time its driver may leave: (step
    # at whose end the EV may be gone, as the plan believes it: its announcement less the margin
    # kept for announcements that run late; the energy it wants then), priced at the full unmet
    # price, but only in a plan in which the slot may discharge at all (see ``prepare``).
    lent_back_by: tuple[int, float] | None = None


@dataclass
class PlanResult:
    grid: TimeGrid
    keys: list[tuple[str, int]]
    power_kw: FloatArr
    status: str
    objective: float
    terms: dict[str, float]
    solve_s: float
    fallback: bool
    delivered_kwh: FloatArr
    unmet_kwh: FloatArr
    site_import_kw: FloatArr = field(default_factory=lambda: np.zeros(0))
    limit_excess_kw: FloatArr = field(default_factory=lambda: np.zeros(0))


@dataclass
class Prepared:
    """Everything the backends need, as arrays; built once per solve from the inputs."""

    h: FloatArr  # hours per step (T)
    conn: BoolArr  # (S, T)
    cmax: FloatArr  # (S, T) AC charge bound
    cmin: FloatArr  # (S, T) AC charge floor (min_charge_kw where it can be honoured)
    dmax: FloatArr  # (S, T)
    e0: FloatArr  # (S)
    floor: FloatArr  # (S) battery energy floor
    cap: FloatArr  # (S) battery energy ceiling
    target: FloatArr  # (S)
    eff_c: FloatArr
    eff_d: FloatArr
    building: FloatArr
    imp_lim: FloatArr
    exp_lim: FloatArr
    price_imp: FloatArr  # import price per kWh
    price_exp: FloatArr  # export price per kWh (clipped to the import price)
    pay: FloatArr  # grid-event payment per kWh below the baseline
    charge_bias: FloatArr  # cost per AC kWh charged in each step (early-charge preference)
    urgency: FloatArr  # per slot, what the early-charge preference is multiplied by (_urgency)
    demand_mask: BoolArr  # steps in the current billing period
    wear: FloatArr  # (wear + the cost that keeps charge and discharge apart, _cycling_cost) * h
    demand: float
    peak0: float
    peak_levels: FloatArr  # (J) levels above which the peak costs peak_extra more per kW
    peak_extra: FloatArr  # (J)
    unmet_penalty: FloatArr  # (S) per kWh not delivered at the last connected step
    # Earlier possible departures, one entry each: slot, step, target energy, price per kWh short.
    risk_slot: NDArray[np.int64]
    risk_step: NDArray[np.int64]
    risk_target: FloatArr
    risk_penalty: FloatArr
    taper: FloatArr  # (S) kW per kWh of room above the knee (0: none)
    taper_full: FloatArr  # (S) where the taper reaches nothing
    taper_slot: NDArray[np.int64]  # cells where the taper may bind: slot and step
    taper_step: NDArray[np.int64]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.conn.shape[0]), int(self.conn.shape[1]))


def _cycling_cost(p_exp: FloatArr, pay: FloatArr, round_trip: FloatArr, dmax: FloatArr) -> FloatArr:
    """Per step, a cost per AC kWh discharged that makes charging and discharging at once never
    pay: at a negative price, running both burns battery energy to take more of the paid-for
    import, worth |price| x (1 - round trip) per kWh charged; a discharged kWh then costs
    |price| x (1 / round trip - 1). EPS_PER_KWH alone keeps them apart only while that is below
    it, and the plan's netted power would not be the LP's energy path (the EV planned past its
    capacity). Discharging at a negative price loses money anyway, so the cost moves nothing
    else. The most negative marginal price of the step (export, clipped to the import price,
    with any event payment) and the most lossy slot that may discharge."""
    lends = dmax.any(axis=1)
    if not lends.any():
        return np.zeros_like(p_exp)
    worst = float(np.min(round_trip[lends]))
    return np.maximum(-(p_exp + pay), 0.0) * max(1.0 / max(worst, 1e-3) - 1.0, 0.0)


def _arr(x: Any, n: int) -> FloatArr:
    a = np.asarray(x, dtype=float)
    return np.broadcast_to(a, (n,)).astype(float) if a.ndim == 0 else a.astype(float)


def prepare(site: SiteInputs, slots: list[SlotInput]) -> Prepared:
    h = site.grid.hours()
    n = len(h)
    s = len(slots)
    conn = np.zeros((s, n), dtype=bool)
    for i, sl in enumerate(slots):
        conn[i] = np.asarray(sl.connected, dtype=bool)[:n]

    def col(attr: str) -> FloatArr:
        return np.array([float(getattr(sl, attr)) for sl in slots], dtype=float)

    e0 = col("energy_kwh")
    cap = np.maximum(col("capacity_kwh"), e0)
    floor = np.minimum(col("reserve_energy_kwh"), e0)
    target = np.minimum(np.maximum(col("target_energy_kwh"), col("reserve_energy_kwh")), cap)
    eff_c = np.clip(col("eff_charge"), 0.05, 1.0)
    eff_d = np.clip(col("eff_discharge"), 0.05, 1.0)
    cmax = conn * np.maximum(col("max_charge_kw"), 0.0)[:, None]
    # An EV below its reserve is not lent this plan: its floor is where it stands (a reserve
    # cannot bound a battery already under it), so a plan that charged it past the reserve could
    # drain it back under. A re-plan once it is above lends it against the reserve itself.
    allowed = np.array([sl.discharge_allowed for sl in slots], dtype=bool) & (e0 >= col("reserve_energy_kwh") - 1e-9)
    dmax = conn * (np.maximum(col("max_discharge_kw"), 0.0) * allowed)[:, None]
    if site.discharge_mask is not None:
        dmax = dmax * np.asarray(site.discharge_mask, dtype=bool)[None, :n]
    building = _arr(site.building_load_kw, n)
    imp_lim = _arr(site.import_limit_kw, n)
    cmin = _charge_floor(conn, np.minimum(col("min_charge_kw"), col("max_charge_kw")), h, eff_c,
                         cap - e0, np.maximum(imp_lim - building, 0.0))
    p_imp = _arr(site.import_price, n)
    p_exp = np.minimum(_arr(site.export_price, n), p_imp)
    pay = np.maximum(_arr(site.export_payment_per_kwh, n), 0.0)
    penalty = np.array([site.unmet_penalty_per_kwh if sl.unmet_penalty_per_kwh is None
                        else sl.unmet_penalty_per_kwh for sl in slots], dtype=float)
    merged: dict[tuple[int, int, float], float] = {}
    for i, sl in enumerate(slots):
        steps = np.flatnonzero(conn[i])
        if not len(steps):
            continue
        if sl.lent_back_by is not None and dmax[i].any():
            # Priced by the probability of leaving alone, energy lent to the grid was worth the
            # risk whenever the event paid more than that share of the unmet price: in the demo
            # (seed 17) three of the four EVs lent left 0.8-9.4 kWh short of what they asked
            # for. A driver who lends the battery gets it back by the believed departure, and
            # the battery is not lent after it.
            step, tgt = sl.lent_back_by
            at = int(min(max(step, steps[0]), steps[-1]))
            dmax[i, at + 1:] = 0.0
            goal = min(max(float(tgt), float(floor[i])), float(cap[i]))
            if dmax[i].any() and goal > floor[i] + 1e-9:
                merged[(i, at, goal)] = merged.get((i, at, goal), 0.0) + penalty[i]
        for step, tgt, w in sl.early_targets:
            # Only steps the EV is connected through; a target above the ceiling cannot be met.
            at = int(min(max(step, steps[0]), steps[-1]))
            goal = min(max(float(tgt), float(floor[i])), float(cap[i]))
            # A target the EV is already at still binds if it may discharge: without the row, an
            # EV at its target was lent to a grid event as if it could not leave before the end.
            if w > 0 and (goal > e0[i] + 1e-9 or (dmax[i].any() and goal > floor[i] + 1e-9)):
                merged[(i, at, goal)] = merged.get((i, at, goal), 0.0) + penalty[i] * float(w)
    risks = [(i, at, goal, price) for (i, at, goal), price in merged.items()]
    taper_full = col("taper_full_kwh")
    taper = np.where(taper_full > e0, np.maximum(col("taper_kw_per_kwh"), 0.0), 0.0)
    taper_slot, taper_step = _taper_cells(conn, cmax, h, eff_c, e0, taper_full, taper)
    # A charge floor under a taper could make the LP infeasible near full: none there.
    cmin[taper_slot, taper_step] = 0.0
    priced = [(lv, x) for lv, x in site.peak_price_steps if x > 0 and math.isfinite(lv)]
    return Prepared(
        h=h, conn=conn, cmax=cmax, cmin=cmin, dmax=dmax, e0=e0, floor=floor, cap=cap, target=target,
        eff_c=eff_c, eff_d=eff_d, building=building, imp_lim=imp_lim,
        exp_lim=_arr(site.export_limit_kw, n), price_imp=p_imp, price_exp=p_exp,
        pay=pay,
        charge_bias=site.early_charge_bias_per_kwh_h * (np.cumsum(h) - h / 2), urgency=_urgency(conn, risks),
        demand_mask=(np.ones(n, dtype=bool) if site.demand_mask is None
                     else np.asarray(site.demand_mask, dtype=bool)[:n]),
        wear=(float(site.wear_cost_per_kwh) + _cycling_cost(p_exp, pay, eff_c * eff_d, dmax)) * h,
        demand=float(site.demand_charge_per_kw), peak0=float(site.peak_so_far_kw),
        # Levels under the peak so far would only add a constant: priced from the peak so far.
        peak_levels=np.array([max(float(lv), float(site.peak_so_far_kw)) for lv, _ in priced], dtype=np.float64),
        peak_extra=np.array([float(x) for _, x in priced], dtype=np.float64),
        unmet_penalty=penalty * np.array([sl.unmet_weight for sl in slots], dtype=float),
        risk_slot=np.array([r[0] for r in risks], dtype=np.int64),
        risk_step=np.array([r[1] for r in risks], dtype=np.int64),
        risk_target=np.array([r[2] for r in risks], dtype=float),
        risk_penalty=np.array([r[3] for r in risks], dtype=float),
        taper=taper, taper_full=taper_full, taper_slot=taper_slot, taper_step=taper_step,
    )


def _taper_cells(conn: BoolArr, cmax: FloatArr, h: FloatArr, eff: FloatArr, e0: FloatArr, full: FloatArr,
                 taper: FloatArr) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The connected cells of tapering slots where the taper may bind: the battery, charged at
    full power from now, could be above the knee by the step's end (elsewhere the row is slack)."""
    rows = np.flatnonzero(taper > 0)
    if not len(rows):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    reach = e0[rows, None] + np.cumsum(cmax[rows] * h[None, :] * eff[rows, None], axis=1)
    knee = full[rows] - np.max(cmax[rows], axis=1) / taper[rows]
    si, ti = np.nonzero(conn[rows] & (reach > knee[:, None] - 1e-9))
    return rows[si].astype(np.int64), ti.astype(np.int64)


# How much more the earliest-leaving EV prefers charging early than the latest-leaving one does
# (a share of the early-charge bias). Without it, EVs sharing a binding site limit are a tie the
# solver breaks anew at every re-plan: limits flipped between 0 and 11 kW from one re-plan to the
# next and every profile was sent again each time. With it, the one due first is served first.
# 1.0 (the most urgent EV's preference twice the least urgent's) rather than 0.1: slightly better
# on all four 20-day sets, and a re-plan of 1,000 slots on the worst-case grid takes 2.0 s
# instead of 3.4 s (small cost differences take the dual simplex longest; docs/benchmarks-scheduler.md,
# "Who charges first").
URGENCY_SPREAD = 1.0


def _urgency(conn: BoolArr, risks: list[tuple[int, int, float, float]]) -> FloatArr:
    """Per slot, 1 + URGENCY_SPREAD for the EV that may leave first (its earliest possible
    departure, or its last connected step), down to 1 for the last one; ties by slot order,
    which is stable from one re-plan to the next. The earliest possible departure, not the last:
    an EV nobody announced has a wide spread, and ranked by its end it was served after the
    announced ones and left short (depot: served 99.70 % against 99.79 %)."""
    s, n = conn.shape
    due = np.where(conn.any(axis=1), n - 1 - np.argmax(conn[:, ::-1], axis=1), n)
    for i, at, _, _ in risks:
        due[i] = min(due[i], at)
    rank = np.empty(s)
    rank[np.argsort(due, kind="stable")] = np.arange(s)
    out: FloatArr = 1.0 + URGENCY_SPREAD * (1.0 - rank / max(s - 1, 1))
    return out


def peak_cost(p: Prepared, peak: float) -> float:
    """What the plan pays for raising the period's peak to ``peak``."""
    return p.demand * (peak - p.peak0) + float(p.peak_extra @ np.maximum(peak - p.peak_levels, 0.0))


def _charge_floor(conn: BoolArr, kw: FloatArr, h: FloatArr, eff: FloatArr, room: FloatArr,
                  headroom: FloatArr) -> FloatArr:
    """A charge floor the LP can always honour: only while the battery still has room for it and
    scaled down where the floors alone would not fit under the site limit (a convex stand-in for
    a pilot floor, which would otherwise need binaries)."""
    floor = conn * kw[:, None]
    if not floor.any():
        return floor
    used = np.cumsum(floor * h[None, :] * eff[:, None], axis=1)
    floor = np.where(used <= room[:, None] + 1e-9, floor, 0.0)
    total = floor.sum(axis=0)
    scale = np.where(total > headroom, headroom / np.maximum(total, 1e-12), 1.0)
    return floor * scale[None, :]


@dataclass
class RawSolution:
    """A backend's answer in the variables of the module docstring."""

    c: FloatArr
    d: FloatArr
    e_end: FloatArr
    u: FloatArr
    imp: FloatArr
    exp: FloatArr
    xi: FloatArr
    xe: FloatArr
    peak: float
    status: str
    ok: bool


def finish(site: SiteInputs, slots: list[SlotInput], p: Prepared, raw: RawSolution, solve_s: float,
           fallback: bool) -> PlanResult:
    """Turn a raw answer into a plan: net the two flows, clip to bounds, price every term."""
    c = np.clip(raw.c, 0.0, p.cmax)
    d = np.clip(raw.d, 0.0, p.dmax)
    power = c - d
    site_kw = p.building + power.sum(axis=0)
    imp = np.maximum(site_kw, 0.0)
    exp = np.maximum(-site_kw, 0.0)
    excess = np.maximum(np.maximum(imp - p.imp_lim, exp - p.exp_lim), 0.0)
    peak = max(float(imp[p.demand_mask].max(initial=0.0)), p.peak0)
    delivered = np.where(p.conn.any(axis=1), raw.e_end - p.e0, 0.0)
    unmet = np.where(p.conn.any(axis=1), np.maximum(p.target - raw.e_end, 0.0), 0.0)
    unmet = np.where(unmet < 1e-6, 0.0, unmet)
    # Energy over time from the flows, for the shortfall at each earlier possible departure.
    e_path = p.e0[:, None] + np.cumsum((c * p.eff_c[:, None] - d / p.eff_d[:, None]) * p.h[None, :], axis=1)
    risk_kwh = (np.maximum(p.risk_target - e_path[p.risk_slot, p.risk_step], 0.0)
                if len(p.risk_slot) else np.zeros(0))
    terms = {
        "energy_cost": float((p.price_imp * p.h) @ imp - (p.price_exp * p.h) @ exp),
        "demand_charge": peak_cost(p, peak),
        "wear": float((site.wear_cost_per_kwh * p.h) @ d.sum(axis=0)),  # p.wear: with the cycling cost
        "grid_event_revenue": float((p.pay * p.h) @ (p.building - site_kw)),
        "unmet_penalty": float(p.unmet_penalty @ unmet),
        # Expected price of leaving short at an earlier possible departure.
        "departure_risk": float(p.risk_penalty @ risk_kwh),
        "limit_excess_kw_max": float(excess.max(initial=0.0)),
        "simultaneous_kw_max": float(np.minimum(raw.c, raw.d).max(initial=0.0)),
    }
    objective = (terms["energy_cost"] + terms["demand_charge"] + terms["wear"]
                 - terms["grid_event_revenue"] + terms["unmet_penalty"] + terms["departure_risk"])
    return PlanResult(
        grid=site.grid, keys=[sl.key for sl in slots], power_kw=power, status=raw.status,
        objective=objective, terms=terms, solve_s=solve_s, fallback=fallback,
        delivered_kwh=delivered, unmet_kwh=unmet, site_import_kw=site_kw, limit_excess_kw=excess,
    )


def greedy_fallback(site: SiteInputs, slots: list[SlotInput]) -> PlanResult:
    """Charge floors first (draws the plan does not control), then earliest departure first at full
    power within EVSE limits and the site headroom; no discharge."""
    t0 = time.perf_counter()
    p = prepare(site, slots)
    raw = greedy_raw(p)
    return finish(site, slots, p, raw, time.perf_counter() - t0, fallback=True)


def greedy_raw(p: Prepared) -> RawSolution:
    s, n = p.shape
    last = np.where(p.conn.any(axis=1), n - 1 - np.argmax(p.conn[:, ::-1], axis=1), n)
    order = np.argsort(last, kind="stable")
    need = np.maximum(p.target - p.e0, 0.0)
    room = p.cap - p.e0
    c = np.zeros((s, n))
    for t in range(n):
        head = float(p.imp_lim[t] - p.building[t])
        # The charge floors first, for every slot: a floor is a draw the plan does not control (a
        # charger ignoring its limit, planned at its measured power), so the headroom the others
        # share is what is left after it, whatever their departures.
        for i in np.flatnonzero(p.conn[:, t]):
            kw = min(p.cmin[i, t], p.cmax[i, t], room[i] / (p.h[t] * p.eff_c[i]))
            if kw > 0:
                c[i, t] = kw
                head -= kw
                got = kw * p.h[t] * p.eff_c[i]
                need[i] = max(need[i] - got, 0.0)
                room[i] -= got
        for i in order:
            if not p.conn[i, t] or head <= 0:
                continue
            kw = min(p.cmax[i, t] - c[i, t], need[i] / (p.h[t] * p.eff_c[i]), room[i] / (p.h[t] * p.eff_c[i]),
                     head)
            if kw <= 0:
                continue
            c[i, t] += kw
            head -= kw
            got = kw * p.h[t] * p.eff_c[i]
            need[i] = max(need[i] - got, 0.0)
            room[i] -= got
    e_end = p.cap - room
    site = p.building + c.sum(axis=0)
    z = np.zeros(n)
    return RawSolution(c=c, d=np.zeros((s, n)), e_end=e_end, u=np.maximum(p.target - e_end, 0.0),
                       imp=np.maximum(site, 0), exp=np.maximum(-site, 0), xi=z, xe=z,
                       peak=max(float(site.max(initial=0.0)), p.peak0), status="greedy", ok=True)


class Planner:
    """Solves the site LP; holds compiled problems so a re-solve with the same shape only updates
    parameters (cvxpy backend). ``backend``: "highs" (the LP handed to highspy directly, variables
    only where an EV is connected), "cvxpy" (DPP, compiled once per shape), "auto" (highs).
    ``solve`` never raises for solver trouble: it falls back to :func:`greedy_fallback`."""

    def __init__(self, *, time_limit_s: float = 60.0, backend: str = "auto",
                 decompose_above_slots: int | None = DECOMPOSE_ABOVE_SLOTS) -> None:
        if backend not in ("auto", "highs", "cvxpy"):
            raise ValueError(f"unknown backend {backend!r}")
        self.time_limit_s = time_limit_s
        self.decompose_above_slots = decompose_above_slots
        self._groups: Any = None  # the DecomposedPlanner, made on first need
        self.backend = "highs" if backend == "auto" else backend
        self._cvx: dict[Any, Any] = {}
        self.last_build_s = 0.0

    def solve(self, site: SiteInputs, slots: list[SlotInput]) -> PlanResult:
        if self.decompose_above_slots is not None and len(slots) > self.decompose_above_slots:
            # One LP grows faster than its slots: a very large site is planned as groups that share
            # its headroom (decompose.py), each solved as one LP by a planner that never splits.
            from gateway.scheduler.decompose import DEFAULT_MAX_SLOTS_PER_LP, DecomposedPlanner

            if self._groups is None:
                one_lp = Planner(time_limit_s=self.time_limit_s, backend=self.backend, decompose_above_slots=None)
                size = min(DEFAULT_MAX_SLOTS_PER_LP, self.decompose_above_slots)
                self._groups = DecomposedPlanner(max_slots_per_lp=size, planner=one_lp)
            result: PlanResult = self._groups.solve(site, slots)
            return result
        t0 = time.perf_counter()
        p = prepare(site, slots)
        if not slots:
            return finish(site, slots, p, greedy_raw(p), time.perf_counter() - t0, fallback=False)
        try:
            raw = self._solve_raw(p)
        except Exception as exc:  # a solver crash must never leave the site without a plan
            raw = greedy_raw(p)
            raw.status = f"fallback: {type(exc).__name__}: {exc}"[:200]
            return finish(site, slots, p, raw, time.perf_counter() - t0, fallback=True)
        if not raw.ok:
            status = raw.status
            raw = greedy_raw(p)
            raw.status = f"fallback: {status}"
            return finish(site, slots, p, raw, time.perf_counter() - t0, fallback=True)
        return finish(site, slots, p, raw, time.perf_counter() - t0, fallback=False)

    def _solve_raw(self, p: Prepared) -> RawSolution:
        if self.backend == "cvxpy":
            from gateway.scheduler import lp_cvxpy

            key = lp_cvxpy.shape_key(p)
            model = self._cvx.get(key)
            if model is None:
                tb = time.perf_counter()
                model = lp_cvxpy.CvxModel(p)
                self.last_build_s = time.perf_counter() - tb
                if len(self._cvx) >= 16:  # a site has few shapes (grid length varies by a step)
                    self._cvx.pop(next(iter(self._cvx)))
                self._cvx[key] = model
            return model.solve(p, self.time_limit_s)
        from gateway.scheduler import lp_highs

        return lp_highs.solve(p, self.time_limit_s)
