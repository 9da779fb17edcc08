"""The live loop's own rules on top of the shared slot rules (gateway/scheduler/live_inputs.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.config import Settings
from gateway.scheduler.live_inputs import (
    EXTRAPOLATE_MAX,
    Observed,
    building_forecast,
    flow_since_reading,
    pushed_forecast,
)
from gateway.state import SiteState

T0 = datetime(2026, 7, 1, 17, 0, tzinfo=UTC)


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def test_nothing_is_carried_forward_without_a_reading() -> None:
    assert flow_since_reading(Observed(), minutes(10), 11.0, 11.0, 11.0, 0.9) == 0.0
    assert flow_since_reading(Observed(read_at=minutes(10)), minutes(10), 11.0, 11.0, 11.0, 0.9) == 0.0


def test_a_discharge_order_counts_as_obeyed_and_a_charge_as_no_more_than_was_seen() -> None:
    # Read at 17:00 charging at 4 kW; 11 kW allowed until 17:30, then a discharge order of -20 kW.
    obs = Observed(read_at=T0, limits=((T0, 11.0), (minutes(30), -20.0)))
    flow = flow_since_reading(obs, minutes(45), 4.0, 11.0, 7.0, 0.9)
    # +4 kW x 0.5 h x 0.9 in, then the EV's 7 kW (not the 20 ordered) x 0.25 h / 0.9 out.
    assert flow == pytest.approx(4.0 * 0.5 * 0.9 - 7.0 * 0.25 / 0.9)
    # Before any planned profile: what the EV was seen taking, within its limit.
    assert flow_since_reading(Observed(read_at=T0), minutes(30), 20.0, 11.0, 0.0, 1.0) == pytest.approx(5.5)


def test_no_more_than_an_hour_is_extrapolated() -> None:
    obs = Observed(read_at=T0 - timedelta(hours=5), limits=((T0 - timedelta(hours=5), -10.0),))
    hours = EXTRAPOLATE_MAX / timedelta(hours=1)
    assert flow_since_reading(obs, T0, 0.0, 11.0, 10.0, 1.0) == pytest.approx(-10.0 * hours)


def test_a_pushed_forecast_is_a_step_function() -> None:
    at = pushed_forecast([(minutes(60), 120.0), (minutes(0), 100.0)])  # out of order: sorted
    assert at(minutes(-30)) == 100.0  # before the first point: the first
    assert at(minutes(59)) == 100.0
    assert at(minutes(60)) == 120.0
    assert at(minutes(600)) == 120.0


def test_a_pushed_forecast_is_anchored_to_the_reading_now() -> None:
    state = SiteState.from_settings(Settings())
    state.building_load_forecast = [(T0 - timedelta(hours=1), 100.0)]
    state.building_load_kw = 130.0
    fc = building_forecast(state, T0)
    assert fc(T0) == 130.0
    assert fc(T0 + timedelta(hours=3)) == pytest.approx(100.0 + 30.0 * math.exp(-1.0), rel=1e-12)
    assert fc(T0 + timedelta(hours=12)) == pytest.approx(100.0 + 30.0 * math.exp(-4.0), rel=1e-12)
    # The forecast's own steps are kept, under the fading shift.
    state.building_load_forecast.append((T0 + timedelta(hours=6), 150.0))
    assert building_forecast(state, T0)(T0 + timedelta(hours=6)) == pytest.approx(
        150.0 + 30.0 * math.exp(-2.0), rel=1e-12)
    # A reading below the forecast pulls it down.
    state.building_load_kw = 80.0
    assert building_forecast(state, T0)(T0 + timedelta(hours=3)) == pytest.approx(
        100.0 - 20.0 * math.exp(-1.0), rel=1e-12)


def test_a_rise_of_the_peak_is_priced_at_one_horizon_of_the_billing_period() -> None:
    from gateway.config import Settings, SiteConfig
    from gateway.scheduler.inputs import planned_demand_charge
    from gateway.scheduler.live_inputs import site_inputs
    from gateway.state import SiteState

    day = timedelta(days=1)
    assert planned_demand_charge(15.0, day, timedelta(days=30)) == pytest.approx(0.5)
    assert planned_demand_charge(15.0, day, timedelta(hours=6)) == pytest.approx(15.0 / 120)  # shorter: all of it
    settings = Settings(site=SiteConfig(demand_charge_per_kw=15.0))
    live = site_inputs(SiteState.from_settings(settings), T0, settings)
    assert live.demand_charge_per_kw == pytest.approx(0.5)  # one day of (a 30-day share of) July


def test_an_export_request_is_paid_on_its_own_steps() -> None:
    from gateway.config import SiteConfig
    from gateway.domain import GridEvent, GridEventKind
    from gateway.scheduler.live_inputs import site_inputs

    settings = Settings(site=SiteConfig())
    state = SiteState.from_settings(settings)
    start, end = T0 + timedelta(hours=2, minutes=30), T0 + timedelta(hours=4, minutes=45)
    state.grid_events["DR-1"] = GridEvent("DR-1", start, end, GridEventKind.EXPORT_REQUEST, payment_per_kwh=2.0)
    live = site_inputs(state, T0, settings)
    starts = live.grid.starts()
    paid = [s for s, p in zip(starts, live.export_payment_per_kwh, strict=True) if p > 0]
    # The whole payment on the steps inside the window, none on the half hours beside it.
    assert paid[0] == start and paid[-1] < end
    assert all(p in (0.0, 2.0) for p in live.export_payment_per_kwh)
    assert end in starts


def test_time_of_use_windows_half_an_hour_off_utc_are_priced_on_their_own_steps() -> None:
    from gateway.config import Settings, SiteConfig
    from gateway.domain import Tariff, TouPeriod
    from gateway.scheduler.live_inputs import site_inputs

    # India is UTC+5:30: a 16:00-21:00 peak window opens at 10:30 UTC, inside an hourly step.
    settings = Settings(site=SiteConfig(timezone="Asia/Kolkata"))
    state = SiteState.from_settings(settings)
    state.tariff = Tariff(periods=(TouPeriod(16.0, 21.0, 0.38, 0.05),), default_import_price=0.20,
                          default_export_price=0.05, timezone="Asia/Kolkata")
    now = datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    site = site_inputs(state, now, settings)
    starts = site.grid.starts()
    opens, closes = datetime(2026, 7, 1, 10, 30, tzinfo=UTC), datetime(2026, 7, 1, 15, 30, tzinfo=UTC)
    assert opens in starts and closes in starts
    i, j = starts.index(opens), starts.index(closes)
    assert site.import_price[i - 1] == 0.20 and site.import_price[i] == 0.38
    assert site.import_price[j - 1] == 0.38 and site.import_price[j] == 0.20


def test_room_is_kept_for_a_few_plug_ins_not_for_every_idle_evse() -> None:
    """Each EV plugging in draws its default until its plan lands (seconds): room for every idle
    EVSE over the whole horizon left 6-9 % of the deliverable energy short on the evaluator's sites."""
    from gateway.config import SiteConfig
    from gateway.domain import EvseSpec
    from gateway.ocpp.defaults import default_limit_kw
    from gateway.scheduler.live_inputs import EvseState, reserve_for_plug_ins, site_inputs

    settings = Settings(site=SiteConfig(import_limit_kw=500.0), plug_in_reserve_evses=4)
    state = SiteState.from_settings(settings)
    for i in range(20):
        state.evses[(f"CS-{i}", 1)] = EvseState(EvseSpec(f"CS-{i}", 1, max_charge_kw=22.0))
    per = default_limit_kw(settings.safe_limit_kw, 500.0, 20)
    site = site_inputs(state, T0, settings)
    before = site.import_limit_kw.copy()
    reserve_for_plug_ins(site, state, settings)
    assert site.import_limit_kw == pytest.approx(before - 4 * per)  # 20 idle, room for 4
    site = site_inputs(state, T0, settings)
    reserve_for_plug_ins(site, state, Settings(site=SiteConfig(import_limit_kw=500.0), plug_in_reserve_evses=0))
    assert site.import_limit_kw == pytest.approx(before)


