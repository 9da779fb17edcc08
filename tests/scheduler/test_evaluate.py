"""The offline evaluator on tiny episodes."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from gateway.domain import Tariff, TouPeriod
from gateway.episode import Episode, dump
from gateway.scheduler import evaluate as ev
from gateway.scheduler.forecast import SessionForecaster
from gateway.scheduler.policies import Context, Mpc, Policy

from .episodes import small_episode

KEYS = {"bill", "energy_requested_kwh", "energy_delivered_kwh", "evs_fully_served_share", "peak_import_kw",
        "limit_excess_kw_max", "grid_event_revenue", "solve_s_p50", "solve_s_p95", "savings_capture"}


@pytest.fixture(scope="module")
def result() -> dict[str, dict[str, float]]:
    out, _ = ev.evaluate([small_episode(4, seed=3)], list(ev.POLICY_NAMES))
    pol: dict[str, dict[str, float]] = out["policies"]
    return pol


def test_bill_ordering_optimal_mpc_uncontrolled(result: dict[str, dict[str, float]]) -> None:
    opt, mpc, unc = result["optimal"], result["mpc"], result["uncontrolled"]
    assert opt["total_cost"] <= mpc["total_cost"] + 1e-6
    assert mpc["total_cost"] <= unc["total_cost"] + 1e-6
    assert opt["total_cost"] <= min(r["total_cost"] for r in result.values()) + 1e-6
    assert opt["savings_capture"] == pytest.approx(1.0) and unc["savings_capture"] == pytest.approx(0.0)


def test_savings_capture_is_the_bill_formula_and_the_total_is_kept_beside_it(
        result: dict[str, dict[str, float]]) -> None:
    opt, mpc, unc = result["optimal"], result["mpc"], result["uncontrolled"]
    # The JSON contract: (bill_uncontrolled - bill) / (bill_uncontrolled - bill_optimal).
    assert mpc["savings_capture"] == pytest.approx((unc["bill"] - mpc["bill"]) / (unc["bill"] - opt["bill"]))
    assert mpc["savings_capture_total"] == pytest.approx(
        (unc["total_cost"] - mpc["total_cost"]) / (unc["total_cost"] - opt["total_cost"]))


def test_controlled_policies_keep_the_site_limit(result: dict[str, dict[str, float]]) -> None:
    assert result["uncontrolled"]["limit_excess_kw_max"] > 0  # the episode's limit binds
    for name in ("greedy", "edf", "mpc", "optimal"):
        assert result[name]["limit_excess_kw_max"] <= 1e-6, name


def test_energy_accounting(result: dict[str, dict[str, float]]) -> None:
    for r in result.values():
        assert r["energy_delivered_kwh"] <= r["energy_requested_kwh"] + 1e-6
        assert r["energy_deliverable_kwh"] <= r["energy_requested_kwh"] + 1e-6
        assert 0.0 <= r["evs_fully_served_share"] <= 1.0
    assert result["optimal"]["deliverable_served_share"] == pytest.approx(1.0, abs=1e-4)
    assert result["mpc"]["solves"] > 0 and result["mpc"]["solve_s_p95"] >= result["mpc"]["solve_s_p50"]


def test_physics_clips_setpoints() -> None:
    class Wild:
        name = "wild"

        def begin(self, episode: object) -> None:
            return None

        def act(self, ctx: ev.Context) -> dict[ev.Key, float]:
            return {v.key: 1000.0 for v in ctx.views}

        def session_done(self, *args: object) -> None:
            return None

    ep = small_episode(3, seed=1)
    run = ev.simulate(ep, Wild(), exact=False, penalty=5.0, progress=ev.Progress(1, False))
    for t in run.evs:
        assert t.energy <= t.stop + 1e-9
    assert max(p.max() for p in run.evse_power.values()) <= 11.0 + 1e-9


def test_policies_count_the_meter_at_the_assumed_efficiency_as_live() -> None:
    """No EV tells its efficiency: the online policies see the meter's energy at the gateway's
    assumed efficiency (Session.stored_kwh, Settings.ev_efficiency), not each battery's own, and
    an EV's SoC (where it reports one) as it is; nor does an EV without ISO 15118 tell its power."""
    seen: list[ev.View] = []
    remembered: dict[bool, set[float]] = {True: set(), False: set()}  # ISO 15118? -> the powers kept

    class Full:
        name = "full"

        def begin(self, episode: object) -> None:
            return None

        def act(self, ctx: ev.Context) -> dict[ev.Key, float]:
            seen.extend(ctx.views)
            return {v.key: 11.0 for v in ctx.views}

        def session_done(self, episode: object, arrival: datetime, departure: datetime, requested_kwh: float | None,
                         announced: datetime | None, max_kw: float, delivered_kwh: float) -> None:
            remembered[announced is not None].add(max_kw)

    ep = small_episode(3, seed=1)
    ep = replace(ep, arrivals=[replace(a, eff_charge=0.88, max_charge_kw=7.4) for a in ep.arrivals])
    run = ev.simulate(ep, Full(), exact=False, penalty=5.0, progress=ev.Progress(1, False))
    assert {v.eff_charge for v in seen} == {ev.ASSUMED_EFFICIENCY} == {Settings().ev_efficiency}
    charged = [t for t in run.evs if t.energy > t.e0 + 1.0]
    assert charged
    for t in charged:
        assert t.stored_seen == pytest.approx((t.energy - t.e0) / 0.88 * ev.ASSUMED_EFFICIENCY)
    last = {v.key: v for v in seen}  # each EVSE's last view (one EV each in this episode)
    for v in last.values():
        if v.energy_kwh is not None:
            assert v.start_kwh is not None and v.energy_kwh - v.start_kwh <= v.delivered_kwh + 1e-9
    # A finished session is remembered with the power live knows: the EV's declared limit, else
    # its EVSE's rating (SiteState.completion).
    assert remembered == {True: {7.4}, False: {11.0}}


