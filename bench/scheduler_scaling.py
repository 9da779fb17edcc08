"""Build and re-solve time of the site LP against slots x horizon steps, on the live planning code.

    .venv/bin/python bench/scheduler_scaling.py [--slots 10 100 1000 10000] [--backend highs cvxpy]
        [--resolves 5] [--json] [--sites N] [--decompose [SLOTS_PER_LP] | --one-lp] [--breakpoints N]
        [--taper on|off] [--cvxpy-taper-slots N]

A synthetic workplace-like site over 24 h on the live grid (6 x 5 min, 15 min to the hour, then hourly): every slot
connected from now for 1-20 h, needing 5-45 kWh, with five earlier possible departures priced by
probability as the live slots carry them (each shared between the two step ends around it,
slots.steps_around), half allowed to discharge; the site limit is 60 %
of the sum of charger ratings so it binds; TOU prices and a demand charge. A re-solve changes
every slot's energy and the building load forecast (what a 5-minute re-plan changes). Each site
also carries the 72 aggregate slots of the EVs expected to arrive (gateway/scheduler/arrivals.py),
as the live loop plans them; ``slots`` counts the EVSE slots only.

Each size is planned as the live ``Planner`` plans it: one LP up to ``DECOMPOSE_ABOVE_SLOTS`` slots
(the expected arrivals' included), above that as LPs of at most 250 slots sharing the site's
headroom (:class:`gateway.scheduler.decompose.DecomposedPlanner`); ``lps_per_round`` gives the LPs
solved per coordination round of the last re-plan. ``--decompose [SLOTS_PER_LP]``: split at any
size, into LPs of at most SLOTS_PER_LP; ``--one-lp``: one LP at any size.

``--breakpoints N``: N more step boundaries on quarter hours off the hour from 08:15 on, as grid
events' edges and drivers' departures add them (``inputs.breakpoints``: at most 24 for drivers'
departures, two per event).

Every slot's battery is known, so it is planned under its constant-voltage taper (from 80 % of
60 kWh) as the live loop plans an ISO 15118 EV; ``--taper off`` leaves those rows out. The cvxpy
backend plans no taper above ``lp_cvxpy.TAPER_SLOTS_MAX`` tapering slots; ``--cvxpy-taper-slots N``
moves that cap (N = 1000: the compile time the cap avoids).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from benchlib import use_departures_at_whole_steps

from gateway.scheduler import lp_cvxpy, lp_highs
from gateway.scheduler import slots as slot_rules
from gateway.scheduler.arrivals import ArrivalModel
from gateway.scheduler.decompose import DEFAULT_MAX_SLOTS_PER_LP, DecomposedPlanner
from gateway.scheduler.problem import (
    DECOMPOSE_ABOVE_SLOTS,
    Planner,
    Prepared,
    SiteInputs,
    SlotInput,
    TimeGrid,
    make_grid,
    prepare,
)

# (share of the stay, probability): where each slot may leave early (gateway/scheduler/slots.py).
EARLY_DEPARTURES = ((0.3, 0.05), (0.45, 0.10), (0.6, 0.20), (0.75, 0.20), (0.9, 0.20))


def quarter_hours(now: datetime, n: int) -> list[datetime]:
    """``n`` quarter hours off the hour from an hour after ``now``."""
    return [t for t in (now + timedelta(hours=1, minutes=15 * j) for j in range(2 * n)) if t.minute][:n]


# The battery's taper the live loop plans for an EV whose battery it sees (these slots' are known:
# 11 kW from 80 % of 60 kWh; live_inputs.session_view); 0 with --taper off.
TAPER_KW_PER_KWH = 11.0 / (0.2 * 60.0)


def scenario(n_slots: int, rng: np.random.Generator, now: datetime,
             breaks: int = 0) -> tuple[SiteInputs, list[SlotInput]]:
    grid: TimeGrid = make_grid(now, 24 * 3600, breakpoints=quarter_hours(now, breaks))
    t = len(grid)
    ends = np.cumsum(grid.durations_s) / 3600
    step_ends = grid.start.timestamp() + np.cumsum(grid.durations_s)
    hours = np.array([(s.hour + s.minute / 60) for s in grid.starts()])
    price = np.where((hours >= 16) & (hours < 21), 0.38, np.where(hours < 8, 0.12, 0.20))
    slots = []
    for i in range(n_slots):
        dwell_h = rng.uniform(1, 20)
        conn = ends <= dwell_h + 1e-9
        target = float(rng.uniform(30, 55))
        # Earlier possible departures, as the live slots carry them once the site has history:
        # each shared between the two step ends around it (slots.steps_around).
        last = max(int(np.count_nonzero(conn)) - 1, 0)
        early = tuple((k, target, w * share) for f, w in EARLY_DEPARTURES
                      for k, share in slot_rules.steps_around(step_ends, now.timestamp() + f * dwell_h * 3600, last)
                      if share > 0)
        slots.append(SlotInput(
            key=("cs", i), connected=conn, energy_kwh=float(rng.uniform(5, 30)),
            capacity_kwh=60.0, target_energy_kwh=target, reserve_energy_kwh=10.0,
            max_charge_kw=11.0, max_discharge_kw=11.0, discharge_allowed=bool(i % 2),
            early_targets=early, unmet_weight=1.0 - sum(w for _, w in EARLY_DEPARTURES),
            taper_kw_per_kwh=TAPER_KW_PER_KWH, taper_full_kwh=60.0,
        ))
    slots += expected_arrivals(n_slots, rng, grid, now)
    limit = 0.6 * 11.0 * n_slots + 20
    site = SiteInputs(
        grid=grid, import_price=price, export_price=price * 0.3,
        building_load_kw=20 + 10 * rng.random(t), import_limit_kw=np.full(t, limit),
        export_limit_kw=np.full(t, limit / 2), demand_charge_per_kw=15.0, peak_so_far_kw=0.3 * limit,
        export_payment_per_kwh=np.where((hours >= 17) & (hours < 19), 0.5, 0.0),
        wear_cost_per_kwh=0.03, unmet_penalty_per_kwh=50.0,
    )
    return site, slots


def expected_arrivals(n_slots: int, rng: np.random.Generator, grid: TimeGrid, now: datetime) -> list[SlotInput]:
    """The aggregate slots the live loop adds for EVs expected to arrive (``ArrivalModel.slots``),
    from a week of history in which a tenth of the site's EVSEs filled every hour of 7-18 h."""
    model = ArrivalModel()
    model.watched("bench", now - timedelta(days=7), now)
    for d in range(1, 8):
        for hour in range(7, 19):
            for k in range(max(1, n_slots // 10)):
                arr = (now - timedelta(days=d)).replace(hour=hour, minute=int(rng.integers(60)))
                model.arrived("bench", (d, hour, k), arr)
                model.observe("bench", arr, arr + timedelta(hours=float(rng.uniform(1, 10))),
                              float(rng.uniform(5, 40)), 11.0)
    return model.slots("bench", grid, now)


def perturb(site: SiteInputs, slots: list[SlotInput], rng: np.random.Generator) -> None:
    site.building_load_kw = site.building_load_kw * rng.uniform(0.9, 1.1, len(site.building_load_kw))
    for sl in slots:
        sl.energy_kwh = min(sl.capacity_kwh, sl.energy_kwh + float(rng.uniform(0, 1)))


def measure_sites(n_slots: int, sites: int, backend: str, resolves: int) -> dict[str, object]:
    """``n_slots`` split over ``sites`` independent sites, each its own LP, re-planned one after
    the other (how a gateway serving many sites, or one huge site decomposed by feeder, runs)."""
    rng = np.random.default_rng(n_slots)
    now = datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    per = n_slots // sites
    cases = [scenario(per, rng, now) for _ in range(sites)]
    planners = [Planner(backend=backend, time_limit_s=120.0, decompose_above_slots=None) for _ in range(sites)]
    t0 = time.perf_counter()
    for site, slots in cases:  # as measure(): the model each site's solve starts from
        assemble(prepare(site, slots), backend)
    build_s = time.perf_counter() - t0
    for pl, (site, slots) in zip(planners, cases, strict=True):
        pl.solve(site, slots)
    times = []
    fallback = False
    for _ in range(resolves):
        for site, slots in cases:  # the inputs change before the clock starts, as in measure()
            perturb(site, slots, rng)
        t0 = time.perf_counter()
        for pl, (site, slots) in zip(planners, cases, strict=True):
            fallback |= pl.solve(site, slots).fallback
        times.append(time.perf_counter() - t0)
    return {"slots": n_slots, "sites": sites, "steps": len(cases[0][0].grid), "backend": backend,
            "build_s": round(build_s, 4), "resolve_s_median": round(statistics.median(times), 4),
            "resolve_s_max": round(max(times), 4), "fallback": fallback}


def assemble(p: Prepared, backend: str) -> None:
    """Builds the model a solve starts from (cvxpy: constructs and compiles the DPP problem)."""
    if backend == "cvxpy":
        model = lp_cvxpy.CvxModel(p)
        model.problem.get_problem_data(lp_cvxpy.cp.HIGHS, canon_backend=lp_cvxpy.cp.SCIPY_CANON_BACKEND)
    else:
        lp_highs.build(p)


def measure(n_slots: int, backend: str, resolves: int, decompose: int | None = None,
            breaks: int = 0, one_lp: bool = False) -> dict[str, object]:
    rng = np.random.default_rng(n_slots)
    now = datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    site, slots = scenario(n_slots, rng, now, breaks)
    if decompose is None and not one_lp and len(slots) > DECOMPOSE_ABOVE_SLOTS:
        # What the live Planner does with this many slots (the expected arrivals' included).
        decompose = min(DEFAULT_MAX_SLOTS_PER_LP, DECOMPOSE_ABOVE_SLOTS)
    base = Planner(backend=backend, time_limit_s=120.0, decompose_above_slots=None)
    split = DecomposedPlanner(max_slots_per_lp=decompose, planner=base) if decompose else None
    t0 = time.perf_counter()
    if split is not None:  # what a decomposed plan assembles: the shares, then one LP per group
        for idx, gsite in split.split(site, slots):
            assemble(prepare(gsite, [slots[i] for i in idx]), backend)
    else:
        assemble(prepare(site, slots), backend)
    build_s = time.perf_counter() - t0
    planner: Planner | DecomposedPlanner = split if split is not None else base
    first = planner.solve(site, slots)
    times, statuses = [], []
    for _ in range(resolves):
        perturb(site, slots, rng)
        t0 = time.perf_counter()
        res = planner.solve(site, slots)
        times.append(time.perf_counter() - t0)
        statuses.append(res.status)
    row: dict[str, object] = {
        "slots": n_slots, "steps": len(site.grid), "backend": backend, "build_s": round(build_s, 4),
        "first_solve_s": round(first.solve_s, 4), "resolve_s_median": round(statistics.median(times), 4),
        "resolve_s_max": round(max(times), 4), "status": statuses[-1],
        "fallback": any(s.startswith("fallback") for s in statuses),
        "limit_excess_kw_max": round(res.terms["limit_excess_kw_max"], 6),
        "unmet_kwh": round(float(res.unmet_kwh.sum()), 2), "lps_per_round": [1],
    }
    if split is not None:
        row["max_slots_per_lp"] = decompose
        row["lps_per_round"] = split.last_solves_per_round
    return row


def use_highs_options(pairs: list[str]) -> None:
    """Set each KEY=VALUE on every HiGHS model the highs back-end solves, over its own options
    (set as the model is passed in, after them)."""
    import highspy

    options: dict[str, object] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        value: object = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        options[key] = value
    pass_model = highspy.Highs.passModel

    def with_options(self: highspy.Highs, *a: object) -> object:
        for key, value in options.items():
            self.setOptionValue(key, value)
        return pass_model(self, *a)

    highspy.Highs.passModel = with_options  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, nargs="+", default=[10, 100, 1000, 10000])
    ap.add_argument("--backend", nargs="+", default=["highs"], choices=("highs", "cvxpy"))
    ap.add_argument("--resolves", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object per line per size")
    ap.add_argument("--sites", type=int, default=1,
                    help="split each size over this many independent sites (re-planned in turn)")
    ap.add_argument("--decompose", type=int, nargs="?", const=DEFAULT_MAX_SLOTS_PER_LP, default=None,
                    metavar="SLOTS_PER_LP",
                    help=f"plan one site as LPs of at most this many slots (default {DEFAULT_MAX_SLOTS_PER_LP})")
    ap.add_argument("--highs-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a HiGHS option over the live back-end's (e.g. simplex_strategy=2 with threads=2 "
                         "and parallel=on: the parallel dual simplex); repeatable")
    ap.add_argument("--one-lp", action="store_true",
                    help=f"one LP whatever the size (the live Planner splits above {DECOMPOSE_ABOVE_SLOTS} slots)")
    ap.add_argument("--breakpoints", type=int, default=0,
                    help="this many more step boundaries (grid events' edges, drivers' departures)")
    ap.add_argument("--departure-in-step", choices=("split", "whole"), default="split",
                    help="whole: each early departure at the last whole step before it (the version before "
                         "slots.steps_around: half the shortfall rows)")
    ap.add_argument("--taper", choices=("on", "off"), default="on",
                    help="off: no battery taper rows (the version before the LP planned the taper)")
    ap.add_argument("--cvxpy-taper-slots", type=int, default=None, metavar="N",
                    help=f"the cvxpy backend's cap on tapering slots (the code's: {lp_cvxpy.TAPER_SLOTS_MAX}; "
                         "above it that backend plans no taper)")
    args = ap.parse_args()
    if args.taper == "off":
        global TAPER_KW_PER_KWH
        TAPER_KW_PER_KWH = 0.0
    if args.cvxpy_taper_slots is not None:
        lp_cvxpy.TAPER_SLOTS_MAX = args.cvxpy_taper_slots
    if args.highs_option:
        use_highs_options(args.highs_option)
    if args.departure_in_step == "whole":
        use_departures_at_whole_steps()
    for backend in args.backend:
        for n in args.slots:
            reps = args.resolves if n < 10000 else max(1, min(args.resolves, 3))
            if args.sites > 1:
                row = measure_sites(n, args.sites, backend, reps)
                print(json.dumps(row) if args.json else row, flush=True)
                continue
            row = measure(n, backend, reps, args.decompose, args.breakpoints, args.one_lp)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{backend:6s} slots={n:6d} steps={row['steps']} build={row['build_s']:.3f}s "
                      f"first={row['first_solve_s']:.3f}s resolve_median={row['resolve_s_median']:.3f}s "
                      f"status={row['status']} lps={row['lps_per_round']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
