"""The station's answers to the CSMS's smart-charging CALLs (OCPP 2.0.1 K01, K08, K09, K10).

The rules live in :mod:`simulators.composite`; this class adapts them to the ``ocpp`` package's
handler arguments (snake_case) and replies, and tells the station when its limits changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ocpp.charge_point import snake_to_camel_case
from ocpp.exceptions import InternalError
from ocpp.v201 import call_result, datatypes

from gateway.clock import Clock
from simulators.composite import (
    ProfileError,
    ProfileStore,
    Purpose,
    Transaction,
    composite_to_wire,
    limit_source,
    parse_profile,
)
from simulators.evse import EvseState
from simulators.faults import Faults

# statusInfo.reasonCode is at most 20 characters: the specific cause goes in additionalInfo.
REASON_CODES = {
    "TxProfileEvseHasNoActiveTransaction": "TxNotFound",
    "TxProfileTransactionNotOnEvse": "TxNotFound",
    "EvseDoesNotExist": "UnknownEvse",
    "UnsupportedChargingRateUnit": "UnsupportedRateUnit",
    "DischargeNotSupported": "NoDischarge",
    "DuplicateProfile": "DuplicateProfile",
}


class SmartCharging:
    def __init__(
        self,
        evses: dict[int, EvseState],
        profiles: ProfileStore,
        faults: Faults,
        clock: Clock,
        *,
        on_change: Callable[[], None],
        send: Callable[[str, dict[str, Any]], None],
        periods_max: int = 24,
    ) -> None:
        self.evses = evses
        self.profiles = profiles
        self.faults = faults
        self.clock = clock
        self._on_change = on_change
        self._send = send
        self.periods_max = periods_max  # SmartChargingCtrlr.PeriodsPerSchedule

    def _maybe_fail(self, action: str) -> None:
        if action in self.faults.callerror_actions:
            raise InternalError(description=f"simulated failure answering {action}")

    def tx_on(self, evse_id: int) -> Transaction | None:
        evse = self.evses.get(evse_id)
        return evse.session.transaction if evse is not None and evse.session is not None else None

    def set_charging_profile(self, evse_id: int, profile_snake: dict[str, Any]) -> Any:
        self._maybe_fail("SetChargingProfile")
        try:
            profile = parse_profile(evse_id, snake_to_camel_case(profile_snake))
            if evse_id != 0 and evse_id not in self.evses:
                raise ProfileError("EvseDoesNotExist")  # K01.FR.28
            if profile.purpose is Purpose.EXTERNAL:
                # External constraints come from a local EMS, never from the CSMS (K01.FR.22).
                raise ProfileError("ExternalConstraintsNotFromCsms")
            if len(profile.periods) > self.periods_max:
                raise ProfileError(f"PeriodsPerSchedule: {len(profile.periods)} periods, at most {self.periods_max}")
            has_negative = any(p.limit < 0 for p in profile.periods)
            # A unidirectional EVSE cannot honour a discharge order, so it refuses it. On evseId 0
            # the profile reaches every EVSE: taken when one of them can discharge; the others
            # hold a negative limit at zero (EvseState.setpoint_kw), they never discharge.
            targets = list(self.evses.values()) if evse_id == 0 else [self.evses[evse_id]]
            if has_negative and not any(e.spec.bidirectional for e in targets):
                raise ProfileError("DischargeNotSupported")
            if has_negative and profile.purpose is Purpose.MAX:
                raise ProfileError("NegativeMaxProfile")
            self.profiles.install(profile, self.tx_on(evse_id), now=self.clock.now())
        except ProfileError as exc:
            detail = str(exc).strip("'")
            reason = REASON_CODES.get(detail.split(":")[0], "InvalidProfile")
            return call_result.SetChargingProfile(
                status="Rejected", status_info={"reasonCode": reason, "additionalInfo": detail[:512]}
            )
        self._on_change()
        return call_result.SetChargingProfile(status="Accepted")

    def get_variables(self, requested: list[dict[str, Any]]) -> Any:
        """The device model this station has: SmartChargingCtrlr.PeriodsPerSchedule (B06)."""
        self._maybe_fail("GetVariables")
        results = []
        for r in requested:
            component, variable = r.get("component") or {}, r.get("variable") or {}
            known_component = component.get("name") == "SmartChargingCtrlr"
            if known_component and variable.get("name") == "PeriodsPerSchedule" and r.get("attribute_type") in (
                    None, "Actual"):
                results.append(datatypes.GetVariableResultType(
                    attribute_status="Accepted", component=component, variable=variable,
                    attribute_value=str(self.periods_max)))
            else:
                results.append(datatypes.GetVariableResultType(
                    attribute_status="UnknownVariable" if known_component else "UnknownComponent",
                    component=component, variable=variable))
        return call_result.GetVariables(get_variable_result=results)

    def clear_charging_profile(self, profile_id: int | None, criteria: dict[str, Any] | None) -> Any:
        self._maybe_fail("ClearChargingProfile")
        c = criteria or {}
        n = self.profiles.clear(
            profile_id=profile_id,
            evse_id=c.get("evse_id"),
            purpose=c.get("charging_profile_purpose"),
            stack_level=c.get("stack_level"),
        )
        self._on_change()
        return call_result.ClearChargingProfile(status="Accepted" if n else "Unknown")

    def _matching(self, criterion: dict[str, Any], evse_id: int | None) -> list[Any]:
        return self.profiles.matching(
            evse_id=evse_id,
            purpose=criterion.get("charging_profile_purpose"),
            stack_level=criterion.get("stack_level"),
            ids=criterion.get("charging_profile_id"),
            sources=criterion.get("charging_limit_source"),  # K09: e.g. ["EMS"] matches no CSMS profile
        )

    def get_charging_profiles(self, request_id: int, criterion: dict[str, Any], evse_id: int | None) -> Any:
        self._maybe_fail("GetChargingProfiles")
        found = self._matching(criterion, evse_id)
        return call_result.GetChargingProfiles(status="Accepted" if found else "NoProfiles")

    def report_charging_profiles(self, request_id: int, criterion: dict[str, Any], evse_id: int | None) -> None:
        """After answering GetChargingProfiles, report the profiles per EVSE (K09); tbc on all
        reports but the last."""
        if "GetChargingProfiles" in self.faults.callerror_actions:
            return
        # One report per EVSE and chargingLimitSource (a report carries one source).
        by_evse: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for p in self._matching(criterion, evse_id):
            by_evse.setdefault((p.evse_id, limit_source(p)), []).append(dict(p.raw))
        items = sorted(by_evse.items())
        for i, ((eid, source), profiles) in enumerate(items):
            payload: dict[str, Any] = {
                "requestId": request_id,
                "chargingLimitSource": source,
                "chargingProfile": profiles,
                "evseId": eid,
            }
            if i < len(items) - 1:
                payload["tbc"] = True
            self._send("ReportChargingProfiles", payload)

    def get_composite_schedule(self, duration: int, evse_id: int, unit: str | None) -> Any:
        self._maybe_fail("GetCompositeSchedule")
        if evse_id != 0 and evse_id not in self.evses:
            return call_result.GetCompositeSchedule(status="Rejected", status_info={"reasonCode": "UnknownEVSE"})
        now = self.clock.now()
        periods = self.profiles.composite(evse_id, now, duration, self.tx_on(evse_id))
        # The EVSE's hardware bounds the composite (K08): a profile above its maximum reads as it.
        evses = list(self.evses.values()) if evse_id == 0 else [self.evses[evse_id]]
        phases = max((e.spec.phases for e in evses), default=3)
        default_w = sum(e.spec.max_charge_kw for e in evses) * 1000.0
        discharge_w = sum(e.spec.max_discharge_kw for e in evses if e.spec.bidirectional) * 1000.0
        schedule = composite_to_wire(
            periods,
            evse_id=evse_id,
            start=now,
            duration_s=duration,
            unit=unit or "W",
            evse_phases=phases,
            default_limit_w=default_w,
            max_discharge_w=discharge_w,
        )
        return call_result.GetCompositeSchedule(status="Accepted", schedule=schedule)
