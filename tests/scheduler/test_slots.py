"""The one rule set from "what the gateway knows about a session" to an LP slot, shared by the
live loop and the evaluator's MPC."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from gateway import events as ev
from gateway.config import Settings, SiteConfig
from gateway.domain import ChargeMode, EvNeeds, EvseSpec, GridEvent, GridEventKind, Preferences
from gateway.scheduler import live_inputs
from gateway.scheduler.departure_points import BIN_S, POINTS, departure_points
from gateway.scheduler.evaluate import EvTruth, known_max_kw
from gateway.scheduler.forecast import MIN_SAMPLES, PLANNED_NEED_QUANTILE, SessionForecaster, planning_forecaster
from gateway.scheduler.policies import Mpc
from gateway.scheduler.problem import Planner, SiteInputs, SlotInput, make_grid
from gateway.scheduler.slots import (
    ANNOUNCED_MARGIN,
    REVEAL_WEIGHT,
    DrawSeen,
    SessionView,
    SlotRules,
    departure_scenarios,
    slot_input,
)
from gateway.state import SiteState

NOW = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
KEY = ("CS-1", 1)
SITE = "site"


def view(**changes: object) -> SessionView:
    v = SessionView(key=KEY, arrival=NOW - timedelta(hours=1), delivered_kwh=5.0, max_charge_kw=11.0,
                    max_discharge_kw=0.0, eff_charge=0.92, eff_discharge=0.92, full=False, departure=None,
                    energy_kwh=None, capacity_kwh=None, need_kwh=None, reserve_kwh=0.0)
    return replace(v, **changes)  # type: ignore[arg-type]


def morning_history(dwells_h: list[float]) -> SessionForecaster:
    """The planning forecaster after sessions that arrived at 08:00 on past days and stayed so long."""
    fc = planning_forecaster()
    for day, dwell in enumerate(dwells_h):
        arr = datetime(2026, 6, 1 + day, 8, 0, tzinfo=UTC)
        fc.observe(SITE, arr, arr + timedelta(hours=dwell), 30.0, None)
    return fc


def last_connected(slot: SlotInput, grid_start: datetime = NOW) -> datetime:
    grid = make_grid(grid_start, 24 * 3600.0)
    ends = [grid.start + timedelta(seconds=float(e)) for e in np.cumsum(grid.durations_s)]
    return ends[int(np.flatnonzero(slot.connected)[-1])]


def test_an_evs_announced_departure_is_planned_early_a_drivers_is_not() -> None:
    grid = make_grid(NOW, 24 * 3600.0)
    dep = NOW + timedelta(hours=5)
    ev_slot = slot_input(view(departure=dep, need_kwh=20.0), KEY, grid, NOW, SessionForecaster(), SITE)
    drv_slot = slot_input(view(departure=dep, need_kwh=20.0, departure_firm=True), KEY, grid, NOW,
                          SessionForecaster(), SITE)
    # Steps are hourly that far out: plugged in for the whole steps before the planned point.
    assert dep - ANNOUNCED_MARGIN - timedelta(hours=1) < last_connected(ev_slot) <= dep - ANNOUNCED_MARGIN
    assert last_connected(drv_slot) == dep
    # The need counts from plug-in: 5 kWh are in, 15 more to go on the energy-since-plug-in scale.
    assert ev_slot.energy_kwh == 5.0 and ev_slot.target_energy_kwh == 20.0


def test_an_unannounced_departure_comes_from_the_sites_history() -> None:
    grid = make_grid(NOW, 24 * 3600.0)
    fc = planning_forecaster()
    before = slot_input(view(), KEY, grid, NOW, fc, SITE)
    for day in range(10):  # EVs arriving at 08:00 here stay 9 h
        arr = datetime(2026, 6, 1 + day, 8, 0, tzinfo=UTC)
        fc.observe(SITE, arr, arr + timedelta(hours=9), 30.0, None)
    after = slot_input(view(), KEY, grid, NOW, fc, SITE)
    # No history: as leaving soon (short rolling deadline); with it: the arrival hour's dwell.
    assert last_connected(before) <= NOW + timedelta(minutes=35)
    assert last_connected(after) == NOW - timedelta(hours=1) + timedelta(hours=9)
    assert after.target_energy_kwh == 30.0  # the forecast need, since plug-in


def test_charge_now_is_an_early_deadline_without_discharge() -> None:
    grid = make_grid(NOW, 24 * 3600.0)
    v = view(departure=NOW + timedelta(hours=10), departure_firm=True, need_kwh=16.0, max_discharge_kw=11.0,
             charge_now=True)
    slot = slot_input(v, KEY, grid, NOW, SessionForecaster(), SITE)
    assert not slot.discharge_allowed and slot.max_discharge_kw == 0.0
    # 11 kWh more at 11 kW x 0.92: about 65 minutes, not the 10 h the driver would stay. Wanted
    # whole, at the full unmet price, by the last step ending by then (10:00; the next is hourly)...
    ends = [grid.start + timedelta(seconds=float(e)) for e in np.cumsum(grid.durations_s)]
    assert [(ends[k], t, w) for k, t, w in slot.early_targets] == [(NOW + timedelta(hours=1), 16.0, 1.0),
                                                                    (NOW + timedelta(hours=2), 16.0, 1.0)]
    # ...and plugged in until the driver leaves, so what the hour cannot take comes after it.
    assert last_connected(slot) == NOW + timedelta(hours=10)
    # Energy dearer now than later, and still full power until 10:00 (where the driver was told
    # 9.8 of the 11 kWh, the plan ending at the deadline's step), the rest in the next step.
    n = len(grid)
    # (and cheapest of all in the evening, where the rest would go with the deadline alone)
    price = np.where(np.array(ends) <= NOW + timedelta(hours=1), 0.40, 0.10)
    price[np.array(ends) > NOW + timedelta(hours=8)] = 0.02
    site = SiteInputs(grid=grid, import_price=price, export_price=np.zeros(n), building_load_kw=np.zeros(n),
                      import_limit_kw=np.full(n, 100.0), export_limit_kw=np.full(n, 100.0),
                      demand_charge_per_kw=0.0, peak_so_far_kw=0.0, export_payment_per_kwh=np.zeros(n),
                      wear_cost_per_kwh=0.03, unmet_penalty_per_kwh=5.0)
    plan = Planner().solve(site, [slot])
    assert not plan.fallback
    by_ten = np.array(ends) <= NOW + timedelta(hours=1)
    assert np.all(plan.power_kw[0][by_ten] > 11.0 - 1e-6)
    assert float(plan.delivered_kwh[0]) == pytest.approx(11.0, abs=1e-3)
    assert float(plan.unmet_kwh[0]) == pytest.approx(0.0, abs=1e-3)
    after_ten = int(np.flatnonzero(by_ten)[-1]) + 1
    assert plan.power_kw[0][after_ten] > 0.5  # the rest in the deadline's own step
    assert np.all(plan.power_kw[0][after_ten + 1:] < 1e-6)


def test_known_battery_uses_soc_times_capacity_and_a_fixed_draw_is_pinned() -> None:
    grid = make_grid(NOW, 24 * 3600.0)
    v = view(energy_kwh=30.0, capacity_kwh=60.0, need_kwh=20.0, reserve_kwh=12.0, fixed_kw=7.0,
             departure=NOW + timedelta(hours=6))
    slot = slot_input(v, KEY, grid, NOW, SessionForecaster(), SITE)
    assert slot.energy_kwh == 30.0 and slot.target_energy_kwh == 45.0  # 5 of the 20 are in already
    assert slot.reserve_energy_kwh == 12.0
    assert slot.min_charge_kw == slot.max_charge_kw == 7.0


def _iso_session_with_need(settings: Settings, need_kwh: float) -> SiteState:
    """A live session whose EV stated a need and its battery's capacity (60 kWh) at plug-in and
    read 30 % SoC before any energy flowed."""
    state = SiteState.from_settings(settings)
    state.evses[KEY] = live_inputs.EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0))
    state.apply(ev.SessionStarted(NOW - timedelta(hours=1), "CS-1", 1, "TX-1", None))
    state.set_needs("CS-1", 1, EvNeeds(departure_time=NOW + timedelta(hours=7), energy_kwh=need_kwh,
                                       capacity_kwh=60.0))
    state.apply(ev.SessionUpdated(NOW - timedelta(hours=1), "CS-1", 1, "TX-1", energy_in_kwh=0.0, soc=30.0))
    return state


def test_the_energy_still_wanted_is_counted_on_the_evs_own_readings() -> None:
    """The meter took 10 kWh and the battery gained 8.8 (0.88 efficiency, 0.92 assumed): the EV
    still wants 11.2 of its 20, not the 10.8 the meter and the assumed efficiency say."""
    settings = Settings()
    state = _iso_session_with_need(settings, 20.0)
    state.apply(ev.SessionUpdated(NOW, "CS-1", 1, "TX-1", energy_in_kwh=10.0, soc=30.0 + 8.8 / 60.0 * 100.0))
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.energy_kwh == pytest.approx(26.8)
    assert slot.target_energy_kwh - slot.energy_kwh == pytest.approx(11.2)


def test_readings_that_disagree_with_the_meter_leave_the_count_to_the_meter() -> None:
    """A SoC that stays at 30 % while the meter takes 30 kWh says nothing of the battery: the
    meter's count (27.6 kWh in, more than the 20 wanted) ends the plan for it."""
    settings = Settings()
    state = _iso_session_with_need(settings, 20.0)
    state.apply(ev.SessionUpdated(NOW, "CS-1", 1, "TX-1", energy_in_kwh=30.0, soc=30.0))
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.target_energy_kwh <= slot.energy_kwh


