"""A small episode generator for the scheduler's tests only (the real one is simulators/scenario.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from gateway.domain import EvseSpec, GridEvent, GridEventKind, SiteLimits, Tariff, TouPeriod
from gateway.episode import Arrival, Episode, LoadSeries, StationSpec

TOU = Tariff(
    periods=(
        TouPeriod(0, 8, 0.12, 0.04),
        TouPeriod(8, 16, 0.20, 0.06),
        TouPeriod(16, 21, 0.38, 0.12),
        TouPeriod(21, 24, 0.16, 0.05),
    ),
    demand_charge_per_kw=15.0,
)


def small_episode(n_evse: int = 4, seed: int = 0, limit_kw: float = 40.0, noise_h: float = 1.0,
                  start: datetime | None = None, grid_event: bool = True) -> Episode:
    """One workplace day: EVs arrive 7-10 h, stay 6-10 h, ask for 10-30 kWh."""
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 7, 1, tzinfo=UTC)
    evses = tuple(EvseSpec("cs1", i + 1, 11.0, 11.0, bidirectional=(i % 2 == 0)) for i in range(n_evse))
    arrivals = []
    for i in range(n_evse):
        arr = start + timedelta(hours=float(rng.uniform(7, 10)))
        dep = arr + timedelta(hours=float(rng.uniform(6, 10)))
        iso = bool(i % 2 == 0)
        announced = dep + timedelta(hours=float(rng.normal(0, noise_h))) if iso else None
        arrivals.append(Arrival(
            id=f"ev{i}", station_id="cs1", evse_id=i + 1, arrival=arr, departure=dep,
            arrival_soc=float(rng.uniform(0.2, 0.5)), capacity_kwh=60.0,
            announced_departure=announced, energy_kwh=float(rng.uniform(10, 30)), reserve_soc=0.2,
            max_charge_kw=11.0, max_discharge_kw=11.0 if iso else 0.0, bidirectional=iso, iso15118=iso,
        ))
    steps = 24 * 4
    hours = np.arange(steps) / 4
    load = 10 + 8 * ((hours >= 8) & (hours < 18)) + rng.uniform(0, 2, steps)
    events = ()
    if grid_event:
        events = (GridEvent("ev-x", start + timedelta(hours=17), start + timedelta(hours=18),
                            GridEventKind.EXPORT_REQUEST, payment_per_kwh=0.5),)
    return Episode(
        start=start, end=start + timedelta(days=1), limits=SiteLimits(limit_kw, 20.0), tariff=TOU,
        stations=(StationSpec("cs1", evses),), arrivals=tuple(arrivals),
        building_load=LoadSeries(start, 900, tuple(float(x) for x in load)), grid_events=events,
        name=f"test-{seed}", site_type="workplace", seed=seed,
    )
