"""The station's answers to the smart-charging CALLs (K01, K08, K09, K10), called directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.charge_point import camel_to_snake_case

from gateway.clock import ManualClock, to_rfc3339
from gateway.domain import DischargeDialect, EvseSpec
from gateway.ocpp.defaults import default_profile
from gateway.ocpp.profiles import build_profile, held_at_zero
from simulators.composite import ProfileStore, Transaction
from simulators.evse import EvseState
from simulators.faults import Faults
from simulators.smart_charging import SmartCharging

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


class Tx:
    """Stands in for an EvSession: SmartCharging only reads its transaction."""

    def __init__(self, tx: Transaction) -> None:
        self.transaction = tx


def station(*specs: EvseSpec) -> tuple[SmartCharging, list[tuple[str, dict[str, Any]]]]:
    specs = specs or (EvseSpec("S", 1, 11.0, 7.0, True, 3), EvseSpec("S", 2, 7.4, 0.0, False, 1))
    evses = {s.evse_id: EvseState(s) for s in specs}
    sent: list[tuple[str, dict[str, Any]]] = []
    sc = SmartCharging(evses, ProfileStore({s.evse_id: s.phases for s in specs}), Faults(), ManualClock(T0),
                       on_change=lambda: None, send=lambda a, p: sent.append((a, p)))
    return sc, sent


def profile(pid: int, purpose: str, limits: list[float], *, level: int = 0, kind: str = "Absolute",
            tx: str | None = None) -> dict[str, Any]:
    """A wire-form chargingProfile (camelCase), as the CSMS sends it."""
    sched: dict[str, Any] = {
        "id": pid,
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [{"startPeriod": i * 600, "limit": v} for i, v in enumerate(limits)],
    }
    if kind != "Relative":
        sched["startSchedule"] = to_rfc3339(T0 - timedelta(hours=1))
    p: dict[str, Any] = {"id": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
                         "chargingProfileKind": kind, "chargingSchedule": [sched]}
    if tx is not None:
        p["transactionId"] = tx
    return p


def set_profile(sc: SmartCharging, evse_id: int, wire: dict[str, Any]) -> Any:
    # The ocpp package hands the handler snake_case keys.
    return sc.set_charging_profile(evse_id, camel_to_snake_case(wire))


def test_another_id_in_the_same_slot_is_rejected_as_a_duplicate() -> None:
    sc, _ = station()
    assert set_profile(sc, 1, profile(10, "TxDefaultProfile", [5000], level=1)).status == "Accepted"
    reply = set_profile(sc, 1, profile(11, "TxDefaultProfile", [7000], level=1))
    assert reply.status == "Rejected" and reply.status_info["reasonCode"] == "DuplicateProfile"
    assert sorted(sc.profiles.profiles) == [10]


def test_the_gateway_s_own_pushes_are_accepted() -> None:
    """The gateway sends its default as id 1 on evseId 0 every time, and one TxProfile id per
    transaction (gateway/ocpp/profiles.py profile_id_for): each push replaces the one before."""
    sc, _ = station()
    for kw in (7.0, 3.5):
        assert set_profile(sc, 0, default_profile(kw)).status == "Accepted"
    tx = Transaction("tx-a", T0)
    sc.evses[1].session = Tx(tx)  # type: ignore[assignment]

    def push(transaction_id: str, kw: float) -> Any:
        prof = build_profile(
            station_id="S", evse_id=1, transaction_id=transaction_id, starts=[T0, T0 + timedelta(minutes=15)],
            end=T0 + timedelta(hours=1), power_kw=[kw, kw / 2], max_charge_kw=11.0, max_discharge_kw=7.0,
            bidirectional=True, dialect=DischargeDialect.NEGATIVE_LIMIT, stack_level=1, max_periods=24,
        )
        return prof, set_profile(sc, 1, prof.payload()["chargingProfile"])

    first, reply = push("tx-a", 6.0)
    assert reply.status == "Accepted"
    assert push("tx-a", -4.0)[1].status == "Accepted"
    assert set_profile(sc, 1, held_at_zero(first).payload()["chargingProfile"]).status == "Accepted"
    sc.profiles.end_transaction("tx-a")
    sc.evses[1].session = Tx(Transaction("tx-b", T0))  # type: ignore[assignment]
    assert push("tx-b", 5.0)[1].status == "Accepted"
    assert len(sc.profiles.profiles) == 2  # the default and tx-b's TxProfile


def test_external_constraints_from_the_csms_are_rejected() -> None:
    """K01.FR.22: ChargingStationExternalConstraints come from a local EMS, never the CSMS."""
    sc, _ = station()
    reply = set_profile(sc, 0, profile(5, "ChargingStationExternalConstraints", [1000]))
    assert reply.status == "Rejected" and reply.status_info["reasonCode"] == "InvalidProfile"
    assert "ExternalConstraints" in reply.status_info["additionalInfo"]
    assert sc.profiles.profiles == {}


def test_a_discharge_profile_for_an_unknown_evse_is_unknown_evse() -> None:
    sc, _ = station()
    reply = set_profile(sc, 9, profile(1, "TxDefaultProfile", [-5000]))
    assert reply.status == "Rejected"
    assert reply.status_info == {"reasonCode": "UnknownEvse", "additionalInfo": "EvseDoesNotExist"}


def test_a_discharge_default_on_evse_0_is_taken_when_an_evse_can_discharge() -> None:
    """On evseId 0 the profile reaches every EVSE: taken when one is bidirectional; the
    unidirectional one holds it at zero, in its power and in its composite."""
    sc, _ = station()
    assert set_profile(sc, 0, profile(2, "TxDefaultProfile", [-5000])).status == "Accepted"
    assert sc.evses[2].setpoint_kw(-5.0) == 0.0
    comp = sc.get_composite_schedule(3600, 2, "W").schedule["chargingSchedulePeriod"]
    assert comp == [{"startPeriod": 0, "limit": 0.0}]
    comp = sc.get_composite_schedule(3600, 1, "W").schedule["chargingSchedulePeriod"]
    assert comp == [{"startPeriod": 0, "limit": -5000}]
    # A station whose EVSEs all are unidirectional refuses it.
    uni, _ = station(EvseSpec("S", 1, 11.0, 0.0, False, 3))
    reply = set_profile(uni, 0, profile(2, "TxDefaultProfile", [-5000]))
    assert reply.status == "Rejected" and reply.status_info["reasonCode"] == "NoDischarge"


def test_the_composite_schedule_is_capped_at_the_evse_s_maximum() -> None:
    sc, _ = station()
    assert set_profile(sc, 1, profile(3, "TxDefaultProfile", [50000, -20000])).status == "Accepted"
    comp = sc.get_composite_schedule(3600, 1, "W").schedule["chargingSchedulePeriod"]
    # Absolute from an hour ago: the -20 kW period is in force now; the EVSE discharges 7 kW at most.
    assert comp == [{"startPeriod": 0, "limit": -7000}]
    assert set_profile(sc, 1, profile(3, "TxDefaultProfile", [50000])).status == "Accepted"
    comp = sc.get_composite_schedule(3600, 1, "W").schedule["chargingSchedulePeriod"]
    assert comp == [{"startPeriod": 0, "limit": 11000}]


def test_get_charging_profiles_honours_the_charging_limit_source() -> None:
    """K09: every profile the CSMS set has chargingLimitSource CSO; asking for other sources
    only matches none of them."""
    sc, sent = station()
    assert set_profile(sc, 1, profile(4, "TxDefaultProfile", [5000])).status == "Accepted"
    only_ems = {"charging_limit_source": ["EMS", "SO"]}
    assert sc.get_charging_profiles(1, only_ems, None).status == "NoProfiles"
    sc.report_charging_profiles(1, only_ems, None)
    assert sent == []
    with_cso = {"charging_limit_source": ["CSO"]}
    assert sc.get_charging_profiles(2, with_cso, None).status == "Accepted"
    sc.report_charging_profiles(2, with_cso, None)
    assert [(a, p["chargingLimitSource"], p["evseId"]) for a, p in sent] == [("ReportChargingProfiles", "CSO", 1)]
