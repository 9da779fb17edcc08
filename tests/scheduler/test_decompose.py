"""One site planned as several LPs sharing its headroom (real HiGHS solves, small sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.scheduler.decompose import DecomposedPlanner
from gateway.scheduler.problem import Planner, PlanResult, SiteInputs, SlotInput, uniform_grid

from .lp_cases import T0, ev, site

# What the decomposed plan may cost above the joint LP at 60 slots in groups of 20 (measured on this
# site with the limit at 20-30 % of the chargers, seeds 0-5: 0 to 1.5 % after the default rounds,
# 0.34 % at most for the seeds below; at 4,000 slots in groups of 500 it was 4e-5). A bound, not a goal.
GAP_AT_GROUPS_OF_20 = 0.01


def busy_site(n_slots: int, seed: int, limit_share: float = 0.2) -> tuple[SiteInputs, list[SlotInput]]:
    """12 hourly steps, EVs arriving over the first hours and staying 2-12 h, half bidirectional; the
    import limit at ``limit_share`` of the chargers so it binds, a demand charge and a paid event."""
    rng = np.random.default_rng(seed)
    n = 12
    grid = uniform_grid(T0, 3600.0, n)
    hours = np.arange(n)
    price = np.where((hours >= 5) & (hours < 9), 0.38, 0.15)
    slots = []
    for i in range(n_slots):
        first = int(rng.integers(0, 4))
        last = min(n, first + int(rng.integers(2, 13)))
        e0 = float(rng.uniform(10, 30))
        slots.append(SlotInput(
            key=("cs", i), connected=(hours >= first) & (hours < last), energy_kwh=e0, capacity_kwh=60.0,
            target_energy_kwh=e0 + float(rng.uniform(5, 40)), reserve_energy_kwh=10.0, max_charge_kw=11.0,
            max_discharge_kw=11.0, discharge_allowed=bool(i % 2),
        ))
    limit = limit_share * 11.0 * n_slots + 10.0
    s = SiteInputs(
        grid=grid, import_price=price, export_price=price * 0.3, building_load_kw=10 + 5 * rng.random(n),
        import_limit_kw=np.full(n, limit), export_limit_kw=np.full(n, limit / 3), demand_charge_per_kw=2.0,
        peak_so_far_kw=0.2 * limit, export_payment_per_kwh=np.where(hours == 6, 0.5, 0.0),
        wear_cost_per_kwh=0.03, unmet_penalty_per_kwh=5.0,
    )
    return s, slots


def assert_within_site_limits(s: SiteInputs, res: PlanResult) -> None:
    net = s.building_load_kw + res.power_kw.sum(axis=0)
    assert np.all(net <= s.import_limit_kw + 1e-9)
    assert np.all(-net <= s.export_limit_kw + 1e-9)
    assert res.terms["limit_excess_kw_max"] <= 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_slot_in_one_group_and_the_shares_add_up_to_the_site(seed: int) -> None:
    s, slots = busy_site(60, seed)
    groups = DecomposedPlanner(max_slots_per_lp=20).split(s, slots)
    assert len(groups) == 3 and all(len(idx) <= 20 for idx, _ in groups)
    members = np.concatenate([idx for idx, _ in groups])
    assert sorted(members.tolist()) == list(range(60))
    for field in ("building_load_kw", "import_limit_kw", "export_limit_kw"):
        total = sum(np.asarray(getattr(g, field)) for _, g in groups)
        np.testing.assert_allclose(total, getattr(s, field), rtol=1e-12)
    assert sum(g.peak_so_far_kw for _, g in groups) == pytest.approx(s.peak_so_far_kw, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combined_plan_keeps_the_site_limit_and_is_near_the_joint_lp(seed: int) -> None:
    s, slots = busy_site(60, seed)
    joint = Planner().solve(s, slots)
    planner = DecomposedPlanner(max_slots_per_lp=20)
    res = planner.solve(s, slots)
    assert not res.fallback and not joint.fallback and res.status == "Optimal"
    assert planner.last_groups == 3
    assert res.keys == [sl.key for sl in slots]  # every slot once, in the caller's order
    assert_within_site_limits(s, res)
    # The limit binds in the joint plan, so the test is about sharing it, not about slack.
    assert np.max(joint.site_import_kw - s.import_limit_kw) > -1e-6
    conn = np.array([sl.connected for sl in slots])
    assert np.all(res.power_kw[~conn] == 0.0)
    assert np.all(res.power_kw <= 11.0 + 1e-6) and np.all(res.power_kw >= -11.0 - 1e-6)
    assert res.objective >= joint.objective - 1e-6 * abs(joint.objective)  # the joint LP is optimal
    assert res.objective <= joint.objective + GAP_AT_GROUPS_OF_20 * abs(joint.objective)


def test_priced_peak_levels_are_shared_like_the_peak_so_far() -> None:
    s, slots = busy_site(60, 0)
    s.peak_price_steps = ((0.5 * float(np.max(s.import_limit_kw)), 3.0),)
    groups = DecomposedPlanner(max_slots_per_lp=20).split(s, slots)
    level = sum(g.peak_price_steps[0][0] for _, g in groups)
    assert level == pytest.approx(s.peak_price_steps[0][0], rel=1e-12)
    assert all(g.peak_price_steps[0][1] == 3.0 for _, g in groups)
    joint = Planner().solve(s, slots)
    res = DecomposedPlanner(max_slots_per_lp=20).solve(s, slots)
    assert_within_site_limits(s, res)
    assert res.objective >= joint.objective - 1e-6 * abs(joint.objective)
    assert res.objective <= joint.objective + GAP_AT_GROUPS_OF_20 * abs(joint.objective)


def test_coordination_moves_headroom_a_group_cannot_use_to_one_that_is_short() -> None:
    # One hour, 12 kW. Dealt by need in snake order, the groups are {0, 3} and {1, 2}. Shares follow
    # the power each group needs (EV 1's idle 100 kW charger counts 5 %): 7.44 kW for EV 3, which
    # needs 20 kWh, and 4.56 kW for EV 2, which needs only 2. The joint LP gives EV 3 the other 10 kW.
    s = site([0.1], limit=12.0)
    slots = [ev(1, key=0, energy=10, target=10, kw=1), ev(1, key=1, energy=10, target=10, kw=100),
             ev(1, key=2, energy=0, target=2, kw=2), ev(1, key=3, energy=0, target=20, kw=11)]
    # Left short, EV 2 costs a little more than EV 3, so the joint optimum is unique (a tie
    # otherwise, which HiGHS 1.15 and 1.16 break differently); the shares do not depend on it.
    slots[2].unmet_penalty_per_kwh = 10.5
    joint = Planner().solve(s, slots)
    one = DecomposedPlanner(max_slots_per_lp=2, rounds=1).solve(s, slots)
    planner = DecomposedPlanner(max_slots_per_lp=2, rounds=2)
    two = planner.solve(s, slots)
    assert joint.power_kw[3, 0] == pytest.approx(10.0, abs=1e-4)
    assert one.power_kw[3, 0] == pytest.approx(12.0 * 11.6 / 18.7, abs=1e-3)
    assert one.power_kw[2, 0] == pytest.approx(2.0, abs=1e-4)
    assert planner.last_solves_per_round == [2, 1]  # only the group that received headroom again
    assert two.power_kw[3, 0] == pytest.approx(10.0, abs=2e-3)
    assert two.power_kw[2, 0] == pytest.approx(2.0, abs=1e-4)
    assert two.objective == pytest.approx(joint.objective, abs=0.02)
    assert_within_site_limits(s, two)


def test_a_site_small_enough_is_one_lp() -> None:
    s, slots = busy_site(20, 0)
    planner = DecomposedPlanner(max_slots_per_lp=20)
    res = planner.solve(s, slots)
    assert planner.last_groups == 1
    assert res.objective == pytest.approx(Planner().solve(s, slots).objective, rel=1e-9)


def test_groups_whose_solver_fails_get_greedy_plans_within_their_shares() -> None:
    s, slots = busy_site(60, 0)
    res = DecomposedPlanner(max_slots_per_lp=20, planner=Planner(time_limit_s=0.0)).solve(s, slots)
    assert res.fallback and res.status.startswith("fallback")
    assert_within_site_limits(s, res)
    assert res.delivered_kwh.sum() > 0


def test_the_planner_splits_a_site_above_its_threshold_by_itself() -> None:
    s, slots = busy_site(60, 3)
    res = Planner(decompose_above_slots=20).solve(s, slots)
    assert res.keys == [sl.key for sl in slots]
    assert_within_site_limits(s, res)
    joint = Planner(decompose_above_slots=None).solve(s, slots)
    assert res.objective >= joint.objective - 1e-6 * max(abs(joint.objective), 1.0)


def test_an_import_cap_below_the_building_is_held_by_every_groups_batteries() -> None:
    """The building over the cap for a step: the joint LP discharges across the site to hold it.
    Each group had the building shared by its charging needs and could cover its part only with
    its own batteries: a group with few left the site 10 kW over (40 slots in groups of 20)."""
    rng = np.random.default_rng(0)
    n, s = 6, 40
    bld = np.full(n, 0.3 * s * 11 * 1.5)
    lim = np.full(n, 0.3 * s * 11 * 2.0)
    site_in = SiteInputs(grid=uniform_grid(T0, 3600.0, n), import_price=np.full(n, 0.2),
                         export_price=np.full(n, 0.05), building_load_kw=bld, import_limit_kw=lim,
                         export_limit_kw=np.full(n, 1e3), demand_charge_per_kw=0.0, peak_so_far_kw=0.0,
                         export_payment_per_kwh=np.zeros(n), wear_cost_per_kwh=0.03, unmet_penalty_per_kwh=2.0)
    slots = []
    for i in range(s):
        dis = bool(rng.random() < 0.3)
        conn = np.zeros(n, bool)
        conn[int(rng.integers(0, 3)):int(rng.integers(3, n + 1))] = True
        e = float(rng.uniform(20, 50))
        slots.append(SlotInput(key=("cs", i), connected=conn, energy_kwh=e, capacity_kwh=60.0,
                               target_energy_kwh=e if dis else float(rng.uniform(e, 60)), reserve_energy_kwh=10.0,
                               max_charge_kw=11.0, max_discharge_kw=11.0 if dis else 0.0, discharge_allowed=dis))
    lim[2] = bld[2] - 0.97 * sum(sl.max_discharge_kw for sl in slots if sl.connected[2])
    joint = Planner(decompose_above_slots=None).solve(site_in, slots)
    split = DecomposedPlanner(max_slots_per_lp=20).solve(site_in, slots)
    assert joint.terms["limit_excess_kw_max"] < 0.01
    assert split.terms["limit_excess_kw_max"] < 0.1  # 10.06 kW before
