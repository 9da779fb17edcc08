"""The scenario generator: reproducible, schema-valid, and the site types differ as claimed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.episode import Episode, from_dict, load
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
