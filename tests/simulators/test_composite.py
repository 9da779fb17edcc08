"""The composite schedule against hand-worked cases (OCPP 2.0.1 K01/K08)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.clock import to_rfc3339
from simulators.composite import (
    CompositePeriod,
    ProfileError,
    ProfileStore,
    Transaction,
    composite_to_wire,
    parse_profile,
)

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
TX = Transaction("tx-1", T0)


def prof(
    pid: int,
    purpose: str,
    periods: list[tuple[int, float]],
    *,
    level: int = 0,
    kind: str = "Absolute",
    unit: str = "W",
    start: datetime | None = T0,
    duration: int | None = None,
    tx: str | None = None,
    phases: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    sched: dict[str, Any] = {
        "id": pid,
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [
            {"startPeriod": s, "limit": v, **({"numberPhases": phases} if phases else {})} for s, v in periods
        ],
    }
    if start is not None and kind != "Relative":
        sched["startSchedule"] = to_rfc3339(start)
    if duration is not None:
        sched["duration"] = duration
    p: dict[str, Any] = {
        "id": pid,
        "stackLevel": level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": [sched],
        **extra,
    }
    if tx:
        p["transactionId"] = tx
    return p


def store_with(*items: tuple[int, dict[str, Any]], tx: Transaction | None = TX) -> ProfileStore:
    st = ProfileStore({1: 3, 2: 1})
    for evse, data in items:
        st.install(parse_profile(evse, data), tx if evse else None)
    return st


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_no_profile_means_no_limit() -> None:
    assert store_with().limit_w(1, T0, TX) is None


def test_highest_stack_level_wins_within_a_purpose() -> None:
    st = store_with(
        (1, prof(1, "TxDefaultProfile", [(0, 11000)], level=0)),
        (1, prof(2, "TxDefaultProfile", [(0, 4000)], level=1)),
    )
    assert st.limit_w(1, at(5), TX) == 4000


def test_higher_stack_level_past_its_duration_lets_the_lower_show_through() -> None:
    # level 1 limits to 3 kW for the first 30 min only; afterwards level 0's 7 kW applies
    st = store_with(
        (1, prof(1, "TxDefaultProfile", [(0, 7000)], level=0)),
        (1, prof(2, "TxDefaultProfile", [(0, 3000)], level=1, duration=1800)),
    )
    assert st.limit_w(1, at(10), TX) == 3000
    assert st.limit_w(1, at(31), TX) == 7000
    assert st.composite(1, T0, 3600, TX) == [CompositePeriod(0, 3000), CompositePeriod(1800, 7000)]


def test_tx_profile_overrules_tx_default_and_max_caps_both() -> None:
    st = store_with(
        (0, prof(1, "ChargingStationMaxProfile", [(0, 9000)])),
        (1, prof(2, "TxDefaultProfile", [(0, 2000)], level=5)),
        (1, prof(3, "TxProfile", [(0, 16000), (600, 5000)], tx="tx-1")),
    )
    # TxProfile replaces TxDefault (16 kW, not 2 kW); the station max caps it at 9 kW.
    assert st.limit_w(1, at(1), TX) == 9000
    assert st.limit_w(1, at(11), TX) == 5000
    # Without the transaction the TxProfile does not apply and TxDefault is in force.
    assert st.limit_w(1, at(1), None) == 2000


def test_minimum_across_purposes_keeps_a_negative_tx_limit() -> None:
    st = store_with(
        (0, prof(1, "ChargingStationMaxProfile", [(0, 22000)])),
        (1, prof(2, "TxProfile", [(0, -6000)], tx="tx-1")),
    )
    assert st.limit_w(1, at(1), TX) == -6000


def test_amps_convert_with_phases_times_230_volts() -> None:
    st = store_with((1, prof(1, "TxDefaultProfile", [(0, 16)], unit="A")))
    assert st.limit_w(1, at(1), TX) == pytest.approx(16 * 3 * 230)  # 11,040 W
    st1 = store_with((1, prof(1, "TxDefaultProfile", [(0, 16)], unit="A", phases=1)))
    assert st1.limit_w(1, at(1), TX) == pytest.approx(16 * 230)
    # EVSE 2 has one phase: a 3-phase period is capped at the EVSE's phases.
    st2 = ProfileStore({1: 3, 2: 1})
    st2.install(parse_profile(2, prof(1, "TxDefaultProfile", [(0, 32)], unit="A")), None)
    assert st2.limit_w(2, at(1), None) == pytest.approx(32 * 230)


def test_relative_profile_counts_from_transaction_start() -> None:
    tx = Transaction("tx-1", at(20))
    st = ProfileStore({1: 3})
    st.install(parse_profile(1, prof(1, "TxProfile", [(0, 3000), (900, 8000)], kind="Relative", tx="tx-1")), tx)
    assert st.limit_w(1, at(30), tx) == 3000  # 10 min into the transaction
    assert st.limit_w(1, at(36), tx) == 8000  # 16 min in


def test_recurring_daily_profile_repeats_each_day() -> None:
    st = store_with(
        (
            1,
            prof(
                1,
                "TxDefaultProfile",
                [(0, 11000), (8 * 3600, 3000), (12 * 3600, 11000)],
                kind="Recurring",
                recurrencyKind="Daily",
                start=datetime(2026, 6, 1, tzinfo=UTC),
            ),
        )
    )
    # 08:00-12:00 every day is capped at 3 kW.
    assert st.limit_w(1, datetime(2026, 7, 1, 9, 0, tzinfo=UTC), TX) == 3000
    assert st.limit_w(1, datetime(2026, 7, 2, 13, 0, tzinfo=UTC), TX) == 11000
    assert st.limit_w(1, datetime(2026, 7, 3, 7, 59, tzinfo=UTC), TX) == 11000
    # Before its first day it does not apply.
    assert st.limit_w(1, datetime(2026, 5, 31, 9, 0, tzinfo=UTC), TX) is None
    comp = st.composite(1, datetime(2026, 7, 1, 6, 0, tzinfo=UTC), 24 * 3600, TX)
    # 06:00 to 06:00 next day: 3 kW from 08:00 to 12:00; the new day at 00:00 changes nothing.
    assert comp == [CompositePeriod(0, 11000), CompositePeriod(7200, 3000), CompositePeriod(21600, 11000)]


def test_valid_from_and_valid_to_bound_a_profile() -> None:
    st = store_with(
        (
            1,
            prof(1, "TxDefaultProfile", [(0, 5000)], validFrom=to_rfc3339(at(10)), validTo=to_rfc3339(at(20))),
        ),
    )
    assert st.limit_w(1, at(5), TX) is None
    assert st.limit_w(1, at(15), TX) == 5000
    assert st.limit_w(1, at(20), TX) is None
    assert st.composite(1, T0, 3600, TX) == [
        CompositePeriod(0, None),
        CompositePeriod(600, 5000),
        CompositePeriod(1200, None),
    ]


def test_evse_specific_default_beats_station_wide_default_at_equal_level() -> None:
    st = store_with((0, prof(1, "TxDefaultProfile", [(0, 6000)])), (1, prof(2, "TxDefaultProfile", [(0, 4000)])))
    assert st.limit_w(1, at(1), TX) == 4000
    assert st.limit_w(2, at(1), None) == 6000  # EVSE 2 only has the station-wide default


def test_same_id_replaces_and_another_id_in_the_same_slot_is_rejected() -> None:
    """K01.FR.05: the same id replaces. K01.FR.06: another id with the same purpose and stack
    level on the same EVSE, valid at the same time, is rejected (1.6 replaced it)."""
    st = store_with((1, prof(1, "TxDefaultProfile", [(0, 6000)])))
    st.install(parse_profile(1, prof(1, "TxDefaultProfile", [(0, 5000)], level=3)), TX)
    with pytest.raises(ProfileError, match="DuplicateProfile"):
        st.install(parse_profile(1, prof(7, "TxDefaultProfile", [(0, 2000)], level=3)), TX)
    assert list(st.profiles) == [1]
    assert st.limit_w(1, at(1), TX) == 5000
    # Another stack level, purpose or EVSE is another slot.
    st.install(parse_profile(1, prof(8, "TxDefaultProfile", [(0, 2000)], level=4)), TX)
    st.install(parse_profile(2, prof(9, "TxDefaultProfile", [(0, 2000)], level=3)), None)
    assert sorted(st.profiles) == [1, 8, 9]


def test_a_second_tx_profile_of_the_same_transaction_and_level_is_rejected() -> None:
    """K01.FR.39: TxProfiles with the same transactionId and stackLevel cannot coexist."""
    st = store_with((1, prof(1, "TxProfile", [(0, 3000)], tx="tx-1", level=2)))
    with pytest.raises(ProfileError, match="DuplicateProfile"):
        st.install(parse_profile(1, prof(2, "TxProfile", [(0, 4000)], tx="tx-1", level=2)), TX)
    st.install(parse_profile(1, prof(1, "TxProfile", [(0, 4000)], tx="tx-1", level=2)), TX)  # same id: replaces
    assert st.limit_w(1, at(1), TX) == 4000


def test_the_same_slot_is_free_when_the_validity_periods_do_not_overlap() -> None:
    day = timedelta(days=1)
    st = store_with((1, prof(1, "TxDefaultProfile", [(0, 6000)], validTo=to_rfc3339(T0 + day))))
    st.install(parse_profile(1, prof(2, "TxDefaultProfile", [(0, 2000)], validFrom=to_rfc3339(T0 + day))), TX)
    assert st.limit_w(1, at(1), TX) == 6000 and st.limit_w(1, T0 + day, TX) == 2000
    with pytest.raises(ProfileError, match="DuplicateProfile"):
        st.install(parse_profile(1, prof(3, "TxDefaultProfile", [(0, 1000)], validFrom=to_rfc3339(T0))), TX)
    # One whose validTo has passed no longer holds its slot against a profile valid from now.
    st.install(parse_profile(1, prof(4, "TxDefaultProfile", [(0, 1000)], level=5, validTo=to_rfc3339(at(1)))), TX)
    st.install(parse_profile(1, prof(5, "TxDefaultProfile", [(0, 500)], level=5)), TX, now=at(2))
    assert {4, 5} <= set(st.profiles)


def test_a_relative_profile_without_transaction_runs_from_the_composite_s_start() -> None:
    """K08: without a transaction a Relative schedule counts from the composite's start; each
    moment used to be read at offset 0, so the drop after an hour never showed."""
    st = ProfileStore({1: 3})
    st.install(parse_profile(1, prof(1, "TxDefaultProfile", [(0, 11000), (3600, 2000)], kind="Relative")), None)
    assert st.composite(1, T0, 7200, None) == [CompositePeriod(0, 11000), CompositePeriod(3600, 2000)]
    # With a transaction it still counts from the transaction's start (here 30 min before T0).
    tx = Transaction("tx-1", T0 - timedelta(minutes=30))
    assert st.composite(1, T0, 7200, tx) == [CompositePeriod(0, 11000), CompositePeriod(1800, 2000)]


def test_external_constraints_are_not_cleared_by_the_csms() -> None:
    """K10: ClearChargingProfile leaves ChargingStationExternalConstraints (from a local EMS)."""
    st = store_with(
        (0, prof(1, "ChargingStationExternalConstraints", [(0, 8000)])),
        (1, prof(2, "TxDefaultProfile", [(0, 6000)])),
    )
    assert st.clear() == 1
    assert st.clear(profile_id=1) == 0 and st.clear(purpose="ChargingStationExternalConstraints") == 0
    assert list(st.profiles) == [1]


def test_the_composite_on_the_wire_is_capped_at_the_evse_s_hardware() -> None:
    periods = [CompositePeriod(0, 50000), CompositePeriod(600, -20000), CompositePeriod(1200, None)]
    wire = composite_to_wire(periods, evse_id=1, start=T0, duration_s=1800, unit="W", evse_phases=3,
                             default_limit_w=11000, max_discharge_w=7000)
    assert [p["limit"] for p in wire["chargingSchedulePeriod"]] == [11000, -7000, 11000]
    unidirectional = composite_to_wire(periods, evse_id=1, start=T0, duration_s=1800, unit="W", evse_phases=3,
                                       default_limit_w=11000, max_discharge_w=0.0)
    assert [p["limit"] for p in unidirectional["chargingSchedulePeriod"]] == [11000, 0.0, 11000]


@pytest.mark.parametrize(
    ("evse", "data", "tx", "reason"),
    [
        (1, prof(1, "ChargingStationMaxProfile", [(0, 1)]), TX, "MaxProfileEvseIdNotZero"),
        (1, prof(1, "TxProfile", [(0, 1)]), TX, "TxProfileMissingTransactionId"),
        (1, prof(1, "TxProfile", [(0, 1)], tx="other"), TX, "TxProfileTransactionNotOnEvse"),
        (1, prof(1, "TxProfile", [(0, 1)], tx="tx-1"), None, "TxProfileEvseHasNoActiveTransaction"),
        (1, prof(1, "TxDefaultProfile", [(60, 1)]), TX, "FirstStartPeriodNotZero"),
        (1, prof(1, "TxDefaultProfile", [(0, 1), (0, 2)]), TX, "PeriodsOutOfOrder"),
        (1, prof(1, "TxDefaultProfile", [(0, 1)], start=None), TX, "MissingStartSchedule"),
        (9, prof(1, "TxDefaultProfile", [(0, 1)]), TX, "EvseDoesNotExist"),
    ],
)
def test_rejections(evse: int, data: dict[str, Any], tx: Transaction | None, reason: str) -> None:
    st = ProfileStore({1: 3})
    with pytest.raises(ProfileError, match=reason):
        st.install(parse_profile(evse, data), tx)


def test_clear_by_criteria_and_transaction_end() -> None:
    st = store_with(
        (1, prof(1, "TxDefaultProfile", [(0, 6000)])),
        (1, prof(2, "TxProfile", [(0, 3000)], tx="tx-1", level=1)),
        (0, prof(3, "ChargingStationMaxProfile", [(0, 20000)])),
    )
    assert st.clear(purpose="TxDefaultProfile") == 1
    assert st.clear(profile_id=42) == 0
    st.end_transaction("tx-1")
    assert sorted(st.profiles) == [3]


def test_composite_on_the_wire_in_amps() -> None:
    st = store_with((1, prof(1, "TxDefaultProfile", [(0, 6900), (1800, 0)])))
    wire = composite_to_wire(
        st.composite(1, T0, 3600, TX),
        evse_id=1,
        start=T0,
        duration_s=3600,
        unit="A",
        evse_phases=3,
        default_limit_w=11000,
    )
    assert wire["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 10.0, "numberPhases": 3},
        {"startPeriod": 1800, "limit": 0.0, "numberPhases": 3},
    ]
    assert wire["scheduleStart"] == "2026-07-01T08:00:00.000Z"


def test_tx_default_on_evse_0_is_a_per_evse_default_not_a_station_total() -> None:
    """A TxDefaultProfile installed on evseId 0 caps each EVSE; only ChargingStationMaxProfile
    caps the station's sum."""
    store = ProfileStore({0: 3, 1: 3})
    store.install(parse_profile(0, prof(1, "TxDefaultProfile", [(0, 3700)], kind="Relative")), None)
    assert store.station_max_w(T0) is None
    assert store.limit_w(1, T0, TX) == 3700
    store.install(parse_profile(0, prof(2, "ChargingStationMaxProfile", [(0, 20000)])), None)
    assert store.station_max_w(T0) == 20000


