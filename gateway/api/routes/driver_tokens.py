"""Driver tokens: the operator issues one per idToken for a driver app. The token is shown once,
in the answer to its creation; only its sha256 is stored, so a database leak leaks no token."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from gateway.api.deps import GatewayDep, Operator, QueriesDep, token_hash
from gateway.api.errors import NotFound, responses
from gateway.api.schemas import Label, Limit, Model, Offset, Page, UtcDateTime
from gateway.db import models as m

router = APIRouter(prefix="/driver-tokens", tags=["driver tokens"], responses=responses(401, 403, 422))

TOKEN_BYTES = 32  # 256 bits from the OS's CSPRNG


class DriverTokenIn(Model):
    id_token: str = Field(min_length=1, max_length=36, pattern=r"^[^\x00-\x1f\x7f]+$",
                          description="The OCPP idToken whose sessions this token may see and change")
    label: Label | None = None


class DriverTokenOut(BaseModel):
    id: int
    id_token: str
    label: str | None
    created_at: UtcDateTime
    revoked_at: UtcDateTime | None


class DriverTokenCreated(DriverTokenOut):
    token: str = Field(description="The bearer token; shown only in this answer")


def _out(r: m.DriverToken) -> DriverTokenOut:
    return DriverTokenOut(id=r.id, id_token=r.id_token, label=r.label, created_at=r.created_at,
                          revoked_at=r.revoked_at)


@router.post("", status_code=201)
async def issue_driver_token(body: DriverTokenIn, gw: GatewayDep, q: QueriesDep,
                             _: Operator) -> DriverTokenCreated:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    rec = await q.add_driver_token(token_hash(token), body.id_token, body.label, gw.clock.now())
    return DriverTokenCreated(**_out(rec).model_dump(), token=token)


@router.get("")
async def list_driver_tokens(q: QueriesDep, _: Operator, limit: Limit = 100,
                             offset: Offset = 0) -> Page[DriverTokenOut]:
    rows, total = await q.driver_tokens(limit, offset)
    return Page(items=[_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.delete("/{token_id}", responses=responses(404))
async def revoke_driver_token(gw: GatewayDep, q: QueriesDep, _: Operator,
                              token_id: int = Path(ge=1, le=2**62)) -> DriverTokenOut:
    """The token stops working at once; the record stays (who had access, until when)."""
    rec = await q.revoke_driver_token(token_id, gw.clock.now())
    if rec is None:
        raise NotFound(f"no driver token {token_id}")
    return _out(rec)
