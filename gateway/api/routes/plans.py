"""Charging plans the scheduler made (plans table) and the profiles it sent (profiles_sent)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from gateway.api.deps import Operator, QueriesDep
from gateway.api.errors import NotFound, responses
from gateway.api.schemas import TX_ID_SCOPE, Limit, Offset, Page, StationId, TransactionId, UtcDateTime
from gateway.db import models as m

router = APIRouter(tags=["plans"], responses=responses(401, 403, 422))


class PlanSummary(BaseModel):
    id: int
    created_at: UtcDateTime
    trigger: str
    status: str
    fallback: bool
    objective: float | None
    solve_s: float
    horizon_start: UtcDateTime
    horizon_end: UtcDateTime


class PlanOut(PlanSummary):
    inputs_hash: str
    terms: dict[str, Any] = Field(description="Objective terms (energy cost, demand charge, wear, ...)")
    sessions: dict[str, Any] = Field(description="Per-session plan as stored by the scheduler")


class ProfileSentOut(BaseModel):
    id: int
    plan_id: int | None
    station_id: str
    evse_id: int
    transaction_id: str | None
    profile_id: int
    stack_level: int
    payload: dict[str, Any]
    status: str
    response: dict[str, Any] | None
    sent_at: UtcDateTime


def _summary(r: m.PlanRecord) -> dict[str, Any]:
    return {"id": r.id, "created_at": r.created_at, "trigger": r.trigger, "status": r.status,
            "fallback": r.fallback, "objective": r.objective, "solve_s": r.solve_s,
            "horizon_start": r.horizon_start, "horizon_end": r.horizon_end}


def _full(r: m.PlanRecord) -> PlanOut:
    return PlanOut(**_summary(r), inputs_hash=r.inputs_hash, terms=r.terms, sessions=r.sessions)


@router.get("/plans")
async def list_plans(q: QueriesDep, _: Operator, limit: Limit = 100, offset: Offset = 0) -> Page[PlanSummary]:
    """Newest first."""
    rows, total = await q.plans(limit, offset)
    return Page(items=[PlanSummary(**_summary(r)) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/plans/latest", responses=responses(404))
async def latest_plan(q: QueriesDep, _: Operator) -> PlanOut:
    rec = await q.plan(None)
    if rec is None:
        raise NotFound("no plan yet")
    return _full(rec)


@router.get("/plans/{plan_id}", responses=responses(404))
async def get_plan(q: QueriesDep, _: Operator,
                   plan_id: int = Path(ge=1, le=2**62)) -> PlanOut:
    rec = await q.plan(plan_id)
    if rec is None:
        raise NotFound(f"no plan {plan_id}")
    return _full(rec)


@router.get("/profiles-sent")
async def list_profiles_sent(
    q: QueriesDep, _: Operator,
    station_id: StationId | None = Query(default=None),
    transaction_id: TransactionId | None = Query(default=None, description=TX_ID_SCOPE),
    plan_id: int | None = Query(default=None, ge=1, le=2**62),
    limit: Limit = 100, offset: Offset = 0,
) -> Page[ProfileSentOut]:
    """Every SetChargingProfile sent, with the station's answer; newest first."""
    rows, total = await q.profiles_sent(station_id=station_id, transaction_id=transaction_id, plan_id=plan_id,
                                        limit=limit, offset=offset)
    items = [ProfileSentOut(id=r.id, plan_id=r.plan_id, station_id=r.station_id, evse_id=r.evse_id,
                            transaction_id=r.transaction_id, profile_id=r.profile_id,
                            stack_level=r.stack_level, payload=r.payload, status=r.status,
                            response=r.response, sent_at=r.sent_at)
             for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)
