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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from gateway import billing
from gateway.config import Settings
from gateway.domain import ChargeMode, DischargeDialect, Session, TxKey
from gateway.ocpp.defaults import default_limit_kw
from gateway.scheduler import inputs
from gateway.scheduler.building import BuildingProfile, anchored
from gateway.scheduler.forecast import SessionForecaster, planning_forecaster
from gateway.scheduler.peak_price import demand_pricing
from gateway.scheduler.problem import SiteInputs, SlotInput, TimeGrid, make_grid
from gateway.scheduler.slots import SessionView, SlotRules, slot_input, taper_kw_per_kwh
from gateway.state import EvseState, Resolved, SiteState

# Efficiency assumed for an EV that does not tell (SlotInput's default; ISO 15118 does not carry it).


def new_forecaster(settings: Settings) -> SessionForecaster:
    """The evaluator's MPC forecaster, with the site's configured default need and time zone."""
    fc = planning_forecaster(settings.default_energy_kwh)
    fc.tz = settings.site.timezone
    return fc


@dataclass(frozen=True, slots=True)
class Observed:
    """What the live loop saw of a session besides the site state (:class:`gateway.scheduler.mpc.MpcScheduler`)."""

    full: bool = False  # the EV stopped taking the energy it was offered (its station said SuspendedEV)
    read_at: datetime | None = None  # when its meter was last read (the gateway's clock)
    # The limit (kW, None: no planned profile) in force from each moment on, since ``read_at``.
    limits: tuple[tuple[datetime, float | None], ...] = ()
    ev_max_kw: float | None = None  # the EV's own power limit as its draw showed it (slots.DrawSeen)
    # The session's last SoC reading: when (the gateway's clock), and the meter as it stood then
    # (battery-side kWh since plug-in, and when that had been read). A SoC can come without the
    # energy registers (MeterValues), so the energy since it is not the flow since ``read_at``.
    soc_at: datetime | None = None
    soc_meter_kwh: float = 0.0
    soc_meter_read_at: datetime | None = None


# No more than this is extrapolated past a meter reading.
EXTRAPOLATE_MAX = timedelta(hours=1)


def flow_since_reading(obs: Observed, now: datetime, power_kw: float, max_charge_kw: float,
                       max_discharge_kw: float, eff: float) -> float:
    """Battery-side energy (kWh, negative: out) that flowed since the last meter reading, from the
    limits the EVSE had and the power last measured. Meter values come every few minutes (every 15
    in the demo, and later under load): planned from the reading alone, an EV being discharged looks
    full for a quarter of an hour, and the plan went on discharging EVs that were about to leave.
    Leaning to what is safe for the driver: a discharge order counts as obeyed in full, a charge
    as no more than the EV was last seen taking."""
    if obs.read_at is None or obs.read_at >= now:
        return 0.0
    start = max(obs.read_at, now - EXTRAPOLATE_MAX)
    points = sorted((t, lim) for t, lim in obs.limits if t < now)
    if not points or points[0][0] > start:
        points.insert(0, (start, None))
    kwh = 0.0
    for i, (t, lim) in enumerate(points):
        a = max(t, start)
        b = points[i + 1][0] if i + 1 < len(points) else now
        if b <= a:
            continue
        h = (b - a).total_seconds() / 3600.0
        if lim is not None and lim < 0:
            kwh -= min(-lim, max_discharge_kw) / eff * h
        else:
            kwh += min(max(power_kw, 0.0), max_charge_kw if lim is None else lim) * eff * h
    return kwh


@dataclass(frozen=True, slots=True)
class SlotMeta:
    """What the profile step needs to know about each slot besides its power series."""

    key: tuple[str, int]
    session: Session | None
    resolved: Resolved | None
    delivered_kwh: float  # energy into the EV so far (meter)
    # The draw planned as fixed: an EVSE ignoring its limit (its measured power), or one whose limit
    # a push cannot set now (the most it may draw: MpcScheduler._uncontrolled).
    fixed_kw: float | None


@dataclass(frozen=True, slots=True)
class Uncontrolled:
    """An EVSE whose limit a push cannot set now (offline, a failed or refused push): the range
    its power may take from now on, from the limits it may be running (MpcScheduler._uncontrolled).
    The import side counts it at ``most_kw``, the export side at ``least_kw``: one offline EVSE
    running a discharge limit must not leave the others room to export past the site's limit."""

    most_kw: float  # >= 0
    least_kw: float = 0.0  # <= 0: a discharge limit it may be running


