from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.scheduler.forecast import (
    DUE_EXTENSION,
    MIN_SAMPLES,
    OVERSTAY_EXTENSION,
    SessionForecaster,
    believed_departure,
)

DAY = datetime(2026, 7, 1, tzinfo=UTC)


def test_defaults_without_history() -> None:
    f = SessionForecaster(default_dwell_h=8.0, default_energy_kwh=20.0)
    arr = DAY + timedelta(hours=8)
    fc = f.forecast("w", arr, arr)
    assert fc.departure == arr + timedelta(hours=8) and fc.energy_kwh == 20.0 and fc.source == "default"


def test_hour_bucket_median_then_site_wide() -> None:
    f = SessionForecaster()
    for i in range(MIN_SAMPLES):
        arr = DAY + timedelta(days=i, hours=8, minutes=10)
        f.observe("w", arr, arr + timedelta(hours=6 + i), 10.0 + i)
    arr = DAY + timedelta(days=9, hours=8)
    fc = f.forecast("w", arr, arr)
    assert fc.source == "history-hour"
    assert fc.departure == arr + timedelta(hours=8)  # median of 6..10 h
    assert fc.energy_kwh == pytest.approx(12.0)
    other = f.forecast("w", arr + timedelta(hours=5), arr + timedelta(hours=5))
    assert other.source == "history-site"
    assert f.forecast("depot", arr, arr).source == "default"


def test_history_keeps_the_newest_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.scheduler import forecast

    monkeypatch.setattr(forecast, "HISTORY_KEPT", MIN_SAMPLES)
    f = SessionForecaster()
    for i in range(2 * MIN_SAMPLES):  # the older half stays 10 h and takes 30 kWh, the newer 2 h and 5
        arr = DAY + timedelta(days=i, hours=8)
        old = i < MIN_SAMPLES
        f.observe("w", arr, arr + timedelta(hours=10 if old else 2), 30.0 if old else 5.0,
                  announced=arr + timedelta(hours=14 if old else 3))  # 4 h late, then 1 h
    arr = DAY + timedelta(days=30, hours=8)
    fc = f.forecast("w", arr, arr)
    assert fc.source == "history-hour" and fc.departure == arr + timedelta(hours=2) and fc.energy_kwh == 5.0
    assert f.announcement_margin("w", timedelta(minutes=90)) == timedelta(hours=1)  # the newer errors only


def test_quantiles_make_it_cautious() -> None:
    f = SessionForecaster(dwell_quantile=0.1, energy_quantile=0.9)
    for i in range(10):
        arr = DAY + timedelta(days=i, hours=8)
        f.observe("w", arr, arr + timedelta(hours=1 + i), float(i))
    arr = DAY + timedelta(days=20, hours=8)
    fc = f.forecast("w", arr, arr)
    assert fc.departure < arr + timedelta(hours=3) and fc.energy_kwh > 7.5


def test_overstay_rolls_forward() -> None:
    f = SessionForecaster(default_dwell_h=1.0)
    arr = DAY + timedelta(hours=8)
    now = arr + timedelta(hours=3)
    assert f.forecast("w", arr, now).departure == now + OVERSTAY_EXTENSION


def test_announced_departure_wins_and_is_planned_early() -> None:
    now = DAY + timedelta(hours=9)
    ann = DAY + timedelta(hours=17)
    fc = DAY + timedelta(hours=12)
    assert believed_departure(ann, fc, now, timedelta(hours=1)) == (ann - timedelta(hours=1), True)
    late = DAY + timedelta(hours=16, minutes=30)
    # Due: what is missing is wanted now, and no discharge.
    assert believed_departure(ann, fc, late, timedelta(hours=1)) == (late + DUE_EXTENSION, False)
    after = DAY + timedelta(hours=18)
    assert believed_departure(ann, fc, after) == (after + DUE_EXTENSION, False)
    assert believed_departure(None, fc, now) == (fc, True)


def test_announcement_margin_is_learned() -> None:
    f = SessionForecaster()
    default = timedelta(minutes=90)
    assert f.announcement_margin("w", default) == default
    for i in range(20):
        arr = DAY + timedelta(days=i, hours=8)
        dep = arr + timedelta(hours=8)
        f.observe("w", arr, dep, 10.0, announced=dep + timedelta(minutes=30))  # always 30 min late
    assert f.announcement_margin("w", default) == timedelta(minutes=30)