# --- a session's view: what its EV and its meter say -------------------------------------


def _bidi_session(settings: Settings, now: datetime = T0) -> SiteState:
    from gateway import events as ev
    from gateway.domain import EvseSpec
    from gateway.state import EvseState

    state = SiteState.from_settings(settings)
    state.evses[("CS-1", 1)] = EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0, max_discharge_kw=11.0,
                                                  bidirectional=True))
    state.apply(ev.SessionStarted(now - timedelta(hours=1), "CS-1", 1, "TX-1", None))
    return state


def _slot_and_meta(state: SiteState, settings: Settings, limits: dict[tuple[str, int], float],
                   observed: dict[tuple[str, str], Observed] | None = None) -> tuple[Any, Any]:
    from gateway.scheduler.forecast import planning_forecaster
    from gateway.scheduler.live_inputs import build

    _, slots, metas = build(state, T0, settings, limits, planning_forecaster(), observed=observed)
    return slots[0], metas[0]


@pytest.mark.parametrize("power_kw", [-3.0, 0.0])
def test_an_ev_giving_back_less_than_a_discharge_limit_allows_is_not_taken_for_one_ignoring_it(
        power_kw: float) -> None:
    """Ignoring a limit is drawing more than it allows; under a discharge limit that is drawing
    from the grid at all. An EV discharging less, or idle, is planned as usual: it was frozen at
    its draw (0 kW or -3 kW planned as 0), with discharge refused, for the length of the event."""
    from gateway.domain import EvNeeds

    settings = Settings()
    state = _bidi_session(settings)
    s = state.evses[("CS-1", 1)].session
    assert s is not None
    s.needs = EvNeeds(capacity_kwh=60.0, soc=0.7, target_soc=0.8, ev_max_discharge_kw=11.0,
                      departure_time=T0 + timedelta(hours=8))
    s.power_kw = power_kw
    slot, meta = _slot_and_meta(state, settings, {("CS-1", 1): -7.0})
    assert meta.fixed_kw is None
    assert slot.discharge_allowed and slot.max_discharge_kw == 11.0 and slot.max_charge_kw == 11.0
    # Drawing from the grid under a discharge limit is ignoring it.
    s.power_kw = 4.0
    slot, meta = _slot_and_meta(state, settings, {("CS-1", 1): -7.0})
    assert meta.fixed_kw == 4.0 and not slot.discharge_allowed


