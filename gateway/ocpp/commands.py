"""Typed commands to stations (CSMS -> Charging Station), for the scheduler and the REST API.

Payloads are built from the ``ocpp`` package's v2.0.1 dataclasses and enums and sent through the
station's live :class:`~gateway.ocpp.connection.Connection` (one CALL in flight, the rest queued).
Each method returns the CALLRESULT payload (camelCase, as on the wire) and raises the
:class:`~gateway.ocpp.errors.CallFailed` family: StationOffline at once when the station is not
connected, CallTimeout, CallErrorReceived, ConnectionReplaced.

Arguments that already are wire dicts (a charging profile from ``profiles``) are inserted as
given, never re-cased.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from ocpp.charge_point import remove_nones, snake_to_camel_case
from ocpp.v201 import call, datatypes, enums

from gateway import metrics
from gateway.config import Settings
from gateway.ocpp.connection import Connection
from gateway.ocpp.errors import CallErrorReceived, CallFailed, CallNotSent, CallTimeout, StationOffline

Payload = dict[str, Any]
# TriggerMessage's requested messages that are sent under another action's name (F06).
TRIGGERED_ACTION = {
    "SignChargingStationCertificate": "SignCertificate",
    "SignV2GCertificate": "SignCertificate",
    "SignCombinedCertificate": "SignCertificate",
}


class Registry(Protocol):
    def get(self, station_id: str) -> Connection | None: ...


@dataclass(frozen=True, slots=True)
class VariableRef:
    """A component/variable pair of the device model (OCPP 2.0.1 Part 1 §4)."""

    component: str
    variable: str
    component_instance: str | None = None
    variable_instance: str | None = None
    evse_id: int | None = None
    connector_id: int | None = None
    attribute_type: str | None = None  # Actual (default), Target, MinSet, MaxSet

    def component_type(self) -> datatypes.ComponentType:
        evse = _evse(self.evse_id, self.connector_id)
        return datatypes.ComponentType(name=self.component, instance=self.component_instance, evse=evse)

    def variable_type(self) -> datatypes.VariableType:
        return datatypes.VariableType(name=self.variable, instance=self.variable_instance)

    def attribute(self) -> enums.AttributeEnumType | None:
        return None if self.attribute_type is None else enums.AttributeEnumType(self.attribute_type)


def _evse(evse_id: int | None, connector_id: int | None) -> datatypes.EVSEType | None:
    if evse_id is None and connector_id is not None:
        # Dropping it would address the whole station instead of one connector.
        raise ValueError("connector_id needs evse_id: a connector is numbered within its EVSE")
    return None if evse_id is None else datatypes.EVSEType(id=evse_id, connector_id=connector_id)


def _purpose(purpose: str | None) -> enums.ChargingProfilePurposeEnumType | None:
    return None if purpose is None else enums.ChargingProfilePurposeEnumType(purpose)


def to_wire(request: Any, **raw: Any) -> Payload:
    """A v201 call dataclass as the camelCase wire dict; ``raw`` fields are inserted verbatim."""
    snake = {k: v for k, v in asdict(request).items() if k not in raw}
    wire: Payload = snake_to_camel_case(remove_nones(snake))
    # Enum members become plain strings, as on the wire.
    wire = json.loads(json.dumps(wire))
    for key, value in raw.items():
        if value is not None:
            wire[snake_to_camel_case({key: None}).popitem()[0]] = value
    return wire


class StationCommands:
    """Commands addressed by station id; a station that is not connected fails fast."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings

    async def call(
        self, station_id: str, action: str, payload: Payload, timeout_s: float | None = None
    ) -> Payload:
        """Every command goes through here, so every CALL we send is counted and timed once."""
        conn = self._registry.get(station_id)
        if conn is None or conn.closed:
            metrics.CALLS_SENT.labels(action, "offline").inc()
            raise StationOffline(station_id, action)
        started = time.perf_counter()
        metrics.OUTGOING_QUEUED.inc()
        try:
            reply = await conn.call(action, payload, timeout_s)
        except CallFailed as exc:
            # CallNotSent (a CallTimeout that never went out) counted apart: it says the station's
            # queue is backed up, not that the station fell silent.
            outcome = {CallTimeout: "timeout", CallNotSent: "not_sent",
                       CallErrorReceived: "callerror"}.get(type(exc), "failed")
            metrics.CALLS_SENT.labels(action, outcome).inc()
            raise
        finally:
            metrics.OUTGOING_QUEUED.dec()
        metrics.CALLS_SENT.labels(action, "ok").inc()
        metrics.CALL_SECONDS.labels(action).observe(time.perf_counter() - started)
        return reply

    async def set_charging_profile(
        self, station_id: str, evse_id: int, profile: Payload, timeout_s: float | None = None
    ) -> Payload:
        req = call.SetChargingProfile(evse_id=evse_id, charging_profile=profile)
        return await self.call(station_id, "SetChargingProfile", to_wire(req, charging_profile=profile),
                               timeout_s)

    async def clear_charging_profile(
        self,
        station_id: str,
        charging_profile_id: int | None = None,
        *,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> Payload:
        criteria = None
        if evse_id is not None or purpose is not None or stack_level is not None:
            criteria = datatypes.ClearChargingProfileType(
                evse_id=evse_id,
                charging_profile_purpose=_purpose(purpose),
                stack_level=stack_level,
            )
        req = call.ClearChargingProfile(
            charging_profile_id=charging_profile_id, charging_profile_criteria=criteria)
        return await self.call(station_id, "ClearChargingProfile", to_wire(req))

    async def get_charging_profiles(
        self,
        station_id: str,
        request_id: int,
        *,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
        charging_profile_ids: Sequence[int] | None = None,
    ) -> Payload:
        criterion = datatypes.ChargingProfileCriterionType(
            charging_profile_purpose=_purpose(purpose),
            stack_level=stack_level,
            charging_profile_id=None if charging_profile_ids is None else list(charging_profile_ids),
        )
        req = call.GetChargingProfiles(request_id=request_id, charging_profile=criterion, evse_id=evse_id)
        return await self.call(station_id, "GetChargingProfiles", to_wire(req))

    async def get_composite_schedule(
        self, station_id: str, evse_id: int, duration_s: int, charging_rate_unit: Literal["W", "A"] = "W"
    ) -> Payload:
        req = call.GetCompositeSchedule(
            duration=duration_s, evse_id=evse_id,
            charging_rate_unit=enums.ChargingRateUnitEnumType(charging_rate_unit),
        )
        return await self.call(station_id, "GetCompositeSchedule", to_wire(req))

    async def request_start_transaction(
        self,
        station_id: str,
        id_token: str,
        remote_start_id: int,
        *,
        id_token_type: str = "Central",
        evse_id: int | None = None,
        charging_profile: Payload | None = None,
    ) -> Payload:
        token = datatypes.IdTokenType(id_token=id_token, type=enums.IdTokenEnumType(id_token_type))
        req = call.RequestStartTransaction(
            id_token=token, remote_start_id=remote_start_id, evse_id=evse_id,
            charging_profile=charging_profile,
        )
        return await self.call(station_id, "RequestStartTransaction",
                               to_wire(req, charging_profile=charging_profile))

    async def request_stop_transaction(self, station_id: str, transaction_id: str) -> Payload:
        req = call.RequestStopTransaction(transaction_id=transaction_id)
        return await self.call(station_id, "RequestStopTransaction", to_wire(req))

    async def trigger_message(
        self, station_id: str, requested_message: str, evse_id: int | None = None,
        connector_id: int | None = None,
    ) -> Payload:
        req = call.TriggerMessage(
            requested_message=enums.MessageTriggerEnumType(requested_message),
            evse=_evse(evse_id, connector_id),
        )
        conn = self._registry.get(station_id)
        action = TRIGGERED_ACTION.get(requested_message, requested_message)
        if conn is not None:
            # Before the CALL goes out: the station answers and sends the message at once, and
            # the message may be handled before this coroutine resumes with the answer.
            conn.ctx.triggered.add(action)
        accepted = False
        try:
            reply = await self.call(station_id, "TriggerMessage", to_wire(req))
            accepted = reply.get("status") == "Accepted"
            return reply
        finally:
            if conn is not None and not accepted:
                conn.ctx.triggered.discard(action)

    async def get_transaction_status(self, station_id: str, transaction_id: str | None = None) -> Payload:
        req = call.GetTransactionStatus(transaction_id=transaction_id)
        return await self.call(station_id, "GetTransactionStatus", to_wire(req))

    async def get_variables(self, station_id: str, variables: Sequence[VariableRef]) -> Payload:
        data = [
            datatypes.GetVariableDataType(component=v.component_type(), variable=v.variable_type(),
                                          attribute_type=v.attribute())
            for v in variables
        ]
        return await self.call(station_id, "GetVariables", to_wire(call.GetVariables(get_variable_data=data)))

    async def set_variables(self, station_id: str, values: Sequence[tuple[VariableRef, str]]) -> Payload:
        data = [
            datatypes.SetVariableDataType(attribute_value=value, component=v.component_type(),
                                          variable=v.variable_type(), attribute_type=v.attribute())
            for v, value in values
        ]
        return await self.call(station_id, "SetVariables", to_wire(call.SetVariables(set_variable_data=data)))

    async def reset(
        self, station_id: str, kind: Literal["Immediate", "OnIdle"] = "Immediate", evse_id: int | None = None
    ) -> Payload:
        req = call.Reset(type=enums.ResetEnumType(kind), evse_id=evse_id)
        return await self.call(station_id, "Reset", to_wire(req))

    async def change_availability(
        self, station_id: str, operational_status: Literal["Operative", "Inoperative"],
        evse_id: int | None = None, connector_id: int | None = None,
    ) -> Payload:
        req = call.ChangeAvailability(
            operational_status=enums.OperationalStatusEnumType(operational_status),
            evse=_evse(evse_id, connector_id))
        return await self.call(station_id, "ChangeAvailability", to_wire(req))

    async def unlock_connector(self, station_id: str, evse_id: int, connector_id: int) -> Payload:
        req = call.UnlockConnector(evse_id=evse_id, connector_id=connector_id)
        return await self.call(station_id, "UnlockConnector", to_wire(req))
