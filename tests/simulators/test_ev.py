"""The EV battery model and the EVSE's power decision."""

from __future__ import annotations

import pytest

from gateway.domain import EvseSpec
from simulators.composite import Transaction
from simulators.ev import EvBattery
from simulators.evse import EvSession, EvseState


def test_constant_current_below_the_taper_with_charge_efficiency() -> None:
    b = EvBattery(capacity_kwh=50, soc=0.2, max_charge_kw=10, eff_charge=0.9)
    avg = b.step(10, 3600)  # one hour at 10 kW: 0.2 -> 0.38 (9 kWh stored), still CC
    assert avg == pytest.approx(10)
    assert b.imported_kwh == pytest.approx(10)
    assert b.stored_kwh == pytest.approx(9)
    assert b.soc == pytest.approx(0.38)


def test_taper_above_cv_soc_slows_charging_and_stops_at_full() -> None:
    b = EvBattery(capacity_kwh=40, soc=0.9, max_charge_kw=11, eff_charge=1.0, cv_soc=0.8)
    # Halfway through the CV band the EV accepts half its maximum.
    assert b.charge_limit_kw() == pytest.approx(5.5)
    b.step(11, 4 * 3600)
    # Full where it would take less than the cutoff (2 % of 11 kW): 1 - 0.02 x 0.2 = 99.6 %.
    assert b.soc == pytest.approx(0.996, abs=2e-4)
    assert b.charge_limit_kw() == 0.0
    # 3.84 kWh fitted; it took longer than 3.84 kWh / 11 kW would at constant current.
    assert b.imported_kwh == pytest.approx(3.84, abs=0.01)
    b2 = EvBattery(capacity_kwh=40, soc=0.9, max_charge_kw=11, eff_charge=1.0, cv_soc=0.8)
    b2.step(11, 4 / 11 * 3600)
    assert b2.soc < 0.99


def test_discharge_efficiency_and_reserve_floor() -> None:
    b = EvBattery(capacity_kwh=60, soc=0.5, max_charge_kw=11, max_discharge_kw=10, eff_discharge=0.8, reserve_soc=0.3)
    avg = b.step(-10, 1800)  # 5 kWh at the grid = 6.25 kWh out of the battery
    assert avg == pytest.approx(-10)
    assert b.drawn_kwh == pytest.approx(6.25)
    assert b.exported_kwh == pytest.approx(5.0)
    b.step(-10, 3600)  # only 5.75 kWh was left above the reserve; it stops there
    assert b.soc == pytest.approx(0.3)
    assert b.drawn_kwh == pytest.approx(12.0)
    assert b.discharge_limit_kw() == 0.0


def test_unidirectional_ev_never_discharges() -> None:
    b = EvBattery(capacity_kwh=60, soc=0.5, max_charge_kw=11)
    assert b.step(-7, 600) == 0.0
    assert b.soc == 0.5


def _evse(bidirectional: bool, ev_discharge: float) -> EvseState:
    from datetime import UTC, datetime

    from gateway.episode import Arrival

    t = datetime(2026, 7, 1, tzinfo=UTC)
    a = Arrival(id="ev", station_id="s", evse_id=1, arrival=t, departure=t, arrival_soc=0.5, capacity_kwh=60)
    evse = EvseState(EvseSpec("s", 1, 11.0, 11.0 if bidirectional else 0.0, bidirectional))
    battery = EvBattery(capacity_kwh=60, soc=0.5, max_charge_kw=7.4, max_discharge_kw=ev_discharge)
    evse.session = EvSession(a, battery, Transaction("t", t), 10.0, authorized=True)
    return evse


def test_setpoint_obeys_limit_evse_and_ev_maxima() -> None:
    evse = _evse(True, 5.0)
    assert evse.setpoint_kw(None) == pytest.approx(7.4)  # no profile: the EV's maximum
    assert evse.setpoint_kw(3.0) == pytest.approx(3.0)
    assert evse.setpoint_kw(-8.0) == pytest.approx(-5.0)  # the EV gives at most 5 kW
    assert _evse(False, 5.0).setpoint_kw(-8.0) == 0.0  # unidirectional EVSE stops instead
    assert _evse(True, 0.0).setpoint_kw(-8.0) == 0.0  # so does a unidirectional EV


def test_meter_registers_follow_the_energy() -> None:
    evse = _evse(True, 5.0)
    evse.target_kw = 6.0
    evse.advance(3600)
    evse.target_kw = -4.0
    evse.advance(1800)
    assert evse.import_wh == pytest.approx(6000)
    assert evse.export_wh == pytest.approx(2000)


def test_what_a_stay_can_deliver_tapers_on_the_battery_s_own_rating() -> None:
    """A 22 kW car on an 11 kW EVSE keeps 11 kW until its own acceptance falls below that, as the
    simulated battery does and the evaluator counts; planned at the EVSE's rating, its taper would
    start early and understate what the stay could deliver."""
    from gateway.scheduler.evaluate import charged_kwh
    from simulators.models import deliverable_kwh

    cap, soc, eff, hours = 60.0, 0.5, 0.92, 3.5
    got = deliverable_kwh(cap, soc, 22.0, eff, hours * 3600.0, evse_max_kw=11.0)
    car = EvBattery(capacity_kwh=cap, soc=soc, max_charge_kw=22.0, eff_charge=eff)
    for _ in range(int(hours * 3600 / 150)):  # the station's physics tick
        car.step(min(11.0, car.charge_limit_kw()), 150.0)
    assert got == pytest.approx(car.stored_kwh, abs=0.05)
    assert got == pytest.approx(charged_kwh(cap * soc, 11.0, hours, cap, 22.0, eff, cap), abs=0.05)
    assert got > deliverable_kwh(cap, soc, 11.0, eff, hours * 3600.0) + 1.0  # the EVSE's rating: less


def test_a_big_battery_filled_as_far_as_it_goes_is_fully_served_as_the_evaluator_counts() -> None:
    from datetime import UTC, datetime

    from gateway.episode import ev_full_soc
    from simulators.evse import EvResult

    t = datetime(2026, 7, 1, tzinfo=UTC)
    # 150 kWh from 20 % asking for 100 %: the battery stops at 99.6 %, 0.6 kWh under the request.
    full = 150.0 * ev_full_soc() - 30.0
    r = EvResult(id="EV", station_id="CS", evse_id=1, transaction_id="T", arrival=t, departure=t,
                 requested_kwh=120.0, delivered_kwh=full, discharged_kwh=0.0, imported_kwh=full / 0.92,
                 exported_kwh=0.0, arrival_soc=0.2, departure_soc=ev_full_soc(), capacity_kwh=150.0)
    assert r.fully_served
    from dataclasses import replace

    assert not replace(r, delivered_kwh=full - 1.0).fully_served