def pushed_forecast(points: list[tuple[datetime, float]]) -> Callable[[datetime], float]:
    """A pushed forecast as a step function: each value holds from its time to the next one's;
    before the first, the first."""
    fc = sorted(points)

    def at(when: datetime) -> float:
        vals = [kw for ts, kw in fc if ts <= when]
        return vals[-1] if vals else fc[0][1]

    return at


def building_forecast(state: SiteState, now: datetime,
                      learned: BuildingProfile | None = None) -> Callable[[datetime], float]:
    """The building-load forecast planned with: the one the energy system pushed (a step
    function), anchored to the load measured now as the learned profile is
    (:func:`gateway.scheduler.building.anchored`), since a day-ahead forecast misses what the
    building does today and the reading now shows how much; without one, the profile learned from
    the site's readings (what the evaluator's MPC plans with by default), else the load measured now."""
    now_kw = state.building_load_kw
    if not state.building_load_forecast:
        return learned.forecast(now, now_kw) if learned is not None else (lambda when: now_kw)
    return anchored(pushed_forecast(state.building_load_forecast), now, now_kw)


def site_inputs(state: SiteState, now: datetime, settings: Settings,
                building: BuildingProfile | None = None, needed_peaks: Sequence[float] = ()) -> SiteInputs:
    """``needed_peaks``: the peaks the site's finished days needed (peak_price.NeededPeaks), which
    price a rise of the billing period's peak (peak_price.demand_pricing)."""
    horizon = timedelta(hours=settings.horizon_h)
    site = settings.site
    start, end = (billing.period_start(now, site.billing_day, site.timezone),
                  billing.period_end(now, site.billing_day, site.timezone))
    peak0 = state.demand.peak_at(now)
    events = list(state.grid_events.values())
    # A departure a driver set is firm (no margin, no spread: SessionView.departure_firm); the quarter
    # hour before it becomes a step boundary, so hourly steps do not plan the EV gone up to an hour early.
    # (A driver's departure is the preference itself, SiteState.resolve's first rule; read directly,
    # since resolving every session here would forecast the others' departures for nothing.)
    firm = [st.session.preferences.departure_time for st in state.evses.values()
            if st.session is not None and st.session.preferences.departure_time is not None]
    cuts = inputs.breakpoints(events, state.price_overrides, firm, now, state.tariff, now + horizon)
    demand, steps = demand_pricing(state.tariff.demand_charge_per_kw, now, horizon, start, end, peak0, needed_peaks)
    return inputs.site_inputs(
        make_grid(now, settings.horizon_h * 3600.0, breakpoints=cuts),
        tariff=state.tariff, limits=state.limits, events=events, building_kw=building_forecast(state, now, building),
        demand_charge_per_kw=demand, peak_price_steps=steps, peak_so_far_kw=peak0,
        period_end=end, wear_cost_per_kwh=site.wear_cost_per_kwh,
        unmet_penalty_per_kwh=settings.unmet_energy_penalty_per_kwh, price_overrides=state.price_overrides,
    )


