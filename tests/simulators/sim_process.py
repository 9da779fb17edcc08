"""`gateway sim` as a user runs it: a subprocess against a gateway, on a generated episode."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from gateway.episode import Episode, dump
from simulators.scenario import ScenarioOptions, generate

FLEET_PASSWORD = "fleet-password-000001"


def episode_file(tmp_path: Path, stations: int, seed: int) -> tuple[Path, Episode]:
    """A generated workplace day written where ``gateway sim --episode`` reads it."""
    episode = generate(ScenarioOptions(site="workplace", stations=stations, days=1, seed=seed))
    path = tmp_path / "ep.json"
    dump(episode, path)
    return path, episode


async def run_sim(ocpp_url: str, ep_path: Path, episode: Episode, *extra: str, hours: float | None = None,
                  timeout_s: float = 120.0) -> tuple[int, str]:
    """``gateway sim`` at 3600x over the episode's first ``hours`` (all of it when None), with
    the fleet's password; its exit code and stderr."""
    until = ["--until", (episode.start + timedelta(hours=hours)).isoformat()] if hours is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "sim", "--url", ocpp_url, "--episode", str(ep_path),
        "--time-scale", "3600", "--password", FLEET_PASSWORD, "--no-progress", *until, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()
