"""The billing period's peak demand is kept in Postgres and planned against after a restart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.bus.site_inputs import SiteInputs
from gateway.clock import ManualClock
from gateway.scheduler import live_inputs
from tests.gateway.test_handlers import fetch, wait_for

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


async def metered_peak(gateway_factory: Any) -> tuple[Any, ManualClock]:
    """A gateway whose site drew 300 kW for the first 15-minute interval of July, then 120 kW."""
    clock = ManualClock(T0)
    h = await gateway_factory(clock=clock)
    assert h.gw is not None
    inputs = SiteInputs(h.gw)
    await inputs.set_building_load(300.0, None, "test")
    clock.advance(15 * 60)
    await inputs.set_building_load(120.0, None, "test")
    return h, clock


async def test_the_peak_so_far_survives_a_restart_and_reaches_the_plan(gateway_factory: Any) -> None:
    h, clock = await metered_peak(gateway_factory)

    async def stored() -> bool:
        rows = await fetch(h.database_url, "SELECT peak_kw FROM billing_peaks")
        return bool(rows) and rows[0]["peak_kw"] == pytest.approx(300.0)

    await wait_for(stored)
    await h.restart()
    gw = h.gw
    assert gw is not None and gw.state.demand.peak_at(clock.now()) == pytest.approx(300.0)
    site, _, _ = live_inputs.build(gw.state, clock.now(), gw.settings, {})
    assert site.peak_so_far_kw == pytest.approx(300.0)
    # The plan's peak covers this billing period only (a calendar month from the 1st).
    assert bool(site.demand_mask.all())
    # In the next billing period the plan starts from no peak.
    late = datetime(2026, 7, 31, 20, 0, tzinfo=UTC)
    site, _, _ = live_inputs.build(gw.state, late, gw.settings, {})
    assert site.peak_so_far_kw == pytest.approx(300.0)
    assert not site.demand_mask.all() and site.demand_mask.any()
    next_month = datetime(2026, 8, 2, tzinfo=UTC)
    site, _, _ = live_inputs.build(gw.state, next_month, gw.settings, {})
    assert site.peak_so_far_kw == 0.0
    # A lower peak stored later (another node's, say) never replaces a higher one.
    assert await gw.planning.raise_peak(gw.settings.site.name, T0.replace(hour=0), 100.0, clock.now()) == 300.0
    assert gw.state.demand.period == T0.replace(hour=0)


async def test_the_api_shows_a_new_months_peak_from_its_first_instant(gateway_factory: Any) -> None:
    h, clock = await metered_peak(gateway_factory)
    auth = {"Authorization": f"Bearer {h.settings.api_key}"}
    async with httpx.AsyncClient(base_url=h.api_url) as api:
        assert (await api.get("/api/v1/site", headers=auth)).json()["peak_import_kw"] == pytest.approx(300.0)
        # No reading since: the meter still holds July's peak, but August has none yet.
        clock.set(datetime(2026, 8, 1, 0, 1, tzinfo=UTC))
        assert (await api.get("/api/v1/site", headers=auth)).json()["peak_import_kw"] == 0.0
