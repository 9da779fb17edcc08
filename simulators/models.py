"""Statistical models behind the scenario generator. Pure: numbers in, numbers out.

Every draw takes a ``numpy.random.Generator`` so an episode is reproducible from its seed. The
shapes follow public facts about charging behaviour (ElaadNL-style open session data, office and
depot practice): workplace sessions start 7-10 h and last a working day, depot vehicles return in
the evening and leave at fixed morning slots, public sessions are short and spread over the day,
home charging runs overnight. The numbers are round, plausible values, not a fit to one data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulators.ev import EvBattery


@dataclass(frozen=True, slots=True)
class EvModel:
    """A class of car: battery, AC charging limit, whether it can give power back."""

    name: str
    capacity_kwh: float
    ac_max_kw: float
    v2g: bool
    weight: float  # share in the fleet mix (normalised over the catalogue)


# A market mix from small city cars to large SUVs; 7.4 kW is one-phase 32 A, 11 kW three-phase
# 16 A, 22 kW three-phase 32 A (a minority of models).
EV_CATALOGUE: tuple[EvModel, ...] = (
    EvModel("city-40", 40.0, 7.4, True, 0.10),
    EvModel("compact-52", 52.0, 11.0, False, 0.16),
    EvModel("compact-58", 58.0, 11.0, True, 0.12),
    EvModel("mid-64", 64.0, 11.0, False, 0.18),
    EvModel("mid-77", 77.0, 11.0, True, 0.14),
    EvModel("suv-82", 82.0, 11.0, False, 0.14),
    EvModel("van-75", 75.0, 22.0, False, 0.06),
    EvModel("large-100", 100.0, 22.0, True, 0.10),
)


@dataclass(frozen=True, slots=True)
class ArrivalComponent:
    """One mode of the arrival-time mixture and the dwell that goes with it."""

    weight: float
    mean_h: float  # hour of day
    sd_h: float
    dwell_median_h: float  # lognormal dwell ...
    dwell_sigma: float  # ... and its log-sd; ignored when the site has fixed departures


@dataclass(frozen=True, slots=True)
class SiteModel:
    name: str
    evses_per_station: int
    evse_kw: tuple[tuple[float, int, float], ...]  # (max kW, phases, weight)
    sessions_per_evse_day: float  # mean arrivals per EVSE and weekday
    weekend_factor: float
    components: tuple[ArrivalComponent, ...]
    departure_slots_h: tuple[float, ...] = ()  # fixed next-morning departures (depot)
    morning_departure: tuple[float, float] | None = None  # next-morning departure (mean, sd) h
    arrival_soc_beta: tuple[float, float] = (4.0, 4.0)
    target_soc: tuple[tuple[float, float], ...] = ((0.8, 0.5), (0.9, 0.3), (1.0, 0.2))
    overnight: bool = False  # episode runs noon to noon
    building_peak_kw_per_evse: float = 3.0
    building_shape: str = "office"
    demand_charge_per_kw: float = 15.0


SITES: dict[str, SiteModel] = {
    "workplace": SiteModel(
        name="workplace",
        evses_per_station=2,
        evse_kw=((11.0, 3, 0.75), (22.0, 3, 0.15), (7.4, 1, 0.10)),
        sessions_per_evse_day=1.05,
        weekend_factor=0.15,
        components=(
            ArrivalComponent(0.80, 8.4, 0.9, 8.3, 0.18),
            ArrivalComponent(0.20, 12.8, 1.6, 3.5, 0.45),
        ),
        arrival_soc_beta=(5.0, 3.0),
        building_peak_kw_per_evse=4.0,
        building_shape="office",
    ),
    "depot": SiteModel(
        name="depot",
        evses_per_station=1,
        evse_kw=((11.0, 3, 0.5), (22.0, 3, 0.5)),
        sessions_per_evse_day=0.9,
        weekend_factor=0.5,
        components=(ArrivalComponent(1.0, 18.2, 1.0, 12.0, 0.1),),
        departure_slots_h=(5.5, 6.0, 6.5, 7.0),
        arrival_soc_beta=(2.0, 4.0),
        target_soc=((0.9, 0.7), (1.0, 0.3)),
        overnight=True,
        building_peak_kw_per_evse=2.0,
        building_shape="depot",
    ),
    "public": SiteModel(
        name="public",
        evses_per_station=2,
        evse_kw=((11.0, 3, 0.6), (22.0, 3, 0.4)),
        sessions_per_evse_day=2.6,
        weekend_factor=0.85,
        components=(
            ArrivalComponent(0.35, 10.5, 1.8, 2.0, 0.6),
            ArrivalComponent(0.25, 14.0, 2.5, 1.5, 0.6),
            ArrivalComponent(0.40, 18.0, 1.6, 2.5, 0.7),
        ),
        arrival_soc_beta=(3.0, 3.0),
        building_peak_kw_per_evse=3.0,
        building_shape="retail",
    ),
    "residential": SiteModel(
        name="residential",
        evses_per_station=1,
        evse_kw=((7.4, 1, 0.4), (11.0, 3, 0.6)),
        sessions_per_evse_day=0.75,
        weekend_factor=1.0,
        components=(ArrivalComponent(1.0, 18.3, 1.7, 13.0, 0.2),),
        morning_departure=(7.6, 0.9),
        arrival_soc_beta=(4.0, 3.0),
        overnight=True,
        building_peak_kw_per_evse=1.5,
        building_shape="homes",
        demand_charge_per_kw=8.0,
    ),
}


def pick_ev(rng: np.random.Generator, v2g_share: float) -> EvModel:
    """A car from the catalogue; ``v2g_share`` is the chance that it is a V2G-capable model."""
    want_v2g = bool(rng.random() < v2g_share)
    pool = [m for m in EV_CATALOGUE if m.v2g == want_v2g] or list(EV_CATALOGUE)
    w = np.array([m.weight for m in pool])
    return pool[int(rng.choice(len(pool), p=w / w.sum()))]


def draw_arrival(rng: np.random.Generator, site: SiteModel) -> tuple[float, ArrivalComponent]:
    """An arrival hour (may fall outside 0-24 only by a little; callers clip) and its mode."""
    w = np.array([c.weight for c in site.components])
    comp = site.components[int(rng.choice(len(w), p=w / w.sum()))]
    hour = float(np.clip(rng.normal(comp.mean_h, comp.sd_h), 0.0, 23.75))
    return hour, comp


def draw_dwell_h(rng: np.random.Generator, comp: ArrivalComponent) -> float:
    return float(np.clip(comp.dwell_median_h * math.exp(rng.normal(0.0, comp.dwell_sigma)), 0.25, 16.0))


def draw_target_soc(rng: np.random.Generator, site: SiteModel) -> float:
    socs = np.array([t for t, _ in site.target_soc])
    w = np.array([p for _, p in site.target_soc])
    return float(rng.choice(socs, p=w / w.sum()))


def draw_arrival_soc(rng: np.random.Generator, site: SiteModel) -> float:
    a, b = site.arrival_soc_beta
    return float(np.clip(0.05 + 0.9 * rng.beta(a, b), 0.05, 0.95))


def deliverable_kwh(capacity_kwh: float, soc: float, max_kw: float, eff: float, dwell_s: float,
                    evse_max_kw: float | None = None) -> float:
    """Energy a battery rated ``max_kw`` can take in ``dwell_s`` with the CC-CV taper, no site
    limit, offered ``evse_max_kw`` (None: its own rating). The taper runs on the battery's own
    rating, as the simulated EV's does: a 22 kW car on an 11 kW EVSE keeps 11 kW until its
    acceptance falls below that."""
    b = EvBattery(capacity_kwh=capacity_kwh, soc=soc, max_charge_kw=max_kw, eff_charge=eff)
    b.step(max_kw if evse_max_kw is None else min(max_kw, evse_max_kw), dwell_s)
    return b.stored_kwh


def building_shape(kind: str, hour: float) -> float:
    """Relative building load (peak about 1) at a local hour, before weather and noise."""
    h = hour % 24.0

    def bump(center: float, width: float) -> float:
        return math.exp(-0.5 * ((h - center) / width) ** 2)

    if kind == "office":
        day = 1.0 / (1.0 + math.exp(-(h - 7.5) * 2.0)) * 1.0 / (1.0 + math.exp((h - 18.0) * 1.5))
        return 0.3 + 0.62 * day + 0.08 * bump(12.5, 1.0)
    if kind == "depot":
        return 0.3 + 0.5 * bump(11.0, 3.5) + 0.25 * bump(19.0, 1.5)
    if kind == "retail":
        day = 1.0 / (1.0 + math.exp(-(h - 9.0) * 2.0)) * 1.0 / (1.0 + math.exp((h - 20.5) * 2.0))
        return 0.3 + 0.65 * day
    # homes: morning and evening peaks
    return 0.3 + 0.3 * bump(7.5, 1.0) + 0.7 * bump(19.5, 1.8)


# A day-ahead temperature forecast misses the day's heat by about 40 % of the day-to-day spread
# (so the heat factor, N(0, 1) per day, is forecast with an error of N(0, 0.4)).
FORECAST_HEAT_SD = 0.4


def _cooling(heat: float, h: float) -> float:
    """Afternoon cooling on a day of ``heat`` (0: a usual day) at local hour ``h``."""
    return 1.0 + 0.12 * max(0.0, heat + 0.5) * math.exp(-0.5 * ((h - 15.5) / 2.5) ** 2)


def building_load(
    rng: np.random.Generator, kind: str, peak_kw: float, start_hour: float, steps: int, step_s: int
) -> list[float]:
    """A load series: daily shape x a weather factor per day (hotter days, more afternoon
    cooling) + AR(1) noise, the way metered building load wanders around its daily pattern."""
    return building_load_and_forecast(rng, None, kind, peak_kw, start_hour, steps, step_s)[0]


def building_load_and_forecast(
    rng: np.random.Generator,
    forecast_rng: np.random.Generator | None,
    kind: str,
    peak_kw: float,
    start_hour: float,
    steps: int,
    step_s: int,
    weekend_factor: float = 1.0,
    first_weekday: int = 0,
) -> tuple[list[float], list[float]]:
    """The load series of :func:`building_load` (the same draws from ``rng``) and the day-ahead
    forecast a building energy system would send for it: the same shape, the cooling of a
    forecast of each day's heat (``heat + N(0, FORECAST_HEAT_SD)``, drawn from ``forecast_rng`` so
    that ``rng`` and every episode drawn from it stay as they were) and no noise, which no
    forecast knows in advance. Without ``forecast_rng`` the forecast is the weather-exact shape.
    ``weekend_factor`` scales Saturdays and Sundays (``first_weekday``: the weekday of the day
    ``start_hour`` counts from, Monday 0); it draws nothing, so every other draw stays the seed's."""
    load: list[float] = []
    forecast: list[float] = []
    noise = 0.0
    days = math.ceil(steps * step_s / 86_400) + 2
    heat = rng.normal(0.0, 1.0, size=days)
    heat_fc = heat + (forecast_rng.normal(0.0, FORECAST_HEAT_SD, size=days) if forecast_rng is not None else 0.0)
    floor = 0.05 * peak_kw
    for i in range(steps):
        hour = start_hour + i * step_s / 3600.0
        day = int(hour // 24)
        h = hour % 24
        base = peak_kw * building_shape(kind, h) * (weekend_factor if (first_weekday + day) % 7 >= 5 else 1.0)
        noise = 0.92 * noise + rng.normal(0.0, 0.025)
        load.append(round(max(base * _cooling(heat[day], h) * (1.0 + noise), floor), 2))
        forecast.append(round(max(base * _cooling(heat_fc[day], h), floor), 2))
    return load, forecast