def test_live_and_offline_build_the_same_slot_for_the_same_knowledge() -> None:
    settings = Settings()
    state = SiteState.from_settings(settings)
    state.evses[KEY] = live_inputs.EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0, max_discharge_kw=11.0,
                                                      bidirectional=True))
    state.apply(ev.SessionStarted(NOW - timedelta(hours=1), "CS-1", 1, "TX-1", None))
    s = state.evses[KEY].session
    assert s is not None
    s.energy_in_kwh = 5.0
    # Told now, with 5 kWh metered: its SoC is 50 % at this energy.
    state.set_needs("CS-1", 1, EvNeeds(departure_time=NOW + timedelta(hours=7), capacity_kwh=60.0, soc=0.5,
                                       target_soc=0.8, ev_max_discharge_kw=11.0))
    live = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]

    mpc = Mpc(forecaster=planning_forecaster())
    mpc.episode = SimpleNamespace(site_type=settings.site.name, name=settings.site.name)  # type: ignore[assignment]
    v = SessionView(key=KEY, arrival=s.started_at, delivered_kwh=5.0, max_charge_kw=11.0, max_discharge_kw=11.0,
                    eff_charge=0.92, eff_discharge=0.92, full=False, departure=NOW + timedelta(hours=7),
                    energy_kwh=30.0, capacity_kwh=60.0, need_kwh=5.0 + 18.0, reserve_kwh=0.0)
    offline = mpc._slot(KEY, v, make_grid(NOW, settings.horizon_h * 3600.0), NOW)
    for f in ("energy_kwh", "capacity_kwh", "target_energy_kwh", "reserve_energy_kwh", "max_charge_kw",
              "max_discharge_kw", "discharge_allowed"):
        assert getattr(live, f) == getattr(offline, f), f
    assert np.array_equal(live.connected, offline.connected)


