"""A simulated station sets its clock from the CSMS's answer (B01) only as far as the round trip
lets it know the CSMS's time: a slow answer must not shift one station's clock against its peers'."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.clock import ManualClock
from simulators.station_clock import StationClock

T0 = datetime(2026, 7, 1, 8, tzinfo=UTC)


def test_a_clock_within_half_the_round_trip_is_kept() -> None:
    base = ManualClock(T0)
    clock = StationClock(base, min_step_s=1.0)
    sent = base.now()
    base.advance(200.0)  # a slow answer: the CSMS's time is known only to +-100 s
    # The CSMS read its time (equal to ours) early in the trip: the estimate says we are 90 s ahead.
    clock.set_time(T0 + timedelta(seconds=10), sent)
    assert clock.offset == timedelta(0)
    assert clock.now() == base.now()


def test_an_offset_larger_than_the_uncertainty_is_adopted() -> None:
    base = ManualClock(T0)
    clock = StationClock(base, min_step_s=1.0)
    sent = base.now()
    base.advance(2.0)
    clock.set_time(T0 + timedelta(hours=1, seconds=1), sent)  # the CSMS is an hour ahead
    assert clock.offset == timedelta(hours=1)
    # A later, slower answer consistent with that hour changes nothing.
    sent = base.now()
    base.advance(60.0)
    clock.set_time(sent + timedelta(hours=1, seconds=5), sent)
    assert clock.offset == timedelta(hours=1)


def test_small_corrections_below_the_step_are_ignored() -> None:
    base = ManualClock(T0)
    clock = StationClock(base, min_step_s=5.0)
    sent = base.now()
    clock.set_time(T0 + timedelta(seconds=3), sent)
    assert clock.offset == timedelta(0)
    clock.set_time(T0 + timedelta(seconds=30), sent)
    assert clock.offset == timedelta(seconds=30)
