"""The scenario generator: reproducible, schema-valid, and the site types differ as claimed; the
building forecast it writes and how an episode carries it."""

from __future__ import annotations

import hashlib
import json
import statistics
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.cli import main
from gateway.episode import Episode, EpisodeError, from_dict, load, schema, to_dict
from simulators import models
from simulators.evse import requested_kwh
from simulators.scenario import ScenarioOptions, generate, generate_dict


def _hours(ep: Episode) -> list[float]:
    return [a.arrival.hour + a.arrival.minute / 60 for a in ep.arrivals if not a.surprise]


def _dwell_h(ep: Episode) -> list[float]:
    return [(a.departure - a.arrival).total_seconds() / 3600 for a in ep.arrivals if not a.surprise]


@pytest.fixture(scope="module")
def episodes() -> dict[str, Episode]:
    return {s: generate(ScenarioOptions(site=s, stations=40, days=3, seed=11)) for s in models.SITES}


def test_same_seed_same_episode_other_seed_other_episode() -> None:
    a = generate_dict(ScenarioOptions(site="workplace", stations=10, seed=5))
    b = generate_dict(ScenarioOptions(site="workplace", stations=10, seed=5))
    c = generate_dict(ScenarioOptions(site="workplace", stations=10, seed=6))
    assert json.dumps(a) == json.dumps(b)
    assert a["arrivals"] != c["arrivals"]