def test_cli_writes_json_and_report(tmp_path: Path) -> None:
    path = tmp_path / "ep.json"
    dump(small_episode(3, seed=2), path)
    args = argparse.Namespace(episode=[str(path)], site=None, stations=50, days=1, seed=1,
                              policies="uncontrolled,greedy,mpc,optimal", exact=False,
                              json=str(tmp_path / "r.json"), report=str(tmp_path / "r.html"),
                              no_progress=True)
    assert ev.cli(args) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["policies"]) == {"uncontrolled", "greedy", "mpc", "optimal"}
    for res in data["policies"].values():
        assert KEYS <= set(res)
    html = (tmp_path / "r.html").read_text()
    assert "<html>" in html and "Plotly.newPlot" in html
    assert "<script src=" not in html  # plotly.js inlined: viewable offline


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ep.json"
    dump(small_episode(2, seed=2), path)
    args = argparse.Namespace(episode=[str(path)], site=None, stations=50, days=1, seed=1, policies="magic",
                              exact=False, json=None, report=None, no_progress=True)
    with pytest.raises(SystemExit):
        ev.cli(args)


def test_the_mpc_and_the_optimum_discharge_only_in_grid_events() -> None:
    # As the live gateway does by default (Settings.discharge_only_in_grid_events). Energy is
    # cheap all day but for two dear hours at noon, which would pay for lending the batteries.
    spread = Tariff(periods=(TouPeriod(0, 12, 0.05, 0.02), TouPeriod(12, 14, 0.9, 0.3),
                             TouPeriod(14, 24, 0.05, 0.02)))
    ep = replace(small_episode(6, seed=5), tariff=spread)
    _, runs = ev.evaluate([ep], ["mpc", "optimal"])
    event = ep.grid_events[0]
    for run in runs:
        for power in run.evse_power.values():
            for when, kw in zip(run.times, power, strict=True):
                if kw < -1e-6:
                    assert event.active_at(when), (run.policy, when, kw)


