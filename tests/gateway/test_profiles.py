"""Plan -> TxProfile translation (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.domain import DischargeDialect
from gateway.ocpp import profiles
from gateway.ocpp.validation import V201

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def starts(n: int, step_min: int = 5) -> list[datetime]:
    return [T0 + timedelta(minutes=step_min * i) for i in range(n)]


def build(power: list[float], *, bidi: bool = True, dialect: DischargeDialect = DischargeDialect.NEGATIVE_LIMIT,
          max_periods: int = 24, t: list[datetime] | None = None) -> profiles.TxProfile:
    s = t or starts(len(power))
    return profiles.build_profile(
        station_id="CS", evse_id=1, transaction_id="TX", starts=s, end=s[-1] + timedelta(minutes=5),
        power_kw=power, max_charge_kw=11.0, max_discharge_kw=7.0, bidirectional=bidi, dialect=dialect,
        stack_level=1, max_periods=max_periods)


def test_merges_equal_periods_caps_and_uses_watts() -> None:
    p = build([5.0, 5.0, 20.0, 0.0, 0.0, -3.0])
    assert [(round((x.start - T0).total_seconds()), x.limit_w) for x in p.periods] == [
        (0, 5000.0), (600, 11000.0), (900, 0.0), (1500, -3000.0)]
    payload = p.payload()
    cp = payload["chargingProfile"]
    assert cp["chargingProfilePurpose"] == "TxProfile" and cp["chargingProfileKind"] == "Absolute"
    assert cp["chargingSchedule"][0]["chargingRateUnit"] == "W"
    assert cp["transactionId"] == "TX"


def test_payload_is_schema_valid() -> None:
    V201.check("SetChargingProfile", build([5.0, -2.0, 0.0]).payload(), request=True)


def test_a_flip_between_charge_and_discharge_is_sent_however_small() -> None:
    """+40 W to -50 W: the size grew within the tolerance, and the EVSE kept drawing the 40 W
    the plan no longer counted (and -40 W to +50 W kept its export)."""
    assert profiles.differs(build([0.04] * 12), build([-0.05] * 12))
    assert profiles.differs(build([-0.04] * 12), build([0.05] * 12))
    assert not profiles.differs(build([0.0] * 12), build([0.09] * 12))  # a small rise: room unused


def test_a_delayed_rise_never_shares_its_start_with_the_next_period() -> None:
    """A plan starting on a half second: a rise delayed to a second before the next period
    rounded to the same startPeriod (round() takes halves to even), which K01.FR.35 refuses."""
    now = datetime(2026, 1, 1, 12, 0, 59, 500000, tzinfo=UTC)
    b1 = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    bp = b1 + timedelta(seconds=60)
    prof = profiles.build_profile(
        station_id="S", evse_id=1, transaction_id="tx", starts=[now, b1, bp, bp + timedelta(seconds=240)],
        end=bp + timedelta(seconds=540), power_kw=[3.0, 7.0, 5.0, 11.0], max_charge_kw=11.0, max_discharge_kw=0.0,
        bidirectional=False, dialect=DischargeDialect.NONE, stack_level=1, max_periods=24, rise_delay_s=60.0)
    sched = prof.payload()["chargingProfile"]["chargingSchedule"][0]
    offsets = [p["startPeriod"] for p in sched["chargingSchedulePeriod"]]
    assert offsets == sorted(set(offsets)) and offsets[-1] < sched["duration"]


def test_discharge_only_where_the_dialect_and_hardware_allow() -> None:
    assert min(x.limit_w for x in build([-5.0, 2.0], bidi=False).periods) == 0.0
    assert min(x.limit_w for x in build([-5.0, 2.0], dialect=DischargeDialect.NONE).periods) == 0.0
    assert min(x.limit_w for x in build([-9.0, 2.0]).periods) == -7000.0  # capped at max discharge


def test_fixed_id_per_transaction() -> None:
    a, b = build([1.0]), build([2.0])
    assert a.profile_id == b.profile_id == profiles.profile_id_for("CS", "TX")
    assert profiles.profile_id_for("CS", "TX2") != a.profile_id


def test_cut_to_station_period_limit() -> None:
    p = build([float(i % 7) for i in range(40)], max_periods=10)
    assert len(p.periods) == 10
    # The schedule ends where the first dropped period would have begun.
    assert p.end == T0 + timedelta(minutes=5 * 10)


def test_differs_only_when_the_station_would_act_differently() -> None:
    old = build([5.0] * 12 + [0.0] * 12)
    later = build([5.0] * 11 + [0.0] * 12, t=starts(24)[1:])  # same plan, five minutes on
    assert not profiles.differs(old, later)
    changed = build([5.0] * 6 + [7.0] * 5 + [0.0] * 12, t=starts(24)[1:])
    assert profiles.differs(old, changed)
    assert profiles.differs(None, later)
    assert profiles.differs(old, build([5.05] * 12 + [0.0] * 12)) is False  # a little more: within tolerance
    # A little less is sent: under a binding site limit, 50 EVSEs each 90 W above their new plan
    # would put the site 4.5 kW over it.
    assert profiles.differs(old, build([4.91] * 12 + [0.0] * 12)) is True
    assert profiles.differs(old, build([5.0] * 12 + [0.0] * 12)) is False


def test_periods_a_fraction_of_a_second_apart_never_share_a_start_period() -> None:
    t = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    starts = [t, t + timedelta(seconds=0.4), t + timedelta(seconds=1.6), t + timedelta(seconds=2.4),
              t + timedelta(seconds=300)]
    p = profiles.build_profile(
        station_id="CS", evse_id=1, transaction_id="TX", starts=starts, end=t + timedelta(minutes=10),
        power_kw=[9.0, 4.0, 5.0, 6.0, 4.0], max_charge_kw=11.0, max_discharge_kw=7.0, bidirectional=True,
        dialect=DischargeDialect.NEGATIVE_LIMIT, stack_level=1, max_periods=10)
    sched = p.payload()["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"]
    offsets = [round((q.start - p.periods[0].start).total_seconds()) for q in p.periods]
    assert offsets == sorted(set(offsets))  # strictly increasing whole seconds (K01.FR.35)
    # 0.4 s replaces the first; 1.6 s and 2.4 s both round to 2 s: the later one wins.
    assert [q.limit_w for q in p.periods] == [4000.0, 6000.0, 4000.0]
    # The schedule starts CLOCK_SKEW_ALLOWANCE_S early (a station whose clock runs behind still
    # applies it at once): the first period covers that too, the others move by as much.
    assert [x["startPeriod"] for x in sched] == [0] + [o + profiles.CLOCK_SKEW_ALLOWANCE_S for o in offsets[1:]]


def test_a_limit_moving_away_from_zero_starts_late_and_one_moving_towards_it_on_time() -> None:
    t = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    starts = [t + timedelta(minutes=5 * i) for i in range(5)]
    p = profiles.build_profile(
        station_id="CS", evse_id=1, transaction_id="TX", starts=starts, end=t + timedelta(minutes=25),
        power_kw=[9.0, 4.0, 6.0, -3.0, 0.0], max_charge_kw=11.0, max_discharge_kw=7.0, bidirectional=True,
        dialect=DischargeDialect.NEGATIVE_LIMIT, stack_level=1, max_periods=10, rise_delay_s=60.0)
    # Towards zero (9 -> 4, -3 -> 0 kW) at the boundary; away from it (4 -> 6) a minute after;
    # charge to discharge (6 -> -3) stops charging at the boundary and discharges a minute after.
    assert [(q.start - t, q.limit_w) for q in p.periods] == [
        (timedelta(0), 9000.0), (timedelta(minutes=5), 4000.0), (timedelta(minutes=11), 6000.0),
        (timedelta(minutes=15), 0.0), (timedelta(minutes=16), -3000.0), (timedelta(minutes=20), 0.0)]
    # More discharge is a move away from zero too: late; less discharge on time.
    d = profiles.build_profile(
        station_id="CS", evse_id=1, transaction_id="TX", starts=starts[:3], end=t + timedelta(minutes=15),
        power_kw=[-2.0, -6.0, -1.0], max_charge_kw=11.0, max_discharge_kw=7.0, bidirectional=True,
        dialect=DischargeDialect.NEGATIVE_LIMIT, stack_level=1, max_periods=10, rise_delay_s=60.0)
    assert [(q.start - t, q.limit_w) for q in d.periods] == [
        (timedelta(0), -2000.0), (timedelta(minutes=6), -6000.0), (timedelta(minutes=10), -1000.0)]
    # A rise never passes the next period's start (here a 30-second step).
    short = profiles.build_profile(
        station_id="CS", evse_id=1, transaction_id="TX", starts=[t, t + timedelta(seconds=300),
                                                                 t + timedelta(seconds=330)],
        end=t + timedelta(minutes=10), power_kw=[2.0, 5.0, 1.0], max_charge_kw=11.0, max_discharge_kw=0.0,
        bidirectional=False, dialect=DischargeDialect.NONE, stack_level=1, max_periods=10, rise_delay_s=60.0)
    assert [(q.start - t).total_seconds() for q in short.periods] == [0.0, 329.0, 330.0]


def test_a_change_of_limit_is_classed_by_where_it_moves_the_site_total() -> None:
    Move = profiles.Move
    assert profiles.move(9000.0, 4000.0) == Move.TOWARD_ZERO
    assert profiles.move(-6000.0, -2000.0) == Move.TOWARD_ZERO  # less export
    assert profiles.move(-6000.0, 0.0) == Move.TOWARD_ZERO
    assert profiles.move(3000.0, 3000.0) == Move.TOWARD_ZERO  # unchanged: never waits
    assert profiles.move(0.0, -4000.0) == Move.AWAY_FROM_ZERO  # more export
    assert profiles.move(4000.0, 6000.0) == Move.AWAY_FROM_ZERO
    assert profiles.move(-3000.0, 5000.0) == Move.FLIP
    assert profiles.move(5000.0, -3000.0) == Move.FLIP
