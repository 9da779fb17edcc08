"""Small hand-checkable planning inputs for the scheduler's tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from gateway.scheduler.problem import SiteInputs, SlotInput, uniform_grid

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def site(prices: list[float], *, limit: float = 100.0, building: float = 0.0, export_price: float = 0.0,
         pay: list[float] | None = None, demand: float = 0.0, peak0: float = 0.0, wear: float = 0.03,
         penalty: float = 10.0, export_limit: float = 100.0, step_s: float = 3600.0) -> SiteInputs:
    n = len(prices)
    return SiteInputs(
        grid=uniform_grid(T0, step_s, n), import_price=np.array(prices, dtype=float),
        export_price=np.full(n, export_price), building_load_kw=np.full(n, building),
        import_limit_kw=np.full(n, limit), export_limit_kw=np.full(n, export_limit),
        demand_charge_per_kw=demand, peak_so_far_kw=peak0,
        export_payment_per_kwh=np.array(pay if pay is not None else [0.0] * n, dtype=float),
        wear_cost_per_kwh=wear, unmet_penalty_per_kwh=penalty,
    )


def ev(n: int, *, key: int = 1, steps: int | None = None, energy: float = 10.0, target: float = 20.0,
       capacity: float = 60.0, reserve: float = 0.0, kw: float = 11.0, discharge: bool = False,
       eff: float = 1.0) -> SlotInput:
    conn = np.zeros(n, dtype=bool)
    conn[: (n if steps is None else steps)] = True
    return SlotInput(key=("cs", key), connected=conn, energy_kwh=energy, capacity_kwh=capacity,
                     target_energy_kwh=target, reserve_energy_kwh=reserve, max_charge_kw=kw,
                     max_discharge_kw=kw if discharge else 0.0, eff_charge=eff, eff_discharge=eff,
                     discharge_allowed=discharge)
