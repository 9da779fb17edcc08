"""The REST application: one router per resource under /api/v1, Prometheus at /metrics.

Built by :func:`create_api` for one running :class:`~gateway.app.Gateway` (nothing is built at
import time); every route reaches the gateway through ``gateway.api.deps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__, metrics
from gateway.api import errors
from gateway.api.body_limit import BodyLimit
from gateway.api.routes import (
    commands,
    driver_tokens,
    grid_events,
    health,
    plans,
    sessions,
    site,
    stations,
    tariff,
    telemetry,
)
from gateway.bus.site_inputs import SiteInputs
from gateway.db.queries import Queries

if TYPE_CHECKING:
    from gateway.app import Gateway

DESCRIPTION = """
Operator and driver API of the OCPP site gateway.

Auth: `Authorization: Bearer <token>`. The operator's API key reaches everything; a driver
token (issued with `POST /api/v1/driver-tokens`) reaches only the sessions started with its
idToken (others answer 404). `GET /api/v1/health` needs no token.

Errors always have the shape `{"error": {"code", "message", "details"}}`. Times are RFC 3339,
answered in UTC with `Z`. Lists take `limit`/`offset` and return `total`.
"""


def create_api(gw: Gateway) -> FastAPI:
    api = FastAPI(title="OCPP site gateway", version=__version__, openapi_url="/openapi.json",
                  description=DESCRIPTION)
    api.state.gw = gw
    api.state.queries = Queries(gw.sessions)
    api.state.site_inputs = SiteInputs(gw)
    errors.install(api)

    v1 = APIRouter(prefix="/api/v1", responses={**errors.responses(400), **errors.database_responses()})
    for module in (health, stations, commands, sessions, site, tariff, grid_events, telemetry, plans,
                   driver_tokens):
        v1.include_router(module.router)
    api.include_router(v1)
    api.add_middleware(BodyLimit)

    @api.get("/metrics", include_in_schema=False)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return api