def session_view(st: EvseState, s: Session, r: Resolved, settings: Settings,
                 limit_sent_kw: float | None, obs: Observed = Observed(), now: datetime | None = None,
                 uncontrolled_kw: float | None = None) -> SessionView:
    """What the gateway knows about the session ``s`` on ``st``; guesses are left ``None``. With
    ``obs`` and ``now``, the energy is carried forward from the last meter reading.
    ``uncontrolled_kw``: the most the EVSE may draw while the gateway cannot set its limit."""
    spec = st.spec
    delivered = s.stored_kwh(settings.ev_efficiency)
    max_c = spec.max_charge_kw
    if s.needs.ev_max_charge_kw is not None:
        max_c = min(max_c, s.needs.ev_max_charge_kw)
    if obs.ev_max_kw is not None:
        max_c = min(max_c, obs.ev_max_kw)
    max_d = 0.0
    # Only an EV that declared its discharge power (ISO 15118-20, carried in its needs) is planned
    # to discharge, unless the station, or else the site, says its EVs need not
    # (EvseState.discharge_undeclared_evs, Settings.discharge_undeclared_evs): a
    # bidirectional EVSE cannot make an EV that does not speak V2G give energy back, and a plan
    # counting on it pre-charges for, and keeps room for, energy it never gets.
    declared = s.needs.ev_max_discharge_kw
    undeclared_ok = (settings.discharge_undeclared_evs if st.discharge_undeclared_evs is None
                     else st.discharge_undeclared_evs)
    # A declared 0 W is an EV that says it gives nothing back, not one that did not say.
    if (spec.bidirectional and st.dialect == DischargeDialect.NEGATIVE_LIMIT and r.allow_discharge
            and (declared is not None or undeclared_ok)):
        max_d = min(spec.max_discharge_kw, declared) if declared is not None else spec.max_discharge_kw
    known = r.capacity_kwh is not None and r.soc is not None
    cap = r.capacity_kwh if known else None
    if not known and r.reserve_soc > 0:
        # A reserve is a floor on the battery's charge, which nobody told: the energy counted from
        # plug-in cannot show where it lies, so the EV is not discharged at all.
        max_d = 0.0
    e_now = min(max(r.soc or 0.0, 0.0), 1.0) * (cap or 0.0) if known else None
    if now is not None:
        flow = flow_since_reading(obs, now, s.power_kw, max(max_c, 0.0), max(max_d, 0.0), settings.ev_efficiency)
        gained = flow
        if s.soc is not None and obs.soc_at is not None and obs.soc_at <= now:
            # The battery was at the session's SoC when it was read; since then it gained what the
            # meter counts from that moment: the meter now (carried forward) less the meter then
            # (carried forward from its own reading to the SoC's). A SoC newer than the registers
            # is not counted again with the flow between them, nor an older one left behind by
            # the registers read after it.
            then = replace(obs, read_at=obs.soc_meter_read_at)
            at_soc = obs.soc_meter_kwh + flow_since_reading(then, obs.soc_at, s.power_kw, max(max_c, 0.0),
                                                            max(max_d, 0.0), settings.ev_efficiency)
            gained = delivered + flow - at_soc
        delivered += flow
        if e_now is not None and cap is not None:
            e_now = min(max(e_now + gained, 0.0), cap)
    full = obs.full
    fixed: float | None = None
    # Ignoring a limit is drawing more than it allows: an EV told to discharge that gives less
    # back, or none, draws nothing it was not allowed (a discharge limit allows up to 0 kW of
    # import), and is planned as usual, not frozen at its draw.
    if (not full and limit_sent_kw is not None
            and s.power_kw > max(limit_sent_kw, 0.0) + settings.noncompliance_tolerance_kw):
        fixed = min(s.power_kw, spec.max_charge_kw)
    if uncontrolled_kw is not None:
        # Planned at the most it may draw (or what it draws now, if more: nothing holds it to a
        # limit the gateway believes in), the others sharing only the headroom left. Also when
        # its EV last said it was full: an EV with its own charge timer may start drawing again
        # and the gateway cannot stop it.
        fixed = max(fixed or 0.0, min(uncontrolled_kw, max(max_c, 0.0)), min(s.power_kw, spec.max_charge_kw))
    return SessionView(
        key=spec.key, arrival=s.started_at, delivered_kwh=max(delivered, 0.0), max_charge_kw=max(max_c, 0.0),
        max_discharge_kw=max(max_d, 0.0), eff_charge=settings.ev_efficiency, eff_discharge=settings.ev_efficiency,
        full=full, departure=r.departure if r.departure_source != "forecast" else None,
        energy_kwh=e_now, capacity_kwh=cap, start_kwh=s.battery_start_kwh if known else None,
        high_kwh=s.high_soc * cap if cap is not None and s.high_soc is not None else None,
        need_kwh=r.energy_wanted_kwh if r.energy_source != "forecast" else None,
        # Unknown battery: energy is counted from plug-in, so a floor of 0 is what it came with.
        reserve_kwh=r.reserve_soc * cap if cap is not None else 0.0,
        charge_now=r.mode == ChargeMode.CHARGE_NOW, fixed_kw=fixed, departure_firm=r.departure_source == "driver",
        # The taper runs on the EV's own power, not the EVSE's (its declared limit where it told it).
        taper_kw_per_kwh=(taper_kw_per_kwh(cap, s.needs.ev_max_charge_kw or spec.max_charge_kw,
                                           settings.battery_taper_soc) if cap is not None else 0.0),
    )


