"""What the evaluator accepts and how it scores the edges: episode checks, policy names, the
capture where the optimum's bill is not the lowest, full batteries and off-grid grid events."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.domain import GridEvent, GridEventKind
from gateway.episode import EpisodeError, dump, from_dict, load, to_dict
from gateway.scheduler import evaluate as ev
from gateway.scheduler.inputs import site_inputs
from gateway.scheduler.problem import uniform_grid

from .episodes import small_episode


def _data() -> dict[str, Any]:
    data = to_dict(small_episode(3, seed=1))
    assert from_dict(data)  # the unchanged episode is accepted
    return data


# -- 1. savings capture where the optimum's bill is above uncontrolled's --------------------------

def _run(policy: str, bill: float, total: float, peak: float) -> ev.Run:
    keys = ("bill", "energy_cost", "demand_charge", "grid_event_revenue", "wear_cost", "discharged_kwh",
            "energy_requested_kwh", "energy_deliverable_kwh", "energy_delivered_kwh", "shortfall_kwh",
            "shortfall_cost", "total_cost", "evs", "evs_fully_served", "evs_deliverable_served",
            "peak_import_kw", "limit_excess_kw_max", "limit_excess_steps", "site_import_kwh")
    metrics = dict.fromkeys(keys, 0.0) | {"bill": bill, "total_cost": total, "peak_import_kw": peak}
    empty = np.zeros(0)
    return ev.Run(policy=policy, episode="e", times=[], net_kw=empty, building_kw=empty, limit_kw=empty,
                  price=empty, evse_power={}, evs=[], solve_times=[], metrics=metrics)


def test_no_bill_capture_where_the_optimums_bill_is_above_uncontrolleds() -> None:
    # V2G revenue: the optimum's total is the lowest, its bill is not.
    runs = [_run("uncontrolled", 10.0, 10.0, 50.0), _run("mpc", 9.0, 8.0, 40.0), _run("optimal", 12.0, 6.0, 30.0)]
    out = ev.summarise(runs, ["uncontrolled", "mpc", "optimal"])["policies"]
    assert all(res["savings_capture"] is None for res in out.values())  # was -0.5 for the mpc
    assert out["mpc"]["savings_capture_total"] == pytest.approx(0.5)  # the totals still compare
    assert out["mpc"]["peak_reduction_capture"] == pytest.approx(0.5)
    assert ev.format_table({"policies": out}).splitlines()[ev.TABLE_KEYS.index("savings_capture") + 1].split()[1:] \
        == ["n/a"] * 3


def test_the_report_prints_a_capture_it_cannot_have_as_n_a() -> None:
    from gateway.scheduler import report

    table = report._table({"policies": {"mpc": {"bill": 1.0, "savings_capture": None}}})
    assert "None" not in table and "<td>n/a</td>" in table


# -- 2. policy names --------------------------------------------------------------------------------

def test_a_repeated_policy_is_refused_rather_than_counted_twice(tmp_path: Path) -> None:
    ep = small_episode(2, seed=2)
    with pytest.raises(ValueError, match="'uncontrolled' is named more than once"):
        ev.evaluate([ep], ["uncontrolled", "uncontrolled"])
    with pytest.raises(ValueError, match="no policies"):
        ev.evaluate([ep], [])
    with pytest.raises(ValueError, match="no episodes"):
        ev.evaluate([], ["uncontrolled"])
    path = tmp_path / "ep.json"
    dump(ep, path)
    args = argparse.Namespace(episode=[str(path)], site=None, stations=50, days=1, seed=1,
                              policies="greedy,greedy", exact=False, json=None, report=None, no_progress=True)
    with pytest.raises(SystemExit, match="'greedy' is named more than once"):
        ev.cli(args)


# -- 3. episode consistency ------------------------------------------------------------------------

def _refused(data: dict[str, Any], match: str) -> None:
    with pytest.raises(EpisodeError, match=match):
        from_dict(data)


def test_an_arrival_before_the_start_is_refused_a_departure_after_the_end_is_not() -> None:
    data = _data()
    a = data["arrivals"][1]
    a["arrival"] = "2026-06-30T23:00:00.000Z"
    _refused(data, f"arrival {a['id']} arrives before the episode starts")
    data = _data()
    data["arrivals"][1]["departure"] = "2026-07-02T06:00:00.000Z"  # the evaluator runs on until it leaves
    assert from_dict(data).arrivals


def test_a_grid_event_must_end_after_it_starts_and_a_cap_must_say_how_much() -> None:
    data = _data()
    g = data["grid_events"][0]
    g["end"] = g["start"]
    _refused(data, f"grid event {g['id']} ends before it starts")
    data = _data()
    data["grid_events"][0] |= {"kind": "import_cap", "cap_kw": None}
    _refused(data, "import cap without cap_kw")
    del data["grid_events"][0]["cap_kw"]
    _refused(data, "import cap without cap_kw")


@pytest.mark.parametrize("shift", [timedelta(minutes=-1), timedelta(0)])
def test_a_need_change_outside_the_stay_is_refused(shift: timedelta) -> None:
    data = _data()
    ep = from_dict(data)
    a = ep.arrivals[0]
    at = a.arrival + shift if shift < timedelta(0) else a.departure
    entry = next(x for x in data["arrivals"] if x["id"] == a.id)
    entry["need_change"] = {"at": at.isoformat(), "energy_kwh": 5.0}
    _refused(data, f"arrival {a.id}: need_change.at is outside its stay")
    entry["need_change"]["at"] = a.arrival.isoformat()  # at plug-in: inside
    assert from_dict(data).arrivals


def test_repeated_station_and_evse_ids_are_refused() -> None:
    data = _data()
    data["stations"].append(dict(data["stations"][0]))
    _refused(data, "station id cs1 is repeated")
    data = _data()
    evses = data["stations"][0]["evses"]
    evses.append(dict(evses[0]))
    _refused(data, f"station cs1 has EVSE id {evses[0]['evse_id']} more than once")


def test_a_building_load_must_cover_the_episode() -> None:
    data = _data()
    data["building_load"]["values_kw"] = data["building_load"]["values_kw"][:-1]
    _refused(data, "building_load covers .* not the episode's")
    data = _data()
    data["building_load"]["start"] = "2026-07-01T00:15:00.000Z"
    _refused(data, "building_load covers")
    data = _data()
    data["building_load"] = {"start": data["start"], "step_s": 900, "values_kw": []}
    _refused(data, "building_load covers")


@pytest.mark.parametrize("where", ["start", "arrival", "need_change", "grid_event", "building_load"])
def test_a_timestamp_no_datetime_holds_is_an_episode_error(where: str) -> None:
    data = _data()
    bad = "0000-01-01T00:00:00Z"  # RFC 3339 and the schema's format allow it
    if where == "start":
        data["start"] = bad
    elif where == "arrival":
        data["arrivals"][0]["announced_departure"] = bad
    elif where == "need_change":
        data["arrivals"][0]["need_change"] = {"at": bad}
    elif where == "grid_event":
        data["grid_events"][0]["end"] = bad
    else:
        data["building_load"]["start"] = bad
    _refused(data, "bad timestamp '0000-01-01T00:00:00Z'")


# -- 4. id_token round trip ------------------------------------------------------------------------

def test_an_episode_without_tokens_and_with_long_ids_round_trips(tmp_path: Path) -> None:
    data = _data()
    long_id = "arrival-" + "x" * 40
    data["arrivals"][0]["id"] = long_id
    data["arrivals"][0].pop("id_token", None)
    first = from_dict(data)
    token = next(a.id_token for a in first.arrivals if a.id == long_id)
    assert 0 < len(token) <= 36 and token == next(a.id_token for a in from_dict(data).arrivals if a.id == long_id)
    path = tmp_path / "ep.json"
    dump(first, path)
    assert load(path) == first
    short = next(a for a in first.arrivals if a.id != long_id)
    assert short.id_token == short.id  # a short id is still its own token


# -- 5. fully served against what the battery can hold ----------------------------------------------

def test_a_big_battery_asking_for_100_percent_can_be_fully_served() -> None:
    base = small_episode(1, seed=4, grid_event=False)
    a = replace(base.arrivals[0], arrival=base.start + timedelta(hours=1), departure=base.start + timedelta(hours=40),
                capacity_kwh=150.0, arrival_soc=0.5, energy_kwh=None, target_soc=1.0)
    ep = replace(base, arrivals=(a,))
    out, runs = ev.evaluate([ep], ["uncontrolled"])
    t = runs[0].evs[0]
    assert t.energy == pytest.approx(t.stop, abs=0.05)  # charged until the physics stop it
    assert t.requested - (t.stop - t.e0) > ev.FULLY_SERVED_TOLERANCE_KWH  # 99.6 % of 150 kWh: 0.6 kWh short
    assert out["policies"]["uncontrolled"]["evs_fully_served_share"] == 1.0


# -- 6. grid events off the 5-minute grid -----------------------------------------------------------

def test_events_off_the_step_grid_are_settled_as_the_lp_plans_them() -> None:
    base = small_episode(3, seed=2, grid_event=False)
    day = base.start
    cap = GridEvent("cap", day + timedelta(hours=10, minutes=2), day + timedelta(hours=11, minutes=2),
                    GridEventKind.IMPORT_CAP, cap_kw=5.0)
    req = GridEvent("req", day + timedelta(hours=17, minutes=2), day + timedelta(hours=17, minutes=33),
                    GridEventKind.EXPORT_REQUEST, payment_per_kwh=1.0)
    ep = replace(base, grid_events=(cap, req))
    _, runs = ev.evaluate([ep], ["uncontrolled"])
    run = runs[0]
    n = len(run.times)
    lp = site_inputs(uniform_grid(ep.start, ev.STEP_S, n), tariff=ep.tariff, limits=ep.limits,
                     events=ep.grid_events, building_kw=ep.building_load_at, demand_charge_per_kw=0.0,
                     peak_so_far_kw=0.0, wear_cost_per_kwh=0.0, unmet_penalty_per_kwh=0.0)
    assert int((lp.import_limit_kw == 5.0).sum()) == 13  # 10:00 to 11:05: every step the cap touches
    np.testing.assert_allclose(run.limit_kw, lp.import_limit_kw)
    # The 10:00 step is capped: the building alone is above 5 kW, so it is an excess.
    first = int((cap.start - ep.start).total_seconds() // ev.STEP_S)
    assert run.limit_kw[first] == 5.0 and run.net_kw[first] > 5.0
    assert run.metrics["limit_excess_steps"] >= 13
    h = ev.STEP_S / 3600.0
    revenue = float(h * np.asarray(lp.export_payment_per_kwh) @ (run.building_kw - run.net_kw))
    assert run.metrics["grid_event_revenue"] == pytest.approx(revenue)
    assert 0.0 < lp.export_payment_per_kwh[first + 7 * 12] < 1.0  # the 17:00 step pays 3/5 of the rate
