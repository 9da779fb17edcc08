"""Stations: register (password hashed with argon2id, never returned or logged), list, get,
enable/disable."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from gateway import events as ev
from gateway.api.deps import GatewayDep, Operator, QueriesDep
from gateway.api.errors import Conflict, NotFound, Unprocessable, responses
from gateway.api.schemas import Limit, Model, Offset, Page, StationId, UtcDateTime
from gateway.app import Gateway
from gateway.db.queries import Queries
from gateway.db.stations import EvseRow, StationRow
from gateway.domain import EVSE_ID_MAX, DischargeDialect, EvseSpec
from gateway.ocpp.auth import hash_password

# What a station registered and never booted shows (models.Station.boot_status's default).
NEW_BOOT_STATUS = "Accepted"
# An EVSE stored without phases has the column's default (models.Evse.phases).
DEFAULT_PHASES = 3

router = APIRouter(prefix="/stations", tags=["stations"], responses=responses(401, 403, 422))

# Annotated, not a default: as `x: StationId = Path()` FastAPI drops the type's length and
# pattern (a NUL in the path reached the database as a 500).
StationPath = Annotated[StationId, Path(description="The station id (as in ws://host/ocpp/{id})")]


class EvseIn(Model):
    evse_id: int = Field(ge=1, le=EVSE_ID_MAX)
    max_charge_kw: float = Field(ge=0, le=2000)
    max_discharge_kw: float = Field(default=0.0, ge=0, le=2000)
    bidirectional: bool = False
    phases: int = Field(default=3, ge=1, le=3)


class StationIn(Model):
    id: StationId
    password: str = Field(min_length=16, max_length=40,
                          description="HTTP Basic password (OCPP 2.0.1 A00.FR.205: 16..40 chars)")
    security_profile: Literal[1, 2] = Field(default=1, description="1: Basic auth over ws; 2: over wss")
    discharge_dialect: DischargeDialect = Field(default=DischargeDialect.NEGATIVE_LIMIT, strict=False)
    discharge_undeclared_evs: bool | None = Field(
        default=None, description="discharge EVs that did not declare a discharge power (ISO 15118-20), e.g. "
        "CHAdeMO V2G cars behind a DC charger; null: the site's GATEWAY_DISCHARGE_UNDECLARED_EVS")
    evses: list[EvseIn] = Field(default_factory=list, max_length=100)


class EvseOut(BaseModel):
    evse_id: int
    max_charge_kw: float
    max_discharge_kw: float
    bidirectional: bool
    phases: int
    status: str | None


class StationOut(BaseModel):
    id: str
    security_profile: int
    enabled: bool
    connected: bool = Field(description="Live on this node, or on another node sharing the database (its flag)")
    connected_node: str | None = Field(default=None, description="The gateway node holding the connection")
    discharge_dialect: str
    discharge_undeclared_evs: bool | None
    vendor: str | None
    model: str | None
    firmware_version: str | None
    boot_status: str
    last_seen_at: UtcDateTime | None
    evses: list[EvseOut]


def holding_node(gw: Gateway, r: StationRow) -> str | None:
    """The gateway node holding ``r``'s connection, None when no node does. Here, this node's
    registry decides (its own flag may lag a write); elsewhere, the flag the holding node wrote."""
    if gw.ocpp.registry.get(r.id) is not None:
        return gw.settings.node_id
    return r.connected_node if r.connected and r.connected_node != gw.settings.node_id else None


def _station_out(gw: Gateway, r: StationRow, evses: list[EvseRow]) -> StationOut:
    """Built from values already read or written: no database access."""
    node = holding_node(gw, r)
    return StationOut(
        id=r.id, security_profile=r.security_profile, enabled=r.enabled,
        connected=node is not None, connected_node=node, discharge_dialect=r.discharge_dialect,
        discharge_undeclared_evs=r.discharge_undeclared_evs, vendor=r.vendor, model=r.model,
        firmware_version=r.firmware_version, boot_status=r.boot_status, last_seen_at=r.last_seen_at,
        evses=[EvseOut(evse_id=e.evse_id, max_charge_kw=e.max_charge_kw, max_discharge_kw=e.max_discharge_kw,
                       bidirectional=e.bidirectional, phases=e.phases if e.phases is not None else DEFAULT_PHASES,
                       status=gw.state.evses[(r.id, e.evse_id)].status
                       if (r.id, e.evse_id) in gw.state.evses else None)
               for e in sorted(evses, key=lambda e: e.evse_id)])


async def _evses(q: Queries, station_ids: list[str]) -> dict[str, list[EvseRow]]:
    out: dict[str, list[EvseRow]] = {i: [] for i in station_ids}
    for e in await q.evses(station_ids):
        out[e.station_id].append(EvseRow(e.evse_id, e.max_charge_kw, e.max_discharge_kw, e.bidirectional,
                                         e.phases))
    return out


async def _out(q: Queries, gw: Gateway, rows: list[StationRow]) -> list[StationOut]:
    evses = await _evses(q, [r.id for r in rows])
    return [_station_out(gw, r, evses[r.id]) for r in rows]


async def _one(gw: Gateway, q: Queries, station_id: str) -> StationOut:
    row = await gw.stations.get(station_id)
    if row is None:
        raise NotFound(f"no station {station_id!r}")
    return (await _out(q, gw, [row]))[0]


@router.post("", status_code=201, responses=responses(409))
async def register_station(body: StationIn, gw: GatewayDep, q: QueriesDep, _: Operator) -> StationOut:
    """Register a station with its password, security profile and EVSEs."""
    if len({e.evse_id for e in body.evses}) != len(body.evses):
        raise Unprocessable("evse ids must be unique", {"field": "evses"})
    exists = Conflict(f"station {body.id!r} already exists", {"station_id": body.id})
    if await gw.stations.get(body.id) is not None:
        raise exists  # cheap early answer; the insert below is what decides
    # argon2 takes tens of milliseconds of CPU: off the event loop, which serves every station.
    pw_hash = await asyncio.to_thread(hash_password, body.password)
    evses = [EvseRow(e.evse_id, e.max_charge_kw, e.max_discharge_kw, e.bidirectional, e.phases)
             for e in body.evses]
    if not await gw.stations.create(body.id, pw_hash, security_profile=body.security_profile,
                                    discharge_dialect=body.discharge_dialect.value,
                                    discharge_undeclared_evs=body.discharge_undeclared_evs, evses=evses,
                                    now=gw.clock.now()):
        raise exists  # registered meanwhile by a concurrent request: its password stands
    for e in body.evses:
        gw.adopt_evse(EvseSpec(body.id, e.evse_id, e.max_charge_kw, e.max_discharge_kw, e.bidirectional, e.phases),
                      body.discharge_dialect, body.discharge_undeclared_evs)
    # More EVSEs share the site's limit: every station's default moves, and the plan keeps room.
    gw.bus.publish(ev.SiteInputsChanged(gw.clock.now(), "evses"))
    # The answer is what was just written, not a read back: the registration is committed, and a
    # database gone by now would answer 503 "nothing was stored" for a station that is (and the
    # retry a 409). A new row has no boot yet; its boot status is the column's default.
    row = StationRow(id=body.id, security_profile=body.security_profile, enabled=True,
                     discharge_dialect=body.discharge_dialect.value, vendor=None, model=None,
                     firmware_version=None, boot_status=NEW_BOOT_STATUS, last_seen_at=None, connected=False,
                     discharge_undeclared_evs=body.discharge_undeclared_evs)
    return _station_out(gw, row, evses)


@router.get("")
async def list_stations(gw: GatewayDep, q: QueriesDep, _: Operator, limit: Limit = 100,
                        offset: Offset = 0) -> Page[StationOut]:
    rows = await gw.stations.list(limit=limit, offset=offset)
    return Page(items=await _out(q, gw, rows), total=await q.station_count(), limit=limit, offset=offset)


@router.get("/{station_id}", responses=responses(404))
async def get_station(gw: GatewayDep, q: QueriesDep, _: Operator,
                      station_id: StationPath) -> StationOut:
    return await _one(gw, q, station_id)


async def _set_enabled(gw: Gateway, q: Queries, station_id: str, enabled: bool) -> StationOut:
    # Read before the write, not after: once the change is committed, a read failing with the
    # database would answer 503 "nothing was stored" for a change that was.
    row = await gw.stations.get(station_id)
    if row is None:
        raise NotFound(f"no station {station_id!r}")
    evses = (await _evses(q, [station_id]))[station_id]
    if not await gw.stations.set_enabled(station_id, enabled):
        raise NotFound(f"no station {station_id!r}")
    if enabled:
        gw.ocpp.let_in(station_id)
    else:
        # A disabled station is refused at its next login; end the current one now too.
        await gw.ocpp.shut_out(station_id)
    return _station_out(gw, replace(row, enabled=enabled), evses)


@router.post("/{station_id}/disable", responses=responses(404))
async def disable_station(gw: GatewayDep, q: QueriesDep, _: Operator,
                          station_id: StationPath) -> StationOut:
    """Refuse the station's logins from now on (and close its live connection)."""
    return await _set_enabled(gw, q, station_id, False)


@router.post("/{station_id}/enable", responses=responses(404))
async def enable_station(gw: GatewayDep, q: QueriesDep, _: Operator,
                         station_id: StationPath) -> StationOut:
    return await _set_enabled(gw, q, station_id, True)

