"""The simulated site's inputs sent to a real gateway's REST API (simulators/site_feed.py): what
the gateway refuses for now is said and the run goes on; what it refuses for good ends it."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from gateway.clock import ManualClock
from simulators.scenario import ScenarioOptions, generate
from simulators.site_feed import SiteFeed, SiteFeedError

KEY = "test-operator-key"


def _episode() -> Any:
    return generate(ScenarioOptions(site="workplace", stations=1, days=1, seed=2))


async def test_a_reading_older_than_the_applied_one_is_counted_and_said_once(
        gateway_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A gateway restarted on the same database keeps an earlier run's later reading: each of
    this run's is refused (409) until they pass it; the fleet says so instead of ending."""
    h = await gateway_factory()
    ep = _episode()
    earlier = SiteFeed(h.api_url, KEY, ep, ManualClock(ep.start + timedelta(hours=10)))
    try:
        await earlier.start()  # the earlier run's reading at 10:00
        assert earlier.readings_sent == 1
    finally:
        await earlier.close()
    feed = SiteFeed(h.api_url, KEY, ep, ManualClock(ep.start + timedelta(hours=8)))
    try:
        with caplog.at_level(logging.WARNING, logger="simulators.site_feed"):
            await feed.start()
            await feed.send_reading()
            await feed.send_reading()
        assert (feed.readings_sent, feed.readings_stale) == (0, 3)
        assert len([r for r in caplog.records if "older than one the gateway applied" in r.message]) == 1
    finally:
        await feed.close()


async def test_a_gateway_whose_database_is_away_is_sent_the_next_reading(
        gateway_factory: Any, proxy_and_url: tuple[Any, str], caplog: pytest.LogCaptureFixture) -> None:
    """503 (applied, not stored) is the gateway riding out an outage: the feed goes on."""
    proxy, url = proxy_and_url
    h = await gateway_factory(database_url=url, db_retry_interval_s=0.1)
    ep = _episode()
    clock = ManualClock(ep.start + timedelta(hours=8))
    feed = SiteFeed(h.api_url, KEY, ep, clock)
    try:
        await feed.start()
        await proxy.cut()
        clock.advance(60)
        with caplog.at_level(logging.WARNING, logger="simulators.site_feed"):
            await feed.send_reading()  # no SiteFeedError
        assert any("HTTP 503" in r.message for r in caplog.records)
        await proxy.restore()
        clock.advance(60)
        await feed.send_reading()
        assert feed.readings_sent == 2
    finally:
        await feed.close()


async def test_a_refused_key_ends_the_feed(gateway_factory: Any) -> None:
    h = await gateway_factory()
    feed = SiteFeed(h.api_url, "not-the-key", _episode(), ManualClock(_episode().start))
    try:
        with pytest.raises(SiteFeedError, match="operator key was refused"):
            await feed.start()
    finally:
        await feed.close()


async def test_a_feed_that_fails_ends_the_day_with_its_error_and_a_day_that_ends_stops_the_feed() -> None:
    """The demo's and `gateway sim --api-url`'s shared rule (simulators.fleet.run_fed)."""
    import asyncio

    from simulators.fleet import run_fed

    day_cancelled = asyncio.Event()

    async def long_day() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            day_cancelled.set()
            raise
        return "never"

    async def failing_feed() -> None:
        raise SiteFeedError("PUT /api/v1/site/limits: HTTP 422: refused")

    with pytest.raises(SiteFeedError, match="HTTP 422"):
        await asyncio.wait_for(run_fed(long_day(), failing_feed()), 10)
    assert day_cancelled.is_set()

    feed_cancelled = asyncio.Event()

    async def endless_feed() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            feed_cancelled.set()
            raise

    async def short_day() -> str:
        return "summary"

    assert await asyncio.wait_for(run_fed(short_day(), endless_feed()), 10) == "summary"
    assert feed_cancelled.is_set()


def test_two_zones_are_one_clock_only_where_they_tell_the_same_hours() -> None:
    from datetime import UTC, datetime

    from simulators.site_feed import clock_differs

    jan = datetime(2027, 1, 4, tzinfo=UTC)
    assert clock_differs("UTC", "Etc/UTC", jan, jan + timedelta(days=20)) is None
    assert clock_differs("UTC", "Europe/London", jan, jan + timedelta(days=20)) is None  # GMT in winter
    spring = datetime(2027, 3, 20, tzinfo=UTC)
    assert clock_differs("UTC", "Europe/London", spring, spring + timedelta(days=20)) == datetime(
        2027, 3, 28, 1, tzinfo=UTC)  # British Summer Time begins
    assert clock_differs("UTC", "Europe/Berlin", jan, jan) == jan


async def test_a_gateway_on_another_clock_than_the_episodes_tariff_is_refused_before_anything_is_sent(
        gateway_factory: Any) -> None:
    """The tariff's hours would price the wrong hours: the feed says which zones and what to set,
    and leaves the gateway's tariff and limits as they were."""
    from gateway.config import SiteConfig

    h = await gateway_factory(site=SiteConfig(timezone="America/New_York", import_limit_kw=321.0))
    ep = _episode()
    assert ep.tariff.timezone == "UTC"
    feed = SiteFeed(h.api_url, KEY, ep, ManualClock(ep.start + timedelta(hours=8)))
    try:
        with pytest.raises(SiteFeedError, match=r"on UTC time and the gateway's site is on America/New_York.*"
                                                r"\[site\] timezone is 'UTC'"):
            await feed.start()
    finally:
        await feed.close()
    assert h.gw.state.limits.import_kw == 321.0
    assert feed.readings_sent == 0


async def test_a_flat_tariff_is_sent_to_a_gateway_on_any_clock(gateway_factory: Any) -> None:
    import dataclasses

    from gateway.config import SiteConfig

    h = await gateway_factory(site=SiteConfig(timezone="America/New_York"))
    ep = _episode()
    ep = dataclasses.replace(ep, tariff=dataclasses.replace(ep.tariff, periods=()))
    feed = SiteFeed(h.api_url, KEY, ep, ManualClock(ep.start + timedelta(hours=8)))
    try:
        await feed.start()
    finally:
        await feed.close()
    assert feed.readings_sent == 1