def test_a_driver_preference_reaches_the_live_slot() -> None:
    settings = Settings()
    state = SiteState.from_settings(settings)
    state.evses[KEY] = live_inputs.EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0, max_discharge_kw=11.0,
                                                      bidirectional=True))
    state.apply(ev.SessionStarted(NOW, "CS-1", 1, "TX-1", None))
    dep = NOW + timedelta(hours=3)
    state.set_preferences("CS-1", "TX-1", Preferences(departure_time=dep, energy_kwh=12.0, allow_discharge=False))
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert last_connected(slot) == dep and slot.target_energy_kwh == 12.0 and not slot.discharge_allowed
    state.set_preferences("CS-1", "TX-1", Preferences(mode=ChargeMode.CHARGE_NOW))
    now_slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert not now_slot.discharge_allowed and last_connected(now_slot) < NOW + timedelta(hours=3)


def test_a_driver_departure_is_planned_to_the_quarter_hour_before_it() -> None:
    settings = Settings()
    state = SiteState.from_settings(settings)
    state.evses[KEY] = live_inputs.EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0))
    state.apply(ev.SessionStarted(NOW, "CS-1", 1, "TX-1", None))
    dep = NOW + timedelta(hours=5, minutes=50)  # 14:50, in the grid's hourly part
    s = state.evses[KEY].session
    assert s is not None
    # Announced by the EV (noisy): whole hourly steps, so planned as leaving at 14:00.
    s.needs = EvNeeds(departure_time=dep, energy_kwh=12.0)
    site, slots, _ = live_inputs.build(state, NOW, settings, {}, planning_forecaster(), SlotRules(learn_margin=False,
                                       announced_margin=timedelta(0), departure_scenarios=False))
    ends = [site.grid.start + timedelta(seconds=float(e)) for e in np.cumsum(site.grid.durations_s)]
    assert ends[int(np.flatnonzero(slots[0].connected)[-1])] == NOW + timedelta(hours=5)
    # Set by the driver: a step ends at 14:45, and the plan has the EV until then.
    state.set_preferences("CS-1", "TX-1", Preferences(departure_time=dep, energy_kwh=12.0))
    site, slots, _ = live_inputs.build(state, NOW, settings, {}, planning_forecaster())
    ends = [site.grid.start + timedelta(seconds=float(e)) for e in np.cumsum(site.grid.durations_s)]
    assert ends[int(np.flatnonzero(slots[0].connected)[-1])] == NOW + timedelta(hours=5, minutes=45)


def test_an_ev_that_declared_no_discharge_power_is_never_planned_to_discharge() -> None:
    """A bidirectional EVSE and a driver who allows it are not enough: the EV has to say it can
    (ISO 15118-20's discharge power, in its needs), or there is no V2G to count on."""
    settings = Settings()
    state = _bidi_session(settings)
    s = state.evses[KEY].session
    assert s is not None
    s.needs = EvNeeds(capacity_kwh=60.0, soc=0.9)
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert not slot.discharge_allowed and slot.max_discharge_kw == 0.0
    s.needs = EvNeeds(capacity_kwh=60.0, soc=0.9, ev_max_discharge_kw=7.0)
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.discharge_allowed and slot.max_discharge_kw == 7.0
    # A site whose V2G cars cannot tell (CHAdeMO behind a DC charger) says so once for all.
    s.needs = EvNeeds(capacity_kwh=60.0, soc=0.9)
    told = settings.model_copy(update={"discharge_undeclared_evs": True})
    slot = live_inputs.build(state, NOW, told, {}, planning_forecaster())[1][0]
    assert slot.discharge_allowed and slot.max_discharge_kw == 11.0
    # Or per station, over the site's word either way (DC chargers for CHAdeMO V2G cars beside
    # AC ones, whose undeclared EVs give nothing back).
    state.evses[KEY].discharge_undeclared_evs = False
    slot = live_inputs.build(state, NOW, told, {}, planning_forecaster())[1][0]
    assert not slot.discharge_allowed and slot.max_discharge_kw == 0.0
    state.evses[KEY].discharge_undeclared_evs = True
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.discharge_allowed and slot.max_discharge_kw == 11.0


def _bidi_session(settings: Settings) -> SiteState:
    state = SiteState.from_settings(settings)
    state.evses[KEY] = live_inputs.EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0, max_discharge_kw=11.0,
                                                      bidirectional=True))
    state.apply(ev.SessionStarted(NOW - timedelta(hours=1), "CS-1", 1, "TX-1", None))
    return state


def test_a_reserve_nobody_can_check_keeps_the_ev_from_discharging() -> None:
    settings = Settings()
    state = _bidi_session(settings)
    state.set_preferences("CS-1", "TX-1", Preferences(reserve_soc=0.8, allow_discharge=True))
    s = state.evses[KEY].session
    assert s is not None
    s.needs = EvNeeds(ev_max_discharge_kw=11.0)
    # No SoC, no capacity: energy is counted from plug-in, so the floor cannot be placed.
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert not slot.discharge_allowed and slot.max_discharge_kw == 0.0
    # Once the EV tells its battery, the reserve is a floor and it may be lent above it.
    s.needs = EvNeeds(capacity_kwh=60.0, soc=0.9, ev_max_discharge_kw=11.0)
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.discharge_allowed and slot.reserve_energy_kwh == pytest.approx(48.0)


def test_an_evse_whose_limit_cannot_be_set_is_planned_at_the_most_it_may_draw() -> None:
    settings = Settings()
    state = _bidi_session(settings)
    site, (slot,), _ = live_inputs.build(state, NOW, settings, {}, planning_forecaster(),
                                         uncontrolled={KEY: live_inputs.Uncontrolled(7.0)})
    assert slot.min_charge_kw == slot.max_charge_kw == 7.0
    assert not slot.discharge_allowed and slot.max_discharge_kw == 0.0
    # Counted at 7 kW in the site's net power, it may draw nothing: the export side says so.
    assert np.allclose(site.export_limit_kw, settings.site.export_limit_kw - 7.0)
    # Never above what the EVSE can give.
    slot, = live_inputs.build(state, NOW, settings, {}, planning_forecaster(),
                              uncontrolled={KEY: live_inputs.Uncontrolled(50.0)})[1]
    assert slot.min_charge_kw == slot.max_charge_kw == 11.0


