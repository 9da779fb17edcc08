"""The live loop's own rules on top of the shared slot rules (gateway/scheduler/live_inputs.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

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
