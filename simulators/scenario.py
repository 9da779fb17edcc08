"""Episode generator: ``gateway scenario generate --site workplace --stations 50 --days 1 -o ep.json``.

An episode (``gateway/episode.py``) is drawn from the models in :mod:`simulators.models` with one
seeded ``numpy.random.Generator``, so the same arguments give the same file. On top of the
expected behaviour it injects OPTIMUS-style uncertainty: departures earlier or later than
announced, surprise arrivals, and needs that change mid-session. The building load comes with the
day-ahead forecast a building energy system would send (``building_load.forecast_kw``), its
errors drawn from a second generator so that they change no other draw.

Two choices keep episodes useful for comparing policies:
- most requests are physically deliverable in the dwell at the EV's and EVSE's power limit, but
  not all (``keep_undeliverable_share`` of the hopeless ones stay hopeless, as in real life);
- the site import limit is binding but feasible: above the peak of "every EV at the flat power
  that just meets its request, plus the building", and below the uncontrolled peak.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.episode import Episode, from_dict
from simulators import models

DEFAULT_START = datetime(2026, 7, 1, tzinfo=UTC)
STEP_S = 900  # building load resolution (15 min, the billing interval of demand charges)
MIN_DWELL_S = 15 * 60
FORECAST_STREAM = 0xB17D  # with the seed, names the generator of the building forecast's errors


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    site: str = "workplace"
    stations: int = 50
    days: int = 1
    seed: int = 1
    start: datetime = DEFAULT_START
    bidirectional_share: float = 0.5  # of EVSEs, and the chance an EV is a V2G-capable model
    iso15118_share: float = 0.6  # EVs that announce departure and energy (NotifyEVChargingNeeds)
    departure_noise_h: float = 1.0  # sd of (real - announced) departure
    surprise_share: float = 0.05
    need_change_share: float = 0.05
    grid_event: str = "auto"  # auto: summer weekday afternoons, about every other day
    keep_undeliverable_share: float = 0.3
    limit_position: float = 0.4  # 0: the feasible floor, 1: the uncontrolled peak
    # The building's load on Saturdays and Sundays against a weekday's (an office draws about half).
    # 1.0 by default: every day alike, the episodes docs/benchmarks-scheduler.md was measured on.
    building_weekend_factor: float = 1.0


def _forecast_rng(seed: int) -> np.random.Generator:
    """The draws of the energy system's forecast error: a generator of their own, so the forecast
    changes no other draw of an episode (arrivals, load, limits, events are those of the seed)."""
    return np.random.default_rng([seed, FORECAST_STREAM])


def _round_up(x: float, step: float) -> float:
    return math.ceil(x / step) * step


def _pick(rng: np.random.Generator, options: tuple[tuple[float, int, float], ...]) -> tuple[float, int]:
    w = np.array([o[2] for o in options])
    kw, phases, _ = options[int(rng.choice(len(options), p=w / w.sum()))]
    return kw, phases


def generate_dict(opts: ScenarioOptions) -> dict[str, Any]:
    """The episode as its JSON dict (not yet validated)."""
    if opts.site not in models.SITES:
        raise ValueError(f"unknown site type {opts.site!r}; choose from {sorted(models.SITES)}")
    if opts.stations < 1 or opts.days < 1:
        raise ValueError("need at least one station and one day")
    site = models.SITES[opts.site]
    rng = np.random.default_rng(opts.seed)
    day0 = opts.start.replace(hour=0, minute=0, second=0, microsecond=0)
    start = day0 + timedelta(hours=12 if site.overnight else 0)
    end = start + timedelta(days=opts.days)

    stations: list[dict[str, Any]] = []
    evses: list[dict[str, Any]] = []  # flat, with station id
    for i in range(opts.stations):
        sid = f"{opts.site[:4].upper()}-{i + 1:04d}"
        row = []
        for e in range(site.evses_per_station):
            kw, phases = _pick(rng, site.evse_kw)
            bidi = bool(rng.random() < opts.bidirectional_share)
            row.append(
                {
                    "evse_id": e + 1,
                    "max_charge_kw": kw,
                    "max_discharge_kw": kw if bidi else 0.0,
                    "bidirectional": bidi,
                    "phases": phases,
                }
            )
            evses.append({**row[-1], "station_id": sid})
        stations.append({"id": sid, "evses": row})

    sessions = _draw_sessions(rng, site, opts, day0, start, end, len(evses))
    arrivals = _assign(rng, site, opts, sessions, evses, start, end)

    steps = int((end - start).total_seconds() // STEP_S)
    peak_kw = site.building_peak_kw_per_evse * len(evses)
    start_hour = start.hour + start.minute / 60
    load, forecast = models.building_load_and_forecast(
        rng, _forecast_rng(opts.seed), site.building_shape, peak_kw, start_hour, steps, STEP_S,
        weekend_factor=opts.building_weekend_factor, first_weekday=start.weekday(),
    )

    import_limit = _import_limit(arrivals, evses, load, start, opts.limit_position)
    grid_events = _grid_events(rng, opts, start, end, import_limit)
    return {
        "version": 1,
        "name": f"{opts.site}-{opts.stations}x{opts.days}d-seed{opts.seed}",
        "site_type": opts.site,
        "seed": opts.seed,
        "start": to_rfc3339(start),
        "end": to_rfc3339(end),
        "wear_cost_per_kwh": 0.03,
        "site": {"import_limit_kw": import_limit, "export_limit_kw": _round_up(0.5 * import_limit, 5.0)},
        "tariff": {
            "periods": [
                {"start_hour": 0, "end_hour": 8, "import_price": 0.12, "export_price": 0.04},
                {"start_hour": 8, "end_hour": 16, "import_price": 0.20, "export_price": 0.06},
                {"start_hour": 16, "end_hour": 21, "import_price": 0.38, "export_price": 0.12},
                {"start_hour": 21, "end_hour": 24, "import_price": 0.16, "export_price": 0.05},
            ],
            "demand_charge_per_kw": site.demand_charge_per_kw,
            "default_import_price": 0.20,
            "default_export_price": 0.05,
        },
        "building_load": {"start": to_rfc3339(start), "step_s": STEP_S, "values_kw": load, "forecast_kw": forecast},
        "stations": stations,
        "arrivals": arrivals,
        "grid_events": grid_events,
    }


@dataclass(slots=True)
class _Session:
    arrival: datetime
    departure: datetime
    surprise: bool


def _draw_sessions(
    rng: np.random.Generator,
    site: models.SiteModel,
    opts: ScenarioOptions,
    day0: datetime,
    start: datetime,
    end: datetime,
    n_evses: int,
) -> list[_Session]:
    out: list[_Session] = []
    for d in range(opts.days):
        day = day0 + timedelta(days=d)
        rate = site.sessions_per_evse_day * (site.weekend_factor if day.weekday() >= 5 else 1.0)
        for _ in range(int(rng.poisson(rate * n_evses))):
            hour, comp = models.draw_arrival(rng, site)
            arr = day + timedelta(hours=hour)
            if site.departure_slots_h:
                slot = float(rng.choice(site.departure_slots_h))
                dep = day + timedelta(days=1, hours=slot, minutes=float(rng.normal(0.0, 8.0)))
            elif site.morning_departure is not None:
                mean, sd = site.morning_departure
                dep = day + timedelta(days=1, hours=float(np.clip(rng.normal(mean, sd), 5.0, 11.0)))
            else:
                dep = arr + timedelta(hours=models.draw_dwell_h(rng, comp))
            out.append(_Session(arr, dep, False))
        # Surprise arrivals: any hour, short stays (OPTIMUS's arrival injections).
        for _ in range(int(rng.binomial(max(1, int(rate * n_evses)), opts.surprise_share))):
            arr = day + timedelta(hours=float(rng.uniform(0.0, 24.0)))
            dwell = float(np.clip(1.5 * math.exp(rng.normal(0.0, 0.7)), 0.3, 8.0))
            out.append(_Session(arr, arr + timedelta(hours=dwell), True))
    kept = []
    for s in out:
        s.arrival = max(s.arrival, start)
        s.departure = min(s.departure, end)
        if (s.departure - s.arrival).total_seconds() >= MIN_DWELL_S:
            kept.append(s)
    kept.sort(key=lambda s: s.arrival)
    return kept


def _assign(
    rng: np.random.Generator,
    site: models.SiteModel,
    opts: ScenarioOptions,
    sessions: list[_Session],
    evses: list[dict[str, Any]],
    start: datetime,
    end: datetime,
) -> list[dict[str, Any]]:
    """Give each session a free EVSE (a random one of those free on arrival) and a car."""
    free_at = [start] * len(evses)
    arrivals: list[dict[str, Any]] = []
    for s in sessions:
        free = [i for i, t in enumerate(free_at) if t <= s.arrival]
        if not free:
            continue  # the site is full: the driver goes elsewhere
        i = int(free[int(rng.integers(len(free)))])
        evse = evses[i]
        free_at[i] = s.departure + timedelta(minutes=5)
        ev = models.pick_ev(rng, opts.bidirectional_share)
        arrivals.append(_arrival(rng, site, opts, s, evse, ev, len(arrivals), start, end))
    return arrivals


def _arrival(
    rng: np.random.Generator,
    site: models.SiteModel,
    opts: ScenarioOptions,
    s: _Session,
    evse: dict[str, Any],
    ev: models.EvModel,
    n: int,
    start: datetime,
    end: datetime,
) -> dict[str, Any]:
    soc = models.draw_arrival_soc(rng, site)
    target = min(1.0, max(models.draw_target_soc(rng, site), soc + 0.05))
    eff_c = round(float(rng.uniform(0.88, 0.94)), 3)
    eff_d = round(float(rng.uniform(0.88, 0.94)), 3)
    max_kw = min(ev.ac_max_kw, float(evse["max_charge_kw"]))
    dwell_s = (s.departure - s.arrival).total_seconds()
    need = (target - soc) * ev.capacity_kwh
    can = models.deliverable_kwh(ev.capacity_kwh, soc, max_kw, eff_c, dwell_s)
    # Surprise visitors keep their full wish: short stays, big asks (often undeliverable).
    if need > can and not s.surprise and rng.random() >= opts.keep_undeliverable_share:
        # Most drivers ask for what the stay can give; some ask for more than physics allows.
        need = can * float(rng.uniform(0.6, 0.95))
        target = soc + need / ev.capacity_kwh
    iso = bool(rng.random() < opts.iso15118_share)
    announced: datetime | None = None
    if iso:
        noise_h = opts.departure_noise_h * (0.25 if site.departure_slots_h else 1.0)
        announced = s.departure + timedelta(hours=float(rng.normal(0.0, noise_h)))
        announced = min(max(announced, s.arrival + timedelta(minutes=15)), end + timedelta(hours=12))
    bidi_ev = ev.v2g
    need_change = None
    if rng.random() < opts.need_change_share:
        at = s.arrival + timedelta(seconds=dwell_s * float(rng.uniform(0.2, 0.6)))
        room = (1.0 - soc) * ev.capacity_kwh
        new_need = round(min(room, need * float(rng.uniform(0.6, 1.4))), 2)
        change_departure = announced is not None and rng.random() < 0.5
        need_change = {
            "at": to_rfc3339(at),
            "energy_kwh": new_need,
            "departure": to_rfc3339(s.departure) if change_departure else None,
        }
    return {
        "id": f"EV-{n + 1:05d}",
        "station_id": evse["station_id"],
        "evse_id": evse["evse_id"],
        "arrival": to_rfc3339(s.arrival),
        "departure": to_rfc3339(s.departure),
        "announced_departure": to_rfc3339(announced) if announced else None,
        "energy_kwh": round(max(need, 0.0), 2),
        "target_soc": round(min(target, 1.0), 4),
        "arrival_soc": round(soc, 4),
        "reserve_soc": round(float(rng.uniform(0.2, 0.35)), 2) if bidi_ev else 0.0,
        "capacity_kwh": ev.capacity_kwh,
        "max_charge_kw": ev.ac_max_kw,
        "max_discharge_kw": ev.ac_max_kw if bidi_ev else 0.0,
        "bidirectional": bidi_ev,
        "iso15118": iso,
        "id_token": f"TOK{int(rng.integers(10**9)):09d}",
        "eff_charge": eff_c,
        "eff_discharge": eff_d,
        "surprise": s.surprise,
        "need_change": need_change,
    }


def _import_limit(
    arrivals: list[dict[str, Any]],
    evses: list[dict[str, Any]],
    load: list[float],
    start: datetime,
    position: float,
) -> float:
    """A limit between the feasible floor (flat charging, just enough) and the uncontrolled peak."""
    steps = len(load)
    flat = np.array(load, dtype=float)
    greedy = np.array(load, dtype=float)
    evse_kw = {(e["station_id"], e["evse_id"]): float(e["max_charge_kw"]) for e in evses}
    for a in arrivals:
        t0 = (parse_rfc3339(a["arrival"]) - start).total_seconds() / STEP_S
        t1 = (parse_rfc3339(a["departure"]) - start).total_seconds() / STEP_S
        pmax = min(a["max_charge_kw"], evse_kw[(a["station_id"], a["evse_id"])])
        grid_kwh = a["energy_kwh"] / a["eff_charge"]
        dwell_h = max((t1 - t0) * STEP_S / 3600.0, 1e-6)
        p_flat = min(pmax, grid_kwh / dwell_h)
        t_greedy = t0 + grid_kwh / pmax * 3600.0 / STEP_S
        i0, i1 = int(t0), min(math.ceil(t1), steps)
        for i in range(i0, i1):
            flat[i] += p_flat
            if i < t_greedy:
                greedy[i] += pmax
    floor, peak = float(flat.max()), float(greedy.max())
    if peak <= floor * 1.05:
        return _round_up(peak, 5.0)
    return _round_up(floor + position * (peak - floor), 5.0)


def _grid_events(
    rng: np.random.Generator, opts: ScenarioOptions, start: datetime, end: datetime, limit_kw: float
) -> list[dict[str, Any]]:
    """Summer-afternoon demand response: export requests paid per kWh, roughly 16:00-19:00."""
    events: list[dict[str, Any]] = []
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    n = 0
    while day < end:
        summer = 5 <= day.month <= 10 and day.weekday() < 5
        if opts.grid_event == "always" or (opts.grid_event == "auto" and summer and rng.random() < 0.5):
            begin = day + timedelta(hours=16, minutes=15 * int(rng.integers(-2, 5)))
            stop = begin + timedelta(minutes=15 * int(rng.integers(8, 13)))
            if begin >= start and stop <= end:
                n += 1
                events.append(
                    {
                        "id": f"DR-{n:03d}",
                        "start": to_rfc3339(begin),
                        "end": to_rfc3339(stop),
                        "kind": "export_request",
                        "payment_per_kwh": round(float(rng.uniform(0.5, 2.0)), 2),
                        "cap_kw": None,
                    }
                )
        day += timedelta(days=1)
    return events


def generate(opts: ScenarioOptions) -> Episode:
    """A validated episode."""
    return from_dict(generate_dict(opts))


def cli(args: argparse.Namespace) -> int:
    """``gateway scenario generate``: write a schema-valid episode file."""
    opts = ScenarioOptions(
        site=args.site,
        stations=args.stations,
        days=args.days,
        seed=args.seed,
        start=parse_rfc3339(args.start) if args.start else DEFAULT_START,
        bidirectional_share=args.bidirectional_share,
        iso15118_share=args.iso15118_share,
        departure_noise_h=args.departure_noise_h,
        surprise_share=args.surprise_share,
        need_change_share=args.need_change_share,
        grid_event=args.grid_event,
        building_weekend_factor=args.building_weekend_factor,
    )
    try:
        data = generate_dict(opts)
        ep = from_dict(data)  # validate before writing
    except ValueError as exc:
        print(f"gateway scenario generate: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(data, indent=1))
    print(
        f"wrote {args.out}: {len(ep.stations)} stations, {len(ep.evses)} EVSEs, {len(ep.arrivals)} arrivals, "
        f"import limit {ep.limits.import_kw:g} kW, {len(ep.grid_events)} grid events",
        file=sys.stderr,
    )
    return 0