@pytest.mark.parametrize("export_limit_kw", [10.0, 30.0])
def test_an_uncontrolled_evse_running_a_discharge_limit_leaves_the_others_only_the_export_left(
    export_limit_kw: float,
) -> None:
    """An offline EVSE whose last accepted profile discharges at 10 kW, planned as a fixed draw
    at its most (3.7 kW, its default once that profile ends), may still export 10 kW. A paid
    export request asks the other EV to discharge: it may export only what is left of the
    limit, 30 - 13.7 kW, or nothing under a 10-kW limit (a limit below zero would not hold the
    LP, whose export is never negative: its discharge is off there)."""
    settings = Settings(site=SiteConfig(import_limit_kw=100.0, export_limit_kw=export_limit_kw))
    state = SiteState.from_settings(settings)
    for sid in ("CS-1", "CS-2"):
        state.evses[(sid, 1)] = live_inputs.EvseState(EvseSpec(sid, 1, max_charge_kw=11.0, max_discharge_kw=11.0,
                                                               bidirectional=True))
        state.apply(ev.SessionStarted(NOW - timedelta(hours=1), sid, 1, f"TX-{sid}", None))
    state.set_needs("CS-2", 1, EvNeeds(departure_time=NOW + timedelta(hours=8), capacity_kwh=60.0, soc=0.9,
                                       target_soc=0.5, ev_max_discharge_kw=11.0))
    state.grid_events["x"] = GridEvent("x", NOW, NOW + timedelta(hours=2), GridEventKind.EXPORT_REQUEST, 2.0)
    site, slots, metas = live_inputs.build(state, NOW, settings, {}, planning_forecaster(),
                                           uncontrolled={("CS-1", 1): live_inputs.Uncontrolled(3.7, -10.0)})
    assert metas[0].fixed_kw == slots[0].max_charge_kw == 3.7
    result = Planner(backend="highs").solve(site, slots)
    other = np.asarray(result.power_kw[1])
    real_export = -(np.asarray(site.building_load_kw) + other - 10.0)  # the offline EVSE at -10 kW
    assert real_export.max() <= export_limit_kw + 1e-6
    if export_limit_kw > 13.7:
        assert other.min() < -1.0  # there is room left, and the request pays for it


def test_an_uncontrolled_evse_is_planned_at_what_it_draws_when_that_is_more_or_its_ev_said_full() -> None:
    settings = Settings()
    state = _bidi_session(settings)
    s = state.evses[KEY].session
    assert s is not None
    # Its station refused every limit and it draws 11 kW: counted at 11, not at the default.
    s.power_kw = 11.0
    slot, = live_inputs.build(state, NOW, settings, {}, planning_forecaster(),
                              uncontrolled={KEY: live_inputs.Uncontrolled(3.7)})[1]
    assert slot.min_charge_kw == slot.max_charge_kw == 11.0
    # An EV that said it is full may start again (its own timer) and nothing can hold it.
    s.power_kw = 0.0
    s.charging_state = "SuspendedEV"
    obs = {s.tx_key: live_inputs.Observed(full=True)}
    slot, = live_inputs.build(state, NOW, settings, {}, planning_forecaster(), observed=obs,
                              uncontrolled={KEY: live_inputs.Uncontrolled(3.7)})[1]
    assert slot.min_charge_kw == slot.max_charge_kw == 3.7


def test_an_ended_session_is_kept_for_the_forecast_with_only_what_was_told() -> None:
    settings = Settings()
    state = SiteState.from_settings(settings)
    state.apply(ev.SessionStarted(NOW, "CS-1", 1, "TX-1", None))
    state.apply(ev.SessionStarted(NOW, "CS-2", 1, "TX-2", None))
    dep = NOW + timedelta(hours=4)
    state.set_preferences("CS-1", "TX-1", Preferences(departure_time=dep, energy_kwh=12.0))
    state.apply(ev.SessionEnded(NOW + timedelta(hours=5), "CS-1", 1, "TX-1"))
    state.apply(ev.SessionEnded(NOW + timedelta(hours=2), "CS-2", 1, "TX-2"))
    told, guessed = state.take_completed()
    assert (told.arrival, told.departure, told.requested_kwh, told.announced) == (
        NOW, NOW + timedelta(hours=5), 12.0, dep)
    # Nothing was told: the default need and dwell are guesses and must not become history.
    assert guessed.requested_kwh is None and guessed.announced is None
    assert state.take_completed() == []


def test_the_default_rules_are_the_ones_the_evaluator_uses() -> None:
    assert Mpc().announced_margin == SlotRules().announced_margin
    # Discharge only in grid events unless the operator says otherwise: live, the evaluator's
    # MPC and its optimum alike.
    assert Mpc().discharge_only_in_grid_events == Settings().discharge_only_in_grid_events


