"""A fleet that loses stations or EVs says so: an EV due that never plugged in is counted (served
nothing, with why), a station task that failed is kept, and `run_failures` names both."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.clock import ScaledClock
from gateway.episode import Episode
from simulators.evse import EvResult, requested_kwh
from simulators.fleet import Fleet, format_summary, run_failures
from simulators.scenario import ScenarioOptions, generate


def _episode() -> Episode:
    ep = generate(ScenarioOptions(site="workplace", stations=3, days=1, seed=5))
    assert len({a.station_id for a in ep.arrivals}) >= 2
    return ep


def _result(fleet: Fleet, arrival_id: str) -> EvResult:
    a = fleet.arrivals[arrival_id]
    return EvResult(id=a.id, station_id=a.station_id, evse_id=a.evse_id, transaction_id="tx-1", arrival=a.arrival,
                    departure=a.departure, requested_kwh=a.requested_kwh, delivered_kwh=a.requested_kwh,
                    discharged_kwh=0.0, imported_kwh=a.requested_kwh / 0.92, exported_kwh=0.0,
                    arrival_soc=a.arrival_soc, departure_soc=0.8)


async def test_evs_that_never_plugged_in_are_counted_with_why() -> None:
    ep = _episode()
    fleet = Fleet(ep, "ws://127.0.0.1:1/ocpp", clock=ScaledClock(ep.end, 1.0), progress=False)
    first = ep.arrivals[0]
    fleet.results[first.id] = _result(fleet, first.id)
    failed = next(a.station_id for a in ep.arrivals if a.station_id != first.station_id)
    for sid, st in fleet.stations.items():
        if sid != failed:
            st.booted.set()
    fleet.failures[failed] = "its task failed: RuntimeError: boom"

    summary = fleet.summary()
    missing = summary["evs_missing"]
    assert [e["id"] for e in summary["evs"]] == [first.id]
    assert {m["id"] for m in missing} == {a.id for a in ep.arrivals[1:]}
    assert summary["evs_not_arrived"] == len(ep.arrivals) - 1 and summary["evs_not_due"] == 0
    assert summary["stations"]["failed"] == {failed: "its task failed: RuntimeError: boom"}
    by_id = {m["id"]: m for m in missing}
    for a in ep.arrivals[1:]:
        m = by_id[a.id]
        assert m["energy_requested_kwh"] == pytest.approx(requested_kwh(a), abs=1e-3)  # the final request
        assert m["energy_deliverable_kwh"] > 0
        if a.station_id == failed:
            assert m["why"] == f"station {failed}: its task failed: RuntimeError: boom"
        else:
            assert m["why"] == f"station {a.station_id} booted but never plugged it in"
    problems = run_failures(summary)
    assert problems[0].startswith(f"only {len(ep.stations) - 1}/{len(ep.stations)} stations booted")
    assert problems[1] == f"1 station task(s) failed ({failed}: its task failed: RuntimeError: boom)"
    assert problems[2].startswith(f"{len(ep.arrivals) - 1} EV(s) due never plugged in (")
    # The fleet's own line counts the served share over every EV due, not over those that came.
    assert f"fully served 1/{len(ep.arrivals)} " in format_summary(summary).splitlines()[-1]


async def test_arrivals_after_the_run_ended_were_not_due() -> None:
    ep = _episode()
    fleet = Fleet(ep, "ws://127.0.0.1:1/ocpp", clock=ScaledClock(ep.start, 1.0), progress=False)
    for st in fleet.stations.values():
        st.booted.set()
    summary = fleet.summary()  # the run ends at the episode's start: no EV was due yet
    assert summary["evs_missing"] == [] and summary["evs_not_due"] == len(ep.arrivals)
    assert run_failures(summary) == []


async def test_a_station_task_that_failed_is_kept_not_dropped() -> None:
    ep = _episode()
    a = ep.arrivals[0]
    fleet = Fleet(ep, "ws://127.0.0.1:1/ocpp", clock=ScaledClock(a.arrival, 1.0), progress=False)
    st = fleet.stations[a.station_id]

    def crash(arrival: object) -> None:
        raise RuntimeError("injected plug-in crash")

    st.plug_in = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await st.run_arrivals([a])  # what Station.run gathers away with its other tasks
    assert st.failure == "its EVs' task failed: RuntimeError: injected plug-in crash"

    async def boom() -> None:
        raise ValueError("sampler broke")

    fleet._tasks.append(asyncio.create_task(boom(), name="fleet-OTHER"))
    await fleet.stop()
    assert fleet.failures == {a.station_id: "its EVs' task failed: RuntimeError: injected plug-in crash",
                              "OTHER": "its task failed: ValueError: sampler broke"}
    summary = fleet.summary()
    assert summary["stations"]["failed"] == fleet.failures
    assert any("station task(s) failed" in p for p in run_failures(summary))


def test_an_arrival_due_is_one_before_the_stop() -> None:
    ep = _episode()
    fleet = Fleet(ep, "ws://127.0.0.1:1/ocpp", clock=ScaledClock(ep.start, 1.0), progress=False)
    fleet._ended_at = ep.arrivals[0].arrival + timedelta(seconds=1)
    assert [m["id"] for m in fleet.summary()["evs_missing"]] == [ep.arrivals[0].id]
