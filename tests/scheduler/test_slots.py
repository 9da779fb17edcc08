"""The one rule set from "what the gateway knows about a session" to an LP slot, shared by the
live loop and the evaluator's MPC."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from gateway import events as ev
from gateway.config import Settings
from gateway.domain import ChargeMode, EvNeeds, EvseSpec, Preferences
from gateway.scheduler import live_inputs
from gateway.scheduler.forecast import SessionForecaster, planning_forecaster
from gateway.scheduler.policies import Mpc
from gateway.scheduler.problem import SlotInput, make_grid
from gateway.scheduler.slots import ANNOUNCED_MARGIN, SessionView, SlotRules, departure_scenarios, slot_input
from gateway.state import SiteState

NOW = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
KEY = ("CS-1", 1)
SITE = "site"


def view(**changes: object) -> SessionView:
    v = SessionView(key=KEY, arrival=NOW - timedelta(hours=1), delivered_kwh=5.0, max_charge_kw=11.0,
                    max_discharge_kw=0.0, eff_charge=0.92, eff_discharge=0.92, full=False, departure=None,
                    energy_kwh=None, capacity_kwh=None, need_kwh=None, reserve_kwh=0.0)
    return replace(v, **changes)  # type: ignore[arg-type]


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
    # 11 kWh more at 11 kW x 0.92: about 65 minutes, not the 10 h the driver would stay.
    assert last_connected(slot) <= NOW + timedelta(minutes=70)


def test_known_battery_uses_soc_times_capacity_and_a_fixed_draw_is_pinned() -> None:
    grid = make_grid(NOW, 24 * 3600.0)
    v = view(energy_kwh=30.0, capacity_kwh=60.0, need_kwh=20.0, reserve_kwh=12.0, fixed_kw=7.0,
             departure=NOW + timedelta(hours=6))
    slot = slot_input(v, KEY, grid, NOW, SessionForecaster(), SITE)
    assert slot.energy_kwh == 30.0 and slot.target_energy_kwh == 45.0  # 5 of the 20 are in already
    assert slot.reserve_energy_kwh == 12.0
    assert slot.min_charge_kw == slot.max_charge_kw == 7.0


def test_live_and_offline_build_the_same_slot_for_the_same_knowledge() -> None:
    settings = Settings()
    state = SiteState.from_settings(settings)
    state.evses[KEY] = live_inputs.EvseState(EvseSpec("CS-1", 1, max_charge_kw=11.0, max_discharge_kw=11.0,
                                                      bidirectional=True))
    state.apply(ev.SessionStarted(NOW - timedelta(hours=1), "CS-1", 1, "TX-1", None))
    s = state.evses[KEY].session
    assert s is not None
    s.energy_in_kwh = 5.0
    s.needs = EvNeeds(departure_time=NOW + timedelta(hours=7), capacity_kwh=60.0, soc=0.5, target_soc=0.8)
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
    state.set_preferences("TX-1", Preferences(departure_time=dep, energy_kwh=12.0, allow_discharge=False))
    slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert last_connected(slot) == dep and slot.target_energy_kwh == 12.0 and not slot.discharge_allowed
    state.set_preferences("TX-1", Preferences(mode=ChargeMode.CHARGE_NOW))
    now_slot = live_inputs.build(state, NOW, settings, {}, planning_forecaster())[1][0]
    assert not now_slot.discharge_allowed and last_connected(now_slot) < NOW + timedelta(hours=3)


def test_an_ended_session_is_kept_for_the_forecast_with_only_what_was_told() -> None:
    settings = Settings()
    state = SiteState.from_settings(settings)
    state.apply(ev.SessionStarted(NOW, "CS-1", 1, "TX-1", None))
    state.apply(ev.SessionStarted(NOW, "CS-2", 1, "TX-2", None))
    dep = NOW + timedelta(hours=4)
    state.set_preferences("TX-1", Preferences(departure_time=dep, energy_kwh=12.0))
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


def test_a_spread_of_past_departures_becomes_priced_earlier_deadlines() -> None:
    grid = make_grid(NOW, 24 * 3600.0)
    fc = planning_forecaster()
    for day, dwell in enumerate([3, 5, 6, 7, 8, 8, 9, 9, 9, 10]):  # EVs arriving at 08:00
        arr = datetime(2026, 6, 1 + day, 8, 0, tzinfo=UTC)
        fc.observe(SITE, arr, arr + timedelta(hours=dwell), 30.0, None)
    slot = slot_input(view(), KEY, grid, NOW, fc, SITE)
    # Still here at 09:00 (plugged in at 08:00): the 3-h dwell is possible, the 10-h one is the end.
    assert slot.early_targets and slot.early_targets[0][2] >= 0.05
    ends = [grid.start + timedelta(seconds=float(e)) for e in np.cumsum(grid.durations_s)]
    assert ends[slot.early_targets[0][0]] <= NOW + timedelta(hours=2)
    assert all(t == slot.target_energy_kwh for _, t, _ in slot.early_targets)
    assert sum(w for _, _, w in slot.early_targets) + slot.unmet_weight == pytest.approx(1.0)
    assert last_connected(slot) <= NOW - timedelta(hours=1) + timedelta(hours=10)
    # Without the spread (rule off), one deadline carries the whole price.
    single = slot_input(view(), KEY, grid, NOW, fc, SITE, SlotRules(departure_scenarios=False))
    assert single.early_targets == () and single.unmet_weight == 1.0


def test_departure_scenarios_condition_on_the_ev_still_being_here() -> None:
    times = np.array([(NOW + timedelta(hours=h)).timestamp() for h in (-2, -1, 1, 2, 3, 4)])
    sc = departure_scenarios(times, NOW)
    assert sc is not None and sum(sc.weights) == pytest.approx(1.0)
    # Of the four sessions that lasted longer than this one so far, the earliest is at or below the
    # 0th, 5th and 15th percentiles (0.05 + 0.10 + 0.20); the last point, the 75th, is the 3-h one.
    assert sc.times[0] == NOW + timedelta(hours=1) and sc.weights[0] == pytest.approx(0.35)
    assert sc.times[-1] == NOW + timedelta(hours=3)
    # Outstayed every past session: no spread (the EV is planned as due).
    assert departure_scenarios(times, NOW + timedelta(hours=5)) is None
    assert departure_scenarios(None, NOW) is None


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