def test_a_departure_inside_a_step_is_shared_between_the_step_ends_around_it() -> None:
    from gateway.scheduler.slots import step_ending_by, steps_around

    grid = make_grid(NOW, 24 * 3600.0)  # 09:00: 5-minute steps, quarter hours, then hourly
    ends = grid.start.timestamp() + np.cumsum(grid.durations_s)
    last = len(ends) - 1
    k = step_ending_by(ends, (NOW + timedelta(hours=8)).timestamp(), last)  # the step ending at 17:00
    at_1745 = (NOW + timedelta(hours=8, minutes=45)).timestamp()
    # 17:45 is three quarters into the 17:00-18:00 step: a quarter at 17:00, three at 18:00.
    # (Planned at 17:00 alone before: three quarters of an hour early.)
    assert steps_around(ends, at_1745, last) == [(k, pytest.approx(0.25)), (k + 1, pytest.approx(0.75))]
    assert steps_around(ends, float(ends[k]), last) == [(k, 1.0)]  # on a boundary: that end
    assert steps_around(ends, float(ends[last]) + 600, last) == [(last, 1.0)]  # nothing after the last
    # In a slot: the same probability as when each point was planned at the step before it, part
    # of it moved to the later step end (past stays that end inside hourly steps).
    fc = morning_history([3.75, 5.5, 6.75, 7.5, 8.25, 8.5, 9.75, 9.5, 9.25, 10.5])
    rules = SlotRules(reveal_weight=0.0)
    shared = slot_input(view(), KEY, grid, NOW, fc, SITE, rules)
    from gateway.scheduler import slots as slots_mod

    real = slots_mod.steps_around
    slots_mod.steps_around = lambda ends, t, last: [(step_ending_by(ends, t, last), 1.0)]
    try:
        whole = slot_input(view(), KEY, grid, NOW, fc, SITE, rules)
    finally:
        slots_mod.steps_around = real
    assert sum(w for _, _, w in shared.early_targets) == pytest.approx(sum(w for _, _, w in whole.early_targets))
    assert shared.unmet_weight == pytest.approx(whole.unmet_weight)
    later = sum(k * w for k, _, w in shared.early_targets) - sum(k * w for k, _, w in whole.early_targets)
    assert later > 0.05 and len(shared.early_targets) > len(whole.early_targets)


def test_a_spread_of_past_departures_becomes_priced_earlier_deadlines() -> None:
    grid = make_grid(NOW, 24 * 3600.0)
    fc = morning_history([3, 5, 6, 7, 8, 8, 9, 9, 9, 10])
    slot = slot_input(view(), KEY, grid, NOW, fc, SITE, SlotRules(reveal_weight=0.0))
    # Still here at 09:00 (plugged in at 08:00): the 3-h dwell is possible, the 10-h one is the end.
    assert slot.early_targets and slot.early_targets[0][2] >= 0.05
    ends = [grid.start + timedelta(seconds=float(e)) for e in np.cumsum(grid.durations_s)]
    assert ends[slot.early_targets[0][0]] <= NOW + timedelta(hours=2)
    assert all(t == slot.target_energy_kwh for _, t, _ in slot.early_targets)
    assert sum(w for _, _, w in slot.early_targets) + slot.unmet_weight == pytest.approx(1.0)
    assert last_connected(slot) <= NOW - timedelta(hours=1) + timedelta(hours=10)
    # Without the spread (rule off), one deadline carries the whole price.
    single = slot_input(view(), KEY, grid, NOW, fc, SITE, SlotRules(departure_scenarios=False, reveal_weight=0.0))
    assert single.early_targets == () and single.unmet_weight == 1.0


def test_departure_scenarios_condition_on_the_ev_still_being_here() -> None:
    times = np.array([(NOW + timedelta(hours=h)).timestamp() for h in (-2, -1, 1, 2, 3, 4)])
    sc = departure_scenarios(times, NOW)
    # Four sessions lasted longer than this one so far: each is a point of its own (no more than
    # the plan's six), equally likely; the plan runs to the last.
    assert sc is not None
    assert sc.times == [NOW + timedelta(hours=h) for h in (1, 2, 3, 4)]
    assert sc.weights == pytest.approx([0.25] * 4)
    # Outstayed every past session: no spread (the EV is planned as due).
    assert departure_scenarios(times, NOW + timedelta(hours=5)) is None
    assert departure_scenarios(None, NOW) is None


def test_a_rare_short_stay_keeps_its_own_small_weight() -> None:
    # A depot's evening arrivals: one van in a hundred stayed 1.5 h, the rest left at dawn. Fixed
    # quantile buckets planned 5 % of the mass at the 1.5-h stay (so every van was charged at the
    # evening's price); merged points give it its 1 %.
    rng = np.random.default_rng(3)
    dwell_h = np.sort(np.concatenate([[1.5], rng.uniform(11.0, 13.0, 99)]))
    times, weights = departure_points(NOW.timestamp() + dwell_h * 3600.0)
    assert len(times) <= POINTS and sum(weights) == pytest.approx(1.0)
    assert times[0] == pytest.approx(NOW.timestamp() + 1.5 * 3600.0, abs=BIN_S)
    assert weights[0] == pytest.approx(0.01)
    assert times[1] >= NOW.timestamp() + 10.9 * 3600.0


@pytest.mark.parametrize("seed", range(8))
def test_departure_points_never_plan_a_departure_later_than_history_shows(seed: int) -> None:
    # Cautious: by any time t, the points say at least as many EVs have left as the samples do.
    rng = np.random.default_rng(seed)
    samples = np.sort(NOW.timestamp() + rng.lognormal(1.5, 0.6, int(rng.integers(1, 400))) * 3600.0)
    times, weights = departure_points(samples)
    assert len(times) <= POINTS and times == sorted(times) and sum(weights) == pytest.approx(1.0)
    assert times[0] <= samples[0] and times[-1] <= samples[-1]
    planned = np.cumsum(weights)
    for t in samples:
        seen = np.searchsorted(samples, t, side="right") / len(samples)
        assert planned[np.searchsorted(times, t, side="right") - 1] >= seen - 1e-9