def test_the_cli_prints_json_a_program_can_read() -> None:
    # Nothing else on stdout: HiGHS's banner is printed from C on the first solver made (1.16 on).
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "evaluate", "--site", "workplace", "--days", "1", "--stations", "4",
         "--policies", "uncontrolled,mpc", "--no-progress", "--building-forecast", "ems"],
        capture_output=True, text=True, check=True, timeout=600,
    )
    result = json.loads(out.stdout)
    assert set(result["policies"]) == {"uncontrolled", "mpc"}
    assert result["settings"]["building_forecast"] == "ems"


def test_the_mpc_prices_a_rise_of_the_peak_as_the_live_loop_does() -> None:
    # One horizon's share of the billing period (inputs.planned_demand_charge), the whole period's
    # only when it is shorter: a 6-hour horizon over a one-day episode sees a quarter of its charge.
    from datetime import timedelta

    from gateway.scheduler.policies import Mpc

    ep = small_episode(2, seed=3, grid_event=False)
    pol = ev.make_policy("mpc", 5.0, ev.mpc_forecaster())
    assert isinstance(pol, Mpc)
    pol.horizon_s = 6 * 3600.0
    pol.period, pol.period_end = ep.end - ep.start, ep.end
    priced: list[float] = []
    solve = pol.planner.solve

    def recording(site, slots):  # type: ignore[no-untyped-def]
        priced.append(site.demand_charge_per_kw)
        return solve(site, slots)

    pol.planner.solve = recording  # type: ignore[method-assign]
    ev.simulate(ep, pol, exact=False, penalty=5.0, progress=ev.Progress(1, False))
    assert priced and priced == pytest.approx([15.0 * 0.25 / 30] * len(priced))
    assert timedelta(seconds=pol.horizon_s) < pol.period


def _with_forecast(seed: int = 3) -> Episode:
    """The small episode with an energy system's forecast: 100 kW all day, whatever the truth."""
    ep = small_episode(2, seed=seed, grid_event=False)
    assert ep.building_load is not None
    fc = tuple(100.0 for _ in ep.building_load.values_kw)
    return replace(ep, building_load=replace(ep.building_load, forecast_kw=fc))


def _ctx(now: datetime, building_kw: float) -> Context:
    return Context(now=now, step_s=ev.STEP_S, building_kw=building_kw, import_limit_kw=40.0, peak_so_far_kw=0.0,
                   views=[], building_history={})


def test_the_mpc_plans_with_the_energy_systems_forecast_anchored_as_live() -> None:
    ep = _with_forecast()
    pol = Mpc(building_forecast="ems")
    pol.begin(ep)
    now = ep.start + timedelta(hours=9)
    fc = pol._building_forecast(_ctx(now, 130.0))
    assert fc(now) == 130.0
    assert fc(now + timedelta(hours=3)) == pytest.approx(100.0 + 30.0 * math.exp(-1.0), rel=1e-12)
    # The learned profile still learns from the readings, as the live one does.
    assert pol.building.profile()[pol.building.slot(now)] == 130.0


def test_without_a_forecast_the_ems_mpc_plans_with_the_learned_profile() -> None:
    ep = small_episode(2, seed=3, grid_event=False)
    assert not ep.has_building_forecast
    ems, learned = Mpc(building_forecast="ems"), Mpc()
    now = ep.start + timedelta(hours=9)
    for pol in (ems, learned):
        pol.begin(ep)
        pol.building.observe(now - timedelta(days=1, hours=-3), 50.0)  # yesterday at noon
    a, b = ems._building_forecast(_ctx(now, 20.0)), learned._building_forecast(_ctx(now, 20.0))
    for h in (0, 3, 6):
        assert a(now + timedelta(hours=h)) == b(now + timedelta(hours=h))
    assert a(now + timedelta(hours=3)) == 50.0  # the reading now is all the profile has at 09:00: no shift


