"""The building's load profile learned from readings and the one rule that anchors a forecast to
the reading now (gateway/scheduler/building.py), and how the live inputs choose between a pushed
forecast, that profile and the reading now."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import Settings
from gateway.scheduler.building import KEEP_DAYS, SHIFT_FADE_S, BuildingProfile, anchored
from gateway.scheduler.live_inputs import building_forecast
from gateway.state import SiteState

DAY = datetime(2026, 7, 6, tzinfo=UTC)


def office(p: BuildingProfile, days: int, noon_kw: float = 100.0) -> None:
    """Readings every 5 minutes: 20 kW at night, ``noon_kw`` from 08:00 to 18:00."""
    for d in range(days):
        for step in range(288):
            when = DAY + timedelta(days=d, minutes=5 * step)
            p.observe(when, noon_kw if 8 <= when.hour < 18 else 20.0)


def test_no_profile_yet_means_the_reading_now() -> None:
    fc = BuildingProfile().forecast(DAY, 42.0)
    assert fc(DAY + timedelta(hours=10)) == 42.0


def test_the_profile_is_the_mean_of_past_days_and_a_deviation_fades() -> None:
    p = BuildingProfile()
    office(p, 2, noon_kw=100.0)
    now = DAY + timedelta(days=2, hours=6)  # 06:00, a reading 10 kW above the usual 20
    fc = p.forecast(now, 30.0)
    assert fc(now) == 30.0
    assert fc(now + timedelta(hours=6)) == pytest.approx(100.0 + 10.0 * 0.1353352832, rel=1e-6)  # e^-2
    assert fc(now + timedelta(hours=20)) == pytest.approx(20.0 + 10.0 * 0.0012726338, rel=1e-6)  # e^-20/3


def test_anchored_holds_the_reading_now_and_fades_to_the_base() -> None:
    now = DAY + timedelta(hours=9)
    fc = anchored(lambda when: 100.0, now, 130.0)
    assert fc(now - timedelta(hours=1)) == 130.0
    assert fc(now) == 130.0
    assert SHIFT_FADE_S == 3 * 3600.0
    assert fc(now + timedelta(hours=3)) == pytest.approx(100.0 + 30.0 * math.exp(-1.0), rel=1e-12)
    assert fc(now + timedelta(hours=1)) == pytest.approx(100.0 + 30.0 * math.exp(-1.0 / 3.0), rel=1e-12)
    assert fc(now + timedelta(hours=24)) == pytest.approx(100.0 + 30.0 * math.exp(-8.0), rel=1e-12)  # 0.01 kW off
    # The shift is the deviation now: a base that rises later keeps its shape under it.
    ramp = anchored(lambda when: 100.0 if when.hour < 12 else 200.0, now, 70.0)
    assert ramp(DAY + timedelta(hours=15)) == pytest.approx(200.0 - 30.0 * math.exp(-2.0), rel=1e-12)


def test_anchored_is_the_reading_now_where_the_base_knows_nothing() -> None:
    now = DAY + timedelta(hours=9)
    fc = anchored(lambda when: None if when.hour >= 20 else 50.0, now, 80.0)
    assert fc(now + timedelta(hours=3)) == pytest.approx(50.0 + 30.0 * math.exp(-1.0))
    assert fc(DAY + timedelta(hours=21)) == 80.0
    assert anchored(lambda when: None, now, 80.0)(now + timedelta(hours=3)) == 80.0


def test_the_learned_forecast_is_the_profile_anchored() -> None:
    p = BuildingProfile()
    office(p, 2)
    now = DAY + timedelta(days=2, hours=6)
    prof = p.profile()
    learned, by_rule = p.forecast(now, 30.0), anchored(lambda when: prof.get(p.slot(when)), now, 30.0)
    for minutes in range(0, 48 * 60, 35):
        when = now + timedelta(minutes=minutes)
        assert learned(when) == by_rule(when)


def test_the_deviation_is_measured_against_the_days_before_today() -> None:
    # The loop learns the reading now before it plans: the slot's mean then holds today's reading,
    # the next slot's does not. Measured against that mean, the deviation would shrink by a
    # quarter here and the forecast fall from 160 to 144 kW in five minutes.
    p = BuildingProfile()
    office(p, 3)
    now = DAY + timedelta(days=3, hours=12)
    p.observe(now, 160.0)
    assert p.base(now) == pytest.approx((3 * 100.0 + 160.0) / 4)
    assert p.base_before(now) == pytest.approx(100.0)
    fc = p.forecast(now, 160.0)
    assert fc(now) == 160.0
    assert fc(now + timedelta(minutes=5)) == pytest.approx(100.0 + 60.0 * math.exp(-300.0 / SHIFT_FADE_S), rel=1e-12)
    # Nothing before today: the profile knows nothing yet, the forecast is the reading now.
    first = BuildingProfile()
    first.observe(DAY, 50.0)
    assert first.base_before(DAY) is None
    assert first.forecast(DAY, 50.0)(DAY + timedelta(hours=2)) == 50.0


def test_one_reading_per_slot_and_day_and_only_the_last_days_count() -> None:
    p = BuildingProfile()
    t = DAY + timedelta(hours=9, minutes=1)
    p.observe(t, 50.0)
    p.observe(t + timedelta(minutes=2), 70.0)  # the same slot, the same day: replaces
    p.observe(t + timedelta(days=1), 90.0)
    assert p.profile()[p.slot(t)] == pytest.approx(80.0)
    for d in range(KEEP_DAYS):
        p.observe(t + timedelta(days=2 + d), 10.0)
    assert p.profile()[p.slot(t)] == pytest.approx(10.0)


def test_weekdays_and_weekends_are_profiled_apart_once_there_are_enough_of_each() -> None:
    from gateway.scheduler.building import MIN_DAYS_OF_KIND

    noon = timedelta(hours=12)
    saturday, monday = DAY + timedelta(days=12), DAY + timedelta(days=14)

    def office_days(days: int) -> BuildingProfile:  # 100 kW at noon on weekdays, 40 kW at weekends
        p = BuildingProfile()
        for d in range(days):
            day = DAY + timedelta(days=d)
            p.observe(day + noon, 40.0 if day.weekday() >= 5 else 100.0)
        return p

    assert DAY.weekday() == 0 and MIN_DAYS_OF_KIND == 2
    # Monday to Saturday: one weekend day is not enough, the weekend is planned from every day.
    six = office_days(6)
    assert six.base(saturday + noon) == pytest.approx((5 * 100.0 + 40.0) / 6)
    assert six.base(monday + noon) == pytest.approx(100.0)
    # A whole week: each kind its own mean; the all-days profile is still there.
    week = office_days(7)
    assert week.base(saturday + noon) == pytest.approx(40.0)
    assert week.base(monday + noon) == pytest.approx(100.0)
    assert week.profile()[week.slot(DAY + noon)] == pytest.approx((5 * 100.0 + 2 * 40.0) / 7)
    # Planned on a Friday evening (reading as usual): Saturday low, Monday high.
    friday_night = DAY + timedelta(days=11, hours=23)
    fc = week.forecast(friday_night, week.reading(friday_night))
    assert fc(saturday + noon) == pytest.approx(40.0)
    assert fc(monday + noon) == pytest.approx(100.0)
    # A finished day's slot with no reading of its own is read as its kind's mean.
    assert week.reading(saturday + noon) == pytest.approx(40.0)


def test_slots_are_the_sites_time_of_day() -> None:
    p = BuildingProfile(tz="Europe/Berlin")
    p.observe(datetime(2026, 7, 6, 7, 0, tzinfo=UTC), 80.0)  # 09:00 in Berlin
    assert p.slot(datetime(2026, 12, 7, 8, 0, tzinfo=UTC)) == p.slot(datetime(2026, 7, 6, 7, 0, tzinfo=UTC))
    assert p.slot(datetime(2026, 7, 6, 7, 0, tzinfo=UTC)) == 9 * 12


def test_live_inputs_use_a_pushed_forecast_else_the_learned_profile_else_the_reading() -> None:
    state = SiteState.from_settings(Settings())
    state.building_load_kw = 25.0
    now = DAY + timedelta(days=3, hours=6)
    learned = BuildingProfile()
    office(learned, 3)
    later = now + timedelta(hours=6)
    assert building_forecast(state, now)(later) == 25.0
    assert building_forecast(state, now, learned)(later) == pytest.approx(100.0 + 5.0 * 0.1353352832, rel=1e-6)
    state.building_load_forecast = [(now, 60.0), (now + timedelta(hours=3), 70.0)]
    # The pushed forecast wins, anchored to the reading now (25 kW against its 60).
    assert building_forecast(state, now, learned)(later) == pytest.approx(70.0 - 35.0 * math.exp(-2.0), rel=1e-12)