def test_an_announced_departure_is_spread_by_how_early_evs_left_against_theirs() -> None:
    fc = SessionForecaster()
    ann = NOW + timedelta(hours=6)
    assert fc.departure_samples(SITE, NOW, ann) is None  # no history yet
    for day, early_h in enumerate([-1.0, 0.0, 0.5, 1.0, 2.0]):
        arr = datetime(2026, 6, 1 + day, 8, 0, tzinfo=UTC)
        dep = arr + timedelta(hours=8)
        fc.observe(SITE, arr, dep, 20.0, dep + timedelta(hours=early_h))
    got = fc.departure_samples(SITE, NOW, ann)
    assert got is not None
    expect = sorted((ann - timedelta(hours=h)).timestamp() for h in (-1.0, 0.0, 0.5, 1.0, 2.0))
    np.testing.assert_allclose(got, expect)


def test_a_new_site_plans_unannounced_evs_against_what_the_others_announced() -> None:
    # No session has ended yet: an EV that says nothing would be planned as leaving any minute
    # (as soon as possible) with a default need. Five EVs that came at the same hour announced
    # 9-11-h stays and 30-38 kWh.
    fc = planning_forecaster()
    arr = NOW - timedelta(hours=1)
    assert fc.departure_samples(SITE, arr, None) is None
    stays, needs = [9, 10, 10, 11, 9.5], [30.0, 32.0, 34.0, 36.0, 38.0]
    for i, (h, kwh) in enumerate(zip(stays, needs, strict=True)):
        fc.note_present(SITE, ("peer", i), arr, arr + timedelta(hours=h), kwh)
    fc.note_present(SITE, ("peer", 0), arr, arr + timedelta(hours=9), 30.0)  # seen again: counted once
    got = fc.departure_samples(SITE, arr, None)
    assert got is not None
    np.testing.assert_allclose(got, sorted((arr + timedelta(hours=h)).timestamp() for h in stays))
    # Planned as early as an announcement is (90 min before the announced stays, no history yet).
    margin = fc.departure_samples(SITE, arr, None, peer_margin=ANNOUNCED_MARGIN)
    assert margin is not None
    np.testing.assert_allclose(margin, got - ANNOUNCED_MARGIN.total_seconds())
    slot = slot_input(view(), KEY, make_grid(NOW, 24 * 3600.0), NOW, fc, SITE)
    latest = arr + timedelta(hours=11) - ANNOUNCED_MARGIN  # the plan ends at the last whole step before it
    assert latest - timedelta(hours=1) <= last_connected(slot) <= latest
    assert slot.target_energy_kwh == pytest.approx(float(np.quantile(needs, PLANNED_NEED_QUANTILE)))
    # Once sessions have ended, their stays and needs are what counts.
    for day in range(MIN_SAMPLES):
        a = datetime(2026, 6, 1 + day, 8, 0, tzinfo=UTC)
        fc.observe(SITE, a, a + timedelta(hours=2), 20.0, None)
    got = fc.departure_samples(SITE, arr, None)
    assert got is not None and max(got) == pytest.approx((arr + timedelta(hours=2)).timestamp())
    assert fc.forecast(SITE, arr, NOW).energy_kwh == pytest.approx(20.0)


def test_a_guessed_need_is_wanted_two_thirds_of_the_way_to_the_earliest_departure() -> None:
    # The EV told no need: the plan is asked to have the guess in early (at a small price), so an
    # EV that needs less shows it while an EV that needs more still has time.
    grid = make_grid(NOW, 24 * 3600.0)
    fc = morning_history([4, 5, 6, 7, 8, 8, 9, 9, 9, 10])
    off = slot_input(view(), KEY, grid, NOW, fc, SITE, SlotRules(reveal_weight=0.0))
    slot = slot_input(view(), KEY, grid, NOW, fc, SITE)
    added = sorted(set(slot.early_targets) - set(off.early_targets))
    assert len(added) == 1 and len(slot.early_targets) == len(off.early_targets) + 1
    step, target, weight = added[0]
    assert weight == REVEAL_WEIGHT and target == off.target_energy_kwh
    # The earliest departure is 12:00 (a 4-h stay from 08:00): two thirds of the way from 09:00.
    ends = [grid.start + timedelta(seconds=float(e)) for e in np.cumsum(grid.durations_s)]
    assert ends[step] <= NOW + timedelta(hours=2) < ends[step + 1]
    assert slot.unmet_weight == off.unmet_weight  # the departure's own price is unchanged
    # A need the EV or driver told, or an EV that stopped taking energy: nothing is guessed.
    told = slot_input(view(need_kwh=30.0), KEY, grid, NOW, fc, SITE)
    assert all(w != REVEAL_WEIGHT for _, _, w in told.early_targets)
    assert slot_input(view(full=True), KEY, grid, NOW, fc, SITE).early_targets == ()


def test_an_ev_that_draws_less_than_it_is_offered_shows_its_own_limit() -> None:
    seen = DrawSeen()
    seen.note(6.0, None)  # no planned limit in force (the station's default): nothing learned
    seen.note(7.2, 7.4)  # held by its limit: nothing learned
    seen.note(0.1, 22.0)  # paused or full (SuspendedEV's business), not limited
    assert seen.limit_kw() is None
    seen.note(7.4, 22.0)  # offered 22 kW, took 7.4: a 7.4-kW car
    assert seen.limit_kw() == 7.4
    seen.note(3.0, 22.0)  # tapering near full: it takes 3 kW now; planned a little above that
    assert seen.limit_kw() == pytest.approx(3.0 * 1.25 + 0.5)
    seen.note(4.25, 4.25)  # it took all of the probe: it is offered more again...
    assert seen.limit_kw() == pytest.approx(4.25 * 1.25 + 0.5)
    seen.note(7.4, 22.0)  # ...not above its highest draw while it refuses more,
    assert seen.limit_kw() == 7.4
    seen.note(7.4, 7.4)  # once above it while it takes all it is offered (under every refused offer),
    assert seen.limit_kw() == pytest.approx(7.4 * 1.25 + 0.5)
    seen.note(7.4, 7.4 * 1.25 + 0.5)  # and that probe refused too: a 7.4-kW car, planned at 7.4
    assert seen.limit_kw() == 7.4
    seen.note(7.4, 7.4)
    assert seen.limit_kw() == 7.4


