"""The REST application: health and metrics now; one router per resource under /api/v1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__, metrics
from gateway.clock import to_rfc3339

if TYPE_CHECKING:
    from gateway.app import Gateway


def create_api(gw: Gateway) -> FastAPI:
    api = FastAPI(title="OCPP site gateway", version=__version__, openapi_url="/openapi.json")

    @api.get("/api/v1/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "time": to_rfc3339(gw.clock.now()),
            "stations_connected": gw.ocpp.registry.count(),
            "telemetry_buffered_rows": gw.telemetry.buffered,
        }

    @api.get("/metrics", include_in_schema=False)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return api
