"""The site's time zone: tariff windows, billing months and the hours history is kept by are on
the site's clock, across daylight saving time; instants stay UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gateway import sitetime
from gateway.billing import DemandMeter, period_end, period_start
from gateway.config import SiteConfig
from gateway.episode import EpisodeError, from_dict, to_dict
from gateway.scheduler.arrivals import ArrivalModel
from gateway.scheduler.forecast import SessionForecaster
from simulators.scenario import ScenarioOptions, generate

BERLIN = "Europe/Berlin"  # UTC+2 in summer, UTC+1 in winter


def test_a_peak_window_stays_at_local_hours_across_daylight_saving_time() -> None:
    tariff = SiteConfig(timezone=BERLIN).tariff()  # the default: 16-21 h at 0.38
    assert tariff.timezone == BERLIN
    # 16:00 in Berlin is 14:00 UTC in July and 15:00 UTC in January.
    assert tariff.prices_at(datetime(2026, 7, 1, 14, 0, tzinfo=UTC))[0] == 0.38
    assert tariff.prices_at(datetime(2026, 7, 1, 13, 59, tzinfo=UTC))[0] == 0.20
    assert tariff.prices_at(datetime(2026, 1, 15, 14, 30, tzinfo=UTC))[0] == 0.20
    assert tariff.prices_at(datetime(2026, 1, 15, 15, 0, tzinfo=UTC))[0] == 0.38
    # The same windows without a zone are UTC hours.
    assert SiteConfig().tariff().prices_at(datetime(2026, 7, 1, 14, 0, tzinfo=UTC))[0] == 0.20


def test_an_unknown_zone_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        SiteConfig(timezone="Mars/Olympus")
    with pytest.raises(sitetime.UnknownTimezoneError):
        sitetime.zone("")


def test_billing_months_start_at_the_sites_midnight() -> None:
    # 1 July 00:00 in Berlin is 30 June 22:00 UTC: an import at 23:00 UTC on 30 June is July's.
    at = datetime(2026, 6, 30, 23, 0, tzinfo=UTC)
    assert period_start(at, 1, BERLIN) == datetime(2026, 6, 30, 22, 0, tzinfo=UTC)
    assert period_start(at, 1) == datetime(2026, 6, 1, tzinfo=UTC)
    # A period that spans the autumn change to winter time ends at local midnight, UTC+1.
    assert period_end(at, 1, BERLIN) == datetime(2026, 7, 31, 22, 0, tzinfo=UTC)
    assert period_end(datetime(2026, 10, 15, tzinfo=UTC), 1, BERLIN) == datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    m = DemandMeter(interval_s=900.0, timezone=BERLIN)
    for minutes, kw in [(0, 100.0), (15, 100.0), (30, 0.0)]:
        m.sample(datetime(2026, 6, 30, 21, 30, tzinfo=UTC) + timedelta(minutes=minutes), kw)
    # 21:30-21:45 UTC is June (23:30 in Berlin); from 22:00 UTC a new month has begun.
    assert m.peak_at(datetime(2026, 6, 30, 21, 50, tzinfo=UTC)) == pytest.approx(100.0)
    assert m.peak_at(datetime(2026, 6, 30, 22, 10, tzinfo=UTC)) == 0.0


def test_arrivals_and_dwells_are_learned_by_the_sites_hour_of_day() -> None:
    # Monday 6 July 2026, 08:00 in Berlin = 06:00 UTC.
    day = datetime(2026, 7, 6, 6, 0, tzinfo=UTC)
    m = ArrivalModel(tz=BERLIN)
    m.watched("w", day - timedelta(hours=2), day + timedelta(hours=4))
    m.arrived("w", "ev1", day + timedelta(minutes=10))
    m.observe("w", day + timedelta(minutes=10), day + timedelta(hours=8), 20.0, 11.0)
    exp = m.expected("w", day)
    assert exp is not None and exp.per_day == 1.0
    assert m.expected("w", datetime(2026, 7, 6, 8, 0, tzinfo=UTC)) is None  # 10:00 local: nobody
    # A Sunday 23:30 UTC arrival is Monday 01:30 in Berlin: a weekday.
    m.watched("w", datetime(2026, 7, 12, 23, 0, tzinfo=UTC), datetime(2026, 7, 13, 0, 0, tzinfo=UTC))
    m.arrived("w", "ev2", datetime(2026, 7, 12, 23, 30, tzinfo=UTC))
    m.observe("w", datetime(2026, 7, 12, 23, 30, tzinfo=UTC), datetime(2026, 7, 13, 5, 0, tzinfo=UTC), 9.0, 7.0)
    got = m.expected("w", datetime(2026, 7, 6, 23, 0, tzinfo=UTC))  # Monday 01:00 local
    assert got is not None and got.per_day == 1.0 and got.groups[0].energy_kwh == 9.0

    fc = SessionForecaster(tz=BERLIN)
    for d in range(6):  # 08:xx local arrivals stay 9 h
        arr = day + timedelta(days=d, minutes=5)
        fc.observe("w", arr, arr + timedelta(hours=9), 15.0)
    # In winter 08:05 local is 07:05 UTC: the same hour of the site's day, the same history.
    winter = datetime(2026, 12, 7, 7, 5, tzinfo=UTC)
    assert fc.forecast("w", winter, winter).source == "history-hour"
    assert fc.forecast("w", winter, winter).departure == winter + timedelta(hours=9)


def test_an_episode_carries_its_zone_and_refuses_an_unknown_one() -> None:
    data = to_dict(generate(ScenarioOptions(site="workplace", stations=2, days=1, seed=3)))
    assert from_dict(data).tariff.timezone == "UTC"
    data["tariff"]["timezone"] = BERLIN
    assert to_dict(from_dict(data))["tariff"]["timezone"] == BERLIN
    data["tariff"]["timezone"] = "Nowhere/Special"
    with pytest.raises(EpisodeError, match=r"tariff\.timezone: unknown time zone"):
        from_dict(data)
