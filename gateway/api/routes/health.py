"""Liveness without auth: load balancers and orchestrators poll it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.api.deps import GatewayDep
from gateway.api.schemas import UtcDateTime

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    time: UtcDateTime
    stations_connected: int
    telemetry_buffered_rows: int
    scheduler_enabled: bool
    mqtt_connected: bool | None


@router.get("/health")
async def health(gw: GatewayDep) -> Health:
    return Health(status="ok", time=gw.clock.now(), stations_connected=gw.ocpp.registry.count(),
                  telemetry_buffered_rows=gw.telemetry.buffered, scheduler_enabled=gw.scheduler is not None,
                  mqtt_connected=None if gw.mqtt is None else bool(gw.mqtt.connected))
