"""The EV battery as the charger sees it. Pure: no I/O, no clock (callers pass durations).

Power is grid side (what the EVSE meter sees), positive = charge, negative = discharge. The battery
stores ``grid * eff_charge`` when charging and gives ``grid / eff_discharge`` when discharging.
Above ``cv_soc`` the charger is in the constant-voltage phase: the power the EV accepts falls
linearly towards nothing at 100 %, and the charge ends once it is below ``taper_cutoff`` of its
maximum (a termination current: 99.6 % by default); it stops at ``max_soc`` (the car's own
charge limit, e.g. the driver's target) if that comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.episode import EV_CV_SOC, EV_TAPER_CUTOFF

SUBSTEP_S = 10.0  # integration step; the taper changes little within 10 s at any AC power


@dataclass(slots=True)
class EvBattery:
    capacity_kwh: float
    soc: float
    max_charge_kw: float
    max_discharge_kw: float = 0.0
    eff_charge: float = 0.92
    eff_discharge: float = 0.92
    reserve_soc: float = 0.0  # discharge never takes the battery below this
    max_soc: float = 1.0
    cv_soc: float = EV_CV_SOC
    taper_cutoff: float = EV_TAPER_CUTOFF
    # Running totals since plug-in, kWh.
    stored_kwh: float = 0.0  # battery side, charged in
    drawn_kwh: float = 0.0  # battery side, discharged out
    imported_kwh: float = 0.0  # grid side
    exported_kwh: float = 0.0  # grid side

    def __post_init__(self) -> None:
        if self.capacity_kwh <= 0:
            raise ValueError("battery capacity must be positive")
        if not 0.0 < self.eff_charge <= 1.0 or not 0.0 < self.eff_discharge <= 1.0:
            raise ValueError("efficiencies must be in (0, 1]")
        self.soc = min(max(self.soc, 0.0), 1.0)

    @property
    def energy_kwh(self) -> float:
        return self.soc * self.capacity_kwh

    def charge_limit_kw(self) -> float:
        """The grid-side power the EV accepts now (CC up to cv_soc, then CV taper)."""
        if self.soc >= self.max_soc - 1e-9:
            return 0.0
        if self.soc <= self.cv_soc:
            return self.max_charge_kw
        # The taper is cell physics: it runs towards 100 %, whatever charge limit the car has.
        span = max(1.0 - self.cv_soc, 1e-9)
        share = (1.0 - self.soc) / span
        return self.max_charge_kw * share if share >= self.taper_cutoff else 0.0

    def discharge_limit_kw(self) -> float:
        """The grid-side power the EV gives now (0 at or below the reserve SoC)."""
        if self.max_discharge_kw <= 0 or self.soc <= self.reserve_soc + 1e-9:
            return 0.0
        return self.max_discharge_kw

    def step(self, power_kw: float, dt_s: float) -> float:
        """Run ``dt_s`` seconds at (at most) ``power_kw`` grid side; return the average grid power."""
        if dt_s <= 0 or power_kw == 0:
            return 0.0
        done = 0.0
        grid_kwh = 0.0
        while done < dt_s - 1e-9:
            h = min(SUBSTEP_S, dt_s - done) / 3600.0
            if power_kw < 0 or (power_kw > 0 and self.soc < min(self.cv_soc, self.max_soc)):
                # Constant power until the CV point (charging) or the reserve (discharging, where
                # the clamp below stops it exactly): one step covers the whole stretch.
                p = abs(power_kw)
                if power_kw > 0:
                    p = min(p, self.max_charge_kw)
                    to_cv = (min(self.cv_soc, self.max_soc) - self.soc) * self.capacity_kwh
                    stretch_h = to_cv / max(p * self.eff_charge, 1e-9)
                else:
                    stretch_h = (dt_s - done) / 3600.0
                h = min((dt_s - done) / 3600.0, max(h, stretch_h))
            if power_kw > 0:
                p = min(power_kw, self.charge_limit_kw())
                if p <= 0:
                    break  # full (at its charge limit): nothing more flows
                room = (self.max_soc - self.soc) * self.capacity_kwh
                e_batt = min(p * self.eff_charge * h, max(room, 0.0))
                e_grid = e_batt / self.eff_charge
                self.stored_kwh += e_batt
                self.imported_kwh += e_grid
                self.soc += e_batt / self.capacity_kwh
                grid_kwh += e_grid
            elif power_kw < 0:
                p = min(-power_kw, self.discharge_limit_kw())
                if p <= 0:
                    break  # at the reserve
                room = (self.soc - self.reserve_soc) * self.capacity_kwh
                e_batt = min(p / self.eff_discharge * h, max(room, 0.0))
                e_grid = e_batt * self.eff_discharge
                self.drawn_kwh += e_batt
                self.exported_kwh += e_grid
                self.soc -= e_batt / self.capacity_kwh
                grid_kwh -= e_grid
            done += h * 3600.0
        self.soc = min(max(self.soc, 0.0), 1.0)
        return grid_kwh / (dt_s / 3600.0)

    def power_for(self, requested_kw: float) -> float:
        """The grid power that would flow now for a requested power (no time passes)."""
        if requested_kw > 0:
            return min(requested_kw, self.charge_limit_kw())
        if requested_kw < 0:
            return -min(-requested_kw, self.discharge_limit_kw())
        return 0.0
