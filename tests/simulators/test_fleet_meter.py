"""The fleet's own site meter (simulators/fleet.py): what `gateway sim --json` reports."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gateway.clock import ManualClock
from simulators.fleet import Fleet
from simulators.scenario import ScenarioOptions, generate


async def test_the_site_import_counts_the_time_that_passed_not_one_interval_a_reading() -> None:
    """Each reading was counted as one sample interval however late the loop woke: with every
    wake-up 15 s late, 40 readings of a constant 100 kW over 50 minutes read 68 kWh, not 83."""
    ep = generate(ScenarioOptions(site="workplace", stations=2, seed=1))
    clock = ManualClock(ep.start + timedelta(hours=12))
    fleet = Fleet(ep, "ws://127.0.0.1:9/ocpp", clock=clock, freeze_gc=False)
    fleet.site_import_kw = lambda now=None: 100.0  # type: ignore[method-assign]
    start = clock.now()
    sampler = asyncio.create_task(fleet._sampler())

    async def taken(n: int) -> None:
        while fleet.samples < n:
            await asyncio.sleep(0)

    await asyncio.wait_for(taken(1), 5.0)
    for i in range(2, 42):
        clock.advance(fleet.sample_interval_s + 15.0)  # the loop wakes late every time
        await asyncio.wait_for(taken(i), 5.0)
    elapsed_h = (clock.now() - start).total_seconds() / 3600.0
    sampler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sampler
    assert fleet.import_kwh == pytest.approx(100.0 * elapsed_h)