def slot_for(
    st: EvseState, state: SiteState, grid: TimeGrid, now: datetime, settings: Settings,
    limit_sent_kw: float | None, forecaster: SessionForecaster, rules: SlotRules = SlotRules(),
    obs: Observed = Observed(), uncontrolled_kw: float | None = None,
) -> tuple[SlotInput, SlotMeta]:
    s = st.session
    if s is None:
        return slot_input(None, st.spec.key, grid, now, forecaster, settings.site.name), \
            SlotMeta(st.spec.key, None, None, 0.0, None)
    r = state.resolve(s)
    v = session_view(st, s, r, settings, limit_sent_kw, obs, now, uncontrolled_kw)
    forecaster.note_present(settings.site.name, s.tx_key, v.arrival, v.departure, v.need_kwh)
    slot = slot_input(v, st.spec.key, grid, now, forecaster, settings.site.name, rules)
    return slot, SlotMeta(st.spec.key, s, r, v.delivered_kwh, v.fixed_kw)


def build(
    state: SiteState, now: datetime, settings: Settings, limits_sent_kw: dict[tuple[str, int], float],
    forecaster: SessionForecaster | None = None, rules: SlotRules = SlotRules(),
    observed: Mapping[TxKey, Observed] | None = None, building: BuildingProfile | None = None,
    needed_peaks: Sequence[float] = (), uncontrolled: Mapping[tuple[str, int], Uncontrolled] | None = None,
) -> tuple[SiteInputs, list[SlotInput], list[SlotMeta]]:
    """The LP's inputs for the site now; ``observed``: what the live loop saw of each session
    (by transaction id); ``building``: the building's learned profile; ``needed_peaks``: the
    peaks finished days needed; ``uncontrolled``: EVSEs whose limit a push cannot set now
    (offline, a failed or refused push), with the range each may run."""
    fc = forecaster if forecaster is not None else new_forecaster(settings)
    site = site_inputs(state, now, settings, building, needed_peaks)
    if settings.discharge_only_in_grid_events:
        inputs.discharge_in_events_only(site)
    reserve_for_plug_ins(site, state, settings)
    slots: list[SlotInput] = []
    metas: list[SlotMeta] = []
    unc = uncontrolled or {}
    counted_above_least = 0.0  # over the uncontrolled EVSEs: the draw the plan counts, less the least they may run
    for key in sorted(state.evses):
        st = state.evses[key]
        obs = observed.get(st.session.tx_key, Observed()) if observed and st.session else Observed()
        u = unc.get(key)
        slot, meta = slot_for(st, state, site.grid, now, settings, limits_sent_kw.get(key), fc, rules, obs,
                              None if u is None else u.most_kw)
        slots.append(slot)
        metas.append(meta)
        if u is not None and meta.fixed_kw is not None and meta.session is not None:
            # The plan counts it at fixed_kw; on the export side it may be as low as least_kw (a
            # discharge limit still in force, or what it discharges now).
            counted_above_least += meta.fixed_kw - min(u.least_kw, meta.session.power_kw, 0.0)
    if counted_above_least > 0:
        # The others may export only what is left. Where nothing is left, none of them may
        # discharge at all: the LP's export is never negative, so a limit below zero would not
        # hold them (it would only be a penalty it pays anyway), while the EVSE it counts at its
        # most may be discharging.
        left = np.asarray(site.export_limit_kw, dtype=float) - counted_above_least
        site.export_limit_kw = np.maximum(left, 0.0)
        if (left < 0).any():
            mask = (np.ones(len(left), dtype=bool) if site.discharge_mask is None
                    else np.asarray(site.discharge_mask, dtype=bool).copy())
            site.discharge_mask = mask & (left >= 0)
    return site, slots, metas


def reserve_for_plug_ins(site: SiteInputs, state: SiteState, settings: Settings) -> None:
    """Room under the import limit for EVs plugging into idle EVSEs (inputs.keep_room_for_plug_ins),
    at most ``Settings.plug_in_reserve_evses`` of them."""
    idle = min(sum(1 for e in state.evses.values() if e.session is None), settings.plug_in_reserve_evses)
    per_evse = default_limit_kw(settings.safe_limit_kw, state.limits.import_kw, len(state.evses))
    inputs.keep_room_for_plug_ins(site, idle, per_evse)


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

