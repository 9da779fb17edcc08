"""The billing period's peak demand: interval averages, period roll-over, stored peaks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.billing import DemandMeter, period_end, period_start

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def feed(m: DemandMeter, readings: list[tuple[float, float]]) -> None:
    """(minutes after T0, kW from then on)."""
    for minutes, kw in readings:
        m.sample(T0 + timedelta(minutes=minutes), kw)


def test_the_peak_is_the_highest_interval_average_not_a_spike() -> None:
    m = DemandMeter(interval_s=900.0)
    # 100 kW, a 3-minute spike to 400 kW, back to 100: the interval averages 160.
    feed(m, [(0, 100.0), (6, 400.0), (9, 100.0)])
    assert m.peak_kw == 0.0  # nothing closes before the interval ends
    feed(m, [(15, 100.0)])
    assert m.peak_kw == pytest.approx(160.0) and m.unsaved
    # A whole interval at 150 does not raise it; one at 200 (seen only from the next reading) does.
    feed(m, [(20, 150.0), (30, 200.0), (45, 50.0), (60, 50.0)])
    assert m.peak_kw == pytest.approx(200.0)
    assert m.peak_at(T0 + timedelta(days=3)) == pytest.approx(200.0)


def test_a_constant_import_over_a_quiet_spell_fills_every_interval() -> None:
    m = DemandMeter(interval_s=900.0)
    feed(m, [(0, 80.0), (120, 0.0)])  # no reading for two hours: 80 kW all along
    assert m.peak_kw == pytest.approx(80.0)


def test_an_interval_watched_in_small_part_does_not_count() -> None:
    m = DemandMeter(interval_s=900.0)
    feed(m, [(12, 500.0), (15, 100.0)])  # the gateway started 3 minutes before the end
    assert m.peak_kw == 0.0
    feed(m, [(30, 100.0)])
    assert m.peak_kw == pytest.approx(100.0)


def test_a_new_billing_period_starts_from_zero() -> None:
    m = DemandMeter(interval_s=900.0, billing_day=1)
    june_end = datetime(2026, 6, 30, 23, 30, tzinfo=UTC)
    m.sample(june_end, 300.0)
    m.sample(june_end + timedelta(minutes=15), 300.0)
    assert m.peak_kw == pytest.approx(300.0) and m.period == datetime(2026, 6, 1, tzinfo=UTC)
    m.sample(T0, 50.0)
    assert m.peak_kw == pytest.approx(300.0)  # the last June interval closed at midnight
    assert m.peak_at(T0 + timedelta(minutes=5)) == 0.0  # July has no peak yet
    m.sample(T0 + timedelta(minutes=15), 50.0)
    assert m.period == T0 and m.peak_kw == pytest.approx(50.0)


def test_restored_and_stored_peaks() -> None:
    m = DemandMeter(interval_s=900.0)
    m.restore(T0, 250.0)
    feed(m, [(0, 100.0), (15, 100.0)])
    assert m.peak_kw == pytest.approx(250.0) and not m.unsaved
    m.restore(T0, 270.0)  # another node stored a higher one
    assert m.peak_kw == pytest.approx(270.0)
    m.restore(T0 - timedelta(days=30), 999.0)  # an older period's changes nothing
    assert m.peak_kw == pytest.approx(270.0)
    m.sample(T0 + timedelta(minutes=10), 999.0)  # older than a reading already counted: ignored
    feed(m, [(30, 100.0)])
    assert m.peak_kw == pytest.approx(270.0)


def test_billing_periods_are_months_from_the_billing_day() -> None:
    at = datetime(2026, 1, 10, 12, tzinfo=UTC)
    assert period_start(at, 15) == datetime(2025, 12, 15, tzinfo=UTC)
    assert period_end(at, 15) == datetime(2026, 1, 15, tzinfo=UTC)
    assert period_start(datetime(2026, 12, 20, tzinfo=UTC), 15) == datetime(2026, 12, 15, tzinfo=UTC)
    assert period_end(datetime(2026, 12, 20, tzinfo=UTC), 15) == datetime(2027, 1, 15, tzinfo=UTC)


def test_demand_intervals_follow_the_sites_clock() -> None:
    """An hour's interval in a zone 5:30 from UTC runs 06:00-07:00 local: 100 kW for exactly that
    hour is a 100-kW peak, not two half-hours of 50."""
    m = DemandMeter(interval_s=3600.0, timezone="Asia/Kolkata")
    six_local = datetime(2026, 7, 1, 0, 30, tzinfo=UTC)  # 06:00 IST
    m.sample(six_local - timedelta(hours=2), 0.0)
    m.sample(six_local, 100.0)
    m.sample(six_local + timedelta(hours=1), 0.0)
    m.sample(six_local + timedelta(hours=3), 0.0)
    assert m.peak_kw == pytest.approx(100.0)


def test_a_reading_stamped_a_little_before_the_last_one_counts_from_then_on() -> None:
    # The site's power sampled as each input is applied: a session's start stamped when it was
    # published can come after a building reading stamped later. It is the site's power from then on.
    m = DemandMeter(interval_s=900.0)
    feed(m, [(0, 0.0), (1, 0.0)])
    m.sample(T0 + timedelta(minutes=1) - timedelta(seconds=0.1), 50.0)
    feed(m, [(15, 50.0)])
    assert m.peak_kw == pytest.approx(50.0 * 14 / 15)