def test_the_building_forecast_option_reaches_the_mpc(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Policy] = []
    make = ev.make_policy

    def recording(name: str, penalty: float, forecaster: SessionForecaster) -> Policy:
        made.append(make(name, penalty, forecaster))
        return made[-1]

    monkeypatch.setattr(ev, "make_policy", recording)
    ev.evaluate([_with_forecast()], ["uncontrolled", "mpc"], building_forecast="ems")
    assert [p.building_forecast for p in made if isinstance(p, Mpc)] == ["ems"]
    with pytest.raises(ValueError, match="building forecast"):
        ev.evaluate([_with_forecast()], ["mpc"], building_forecast="psychic")
    with pytest.raises(ValueError, match="building forecast"):
        Mpc(building_forecast="psychic")


@pytest.mark.parametrize(("soc", "offered", "ev_kw", "minutes", "stop_soc"), [
    (0.5, 11.0, 11.0, 5, 1.0), (0.79, 11.0, 11.0, 60, 1.0), (0.85, 3.0, 11.0, 60, 1.0),
    (0.7, 7.4, 22.0, 240, 1.0), (0.97, 11.0, 11.0, 120, 1.0), (0.6, 11.0, 11.0, 300, 0.9),
])
def test_the_evaluators_evs_take_what_the_simulated_batteries_take(soc: float, offered: float, ev_kw: float,
                                                                    minutes: float, stop_soc: float) -> None:
    """The evaluator's closed form of the CC-CV taper against the simulators' battery, which
    integrates it in 10-s steps: the offline figures are for EVs that charge like the demo's."""
    from gateway.scheduler.evaluate import charged_kwh
    from simulators.ev import EvBattery

    b = EvBattery(capacity_kwh=60.0, soc=soc, max_charge_kw=ev_kw, eff_charge=0.9, max_soc=stop_soc)
    b.step(offered, minutes * 60.0)
    got = charged_kwh(soc * 60.0, offered, minutes / 60.0, 60.0, ev_kw, 0.9, stop_soc * 60.0)
    assert got == pytest.approx(b.stored_kwh, rel=0.01, abs=0.02)


def test_the_mpc_keeps_room_for_plug_ins_at_idle_evses_as_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live, an EV plugging into an idle EVSE draws its default until its plan arrives, so every
    plan keeps that room for a few of them (live_inputs.reserve_for_plug_ins); the evaluator's MPC
    plans the same."""
    from gateway.ocpp.defaults import default_limit_kw
    from gateway.scheduler import policies
    from gateway.scheduler.problem import Planner

    seen: list[tuple[int, float]] = []  # (EVs present, import limit planned at the first step)
    solve = Planner.solve
    present = 0

    def spy(self: Planner, site: Any, slots: Any) -> Any:
        seen.append((present, float(site.import_limit_kw[0])))
        return solve(self, site, slots)

    act = policies.Mpc.act

    def counting(self: policies.Mpc, ctx: ev.Context) -> Any:
        nonlocal present
        present = len(ctx.views)
        return act(self, ctx)

    monkeypatch.setattr(Planner, "solve", spy)
    monkeypatch.setattr(policies.Mpc, "act", counting)
    ep = small_episode(4, seed=3)
    ev.evaluate([ep], ["mpc"])
    per = default_limit_kw(policies.SAFE_LIMIT_KW, ep.limits.import_kw, 4)
    assert seen and any(n < 4 for n, _ in seen)
    for n, limit in seen:
        assert limit == pytest.approx(ep.limits.import_kw - min(4 - n, policies.PLUG_IN_RESERVE_EVSES) * per)


def test_each_days_run_counts_its_own_solves_and_the_capture_keys_are_always_there() -> None:
    """One MPC object plans every day of a run (it learns from the days before); the solve
    times of a day are that day's, not every day's so far."""
    days = [small_episode(3, seed=5), small_episode(3, seed=6)]
    out, runs = ev.evaluate(days, ["mpc"], progress=False)
    first, second = (r for r in runs if r.policy == "mpc")
    assert first.solve_times and second.solve_times
    assert out["policies"]["mpc"]["solves"] == len(first.solve_times) + len(second.solve_times)
    assert second.solve_times[: len(first.solve_times)] != first.solve_times
    # Without uncontrolled and optimal there is no capture to compute: null, not missing.
    assert KEYS <= set(out["policies"]["mpc"]) and out["policies"]["mpc"]["savings_capture"] is None


def test_an_optimum_that_timed_out_is_no_baseline_for_the_capture() -> None:
    """Where the perfect-foresight LP runs out of time it plays the greedy fallback: scored as
    the optimum, it would make every policy's capture look better than it is."""
    ep = small_episode(3, seed=7)
    out, runs = ev.evaluate([ep], ["uncontrolled", "greedy", "optimal"], optimal_time_limit_s=1e-6)
    assert next(r for r in runs if r.policy == "optimal").not_optimal
    assert out["policies"]["optimal"]["not_optimal_episodes"] == [ep.name]
    assert all(res["savings_capture"] is None and res["savings_capture_total"] is None
               for res in out["policies"].values())
    assert out["warnings"] and "no optimum" in out["warnings"][0]
    fine, _ = ev.evaluate([ep], ["uncontrolled", "optimal"])
    assert fine["warnings"] == [] and fine["policies"]["optimal"]["savings_capture"] == pytest.approx(1.0)