def test_an_ev_whose_first_draw_was_a_dip_is_probed_back_up_to_its_power() -> None:
    # An 11-kW car on an 11-kW EVSE whose battery is cold: 3 kW at first. Held at its highest draw
    # it would be offered 3 kW, take 3 kW and never show it takes more again.
    seen = DrawSeen()
    seen.note(3.0, 11.0)
    offers = []
    for _ in range(10):
        offer = min(11.0, seen.limit_kw() or 11.0)  # the callers clamp to the EV's and EVSE's ratings
        offers.append(offer)
        seen.note(min(offer, 11.0), offer)  # warm now: it takes all it is offered
    assert offers[:2] == [3.0, pytest.approx(3.0 * 1.25 + 0.5)]
    assert offers[-1] == 11.0


def test_a_silent_ev_is_planned_at_the_evse_rating_until_its_draw_shows_less() -> None:
    settings = Settings()
    state = SiteState.from_settings(settings)
    state.evses[KEY] = live_inputs.EvseState(EvseSpec("CS-1", 1, max_charge_kw=22.0))
    state.apply(ev.SessionStarted(NOW - timedelta(hours=1), "CS-1", 1, "TX-1", None))
    s = state.evses[KEY].session
    assert s is not None
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.max_charge_kw == 22.0
    shown = {("CS-1", "TX-1"): live_inputs.Observed(ev_max_kw=7.4)}
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster(), observed=shown)[1][0]
    assert slot.max_charge_kw == 7.4
    # Offline the same: the evaluator's MPC sees the EVSE's rating for an EV that does not tell
    # its own, and the EV's limit once it has drawn less than it was offered.
    a = SimpleNamespace(iso15118=False)
    t = EvTruth(arrival=a, key=KEY, first=0, last=10, e0=0.0, stop=30.0, reserve=0.0,  # type: ignore[arg-type]
                max_charge_kw=7.4, max_discharge_kw=0.0, requested=30.0, deliverable=30.0, evse_max_kw=22.0)
    assert known_max_kw(t, known=False) == 22.0 and known_max_kw(t, known=True) == 7.4
    t.drawn.note(7.4, 22.0)
    assert known_max_kw(t, known=False) == 7.4
    # An EV that told its limit and now draws less (its taper) is planned at what it takes, as
    # live (session_view applies the draw seen to every EV).
    t.drawn.note(3.0, 7.4)
    seen = t.drawn.limit_kw()
    assert seen is not None and seen < 7.4
    assert known_max_kw(t, known=True) == known_max_kw(t, known=False) == seen


def test_two_stations_with_the_same_transaction_id_keep_their_own_needs_and_preferences() -> None:
    """A transactionId is unique only at its station: some count 1, 2, 3..."""
    settings = Settings()
    state = SiteState.from_settings(settings)
    for sid in ("CS-1", "CS-2"):
        state.evses[(sid, 1)] = live_inputs.EvseState(EvseSpec(sid, 1, max_charge_kw=11.0))
        state.apply(ev.SessionStarted(NOW, sid, 1, "1", None))
    state.apply(ev.SessionUpdated(NOW, "CS-1", 1, "1", energy_in_kwh=10.0))
    state.set_needs("CS-1", 1, EvNeeds(energy_kwh=20.0))  # 20 kWh more, with 9.2 in
    dep = NOW + timedelta(hours=3)
    state.set_preferences("CS-2", "1", Preferences(departure_time=dep))
    one, two = state.session_by_tx("CS-1", "1"), state.session_by_tx("CS-2", "1")
    assert one is not None and two is not None and one is not two
    # CS-2's session ending does not take CS-1's baseline with it.
    state.apply(ev.SessionEnded(NOW, "CS-2", 1, "1"))
    assert state.resolve(one).energy_wanted_kwh == 10.0 * settings.ev_efficiency + 20.0
    assert state.resolve(one).departure_source == "forecast" and two.preferences.departure_time == dep


def test_a_battery_the_gateway_sees_is_planned_with_its_taper() -> None:
    """SoC and capacity known: the slot carries the taper of the EV's own power (its declared
    limit) from Settings.battery_taper_soc to nothing at full; unknown, none (DrawSeen shows it)."""
    settings = Settings()
    state = _bidi_session(settings)
    s = state.evses[KEY].session
    assert s is not None
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.taper_kw_per_kwh == 0.0  # nothing known of the battery
    s.needs = EvNeeds(capacity_kwh=60.0, soc=0.5, ev_max_charge_kw=7.4)
    s.soc = 0.5
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.taper_kw_per_kwh == pytest.approx(7.4 / (0.2 * 60.0))
    assert slot.taper_full_kwh == pytest.approx(60.0)
    flat = settings.model_copy(update={"battery_taper_soc": 1.0})
    assert live_inputs.build(state, NOW, flat, {}, planning_forecaster())[1][0].taper_kw_per_kwh == 0.0