def test_cli_writes_a_schema_valid_episode(tmp_path: Path) -> None:
    out = tmp_path / "ep.json"
    assert (
        main(
            [
                "scenario",
                "generate",
                "--site",
                "workplace",
                "--stations",
                "50",
                "--days",
                "1",
                "--seed",
                "1",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    ep = load(out)  # validates against the schema and the consistency rules
    assert len(ep.stations) == 50
    assert ep.arrivals
    assert from_dict(json.loads(out.read_text())).seed == 1


def test_workplace_arrives_in_the_morning_and_stays_the_day(episodes: dict[str, Episode]) -> None:
    hours, dwell = _hours(episodes["workplace"]), _dwell_h(episodes["workplace"])
    assert 7.5 < statistics.median(hours) < 10.0
    assert statistics.median(dwell) > 6.0


def test_depot_returns_in_the_evening_and_leaves_at_fixed_morning_slots(episodes: dict[str, Episode]) -> None:
    ep = episodes["depot"]
    hours = _hours(ep)
    assert 16.0 < statistics.median(hours) < 20.0
    deps = [a.departure.hour + a.departure.minute / 60 for a in ep.arrivals if not a.surprise]
    # Fixed slots 05:30-07:00 (a few minutes of jitter), overnight stays.
    assert sum(5.0 <= d <= 7.5 for d in deps) / len(deps) > 0.9
    assert statistics.median(_dwell_h(ep)) > 9.0


def test_public_sessions_are_short_and_spread_over_the_day(episodes: dict[str, Episode]) -> None:
    ep = episodes["public"]
    assert statistics.median(_dwell_h(ep)) < 4.0
    assert statistics.pstdev(_hours(ep)) > statistics.pstdev(_hours(episodes["workplace"]))
    # Several sessions per EVSE per day, unlike the workplace.
    assert len(ep.arrivals) / len(ep.evses) > 1.3 * len(episodes["workplace"].arrivals) / len(
        episodes["workplace"].evses
    )


def test_requests_are_mostly_but_not_always_deliverable() -> None:
    ep = generate(ScenarioOptions(site="public", stations=40, days=2, seed=3))
    kw = {e.key: e.max_charge_kw for e in ep.evses}
    ok = 0
    for a in ep.arrivals:
        pmax = min(a.max_charge_kw, kw[(a.station_id, a.evse_id)])
        dwell = (a.departure - a.arrival).total_seconds()
        ok += a.requested_kwh <= models.deliverable_kwh(a.capacity_kwh, a.arrival_soc, pmax, a.eff_charge, dwell) + 1e-6
    share = ok / len(ep.arrivals)
    assert 0.7 < share < 1.0


def test_import_limit_is_binding_but_feasible(episodes: dict[str, Episode]) -> None:
    for ep in episodes.values():
        building_peak = max(ep.building_load.values_kw) if ep.building_load else 0.0
        chargers = sum(e.max_charge_kw for e in ep.evses)
        assert ep.limits.import_kw < 0.8 * (chargers + building_peak)
        # Above the building's own peak plus the average EV energy need over the episode.
        hours = ep.duration().total_seconds() / 3600
        mean_ev_kw = sum(requested_kwh(a) for a in ep.arrivals) / hours
        assert ep.limits.import_kw > building_peak
        assert ep.limits.import_kw > mean_ev_kw


def test_uncertainty_knobs_show_up(episodes: dict[str, Episode]) -> None:
    ep = generate(
        ScenarioOptions(
            site="workplace",
            stations=40,
            days=2,
            seed=2,
            surprise_share=0.2,
            need_change_share=0.3,
            departure_noise_h=1.5,
        )
    )
    announced = [a for a in ep.arrivals if a.announced_departure is not None]
    assert all(a.iso15118 for a in announced)
    early = sum(a.departure < a.announced_departure for a in announced if a.announced_departure)
    late = sum(a.departure > a.announced_departure for a in announced if a.announced_departure)
    assert early > 0 and late > 0
    assert any(a.surprise for a in ep.arrivals)
    changed = [a for a in ep.arrivals if a.need_change is not None]
    assert changed and all(a.arrival < a.need_change.at < a.departure for a in changed if a.need_change)
    none_15118 = [a for a in ep.arrivals if not a.iso15118]
    assert none_15118 and all(a.announced_departure is None for a in none_15118)


def test_summer_weekday_demand_response_in_the_late_afternoon() -> None:
    ep = generate(ScenarioOptions(site="workplace", stations=5, days=5, seed=4, grid_event="always"))
    assert len(ep.grid_events) == 5
    for g in ep.grid_events:
        assert g.kind.value == "export_request" and g.payment_per_kwh > 0
        assert 15.0 <= g.start.hour + g.start.minute / 60 <= 17.0
        assert 17.0 <= g.end.hour + g.end.minute / 60 <= 20.0
    assert generate(ScenarioOptions(site="workplace", stations=5, days=5, seed=4, grid_event="never")).grid_events == ()


def test_ev_mix_is_realistic(episodes: dict[str, Episode]) -> None:
    arrivals = [a for ep in episodes.values() for a in ep.arrivals]
    caps = [a.capacity_kwh for a in arrivals]
    assert min(caps) >= 40 and max(caps) <= 100
    assert {a.max_charge_kw for a in arrivals} <= {7.4, 11.0, 22.0}
    assert all(a.max_discharge_kw > 0 for a in arrivals if a.bidirectional)
    assert all(a.max_discharge_kw == 0 for a in arrivals if not a.bidirectional)


def _digest_without_forecast(data: dict[str, Any]) -> str:
    data = json.loads(json.dumps(data))
    data["building_load"].pop("forecast_kw")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def test_the_forecast_changes_no_other_draw_of_an_episode() -> None:
    # Digests of these episodes as generated before they carried a forecast: arrivals, load, limits
    # and grid events must stay those of the seed (benchmarks and stored episodes rely on it).
    # Re-pinned once, deliberately, when the battery's taper ended at a cutoff instead of a floor
    # (requests are capped at what the taper lets a stay deliver).
    assert _digest_without_forecast(generate_dict(ScenarioOptions(site="depot", stations=6, days=2, seed=3))) \
        == "5ec56e53b69ab7633b71802cf5e38fec8a13d0ba21c14ff43d9f8d8df00a8766"
    assert _digest_without_forecast(
        generate_dict(ScenarioOptions(site="workplace", stations=6, days=2, seed=4, grid_event="always"))
    ) == "8ccae47b211a66748eb8fe6ba06bce300a870118019cfda08ddf7dccba043bef"


def test_the_load_draws_the_same_numbers_with_or_without_a_forecast() -> None:
    plain, with_fc = np.random.default_rng(8), np.random.default_rng(8)
    load = models.building_load(plain, "office", 200.0, 0.0, 96 * 3, 900)
    same, forecast = models.building_load_and_forecast(with_fc, np.random.default_rng(99), "office", 200.0, 0.0,
                                                       96 * 3, 900)
    assert same == load
    assert plain.bit_generator.state == with_fc.bit_generator.state  # nothing more was drawn
    assert len(forecast) == len(load) and forecast != load


def test_the_energy_systems_forecast_is_the_shape_with_a_forecast_heat_and_no_wander() -> None:
    ep = generate_dict(ScenarioOptions(site="workplace", stations=6, days=3, seed=4))
    bl = ep["building_load"]
    values, forecast = bl["values_kw"], bl["forecast_kw"]
    assert len(forecast) == len(values) == 3 * 96
    assert forecast != values
    peak = models.SITES["workplace"].building_peak_kw_per_evse * 12
    for i in range(0, 3 * 96, 96):  # 03:00 of each day: far from the afternoon's cooling, no noise
        assert forecast[i + 12] == pytest.approx(peak * models.building_shape("office", 3.0), abs=0.01)
        assert values[i + 12] != forecast[i + 12]
    err = np.abs(np.array(forecast) - np.array(values))
    assert err.mean() < 0.1 * np.mean(values)  # a forecast, not noise
    # Another seed, other errors; the same seed, the same forecast.
    assert generate_dict(ScenarioOptions(site="workplace", stations=6, days=3, seed=4))["building_load"] == bl
    assert generate_dict(ScenarioOptions(site="workplace", stations=6, days=3, seed=5))["building_load"][
        "forecast_kw"] != forecast


def test_the_forecast_error_is_that_of_a_day_ahead_heat_forecast() -> None:
    # At 15:30 the cooling is 1 + 0.12 max(0, heat + 0.5): read back each day's heat from the
    # forecast and from the weather-exact shape (no forecast generator), and their difference is
    # the heat forecast's error, N(0, FORECAST_HEAT_SD).
    days, peak = 400, 100.0
    _, forecast = models.building_load_and_forecast(np.random.default_rng(1), np.random.default_rng(2), "office",
                                                    peak, 0.0, 96 * days, 900)
    _, exact = models.building_load_and_forecast(np.random.default_rng(1), None, "office", peak, 0.0, 96 * days, 900)
    base = peak * models.building_shape("office", 15.5)
    errors = []
    for d in range(days):
        i = d * 96 + 62  # 15:30
        heat_fc, heat = (forecast[i] / base - 1) / 0.12, (exact[i] / base - 1) / 0.12
        if heat_fc > 0.05 and heat > 0.05:  # both above the cut at heat -0.5
            errors.append(heat_fc - heat)
    assert len(errors) > days / 2
    assert abs(float(np.mean(errors))) < 0.15  # keeping days above the cut leans it a little positive
    assert float(np.std(errors)) == pytest.approx(models.FORECAST_HEAT_SD, rel=0.15)


def _episode_dict(**building: Any) -> dict[str, Any]:
    data = generate_dict(ScenarioOptions(site="workplace", stations=2, days=1, seed=3))
    data["building_load"].update(building)
    return data


def test_an_episode_round_trips_with_and_without_a_forecast() -> None:
    data = _episode_dict()
    ep = from_dict(data)
    assert ep.building_load is not None and ep.building_load.forecast_kw is not None
    assert list(ep.building_load.forecast_kw) == data["building_load"]["forecast_kw"]
    assert to_dict(ep)["building_load"] == data["building_load"]
    assert from_dict(to_dict(ep)) == ep
    assert ep.has_building_forecast
    step = data["building_load"]["forecast_kw"]
    assert ep.building_forecast_at(ep.start + timedelta(minutes=31)) == step[2]
    assert ep.building_forecast_at(ep.start - timedelta(hours=1)) == step[0]  # outside: the nearest
    assert ep.building_forecast_at(ep.end + timedelta(hours=5)) == step[-1]

    del data["building_load"]["forecast_kw"]  # an episode file from before forecasts
    old = from_dict(data)
    assert old.building_load is not None and old.building_load.forecast_kw is None
    assert not old.has_building_forecast and old.building_forecast_at(old.start) is None
    assert "forecast_kw" not in to_dict(old)["building_load"]
    assert from_dict(to_dict(old)) == old


def test_a_forecast_must_be_numbers_on_the_loads_grid() -> None:
    values = _episode_dict()["building_load"]["values_kw"]
    with pytest.raises(EpisodeError, match="forecast_kw has 95 values, values_kw 96"):
        from_dict(_episode_dict(forecast_kw=values[:-1]))
    with pytest.raises(EpisodeError, match="schema"):
        from_dict(_episode_dict(forecast_kw=["high"] * len(values)))
    with pytest.raises(EpisodeError, match="schema"):
        from_dict(_episode_dict(forecast_kw=None))
    assert "forecast_kw" in schema()["properties"]["building_load"]["properties"]


def test_a_weekend_factor_scales_saturdays_and_sundays_and_nothing_else() -> None:
    opts = ScenarioOptions(site="workplace", stations=6, days=7, seed=5)  # from Wednesday 2026-07-01
    every_day = generate(opts)
    office = generate(ScenarioOptions(site="workplace", stations=6, days=7, seed=5, building_weekend_factor=0.5))
    assert office.arrivals == every_day.arrivals  # no other draw moves
    floor = 0.05 * models.SITES["workplace"].building_peak_kw_per_evse * len(office.evses)
    weekend_steps = 0
    for i, (half, whole) in enumerate(zip(office.building_load.values_kw, every_day.building_load.values_kw,
                                          strict=True)):
        when = office.building_load.start + timedelta(seconds=i * office.building_load.step_s)
        if when.weekday() >= 5:
            weekend_steps += 1
            assert half == pytest.approx(max(whole / 2, floor), abs=0.01)
        else:
            assert half == whole
    assert weekend_steps == 2 * 96