def test_the_report_draws_each_evs_power_over_its_stay_and_every_policys_soc() -> None:
    from gateway.scheduler import report

    ep = small_episode(3, seed=2)
    _, runs = ev.evaluate([ep], ["uncontrolled", "greedy"])
    run = runs[0]
    z = report._heatmap(run).data[0].z
    assert len(z) == len(run.evs)  # a row per EV, not per EVSE
    for row, t in zip(z, run.evs, strict=True):
        assert all(math.isnan(v) for v in row[:t.first]) and all(math.isnan(v) for v in row[t.last:])
        assert list(row[t.first:t.last]) == pytest.approx(list(run.evse_power[t.key][t.first:t.last]))
    titles = [f.layout.title.text for f in (report._soc(r) for r in runs)]
    assert [t.split(":")[1].split("(")[0].strip() for t in titles] == ["uncontrolled", "greedy"]


def test_greedy_and_edf_hold_no_more_headroom_than_an_ev_takes_this_step() -> None:
    # EV A needs 0.3 kWh more (under 2 minutes at 11 kW); B needs 20 kWh. With 22 kW of headroom
    # A holding its whole 22 kW would leave B idle for the step while A draws about 3.9 kW.
    from gateway.scheduler.policies import TAKE_MARGIN, Edf, Greedy
    from gateway.scheduler.slots import SessionView

    now = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)

    def view(key: tuple[str, int], arrived_h: float, need: float, energy: float | None) -> SessionView:
        # An ISO 15118 EV: 20 kWh in its battery at plug-in, ``energy`` now.
        return SessionView(key=key, arrival=now - timedelta(hours=arrived_h), delivered_kwh=0.0,
                           max_charge_kw=22.0, max_discharge_kw=0.0, eff_charge=0.92, eff_discharge=0.92,
                           full=False, departure=now + timedelta(hours=1), energy_kwh=energy,
                           capacity_kwh=None if energy is None else 60.0, need_kwh=need, reserve_kwh=0.0,
                           start_kwh=None if energy is None else 20.0)

    a = view(("CS-A", 1), 2.0, need=10.0, energy=29.7)
    b = view(("CS-B", 1), 1.0, need=20.0, energy=20.0)
    ctx = Context(now=now, step_s=300.0, building_kw=0.0, import_limit_kw=22.0, peak_so_far_kw=0.0,
                  views=[a, b], building_history={})
    for policy in (Greedy(), Edf()):
        policy.begin(small_episode(1, seed=3))
        out = policy.act(ctx)
        assert out[a.key] == pytest.approx(0.3 * TAKE_MARGIN / (0.92 * 300 / 3600))
        assert out[b.key] == pytest.approx(22.0 - out[a.key])
    # Without its battery's readings the meter is no measure of what is left (the EV's own
    # efficiency is not the one assumed): full power.
    blind = replace(a, energy_kwh=None, capacity_kwh=None, start_kwh=None, delivered_kwh=9.7)
    out = Greedy().act(replace(ctx, views=[blind, b]))
    assert out[blind.key] == 22.0 and out[b.key] == 0.0