def test_a_battery_that_may_be_lent_is_wanted_back_by_its_believed_departure() -> None:
    """An EV that announced its departure and may discharge wants back, by its believed departure
    (the announcement less the margin), the most its battery held, up to its target, beside its
    spread; with the rule off, an EV that may not discharge, or one past its believed departure,
    none."""
    grid = make_grid(NOW, 24 * 3600.0)
    dep = NOW + timedelta(hours=6)
    fc = morning_history([9.0, 10.0, 11.0, 10.0, 9.5, 10.5])
    # 30 kWh in the battery now, 38 at its fullest (it has lent 8), 45 wanted.
    lender = view(departure=dep, need_kwh=20.0, max_discharge_kw=11.0, energy_kwh=30.0, capacity_kwh=60.0,
                  start_kwh=25.0, high_kwh=38.0)
    slot = slot_input(lender, KEY, grid, NOW, fc, SITE)
    assert slot.discharge_allowed and slot.lent_back_by is not None
    step, energy = slot.lent_back_by
    ends = [grid.start + timedelta(seconds=float(e)) for e in np.cumsum(grid.durations_s)]
    assert dep - ANNOUNCED_MARGIN - timedelta(hours=1) < ends[step] <= dep - ANNOUNCED_MARGIN
    assert slot.target_energy_kwh == 45.0
    assert energy == 38.0  # what it held before it lent, not the rest of its need
    assert slot_input(replace(lender, high_kwh=None), KEY, grid, NOW, fc, SITE).lent_back_by == (step, 30.0)
    assert slot_input(lender, KEY, grid, NOW, fc, SITE, SlotRules(lent_back=False)).lent_back_by is None
    assert slot_input(view(departure=dep, need_kwh=20.0), KEY, grid, NOW, fc, SITE).lent_back_by is None
    # Past its believed departure it may not discharge, so nothing is lent or wanted back.
    late = NOW + ANNOUNCED_MARGIN - timedelta(minutes=30)
    assert slot_input(replace(lender, departure=late), KEY, grid, NOW, fc, SITE).lent_back_by is None


def test_live_a_battery_that_lent_is_wanted_back_to_the_most_it_held() -> None:
    """The gateway keeps the highest SoC an EV reported: lent from 80 % to 70 %, the 48 kWh it
    held are what it is to have back by its believed departure."""
    settings = Settings()
    state = _bidi_session(settings)
    state.set_needs("CS-1", 1, EvNeeds(departure_time=NOW + timedelta(hours=7), energy_kwh=30.0,
                                       capacity_kwh=60.0, ev_max_discharge_kw=11.0))
    state.apply(ev.SessionUpdated(NOW - timedelta(minutes=30), "CS-1", 1, "TX-1", energy_in_kwh=0.0, soc=80.0))
    state.apply(ev.SessionUpdated(NOW, "CS-1", 1, "TX-1", energy_out_kwh=6.0 * 0.92, soc=70.0))
    s = state.evses[KEY].session
    assert s is not None and s.high_soc == pytest.approx(0.8)
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.discharge_allowed and slot.energy_kwh == pytest.approx(42.0)
    assert slot.lent_back_by is not None and slot.lent_back_by[1] == pytest.approx(48.0)


def test_a_guessed_need_above_what_was_taken_comes_from_the_larger_past_needs() -> None:
    """Past needs of 10-40 kWh (75th percentile 32.5): an unannounced EV that took 33 kWh is
    planned for 5 more (38) by default, and with ``need_above`` for the 75th percentile of the
    past needs above 33 (36-40: 39); with too few of those (above 38), 5 more again."""
    fc = planning_forecaster()
    for day, need in enumerate([10.0, 15.0, 20.0, 25.0, 30.0, 36.0, 37.0, 38.0, 39.0, 40.0]):
        arr = datetime(2026, 6, 1 + day, 8, 0, tzinfo=UTC)
        fc.observe(SITE, arr, arr + timedelta(hours=9), need, None)
    assert fc.need_above(SITE, NOW - timedelta(hours=1), 33.0) == pytest.approx(39.0)
    assert fc.need_above(SITE, NOW - timedelta(hours=1), 38.0) is None
    grid = make_grid(NOW, 24 * 3600.0)
    rules = SlotRules(need_above=True)
    took = view(arrival=NOW.replace(hour=8), delivered_kwh=33.0)
    assert slot_input(took, KEY, grid, NOW, fc, SITE).target_energy_kwh == pytest.approx(38.0)
    assert slot_input(took, KEY, grid, NOW, fc, SITE, rules).target_energy_kwh == pytest.approx(39.0)
    more = view(arrival=NOW.replace(hour=8), delivered_kwh=38.5)
    assert slot_input(more, KEY, grid, NOW, fc, SITE, rules).target_energy_kwh == pytest.approx(43.5)


def test_a_target_soc_is_reached_by_the_energy_metered_when_no_soc_readings_come() -> None:
    """The EV told SoC 40 % of 60 kWh with its needs and wants 80 %; the station sends no SoC in
    its meter values. Each kWh metered since moves the SoC: the target is 24 kWh away at the
    needs, and met once 24 kWh have gone in, not chased for ever."""
    settings = Settings()
    state = _bidi_session(settings)
    s = state.evses[KEY].session
    assert s is not None
    state.set_needs("CS-1", 1, EvNeeds(capacity_kwh=60.0, soc=0.4, target_soc=0.8))
    still_wanted = []
    for metered_kwh in (0.0, 10.0, 20.0, 30.0):
        s.energy_in_kwh = metered_kwh / settings.ev_efficiency  # battery side: metered_kwh
        r = state.resolve(s)
        still_wanted.append(r.energy_wanted_kwh - metered_kwh)
        assert r.soc == pytest.approx(min(0.4 + metered_kwh / 60.0, 1.0))
    assert still_wanted == pytest.approx([24.0, 14.0, 4.0, 0.0], abs=1e-9)
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert slot.energy_kwh == pytest.approx(0.9 * 60.0)  # 40 % + 30 kWh: past the target
    assert slot.target_energy_kwh <= slot.energy_kwh + 1e-9


def test_grid_events_that_are_over_are_forgotten() -> None:
    state = SiteState.from_settings(Settings())
    for i in range(3):
        start = NOW + timedelta(hours=i - 2)
        state.grid_events[f"e{i}"] = GridEvent(f"e{i}", start, start + timedelta(hours=1), GridEventKind.IMPORT_CAP,
                                               cap_kw=10.0)
    state.prune_grid_events(NOW)
    assert sorted(state.grid_events) == ["e2"]  # e1 ended at NOW: over
