"""Shared dependencies, as ``Annotated`` aliases: the gateway, the queries, and who is asking.

Two kinds of caller, both ``Authorization: Bearer <token>``:
- the operator, with ``Settings.api_key`` (compared in constant time; no key set = no operator);
- a driver app, with a token the operator issued; only its sha256 is stored, and it reaches
  the sessions started with its idToken and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.errors import Forbidden, Unauthorized
from gateway.app import Gateway
from gateway.bus.site_inputs import SiteInputs
from gateway.db.queries import Queries

bearer = HTTPBearer(auto_error=False,
                    description="Operator API key, or a driver token issued by the operator")


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["operator", "driver"]
    name: str  # what is stored as "set_by": never the token itself
    id_token: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gw
    return gw


def _queries(request: Request) -> Queries:
    q: Queries = request.app.state.queries
    return q


def _site_inputs(request: Request) -> SiteInputs:
    s: SiteInputs = request.app.state.site_inputs
    return s


GatewayDep = Annotated[Gateway, Depends(_gateway)]
QueriesDep = Annotated[Queries, Depends(_queries)]
SiteInputsDep = Annotated[SiteInputs, Depends(_site_inputs)]


async def _principal(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    if creds is None or not creds.credentials:
        raise Unauthorized()
    token = creds.credentials
    key = _gateway(request).settings.api_key
    if key and hmac.compare_digest(token.encode(), key.encode()):
        return Principal("operator", "operator")
    if len(token) > 256:
        raise Unauthorized()
    rec = await _queries(request).driver_token(token_hash(token))
    if rec is None:
        raise Unauthorized()
    return Principal("driver", f"driver:{rec.id}", rec.id_token)


async def _operator(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not principal.is_operator:
        raise Forbidden("this endpoint needs the operator key")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(_principal)]
Operator = Annotated[Principal, Depends(_operator)]