def test_an_ev_that_declares_no_discharge_power_is_not_discharged_where_undeclared_evs_are() -> None:
    from dataclasses import replace

    from gateway.domain import EvNeeds

    settings = Settings(discharge_undeclared_evs=True)
    state = _bidi_session(settings)
    s = state.evses[("CS-1", 1)].session
    assert s is not None
    needs = EvNeeds(capacity_kwh=60.0, soc=0.7, target_soc=0.8, departure_time=T0 + timedelta(hours=8))
    for declared, expected in ((0.0, 0.0), (0.5, 0.5), (None, 11.0)):
        s.needs = replace(needs, ev_max_discharge_kw=declared)
        slot, _ = _slot_and_meta(state, settings, {})
        assert slot.max_discharge_kw == expected, declared


def test_a_battery_of_0_kwh_is_one_nobody_told() -> None:
    """A vendor's evEnergyCapacity of 0 made every target 0: the EV was planned to get nothing of
    the 20 kWh it asked for."""
    from gateway.domain import EvNeeds
    from gateway.ocpp.handlers import needs_from_payload

    needs = needs_from_payload({"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "AC_three_phase",
        "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 16, "evMaxVoltage": 400},
        "customData": {"vendorId": "v", "stateOfCharge": 30, "evEnergyCapacity": 0}}})
    assert needs.capacity_kwh is None and needs.soc == 0.3
    settings = Settings()
    state = _bidi_session(settings)
    s = state.evses[("CS-1", 1)].session
    assert s is not None
    # Also one stored before the rule (or from another path): 0 kWh is not a battery.
    state.set_needs("CS-1", 1, EvNeeds(energy_kwh=20.0, capacity_kwh=0.0, soc=0.3,
                                       departure_time=T0 + timedelta(hours=8)))
    assert state.resolve(s).capacity_kwh is None
    slot, _ = _slot_and_meta(state, settings, {})
    assert slot.target_energy_kwh - slot.energy_kwh == pytest.approx(20.0)