def test_the_station_s_composite_is_its_caps_not_the_evse_default() -> None:
    """GetCompositeSchedule for evseId 0 reports the station's limit: a TxDefaultProfile on
    evseId 0 is each EVSE's default, not a cap on the station."""
    store = ProfileStore({0: 3, 1: 3})
    store.install(parse_profile(0, prof(1, "TxDefaultProfile", [(0, 8200)], kind="Relative")), None)
    assert [p.limit_w for p in store.composite(0, T0, 3600, None)] == [None]
    assert [p.limit_w for p in store.composite(1, T0, 3600, TX)] == [8200]
    store.install(parse_profile(0, prof(2, "ChargingStationMaxProfile", [(0, 20000), (1800, 15000)])), None)
    assert store.composite(0, T0, 3600, None) == [CompositePeriod(0, 20000), CompositePeriod(1800, 15000)]


def test_a_relative_default_on_evse_0_changes_from_each_transaction_s_start() -> None:
    store = ProfileStore({0: 3, 1: 3, 2: 3})
    store.install(parse_profile(0, prof(1, "TxDefaultProfile", [(0, 11000), (1800, 3000)], kind="Relative")), None)
    late = Transaction("tx-2", at(10))
    assert store.limit_w(2, at(35), late) == 11000 and store.limit_w(2, at(45), late) == 3000
    # EVSE 2's transaction started at +10 min: its limit drops at +40 min, and the station must know.
    assert store.next_change(at(35), timedelta(minutes=30), {1: None, 2: late}) == at(40)
