"""The site LP on cases small enough to check by hand, on both backends."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.scheduler import lp_highs
from gateway.scheduler.problem import Planner, greedy_fallback, make_grid

from .lp_cases import T0, ev, site

BACKENDS = ["highs", "cvxpy"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_charges_in_the_cheap_hours(backend: str) -> None:
    s = site([0.30, 0.10, 0.10, 0.30])
    res = Planner(backend=backend).solve(s, [ev(4, energy=10, target=20)])
    p = res.power_kw[0]
    assert not res.fallback
    assert p[0] == pytest.approx(0, abs=1e-3) and p[3] == pytest.approx(0, abs=1e-3)
    assert p[1] + p[2] == pytest.approx(10, abs=1e-3)  # eff 1, 1-hour steps
    assert res.delivered_kwh[0] == pytest.approx(10, abs=1e-3)
    assert res.unmet_kwh[0] == pytest.approx(0, abs=1e-6)
    assert res.terms["energy_cost"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_site_limit_binds_and_unmet_absorbs_it(backend: str) -> None:
    s = site([0.1], limit=12.0, building=2.0)
    res = Planner(backend=backend).solve(s, [ev(1, key=1), ev(1, key=2)])
    assert not res.fallback
    assert res.power_kw.sum() == pytest.approx(10.0, abs=1e-3)
    assert res.site_import_kw[0] <= 12.0 + 1e-6
    assert res.unmet_kwh.sum() == pytest.approx(10.0, abs=1e-3)  # 2 x 10 asked, 10 fits
    assert res.terms["limit_excess_kw_max"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unmet_energy_instead_of_failure(backend: str) -> None:
    s = site([0.2])
    res = Planner(backend=backend).solve(s, [ev(1, energy=0, target=100, capacity=200, kw=11, eff=0.9)])
    assert not res.fallback and res.status.lower() == "optimal"
    assert res.power_kw[0, 0] == pytest.approx(11.0, abs=1e-3)
    assert res.unmet_kwh[0] == pytest.approx(100 - 11 * 0.9, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_building_over_the_limit_is_reported_not_infeasible(backend: str) -> None:
    s = site([0.2, 0.2], limit=40.0, building=50.0, pay=[0.0, 0.0])
    slots = [ev(2, key=1, energy=30, target=30, reserve=10, discharge=True), ev(2, key=2)]
    res = Planner(backend=backend).solve(s, slots)
    assert not res.fallback
    assert np.all(res.power_kw <= 1e-4)  # nobody charges while the building alone is over
    # The bidirectional EV discharges to cut the excess (cheaper than exceeding).
    assert res.power_kw[0].min() < -1.0
    assert res.terms["limit_excess_kw_max"] == pytest.approx(0.0, abs=1e-3)
    assert res.unmet_kwh[1] == pytest.approx(10.0, abs=1e-3)


def test_excess_reported_when_nothing_can_help() -> None:
    s = site([0.2], limit=40.0, building=50.0)
    res = Planner().solve(s, [ev(1)])
    assert res.power_kw[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert res.terms["limit_excess_kw_max"] == pytest.approx(10.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reserve_floor_holds_under_a_paying_grid_event(backend: str) -> None:
    s = site([0.2, 0.2], pay=[2.0, 0.0], building=30.0)
    res = Planner(backend=backend).solve(s, [ev(2, energy=30, target=0, reserve=20, discharge=True)])
    # Worth discharging all the way (2.0/kWh paid vs 0.03 wear) but never below the reserve.
    assert res.power_kw[0, 0] == pytest.approx(-10.0, abs=1e-3)
    assert res.delivered_kwh[0] >= -10.0 - 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_discharge_only_when_allowed_and_paid(backend: str) -> None:
    paid = site([0.2, 0.2, 0.2], pay=[0.0, 0.5, 0.0], building=30.0)
    unpaid = site([0.2, 0.2, 0.2], building=30.0)
    planner = Planner(backend=backend)
    allowed = ev(3, energy=30, target=30, reserve=10, discharge=True, eff=0.95)
    forbidden = ev(3, energy=30, target=30, reserve=10, discharge=False, eff=0.95)
    assert planner.solve(paid, [forbidden]).power_kw.min() > -1e-4
    assert planner.solve(unpaid, [allowed]).power_kw.min() > -1e-4  # wear and losses: no arbitrage
    res = planner.solve(paid, [allowed])
    assert res.power_kw[0, 1] < -1.0  # discharges in the paid hour
    assert res.terms["grid_event_revenue"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("price", [-0.05, -0.2, -0.5])
def test_no_simultaneous_charge_and_discharge_with_negative_prices(backend: str, price: float) -> None:
    """At -0.2 running both burnt battery energy to import more of the paid-for power (11 kW
    each way), and the netted plan took the EV past its capacity (60.3 of 60 kWh)."""
    s = site([price, price, 0.3], export_price=price, pay=[0.2, 0.0, 0.0], building=5.0)
    slots = [ev(3, key=i, energy=55, target=58, capacity=60, reserve=10, discharge=True, eff=0.92)
             for i in range(3)]
    res = Planner(backend=backend).solve(s, slots)
    assert res.terms["simultaneous_kw_max"] < 1e-3
    for i in range(3):
        net = res.power_kw[i]
        e = 55 + np.cumsum(np.where(net > 0, net * 0.92, net / 0.92))
        assert e.max() <= 60 + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_ev_below_its_reserve_is_not_drained_back_under_it(backend: str) -> None:
    """Arrived at 15 kWh with a 20-kWh reserve: its floor is where it stands, so a plan that
    charged it past the reserve drained it back to 15 in a paying event an hour later."""
    s = site([0.10, 0.30, 0.10, 0.10], pay=[0.0, 1.0, 0.0, 0.0], building=30.0)
    res = Planner(backend=backend).solve(s, [ev(4, energy=15, target=30, capacity=60, reserve=20,
                                                discharge=True, eff=0.92)])
    assert (res.power_kw[0] >= -1e-6).all()
    # One at its reserve is lent as before.
    res = Planner(backend=backend).solve(s, [ev(4, energy=25, target=30, capacity=60, reserve=20,
                                                discharge=True, eff=0.92)])
    assert res.power_kw[0][1] < -1.0


@settings(max_examples=12, deadline=None)
@given(
    prices=st.lists(st.floats(-0.1, 0.5), min_size=3, max_size=6),
    limit=st.floats(5.0, 40.0),
    building=st.floats(0.0, 30.0),
    energies=st.lists(st.floats(0.0, 50.0), min_size=1, max_size=3),
)
def test_random_small_sites_keep_limits_and_never_cycle(prices: list[float], limit: float, building: float,
                                                       energies: list[float]) -> None:
    n = len(prices)
    s = site(prices, limit=limit, building=building, pay=[0.3] + [0.0] * (n - 1), demand=2.0)
    slots = [ev(n, key=i, steps=n - i % 2, energy=e, target=40, reserve=10, discharge=i % 2 == 0, eff=0.92)
             for i, e in enumerate(energies)]
    res = Planner().solve(s, slots)
    assert not res.fallback
    assert res.terms["simultaneous_kw_max"] < 1e-3
    over = max(building - limit, 0.0)  # only building load may push the site over
    assert res.site_import_kw.max() <= limit + over + 1e-4
    assert np.all(res.unmet_kwh >= 0)


def test_dpp_resolve_matches_a_fresh_build() -> None:
    a = site([0.3, 0.1, 0.2, 0.4], limit=15.0, building=3.0, demand=5.0, peak0=4.0, pay=[0, 0, 0, 0.6])
    b = site([0.1, 0.3, 0.4, 0.2], limit=12.0, building=5.0, demand=5.0, peak0=6.0, pay=[0, 0.6, 0, 0])
    slots = [ev(4, key=1, energy=20, target=35, reserve=10, discharge=True, eff=0.9),
             ev(4, key=2, steps=3, energy=5, target=25, eff=0.9)]
    planner = Planner(backend="cvxpy")
    planner.solve(a, slots)
    model = next(iter(planner._cvx.values()))
    again = planner.solve(b, slots)
    assert len(planner._cvx) == 1 and next(iter(planner._cvx.values())) is model  # reused, not rebuilt
    fresh = Planner(backend="cvxpy").solve(b, slots)
    direct = Planner(backend="highs").solve(b, slots)
    assert again.objective == pytest.approx(fresh.objective, abs=1e-3)
    assert again.objective == pytest.approx(direct.objective, abs=1e-3)
    np.testing.assert_allclose(again.power_kw, fresh.power_kw, atol=1e-3)


def test_demand_charge_only_on_the_rise_above_the_peak_so_far() -> None:
    s = site([0.1, 0.1], building=10.0, demand=10.0, peak0=15.0)
    res = Planner().solve(s, [ev(2, energy=0, target=9, kw=11)])
    # 9 kWh over two hours fits under the 15 kW peak so far (10 + 4.5): no demand charge.
    assert res.site_import_kw.max() <= 15.0 + 1e-3
    assert res.terms["demand_charge"] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("extra", "first_kw", "charge"), [(1.0, 10.0, 0.0), (0.2, 20.0, 2.0)])
def test_a_priced_peak_level_holds_the_peak_only_where_it_pays(backend: str, extra: float, first_kw: float,
                                                              charge: float) -> None:
    # 20 kWh at 0.10 now or 0.40 next hour, 10 kW of building: all now sets a 30 kW peak. Above
    # 20 kW each kW costs `extra`: at 1.0 a 10-kW rise (10) costs more than the 3 it saves, so
    # the load is split 10 / 10; at 0.2 (2) less, so it is all charged now.
    s = site([0.10, 0.40], building=10.0)
    s.peak_price_steps = ((20.0, extra), (1e9, 0.0))  # a zero price adds nothing
    res = Planner(backend=backend).solve(s, [ev(2, energy=0, target=20, kw=20)])
    assert res.power_kw[0, 0] == pytest.approx(first_kw, abs=1e-3)
    assert res.delivered_kwh[0] == pytest.approx(20.0, abs=1e-3)
    assert res.terms["demand_charge"] == pytest.approx(charge, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_priced_level_under_the_peak_so_far_costs_only_above_it(backend: str) -> None:
    s = site([0.10, 0.40], building=10.0, demand=0.05, peak0=25.0)
    s.peak_price_steps = ((15.0, 0.2),)  # priced from 25 kW, the peak already paid
    res = Planner(backend=backend).solve(s, [ev(2, energy=0, target=20, kw=20)])
    assert res.power_kw[0, 0] == pytest.approx(20.0, abs=1e-3)
    assert res.terms["demand_charge"] == pytest.approx(0.25 * 5.0, abs=1e-3)


def test_charge_floor_is_honoured_while_there_is_room() -> None:
    s = site([0.5, 0.5, 0.1])
    slot = ev(3, energy=10, target=12, kw=11)
    slot.min_charge_kw = 2.0
    res = Planner().solve(s, [slot])
    assert res.power_kw[0, 0] >= 2.0 - 1e-4  # dearer hour, still at the floor


def test_solver_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(lp_highs, "solve", boom)
    s = site([0.2, 0.2], limit=15.0, building=5.0)
    res = Planner().solve(s, [ev(2, key=1), ev(2, key=2)])
    assert res.fallback and "solver crashed" in res.status
    assert res.site_import_kw.max() <= 15.0 + 1e-9


def test_time_limit_falls_back() -> None:
    s = site([0.2] * 6, limit=30.0, building=5.0)
    res = Planner(time_limit_s=0.0).solve(s, [ev(6, key=i) for i in range(5)])
    assert res.fallback
    assert res.site_import_kw.max() <= 30.0 + 1e-9


def test_greedy_fallback_respects_limits_and_serves_earliest_departure_first() -> None:
    s = site([0.2, 0.2, 0.2], limit=16.0, building=5.0)
    late = ev(3, key=1, steps=3, energy=0, target=30)
    early = ev(3, key=2, steps=1, energy=0, target=30)
    res = greedy_fallback(s, [late, early])
    assert res.fallback
    assert np.all(res.site_import_kw <= 16.0 + 1e-9)
    assert res.power_kw[1, 0] == pytest.approx(11.0)  # the early leaver gets its full power first
    assert res.power_kw[0, 0] == pytest.approx(0.0)
    assert res.power_kw.min() >= 0.0


def test_greedy_fallback_gives_a_charger_ignoring_its_limit_its_draw_first() -> None:
    # A charger that ignores its limit is planned at its measured draw (min = max charge): the
    # fallback must leave the others only what is left, whoever leaves first, or the plan it
    # pushes on a solver timeout breaks the site limit as soon as one charger misbehaves.
    s = site([0.2, 0.2], limit=20.0, building=5.0)
    early = ev(2, key=1, steps=1, energy=0, target=30)
    stubborn = ev(2, key=2, steps=2, energy=0, target=30)
    stubborn.min_charge_kw = stubborn.max_charge_kw = 11.0
    res = greedy_fallback(s, [early, stubborn])
    assert res.power_kw[1, 0] == pytest.approx(11.0)
    assert res.power_kw[0, 0] == pytest.approx(4.0)
    assert np.all(res.site_import_kw <= 20.0 + 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_evs_sharing_a_binding_limit_are_served_in_the_order_they_leave(backend: str) -> None:
    # Two EVs, one 11-kW step's worth of headroom at a time, flat prices: which charges first is
    # a tie on price alone, which a solver may break either way at every re-plan (profiles flip).
    s = site([0.2] * 6, limit=11.0)
    late = ev(6, key=1, steps=6, energy=0, target=11)
    early = ev(6, key=2, steps=4, energy=0, target=11)
    res = Planner(backend=backend).solve(s, [late, early])
    assert res.power_kw[1, 0] == pytest.approx(11.0, abs=1e-3)  # due first, served first
    assert res.power_kw[0, 1] == pytest.approx(11.0, abs=1e-3)


def test_idle_slots_get_zero_power() -> None:
    s = site([0.2, 0.1])
    idle = ev(2, key=9)
    idle.connected = np.zeros(2, dtype=bool)
    res = Planner().solve(s, [idle, ev(2, key=1)])
    assert np.all(res.power_kw[0] == 0.0)
    assert res.unmet_kwh[0] == 0.0 and res.delivered_kwh[0] == 0.0


def test_make_grid_is_fine_near_now_and_hourly_later() -> None:
    now = T0 + timedelta(hours=6, minutes=3, seconds=10)
    g = make_grid(now, 24 * 3600)
    assert g.durations_s.sum() == pytest.approx(24 * 3600)
    # 06:03:10 -> 06:05, five minutes each to 06:30, a quarter of an hour each to 07:00, then hourly.
    assert g.durations_s[0] < 300 and np.all(g.durations_s[1:6] == 300)
    assert list(g.durations_s[6:9]) == [900, 900, 3600]
    starts = g.starts()
    assert all(s.timestamp() % 300 == 0 for s in starts[1:])
    medium = [s for s, d in zip(starts, g.durations_s, strict=True) if d == 900]
    assert all(s.minute % 15 == 0 for s in medium)
    coarse = [s for s, d in zip(starts, g.durations_s, strict=True) if d == 3600]
    assert coarse and all(s.minute == 0 for s in coarse)
    assert g.end() == now + timedelta(hours=24)
    assert g.index_at(now) == 0 and g.index_at(starts[5] + timedelta(seconds=1)) == 5
    # The LP's size barely depends on the minute of the hour.
    sizes = {len(make_grid(T0 + timedelta(minutes=m, seconds=7), 24 * 3600)) for m in range(60)}
    assert max(sizes) - min(sizes) <= 4
    # Just before a boundary the first step runs on to the next one: a step of a few seconds would
    # give two profile periods the same whole-second startPeriod.
    late = T0 + timedelta(minutes=4, seconds=59, milliseconds=700)
    assert make_grid(late, 24 * 3600).durations_s[0] == pytest.approx(300.3)
    # Quarter hours for longer (a measured variant) still end on a full hour.
    longer = make_grid(now, 24 * 3600, medium_span_s=8 * 3600)
    hourly = [s for s, d in zip(longer.starts(), longer.durations_s, strict=True) if d == 3600]
    assert hourly[0] == T0 + timedelta(hours=15) and all(s.minute == 0 for s in hourly)


def test_grid_events_edges_are_step_boundaries() -> None:
    now = T0 + timedelta(hours=6, minutes=3)
    plain = make_grid(now, 24 * 3600)
    # An export request 16:30-18:45 (hourly steps there), one edge 20 s off a boundary (left out).
    edges = [T0 + timedelta(hours=16, minutes=30), T0 + timedelta(hours=18, minutes=45),
             T0 + timedelta(hours=20, seconds=20), T0 + timedelta(days=3)]
    g = make_grid(now, 24 * 3600, breakpoints=edges)
    assert len(g) == len(plain) + 2
    assert g.durations_s.sum() == pytest.approx(24 * 3600)
    starts = g.starts()
    assert edges[0] in starts and edges[1] in starts and edges[2] not in starts
    i = starts.index(edges[0])
    assert list(g.durations_s[i - 1:i + 1]) == [1800, 1800]
    assert starts[i + 3] == edges[1] and g.durations_s[i + 3] == 900
    # Within the fine steps an edge on a 5-minute boundary changes nothing.
    assert list(make_grid(now, 24 * 3600, breakpoints=[T0 + timedelta(hours=6, minutes=20)]).durations_s) == list(
        plain.durations_s)


def test_firm_departures_become_the_nearest_quarter_hours_before_them() -> None:
    from gateway.scheduler.inputs import MAX_FIRM_BREAKPOINTS, breakpoints

    now = T0 + timedelta(hours=6)
    deps = [now - timedelta(minutes=5)] + [now + timedelta(minutes=20 + 10 * i) for i in range(200)]
    cuts = breakpoints((), firm_departures=deps, now=now)
    assert len(cuts) == MAX_FIRM_BREAKPOINTS
    assert cuts[0] == now + timedelta(minutes=15) and all(c.minute % 15 == 0 and c.second == 0 for c in cuts)
    assert cuts == sorted(cuts) and len(set(cuts)) == len(cuts)  # the nearest ones, each once


@pytest.mark.parametrize("backend", BACKENDS)
def test_peak_outside_the_billing_period_does_not_count(backend: str) -> None:
    s = site([0.1, 0.1, 0.1], building=10.0, demand=10.0)
    s.building_load_kw = np.array([10.0, 10.0, 60.0])  # next period's big building peak
    s.demand_mask = np.array([True, True, False])
    res = Planner(backend=backend).solve(s, [ev(3, steps=2, energy=0, target=20, kw=20)])
    # Had step 2 counted, charging 20 kW at once would look free under the 60 kW peak; it does
    # not count, so the 20 kWh is spread to keep this period's peak at 20 kW.
    assert res.site_import_kw[:2].max() == pytest.approx(20.0, abs=1e-2)
    assert res.terms["demand_charge"] == pytest.approx(200.0, abs=0.1)


def test_reduced_charge_only_form_has_the_same_optimum() -> None:
    from gateway.scheduler.problem import prepare

    s = site([0.3, 0.1, 0.2, 0.4], limit=15.0, building=3.0, demand=5.0, pay=[0, 0, 0, 0.6])
    slots = [ev(4, key=1, energy=20, target=35, reserve=10, discharge=True, eff=0.9),
             ev(4, key=2, steps=3, energy=5, target=25, eff=0.9), ev(4, key=3, steps=2, energy=0, target=8)]
    slots[1].early_targets = ((1, 25.0, 0.2),)  # an earlier possible departure on a charge-only slot
    slots[1].unmet_weight = 0.8
    p = prepare(s, slots)
    assert len(p.risk_slot) == 1
    full = lp_highs.run(lp_highs.build(p), 10.0)
    reduced = lp_highs.run(lp_highs.build(p, reduce_charge_only=True), 10.0)
    assert full.ok and reduced.ok
    np.testing.assert_allclose(full.e_end, reduced.e_end, atol=1e-3)
    np.testing.assert_allclose(full.c.sum(axis=0), reduced.c.sum(axis=0), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slots_own_unmet_price_caps_what_it_pays(backend: str) -> None:
    s = site([2.0], penalty=10.0)
    firm, guess = ev(1, key=1, energy=0, target=5), ev(1, key=2, energy=0, target=5)
    guess.unmet_penalty_per_kwh = 0.6  # a guessed need is not worth 2.0/kWh
    res = Planner(backend=backend).solve(s, [firm, guess])
    assert res.power_kw[0, 0] == pytest.approx(5.0, abs=1e-3)
    assert res.power_kw[1, 0] == pytest.approx(0.0, abs=1e-3)
    assert res.terms["unmet_penalty"] == pytest.approx(3.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_earlier_possible_departure_prices_deferral(backend: str) -> None:
    # Cheap energy at the end; the EV may leave after step 1 with probability 0.3.
    s = site([0.30, 0.30, 0.10, 0.10], penalty=10.0)
    sure = ev(4, energy=0, target=10)
    risky = ev(4, energy=0, target=10)
    risky.early_targets = ((1, 10.0, 0.3),)
    risky.unmet_weight = 0.7
    a = Planner(backend=backend).solve(s, [sure])
    b = Planner(backend=backend).solve(s, [risky])
    assert a.power_kw[0, :2].sum() == pytest.approx(0.0, abs=1e-3)  # one sure deadline: wait for cheap hours
    # 3/kWh expected shortfall at step 1 outweighs 0.2/kWh saved: charged by then.
    assert b.power_kw[0, :2].sum() == pytest.approx(10.0, abs=1e-3)
    assert b.terms["departure_risk"] == pytest.approx(0.0, abs=1e-3)
    # Too cheap a risk to act on: 0.01 x 10 = 0.1/kWh < 0.2/kWh saved.
    risky.early_targets = ((1, 10.0, 0.01),)
    risky.unmet_weight = 0.99
    c = Planner(backend=backend).solve(s, [risky])
    assert c.power_kw[0, :2].sum() == pytest.approx(0.0, abs=1e-3)
    assert c.terms["departure_risk"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_needs_at_one_departure_are_priced_level_by_level(backend: str) -> None:
    # The EV wants 10 kWh for sure and 20 with probability 0.5; a shortfall costs 10/kWh. At
    # 3/kWh both levels are worth buying (10 and 0.5 x 10 = 5 > 3); at 6/kWh only the first.
    s = site([3.0], penalty=10.0)
    slot = ev(1, energy=0, target=20, kw=30)
    slot.early_targets = ((0, 10.0, 0.5),)  # the same step as the main target, a lower level
    slot.unmet_weight = 0.5
    res = Planner(backend=backend).solve(s, [slot])
    assert res.power_kw[0, 0] == pytest.approx(20.0, abs=1e-3)
    s.import_price = np.array([6.0])
    res = Planner(backend=backend).solve(s, [slot])
    assert res.power_kw[0, 0] == pytest.approx(10.0, abs=1e-3)
    assert res.terms["unmet_penalty"] == pytest.approx(50.0, abs=1e-3)  # 0.5 x 10/kWh x 10 kWh


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_ev_at_its_target_is_not_lent_to_an_event_it_may_leave_during(backend: str) -> None:
    # A paid export request in the first hour; the EV is at its target, may discharge, and leaves
    # after the first hour with probability 0.8 (else after the third).
    s = site([0.1, 0.1, 0.1], pay=[2.0, 0.0, 0.0], penalty=10.0)
    slot = ev(3, energy=20, target=20, discharge=True, eff=0.95)
    slot.early_targets = ((0, 20.0, 0.8),)
    slot.unmet_weight = 0.2
    res = Planner(backend=backend).solve(s, [slot])
    # 2/kWh earned is less than 0.8 x 10/kWh risked: it stays charged.
    assert res.power_kw[0, 0] == pytest.approx(0.0, abs=1e-3)
    # Likely to stay (probability 0.05 of leaving then), it is lent and charged back after.
    slot.early_targets = ((0, 20.0, 0.05),)
    slot.unmet_weight = 0.95
    res = Planner(backend=backend).solve(s, [slot])
    assert res.power_kw[0, 0] < -1.0 and res.delivered_kwh[0] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_battery_lent_to_an_event_is_back_by_the_believed_departure(backend: str) -> None:
    from dataclasses import replace

    # An export request pays 2/kWh in the first hour; the EV is at its target and may leave after
    # the second hour with probability 0.01. Energy is dear in hours 2-3 and cheap in hour 4.
    s = site([0.1, 0.3, 0.3, 0.1], pay=[2.0, 0.0, 0.0, 0.0], penalty=10.0)
    slot = ev(4, energy=20, target=20, discharge=True, eff=0.95)
    slot.early_targets = ((1, 20.0, 0.01),)
    slot.unmet_weight = 0.99

    def energy(p: np.ndarray) -> np.ndarray:
        return 20.0 + np.cumsum(np.where(p > 0, p * 0.95, p / 0.95))

    # Priced by the probability alone (0.1/kWh), the lent energy comes back in the cheap last hour.
    spread = Planner(backend=backend).solve(s, [slot]).power_kw[0]
    assert spread[0] < -1.0 and energy(spread)[1] < 20.0 - 1.0
    # Lent to the grid, it is back by the believed departure (the end of the second hour).
    lent = Planner(backend=backend).solve(s, [replace(slot, lent_back_by=(1, 20.0))]).power_kw[0]
    assert lent[0] < -1.0  # still lent: the event pays more than the refill costs
    assert energy(lent)[1] == pytest.approx(20.0, abs=1e-3)
    # Nor is it lent after the believed departure: an export request in the third hour is not
    # served by it, though the spread alone would lend it then too.
    s.export_payment_per_kwh = np.array([0.0, 0.0, 2.0, 0.0])
    assert Planner(backend=backend).solve(s, [slot]).power_kw[0, 2] < -1.0
    late = Planner(backend=backend).solve(s, [replace(slot, lent_back_by=(1, 20.0))]).power_kw[0]
    assert late[2] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_believed_departure_binds_only_a_slot_that_may_discharge(backend: str) -> None:
    from dataclasses import replace

    # No export request in the horizon: the slot cannot discharge, so the believed departure adds
    # nothing and the energy waits for the cheap last hour, as the spread alone would have it.
    s = site([0.3, 0.3, 0.3, 0.1], penalty=10.0)
    s.discharge_mask = np.zeros(4, dtype=bool)
    slot = replace(ev(4, energy=10, target=20, discharge=True), lent_back_by=(1, 20.0))
    p = Planner(backend=backend).solve(s, [slot]).power_kw[0]
    assert p[3] == pytest.approx(10.0, abs=1e-3) and p[:3].sum() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tapering_battery_is_planned_below_its_taper(backend: str) -> None:
    """A 60 kWh battery at 70 % wanting 98.3 %, with a knee at 80 % (11 kW / (0.2 x 60) kW per kWh of
    room): each step's charge stays under the taper at the energy the step ends with (so the
    battery takes it all through the step), so the three cheap hours cannot take it all and the
    rest is bought dear, where a battery that took 11 kW to the top would need only them."""
    from dataclasses import replace

    k = 11.0 / (0.2 * 60.0)
    s = site([0.40, 0.40, 0.10, 0.10, 0.10], penalty=10.0)
    slot = replace(ev(5, energy=42.0, target=59.0, capacity=60.0), taper_kw_per_kwh=k, taper_full_kwh=60.0)
    res = Planner(backend=backend).solve(s, [slot])
    p = res.power_kw[0]
    e = 42.0 + np.concatenate(([0.0], np.cumsum(p)))  # eff 1, 1-hour steps
    assert np.all(p <= k * (60.0 - e[1:]) + 1e-4)
    assert res.delivered_kwh[0] == pytest.approx(17.0, abs=1e-3)  # still all of it, in five hours
    assert p[0] + p[1] > 1.0  # some of it at the dear price: the cheap hours alone cannot take it
    # Without the taper the three cheap hours take it all.
    free = Planner(backend=backend).solve(s, [ev(5, energy=42.0, target=59.0, capacity=60.0)]).power_kw[0]
    assert free[0] + free[1] == pytest.approx(0.0, abs=1e-3)
    # Both backends give the same plan.
    other = Planner(backend="cvxpy" if backend == "highs" else "highs").solve(s, [slot])
    assert other.objective == pytest.approx(res.objective, abs=1e-3)


def test_cvxpy_plans_no_taper_above_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past lp_cvxpy.TAPER_SLOTS_MAX tapering slots the step-length x energy product would take
    minutes to compile: that backend plans those EVs at full power to the top, as before."""
    from dataclasses import replace

    from gateway.scheduler import lp_cvxpy

    k = 11.0 / (0.2 * 60.0)
    s = site([0.40, 0.40, 0.10, 0.10, 0.10], penalty=10.0)
    slots = [replace(ev(5, key=i, energy=42.0, target=59.0, capacity=60.0), taper_kw_per_kwh=k, taper_full_kwh=60.0)
             for i in range(2)]
    tapered = Planner(backend="cvxpy").solve(s, slots).power_kw
    assert tapered[:, :2].sum() > 1.0  # dear hours bought: the taper binds
    monkeypatch.setattr(lp_cvxpy, "TAPER_SLOTS_MAX", 1)
    free = Planner(backend="cvxpy").solve(s, slots).power_kw
    assert free[:, :2].sum() == pytest.approx(0.0, abs=1e-3)
