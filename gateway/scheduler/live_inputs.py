"""From the live site picture (:class:`gateway.state.SiteState`) to the LP's inputs. Pure.

One slot per known EVSE, so the problem's shape changes only when the site does. An EVSE with no
session is a slot that is never connected. A session's departure and need come from the driver,
else the EV (ISO 15118), else the forecast (``SiteState.resolve``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from gateway.config import Settings
from gateway.domain import ChargeMode, DischargeDialect, GridEventKind, Session
from gateway.scheduler.problem import SiteInputs, SlotInput, TimeGrid, make_grid
from gateway.state import EvseState, Resolved, SiteState

# An EV past its declared departure is still here: plan it as leaving within this.
OVERSTAY_GRACE_S = 900.0


@dataclass(frozen=True, slots=True)
class SlotMeta:
    """What the profile step needs to know about each slot besides its power series."""

    key: tuple[str, int]
    session: Session | None
    resolved: Resolved | None
    delivered_kwh: float  # energy into the EV so far (meter)
    fixed_kw: float | None  # measured power of an EVSE ignoring its limit (planned as fixed)


def site_inputs(state: SiteState, now: datetime, settings: Settings) -> SiteInputs:
    grid = make_grid(now, settings.horizon_h * 3600.0)
    starts = grid.starts()
    n = len(starts)
    imp_price = np.empty(n)
    exp_price = np.empty(n)
    for i, t in enumerate(starts):
        imp_price[i], exp_price[i] = state.tariff.prices_at(t)
        for lo, hi, ip, xp in state.price_overrides:
            if lo <= t < hi:
                imp_price[i], exp_price[i] = ip, xp
    building = np.full(n, state.building_load_kw)
    if state.building_load_forecast:
        fc = sorted(state.building_load_forecast)
        for i, t in enumerate(starts):
            vals = [kw for ts, kw in fc if ts <= t]
            building[i] = vals[-1] if vals else fc[0][1]
    imp_lim = np.full(n, state.limits.import_kw)
    exp_lim = np.full(n, state.limits.export_kw)
    pay = np.zeros(n)
    for g in state.grid_events.values():
        for i, t in enumerate(starts):
            step_end = t + timedelta(seconds=float(grid.durations_s[i]))
            if g.start < step_end and t < g.end:
                if g.kind == GridEventKind.IMPORT_CAP and g.cap_kw is not None:
                    imp_lim[i] = min(imp_lim[i], g.cap_kw)
                elif g.kind == GridEventKind.EXPORT_REQUEST:
                    pay[i] = max(pay[i], g.payment_per_kwh)
    return SiteInputs(
        grid=grid, import_price=imp_price, export_price=exp_price, building_load_kw=building,
        import_limit_kw=imp_lim, export_limit_kw=exp_lim,
        demand_charge_per_kw=state.tariff.demand_charge_per_kw, peak_so_far_kw=state.peak_import_kw,
        export_payment_per_kwh=pay, wear_cost_per_kwh=settings.site.wear_cost_per_kwh,
        unmet_penalty_per_kwh=settings.unmet_energy_penalty_per_kwh,
    )


def _connected_until(grid: TimeGrid, now: datetime, departure: datetime) -> np.ndarray:
    starts = grid.starts()
    return np.array([t < departure for t in starts], dtype=bool)


def slot_for(
    st: EvseState, state: SiteState, grid: TimeGrid, now: datetime, settings: Settings,
    limit_sent_kw: float | None,
) -> tuple[SlotInput, SlotMeta]:
    spec = st.spec
    s = st.session
    n = len(grid)
    if s is None:
        slot = SlotInput(key=spec.key, connected=np.zeros(n, dtype=bool), energy_kwh=0.0, capacity_kwh=1.0,
                         target_energy_kwh=0.0, reserve_energy_kwh=0.0, max_charge_kw=spec.max_charge_kw,
                         max_discharge_kw=0.0)
        return slot, SlotMeta(spec.key, None, None, 0.0, None)
    r = state.resolve(s)
    delivered = s.energy_in_kwh - s.energy_out_kwh
    max_c = spec.max_charge_kw
    if s.needs.ev_max_charge_kw is not None:
        max_c = min(max_c, s.needs.ev_max_charge_kw)
    can_discharge = (spec.bidirectional and st.dialect == DischargeDialect.NEGATIVE_LIMIT and r.allow_discharge)
    max_d = 0.0
    if can_discharge:
        max_d = spec.max_discharge_kw
        if s.needs.ev_max_discharge_kw is not None:
            max_d = min(max_d, s.needs.ev_max_discharge_kw)
    remaining = max(0.0, r.energy_wanted_kwh - delivered)
    if r.capacity_kwh is not None and r.soc is not None:
        cap = r.capacity_kwh
        e0 = min(max(r.soc, 0.0), 1.0) * cap
        target = min(cap, e0 + remaining)
        reserve = r.reserve_soc * cap
    else:
        # Unknown battery: count energy from plug-in; never discharge below what it came with.
        cap = max(r.energy_wanted_kwh, delivered) + settings.default_ev_room_kwh
        e0 = max(delivered, 0.0)
        target = e0 + remaining
        reserve = 0.0
    departure = r.departure
    if departure <= now:
        departure = now + timedelta(seconds=OVERSTAY_GRACE_S)
    if r.mode == ChargeMode.CHARGE_NOW and max_c > 0:
        # "As fast as the site allows": a deadline as early as full power could make it.
        hours = remaining / (max_c * 0.92) if remaining > 0 else 0.25
        departure = min(departure, now + timedelta(hours=max(hours, 0.25)))
        max_d = 0.0
    fixed: float | None = None
    if limit_sent_kw is not None and s.power_kw > limit_sent_kw + settings.noncompliance_tolerance_kw:
        # The EVSE draws more than it was told: plan its measured draw as fixed so the other
        # slots make room for it and the site limit still holds.
        fixed = min(s.power_kw, spec.max_charge_kw)
    slot = SlotInput(
        key=spec.key, connected=_connected_until(grid, now, departure), energy_kwh=e0, capacity_kwh=cap,
        target_energy_kwh=target, reserve_energy_kwh=min(reserve, e0), max_charge_kw=max(max_c, 0.0),
        max_discharge_kw=max_d, min_charge_kw=fixed or 0.0, discharge_allowed=max_d > 0,
    )
    if fixed is not None:
        slot.max_charge_kw = max(fixed, 0.0)
    return slot, SlotMeta(spec.key, s, r, delivered, fixed)


def build(
    state: SiteState, now: datetime, settings: Settings, limits_sent_kw: dict[tuple[str, int], float],
) -> tuple[SiteInputs, list[SlotInput], list[SlotMeta]]:
    site = site_inputs(state, now, settings)
    slots: list[SlotInput] = []
    metas: list[SlotMeta] = []
    for key in sorted(state.evses):
        slot, meta = slot_for(state.evses[key], state, site.grid, now, settings, limits_sent_kw.get(key))
        slots.append(slot)
        metas.append(meta)
    return site, slots, metas


def inputs_digest(site: SiteInputs, slots: list[SlotInput]) -> str:
    import hashlib

    h = hashlib.sha256()
    for arr in (site.import_price, site.export_price, site.building_load_kw, site.import_limit_kw,
                site.export_limit_kw, site.export_payment_per_kwh, site.grid.durations_s):
        h.update(np.ascontiguousarray(arr, dtype=float).tobytes())
    h.update(f"{site.grid.start.isoformat()}|{site.peak_so_far_kw}|{site.demand_charge_per_kw}".encode())
    for sl in slots:
        h.update(repr((sl.key, sl.energy_kwh, sl.capacity_kwh, sl.target_energy_kwh, sl.reserve_energy_kwh,
                       sl.max_charge_kw, sl.max_discharge_kw, sl.min_charge_kw, sl.discharge_allowed,
                       int(sl.connected.sum()))).encode())
    return h.hexdigest()