def test_a_soc_read_without_the_energy_registers_is_not_counted_again_with_the_flow_before_it() -> None:
    """Clock-aligned MeterValues carry SoC and power but not the transaction's registers: the
    battery then stands at that SoC, and only the flow after it is added (it was the flow since
    the older register reading, counting the minutes between them twice)."""
    from gateway import events as ev
    from gateway.domain import EvNeeds, EvseSpec
    from gateway.state import EvseState

    settings = Settings(ev_efficiency=0.92)
    cap, power, eff = 60.0, 11.0, 0.92
    state = SiteState.from_settings(settings)
    state.evses[("CS-1", 1)] = EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0))
    start = T0 - timedelta(hours=2)
    state.apply(ev.SessionStarted(start, "CS-1", 1, "TX-1", None))
    state.set_needs("CS-1", 1, EvNeeds(capacity_kwh=cap, soc=0.2, energy_kwh=40.0,
                                       departure_time=T0 + timedelta(hours=6)))

    def battery(t: datetime) -> float:
        return 0.2 * cap + power * eff * (t - start) / timedelta(hours=1)

    registers_at, soc_at = T0 - timedelta(minutes=15), T0 - timedelta(minutes=1)
    e_in = power * (registers_at - start) / timedelta(hours=1)
    state.apply(ev.SessionUpdated(registers_at, "CS-1", 1, "TX-1", energy_in_kwh=e_in, energy_out_kwh=0.0,
                                  power_kw=power, soc=100 * battery(registers_at) / cap))
    meter_then = state.evses[("CS-1", 1)].session.stored_kwh(eff)  # type: ignore[union-attr]
    state.apply(ev.SessionUpdated(soc_at, "CS-1", 1, "TX-1", power_kw=power, soc=100 * battery(soc_at) / cap))
    obs = Observed(read_at=registers_at, limits=((registers_at, 11.0),), soc_at=soc_at,
                   soc_meter_kwh=meter_then, soc_meter_read_at=registers_at)
    slot, _ = _slot_and_meta(state, settings, {}, {("CS-1", "TX-1"): obs})
    assert slot.energy_kwh == pytest.approx(battery(T0), abs=1e-6)  # it read 2.36 kWh more
    # The other order: a SoC older than the registers read after it is carried forward by them.
    later = T0 - timedelta(minutes=5)
    state.apply(ev.SessionUpdated(later, "CS-1", 1, "TX-1", energy_in_kwh=power * (later - start) / timedelta(hours=1),
                                  energy_out_kwh=0.0, power_kw=power))
    obs = Observed(read_at=later, limits=((registers_at, 11.0),), soc_at=soc_at,
                   soc_meter_kwh=meter_then, soc_meter_read_at=registers_at)
    slot, _ = _slot_and_meta(state, settings, {}, {("CS-1", "TX-1"): obs})
    assert slot.energy_kwh == pytest.approx(battery(T0), abs=1e-6)


def test_a_forecast_departure_shown_is_the_one_the_plan_assumes_never_one_already_past() -> None:
    from gateway import events as ev
    from gateway.domain import EvseSpec
    from gateway.scheduler.live_inputs import new_forecaster
    from gateway.state import EvseState

    settings = Settings()
    state = SiteState.from_settings(settings)
    state.forecaster = new_forecaster(settings)
    state.evses[("CS-1", 1)] = EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0))
    state.apply(ev.SessionStarted(T0 - timedelta(hours=3), "CS-1", 1, "TX-1", None))
    s = state.evses[("CS-1", 1)].session
    assert s is not None
    r = state.resolve(s, T0)
    assert r.departure_source == "forecast"
    assert r.departure == state.forecaster.forecast(settings.site.name, s.started_at, T0).departure > T0


def test_the_battery_at_plug_in_is_pinned_from_a_soc_read_with_the_registers() -> None:
    """A SoC from MeterValues is newer than the registers: pinned against them, the battery at
    plug-in read the energy between the two readings as already there, and the EV was planned
    to take that much more for its whole stay."""
    from gateway import events as ev
    from gateway.domain import EvNeeds, EvseSpec
    from gateway.state import EvseState

    settings = Settings(ev_efficiency=1.0)
    state = SiteState.from_settings(settings)
    state.evses[("CS-1", 1)] = EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0))
    state.apply(ev.SessionStarted(T0, "CS-1", 1, "TX-1", None))
    state.set_needs("CS-1", 1, EvNeeds(capacity_kwh=50.0, energy_kwh=20.0))
    s = state.evses[("CS-1", 1)].session
    assert s is not None
    # Plugged in at 20 % (10 kWh); the registers read 2 kWh at 17:10, the SoC alone 26 % (13 kWh) at 17:20.
    state.apply(ev.SessionUpdated(minutes(10), "CS-1", 1, "TX-1", energy_in_kwh=2.0, energy_out_kwh=0.0, power_kw=11.0))
    state.apply(ev.SessionUpdated(minutes(20), "CS-1", 1, "TX-1", power_kw=11.0, soc=26.0))
    assert s.battery_start_kwh is None  # 13 - 2 would have said 11
    state.apply(ev.SessionUpdated(minutes(25), "CS-1", 1, "TX-1", energy_in_kwh=4.0, energy_out_kwh=0.0,
                                  power_kw=11.0, soc=28.0))
    assert s.battery_start_kwh == pytest.approx(10.0)
