"""From the live site picture (:class:`gateway.state.SiteState`) to the LP's inputs. Pure.

One slot per known EVSE in sorted key order, so the problem's shape changes only when the site
does. An EVSE with no session is a slot that is never connected. What the gateway knows about a
session (driver preferences over the EV's ISO 15118 needs, ``SiteState.announced``) becomes a
:class:`gateway.scheduler.slots.SessionView`, and the same :func:`gateway.scheduler.slots.slot_input`
the offline evaluator's MPC uses turns it into a slot, filling what nobody said from the
:class:`gateway.scheduler.forecast.SessionForecaster` that the live scheduler feeds with every
completed session. Site prices, limits and events go through the evaluator's
:func:`gateway.scheduler.inputs.site_inputs` too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from gateway.config import Settings
from gateway.domain import ChargeMode, DischargeDialect, Session
from gateway.ocpp.defaults import default_limit_kw
from gateway.scheduler import inputs
from gateway.scheduler.forecast import SessionForecaster, planning_forecaster
from gateway.scheduler.problem import SiteInputs, SlotInput, TimeGrid, make_grid
from gateway.scheduler.slots import SessionView, SlotRules, slot_input
from gateway.state import EvseState, Resolved, SiteState

# Efficiency assumed for an EV that does not tell (SlotInput's default; ISO 15118 does not carry it).


def new_forecaster(settings: Settings) -> SessionForecaster:
    """The evaluator's MPC forecaster, with the site's configured default need."""
    return planning_forecaster(settings.default_energy_kwh)


@dataclass(frozen=True, slots=True)
class SlotMeta:
    """What the profile step needs to know about each slot besides its power series."""

    key: tuple[str, int]
    session: Session | None
    resolved: Resolved | None
    delivered_kwh: float  # energy into the EV so far (meter)
    fixed_kw: float | None  # measured power of an EVSE ignoring its limit (planned as fixed)


def building_forecast(state: SiteState) -> Callable[[datetime], float]:
    """The building-load forecast pushed to the site (step function), else the load measured now."""
    fc = sorted(state.building_load_forecast)
    now_kw = state.building_load_kw

    def at(when: datetime) -> float:
        if not fc:
            return now_kw
        vals = [kw for ts, kw in fc if ts <= when]
        return vals[-1] if vals else fc[0][1]

    return at


def site_inputs(state: SiteState, now: datetime, settings: Settings) -> SiteInputs:
    # The demand charge is quoted per kW-month; the plan sees one horizon of it (a day of a 30-day
    # month), as the offline evaluator does per simulated day. Priced in full, a rise of the peak
    # would outweigh any driver's missed kWh and the plan would drain parked cars to shave the
    # building's peak (measured: the demo delivered a third of the energy asked for).
    horizon = timedelta(hours=settings.horizon_h)
    return inputs.site_inputs(
        make_grid(now, settings.horizon_h * 3600.0), tariff=state.tariff, limits=state.limits,
        events=list(state.grid_events.values()), building_kw=building_forecast(state),
        demand_charge_per_kw=inputs.prorated_demand_charge(state.tariff.demand_charge_per_kw, horizon),
        peak_so_far_kw=state.peak_import_kw,
        wear_cost_per_kwh=settings.site.wear_cost_per_kwh,
        unmet_penalty_per_kwh=settings.unmet_energy_penalty_per_kwh, price_overrides=state.price_overrides,
    )


def session_view(st: EvseState, s: Session, r: Resolved, settings: Settings,
                 limit_sent_kw: float | None) -> SessionView:
    """What the gateway knows about the session ``s`` on ``st``; guesses are left ``None``."""
    spec = st.spec
    delivered = s.stored_kwh(settings.ev_efficiency)
    max_c = spec.max_charge_kw
    if s.needs.ev_max_charge_kw is not None:
        max_c = min(max_c, s.needs.ev_max_charge_kw)
    max_d = 0.0
    if spec.bidirectional and st.dialect == DischargeDialect.NEGATIVE_LIMIT and r.allow_discharge:
        max_d = spec.max_discharge_kw
        if s.needs.ev_max_discharge_kw is not None:
            max_d = min(max_d, s.needs.ev_max_discharge_kw)
    known = r.capacity_kwh is not None and r.soc is not None
    cap = r.capacity_kwh if known else None
    e_now = min(max(r.soc or 0.0, 0.0), 1.0) * (cap or 0.0) if known else None
    fixed: float | None = None
    if limit_sent_kw is not None and s.power_kw > limit_sent_kw + settings.noncompliance_tolerance_kw:
        fixed = min(s.power_kw, spec.max_charge_kw)
    return SessionView(
        key=spec.key, arrival=s.started_at, delivered_kwh=max(delivered, 0.0), max_charge_kw=max(max_c, 0.0),
        max_discharge_kw=max(max_d, 0.0), eff_charge=settings.ev_efficiency, eff_discharge=settings.ev_efficiency,
        full=False, departure=r.departure if r.departure_source != "forecast" else None,
        energy_kwh=e_now, capacity_kwh=cap,
        need_kwh=r.energy_wanted_kwh if r.energy_source != "forecast" else None,
        # Unknown battery: energy is counted from plug-in, so a floor of 0 is what it came with.
        reserve_kwh=r.reserve_soc * cap if cap is not None else 0.0,
        charge_now=r.mode == ChargeMode.CHARGE_NOW, fixed_kw=fixed, departure_firm=r.departure_source == "driver",
    )


def slot_for(
    st: EvseState, state: SiteState, grid: TimeGrid, now: datetime, settings: Settings,
    limit_sent_kw: float | None, forecaster: SessionForecaster, rules: SlotRules = SlotRules(),
) -> tuple[SlotInput, SlotMeta]:
    s = st.session
    if s is None:
        return slot_input(None, st.spec.key, grid, now, forecaster, settings.site.name), \
            SlotMeta(st.spec.key, None, None, 0.0, None)
    r = state.resolve(s)
    v = session_view(st, s, r, settings, limit_sent_kw)
    slot = slot_input(v, st.spec.key, grid, now, forecaster, settings.site.name, rules)
    return slot, SlotMeta(st.spec.key, s, r, v.delivered_kwh, v.fixed_kw)


def build(
    state: SiteState, now: datetime, settings: Settings, limits_sent_kw: dict[tuple[str, int], float],
    forecaster: SessionForecaster | None = None, rules: SlotRules = SlotRules(),
) -> tuple[SiteInputs, list[SlotInput], list[SlotMeta]]:
    fc = forecaster if forecaster is not None else new_forecaster(settings)
    site = site_inputs(state, now, settings)
    if settings.discharge_only_in_grid_events:
        site.discharge_mask = site.export_payment_per_kwh > 0
    reserve_for_plug_ins(site, state, settings)
    slots: list[SlotInput] = []
    metas: list[SlotMeta] = []
    for key in sorted(state.evses):
        slot, meta = slot_for(state.evses[key], state, site.grid, now, settings, limits_sent_kw.get(key), fc, rules)
        slots.append(slot)
        metas.append(meta)
    return site, slots, metas


def reserve_for_plug_ins(site: SiteInputs, state: SiteState, settings: Settings) -> None:
    """Keep room under the import limit for EVs that plug into idle EVSEs: each draws its
    TxDefaultProfile limit (gateway/ocpp/defaults.py) until its own plan arrives, and the profiles
    already sent to the others hold until the re-plan, at whatever step the plug-in falls. So the
    room is kept over the whole horizon; it shrinks as EVSEs fill, and the next re-plan after a
    plug-in gives it to the newcomer."""
    idle = sum(1 for e in state.evses.values() if e.session is None)
    if idle == 0:
        return
    per_evse = default_limit_kw(settings.safe_limit_kw, state.limits.import_kw, len(state.evses))
    site.import_limit_kw = np.maximum(site.import_limit_kw - idle * per_evse, 0.0)


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

