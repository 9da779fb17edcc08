"""The price of raising a long billing period's peak, from the peaks finished days needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.scheduler.peak_price import (
    MIN_DAYS,
    DoneSession,
    NeededPeaks,
    demand_pricing,
    needed_peak,
    peak_price_steps,
)

D0 = datetime(2026, 7, 1, tzinfo=UTC)


def at(day: int, hour: float) -> datetime:
    return D0 + timedelta(days=day, hours=hour)


def test_too_few_days_leave_the_days_share_rule() -> None:
    assert peak_price_steps([100.0] * (MIN_DAYS - 1), 10.0, 5.0, 0.0) is None


def test_the_price_of_a_level_is_the_charge_times_the_chance_no_later_day_needs_it() -> None:
    needed = [100.0] * 3 + [200.0] * 4
    # Nothing of the period after the horizon: every kW costs the whole charge.
    assert peak_price_steps(needed, 10.0, 0.0, 0.0) == (10.0, ())
    # Two days after: up to 100 kW free (every day needs more), then 10 * (3/7)^2, then 10.
    base, steps = peak_price_steps(needed, 10.0, 2.5, 0.0) or (None, ())
    assert base == 0.0
    assert [lv for lv, _ in steps] == [100.0, 200.0]
    assert steps[0][1] == pytest.approx(10.0 * (3 / 7) ** 2)
    assert steps[0][1] + steps[1][1] == pytest.approx(10.0)
    # From a peak of 150 kW already paid: 10 * (3/7)^2 per kW up to 200 kW, 10 above.
    base, steps = peak_price_steps(needed, 10.0, 2.0, 150.0) or (None, ())
    assert base == pytest.approx(10.0 * (3 / 7) ** 2)
    assert steps == ((200.0, pytest.approx(10.0 - base)),)


def test_demand_pricing_keeps_a_days_share_until_there_is_history() -> None:
    start, end = D0, D0 + timedelta(days=30)
    now = at(3, 8)
    day = timedelta(hours=24)
    assert demand_pricing(15.0, now, day, start, end, 0.0, []) == (pytest.approx(0.5), ())
    base, steps = demand_pricing(15.0, now, day, start, end, 0.0, [100.0] * 7)
    assert base == 0.0 and steps == ((100.0, pytest.approx(15.0)),)  # k = 25: 1 ** 25
    # The period's last day: the whole charge from the peak so far.
    assert demand_pricing(15.0, at(29, 8), day, start, end, 80.0, [100.0] * 7) == (pytest.approx(15.0), ())


def test_needed_peak_is_what_delivering_the_days_energy_takes_over_the_building() -> None:
    flat = lambda when: 50.0  # noqa: E731
    one = [DoneSession(at(0, 8), at(0, 10), 10.0, 11.0)]
    assert needed_peak(one, flat, at(0, 8), at(0, 10), 500.0, 1.0) == pytest.approx(55.0, abs=1e-3)
    # Two EVs in the same two hours, one of which must take 11 kW for its hour.
    two = [*one, DoneSession(at(0, 9), at(0, 10), 11.0, 11.0)]
    assert needed_peak(two, flat, at(0, 8), at(0, 10), 500.0, 1.0) == pytest.approx(50.0 + 11.0, abs=1e-3)
    # Losses: what the battery took came through the charger at eff 0.8.
    assert needed_peak(one, flat, at(0, 8), at(0, 10), 500.0, 0.8) == pytest.approx(50.0 + 6.25, abs=1e-3)
    # No EVs: the building's own peak.
    assert needed_peak([], lambda w: 40.0 + w.hour, at(0, 0), at(1, 0), 500.0, 1.0) == pytest.approx(63.0)


def test_days_finish_once_none_of_their_evs_is_plugged_in() -> None:
    peaks = NeededPeaks(eff=1.0)
    peaks.observe(DoneSession(at(0, 8), at(0, 10), 10.0, 11.0))
    flat = lambda when: 50.0  # noqa: E731
    assert not peaks.due(at(0, 23)) and peaks.due(at(2, 9))
    # Day 1's van is still plugged in on day 2: day 0 finishes, day 1 waits.
    assert peaks.close_days(at(2, 9), [at(1, 18)], flat, 500.0) == 1
    assert peaks.values() == [pytest.approx(55.0, abs=1e-3)]
    peaks.observe(DoneSession(at(1, 18), at(2, 10), 20.0, 11.0))
    # Then day 1 (the van's 20 kWh over 16 h) and day 2 (no EV arrived: the building) finish.
    assert peaks.close_days(at(3, 1), [], flat, 500.0) == 2
    assert not peaks.due(at(3, 23))
    assert peaks.values() == [pytest.approx(55.0, abs=1e-3), pytest.approx(51.25, abs=1e-3), 50.0]
    # A late record of a finished day changes nothing.
    peaks.observe(DoneSession(at(1, 8), at(1, 9), 50.0, 50.0))
    assert peaks.close_days(at(3, 2), [], flat, 500.0) == 0
    assert len(peaks.values()) == 3


def test_a_session_that_never_ends_holds_its_day_open_only_so_long() -> None:
    """A station gone away mid-transaction left its session plugged in for good: no later day
    ever finished (the peak priced on old days) and every later session stayed in memory."""
    from gateway.scheduler.peak_price import HOLD_DAYS_MAX

    peaks = NeededPeaks(eff=1.0)
    flat = lambda when: 50.0  # noqa: E731
    stuck = at(0, 8)
    peaks.watch(at(0, 0))
    for d in range(1, 30):
        peaks.observe(DoneSession(at(d, 8), at(d, 10), 10.0, 11.0))
    assert peaks.close_days(at(HOLD_DAYS_MAX, 9), [stuck], flat, 500.0) == 0  # held, as a long stay may be
    assert peaks.close_days(at(30, 9), [stuck], flat, 500.0) == 30
    assert not peaks._open
