"""Commands to one station. The answer is the station's own CALLRESULT payload; when it does
not carry the command out the error says why:

- 404 ``not_found``: no such station registered
- 409 ``station_offline``: the station is not connected (nothing was sent)
- 409 ``station_on_other_node``: another gateway node holds its connection (``details.connected_node``;
  nothing was sent: send the command to that node)
- 502 ``station_error``: the station answered with a CALLERROR (``details.ocpp_error_code``)
- 503 ``station_disconnected``: its connection closed while the call was pending
- 504 ``station_timeout``: no answer within ``call_timeout_s``
- 504 ``call_not_sent``: the call waited ``call_timeout_s`` behind the station's earlier calls and
  never went out (the station got nothing; sending it again is safe)

Commands to one station queue behind each other (one CALL in flight per station).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field, model_validator

from gateway.api.deps import GatewayDep, Operator
from gateway.api.errors import Conflict, NotFound, responses
from gateway.api.routes.stations import holding_node
from gateway.api.schemas import Model, StationId
from gateway.app import Gateway
from gateway.domain import EVSE_ID_MAX
from gateway.ocpp.errors import CallNotSent, CallTimeout, ConnectionReplaced

router = APIRouter(prefix="/stations/{station_id}/commands", tags=["commands"],
                   responses=responses(401, 403, 404, 409, 422, 502, 503, 504))

# Annotated, not a default: as `x: StationId = Path()` FastAPI drops the type's length and
# pattern (a NUL in the path reached the database as a 500).
StationPath = Annotated[StationId, Path(description="The station to command")]
EvseId = Field(default=None, ge=0, le=EVSE_ID_MAX)

MessageTrigger = Literal[
    "BootNotification", "LogStatusNotification", "FirmwareStatusNotification", "Heartbeat", "MeterValues",
    "SignChargingStationCertificate", "SignV2GCertificate", "StatusNotification", "TransactionEvent",
    "SignCombinedCertificate", "PublishFirmwareStatusNotification",
]


class ResetIn(Model):
    type: Literal["Immediate", "OnIdle"] = "Immediate"
    # ResetRequest's evseId names one EVSE instead of the whole station; EVSE ids start at 1.
    evse_id: int | None = Field(default=None, ge=1, le=EVSE_ID_MAX,
                                description="One EVSE to reset; leave out for the whole station")


class _ConnectorOfEvse(Model):
    """A connector is numbered within its EVSE (OCPP 2.0.1 EVSEType): one without an EVSE would
    be dropped from the call and the command would reach the whole station. EVSEType's id is a
    number > 0 (its schema's description): the whole station is no EVSE at all, not EVSE 0."""

    evse_id: int | None = Field(default=None, ge=1, le=EVSE_ID_MAX,
                                description="The EVSE (from 1); left out: the whole station")
    # OCPP 2.0.1 numbers the connectors of each EVSE from 1 (Part 1's 3-tier model; Part 2's
    # EVSEType.connectorId): connector 0 is no connector, and was forwarded to the station as one.
    connector_id: int | None = Field(default=None, ge=1, le=1000,
                                     description="The connector within evse_id (from 1)")

    @model_validator(mode="after")
    def _connector_needs_evse(self) -> _ConnectorOfEvse:
        if self.connector_id is not None and self.evse_id is None:
            raise ValueError("connector_id needs evse_id: a connector is numbered within its EVSE")
        return self


class TriggerIn(_ConnectorOfEvse):
    requested_message: MessageTrigger


class UnlockIn(Model):
    evse_id: int = Field(ge=1, le=EVSE_ID_MAX)
    connector_id: int = Field(ge=1, le=1000)


class AvailabilityIn(_ConnectorOfEvse):
    operational_status: Literal["Operative", "Inoperative"]


class ClearProfilesIn(Model):
    charging_profile_id: int | None = Field(default=None, ge=0, le=2**31 - 1)
    evse_id: int | None = EvseId
    purpose: Literal["ChargingStationExternalConstraints", "ChargingStationMaxProfile", "TxDefaultProfile",
                     "TxProfile"] | None = None
    stack_level: int | None = Field(default=None, ge=0, le=1000)


class CommandResult(BaseModel):
    station_id: str
    action: str
    response: dict[str, Any] = Field(description="The station's CALLRESULT payload, as on the wire")


async def _run(gw: Gateway, station_id: str, action: str, call: Awaitable[dict[str, Any]]) -> CommandResult:
    # StationCommands counts and times every CALL; failures become JSON errors in gateway/api/errors.py.
    return CommandResult(station_id=station_id, action=action, response=await call)


async def _known(gw: Gateway, station_id: str) -> None:
    """404 for a station never registered; 409 ``station_on_other_node`` for one whose connection
    another gateway node holds (its flag, as GET /stations shows it): only that node can send it
    a CALL, and "not connected" would contradict GET /stations/{id}."""
    row = await gw.stations.get(station_id)
    if row is None:
        raise NotFound(f"no station {station_id!r}")
    node = holding_node(gw, row)
    if node is not None and node != gw.settings.node_id:
        raise Conflict(f"station {station_id!r} is connected to gateway node {node!r}, not this one "
                       f"({gw.settings.node_id!r}): send the command to that node",
                       {"station_id": station_id, "connected_node": node}, code="station_on_other_node")


@router.post("/reset")
async def reset(body: ResetIn, gw: GatewayDep, _: Operator,
                station_id: StationPath) -> CommandResult:
    await _known(gw, station_id)
    return await _run(gw, station_id, "Reset", gw.commands.reset(station_id, body.type, body.evse_id))


@router.post("/trigger-message")
async def trigger_message(body: TriggerIn, gw: GatewayDep, _: Operator,
                          station_id: StationPath) -> CommandResult:
    await _known(gw, station_id)
    return await _run(gw, station_id, "TriggerMessage", gw.commands.trigger_message(
        station_id, body.requested_message, body.evse_id, body.connector_id))


@router.post("/unlock-connector")
async def unlock_connector(body: UnlockIn, gw: GatewayDep, _: Operator,
                           station_id: StationPath) -> CommandResult:
    await _known(gw, station_id)
    return await _run(gw, station_id, "UnlockConnector",
                      gw.commands.unlock_connector(station_id, body.evse_id, body.connector_id))


@router.post("/change-availability")
async def change_availability(body: AvailabilityIn, gw: GatewayDep, _: Operator,
                              station_id: StationPath) -> CommandResult:
    await _known(gw, station_id)
    return await _run(gw, station_id, "ChangeAvailability", gw.commands.change_availability(
        station_id, body.operational_status, body.evse_id, body.connector_id))


@router.post("/clear-charging-profile")
async def clear_charging_profile(body: ClearProfilesIn, gw: GatewayDep, _: Operator,
                                 station_id: StationPath) -> CommandResult:
    await _known(gw, station_id)
    try:
        result = await _run(gw, station_id, "ClearChargingProfile", gw.commands.clear_charging_profile(
            station_id, body.charging_profile_id, evse_id=body.evse_id, purpose=body.purpose,
            stack_level=body.stack_level))
    except CallNotSent:
        # Never went out: it waited its whole timeout behind the station's earlier calls (one in
        # flight, OCPP-J Part 4 §4.1.1), so the station cleared nothing and the profiles the
        # scheduler counts are still in force. Re-sending them all and re-planning would be a
        # storm of CALLs onto a station already too busy to take this one.
        raise
    except (CallTimeout, ConnectionReplaced):
        # Sent, and no answer: the station may have cleared them all the same (K10), so they
        # are counted as cleared (sending them again costs a CALL; missing a clear, a site
        # running without the plan's limits). The 504 (or 503) still tells the operator.
        if gw.scheduler is not None:
            gw.scheduler.profiles_cleared(station_id)
        raise
    if gw.scheduler is not None and result.response.get("status") == "Accepted":
        # The station may now run without the plan's limits (or without any): the planner must not
        # go on counting them in force, nor skip re-sending a plan "unchanged" since.
        gw.scheduler.profiles_cleared(station_id)
    return result
