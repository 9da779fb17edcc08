"""`gateway sim` end to end: a generated episode against the loopback CSMS, summary written as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway.cli import main
from gateway.clock import RealClock
from gateway.episode import load
from simulators.loopback_csms import LoopbackCsms
from tests.simulators.sim_process import episode_file, run_sim


async def test_gateway_sim_writes_the_summary(tmp_path: Path) -> None:
    ep_path, out = tmp_path / "ep.json", tmp_path / "out.json"
    assert (
        main(["scenario", "generate", "--site", "workplace", "--stations", "3", "--seed", "9", "-o", str(ep_path)]) == 0
    )
    episode = load(ep_path)
    csms = LoopbackCsms(RealClock(), password="pw")  # a wall-clock CSMS: the fleet keeps its own time
    await csms.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "sim",
            "--url",
            csms.url,
            "--episode",
            str(ep_path),
            "--time-scale",
            "14400",
            "--password",
            "pw",
            "--json",
            str(out),
            "--no-progress",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await csms.stop()
    assert proc.returncode == 0, stderr.decode()
    assert "fully served" in stdout.decode()
    summary = json.loads(out.read_text())
    assert {e["id"] for e in summary["evs"]} == {a.id for a in episode.arrivals}
    assert summary["site"]["limit_kw"] == episode.limits.import_kw
    assert summary["site"]["peak_import_kw"] > 0
    assert summary["stations"]["booted"] == 3
    for e in summary["evs"]:
        # No site control here: whatever was clearly deliverable was delivered.
        if e["energy_requested_kwh"] <= 0.9 * e["energy_deliverable_kwh"]:
            assert e["fully_served"], e
        assert e["energy_delivered_kwh"] <= e["energy_requested_kwh"] + 0.01
    # Every transaction reached the CSMS, Started to Ended.
    ended = [r for r in csms.calls("TransactionEvent") if r.payload["eventType"] == "Ended"]
    assert len({r.payload["transactionInfo"]["transactionId"] for r in ended}) == len(episode.arrivals)


async def test_gateway_sim_registers_its_stations_with_the_real_gateway(tmp_path: Path, gateway_server: Any) -> None:
    """`--register` puts the episode's stations in the gateway's database so Basic auth admits them."""
    ep_path, episode = episode_file(tmp_path, stations=2, seed=4)
    code, stderr = await run_sim(gateway_server.ocpp_url, ep_path, episode, "--register", "--database-url",
                                 gateway_server.database_url, hours=2)
    assert code == 0, stderr
    for spec in episode.stations:
        row = await gateway_server.gw.stations.get(spec.id)
        assert row is not None and row.vendor is not None  # registered, then booted with its password


async def test_gateway_sim_sends_the_episodes_site_to_the_gateway(tmp_path: Path, gateway_factory: Any) -> None:
    """With --api-url and --api-key the gateway plans the site the fleet's summary measures: the
    episode's limits, tariff, grid events and building load (its limit was the gateway's own)."""
    from simulators.site_feed import pushed_forecast

    h = await gateway_factory()
    ep_path, episode = episode_file(tmp_path, stations=2, seed=2)
    assert episode.grid_events and pushed_forecast(episode)  # a day with an event and a forecast
    assert h.gw.state.limits.import_kw != episode.limits.import_kw
    code, stderr = await run_sim(  # past the morning's readings
        h.ocpp_url, ep_path, episode, "--register", "--database-url", h.database_url,
        "--api-url", h.api_url, "--api-key", "test-operator-key", hours=9)
    assert code == 0, stderr
    state = h.gw.state
    assert (state.limits.import_kw, state.limits.export_kw) == (episode.limits.import_kw, episode.limits.export_kw)
    assert [(p.start_hour, p.end_hour, p.import_price) for p in state.tariff.periods] == [
        (p.start_hour, p.end_hour, p.import_price) for p in episode.tariff.periods]
    assert state.tariff.demand_charge_per_kw == episode.tariff.demand_charge_per_kw
    assert set(state.grid_events) == {g.id for g in episode.grid_events}
    # The last reading sent: the building's load at a simulated minute of the run's last hour.
    loads = {episode.building_load_at(episode.start + timedelta(minutes=m)) for m in range(8 * 60, 9 * 60 + 1)}
    assert state.building_load_kw in loads
    assert state.building_load_forecast and set(state.building_load_forecast) <= set(pushed_forecast(episode))


async def test_gateway_sim_stops_when_the_gateway_refuses_the_site(tmp_path: Path, gateway_factory: Any) -> None:
    h = await gateway_factory()
    ep_path, episode = episode_file(tmp_path, stations=1, seed=4)
    code, stderr = await run_sim(h.ocpp_url, ep_path, episode, "--api-url", h.api_url,
                                 "--api-key", "not-the-operator-key", timeout_s=60)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert "operator key was refused" in lines[-1] and "Traceback" not in stderr, lines
