"""Grid events (an import cap or a paid export request over a window): create, list, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field, model_validator

from gateway.api.deps import GatewayDep, Operator, QueriesDep, SiteInputsDep
from gateway.api.errors import Conflict, NotFound, responses
from gateway.api.schemas import AwareDateTime, Ident, Limit, Model, Offset, Page, UtcDateTime
from gateway.bus.site_inputs import GridEventCancelled, check_grid_event
from gateway.db import models as m
from gateway.domain import GridEvent, GridEventKind

router = APIRouter(prefix="/grid-events", tags=["grid events"], responses=responses(401, 403, 422))


class GridEventIn(Model):
    id: Ident | None = Field(default=None, description="Your id (an upsert); a UUID is made when left out")
    start: AwareDateTime
    end: AwareDateTime
    kind: GridEventKind = Field(strict=False)
    payment_per_kwh: float = Field(default=0.0, ge=0, le=100,
                                   description="export_request: paid per kWh of export")
    cap_kw: float | None = Field(default=None, ge=0, le=100_000,
                                 description="import_cap: most the site may draw")

    @model_validator(mode="after")
    def _consistent(self) -> GridEventIn:
        # The same rules as MQTT input (gateway.bus.inbound): one function, so they cannot drift.
        check_grid_event(self.start, self.end, self.kind, self.cap_kw)
        return self


class GridEventOut(BaseModel):
    id: str
    start: UtcDateTime
    end: UtcDateTime
    kind: GridEventKind
    payment_per_kwh: float
    cap_kw: float | None
    source: str
    created_at: UtcDateTime
    cancelled_at: UtcDateTime | None


def _out(r: m.GridEventRecord) -> GridEventOut:
    return GridEventOut(id=r.id, start=r.start, end=r.end, kind=GridEventKind(r.kind),
                        payment_per_kwh=r.payment_per_kwh, cap_kw=r.cap_kw, source=r.source,
                        created_at=r.created_at, cancelled_at=r.cancelled_at)


# Annotated, not a default: as `x: Ident = Path()` FastAPI drops the type's length and
# pattern (a NUL in the path reached the database as a 500).
IdPath = Annotated[Ident, Path(description="The grid event's id")]


@router.post("", status_code=201, responses=responses(409))
async def create_grid_event(body: GridEventIn, gw: GatewayDep, q: QueriesDep, site: SiteInputsDep,
                            _: Operator) -> GridEventOut:
    """Stored, applied to the plan inputs, and the site is re-planned. 409 when the id belongs to
    a cancelled event: a cancel is final (a new event needs a new id)."""
    event = GridEvent(body.id or str(uuid.uuid4()), body.start, body.end, body.kind, body.payment_per_kwh,
                      body.cap_kw)
    # Read before the write, never after it: once the event is committed, a failed read would
    # answer 503 "nothing was stored, try again", and a retry without an id would store the event
    # twice. An update keeps its created_at; a new event's is ``at``, the time stored with it.
    prior = await q.grid_event(event.id) if body.id is not None else None
    at = gw.clock.now()
    try:
        await site.add_grid_event(event, "rest", at)
    except GridEventCancelled as exc:
        raise Conflict(str(exc), {"id": exc.event_id}) from None
    created_at = prior.created_at if prior is not None else at
    return GridEventOut(id=event.id, start=event.start, end=event.end, kind=event.kind,
                        payment_per_kwh=event.payment_per_kwh, cap_kw=event.cap_kw, source="rest",
                        created_at=created_at, cancelled_at=None)


@router.get("")
async def list_grid_events(
    q: QueriesDep, _: Operator,
    include_cancelled: bool = Query(default=False), limit: Limit = 100, offset: Offset = 0,
) -> Page[GridEventOut]:
    rows, total = await q.grid_events(include_cancelled=include_cancelled, limit=limit, offset=offset)
    return Page(items=[_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{event_id}", responses=responses(404))
async def get_grid_event(
    q: QueriesDep, _: Operator, event_id: IdPath,
    include_cancelled: bool = Query(default=False, description="Also find a cancelled event"),
) -> GridEventOut:
    """A cancelled event is gone unless asked for with include_cancelled."""
    rec = await q.grid_event(event_id)
    if rec is None or (rec.cancelled_at is not None and not include_cancelled):
        raise NotFound(f"no grid event {event_id!r}")
    return _out(rec)


@router.delete("/{event_id}", responses=responses(404))
async def cancel_grid_event(gw: GatewayDep, q: QueriesDep, site: SiteInputsDep, _: Operator,
                            event_id: IdPath) -> GridEventOut:
    """Cancel an event (kept, with its cancel time); the site is re-planned without it."""
    # Read before the cancel, as for a create: after its commit a failed read would say nothing
    # was stored. (cancelled_at: ``at``, the time stored with it.)
    prior = await q.grid_event(event_id)
    at = gw.clock.now()
    if not await site.cancel_grid_event(event_id, at):
        raise NotFound(f"no open grid event {event_id!r}")
    if prior is None:  # created between the read and the cancel: only a read can tell what it was
        prior = await q.grid_event(event_id)
        assert prior is not None
    return _out(prior).model_copy(update={"cancelled_at": at})
