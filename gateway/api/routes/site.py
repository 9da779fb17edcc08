"""The site: limits (GET/PUT), what it draws now, building load and its forecast."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from gateway.api.deps import GatewayDep, Operator, SiteInputsDep
from gateway.api.errors import Conflict, NotStored, Unprocessable, database_away, responses
from gateway.api.schemas import SITE_POWER_MAX_KW, AwareDateTime, Model, SitePowerLimitKw, UtcDateTime
from gateway.bus.site_inputs import Refused, StaleInput, check_forecast_starts
from gateway.domain import SiteLimits

router = APIRouter(prefix="/site", tags=["site"], responses=responses(401, 403))

class Limits(Model):
    import_kw: SitePowerLimitKw = Field(description="Most the site may draw from the grid")
    export_kw: SitePowerLimitKw = Field(description="Most the site may feed into the grid")


class LoadPoint(Model):
    start: AwareDateTime
    power_kw: float = Field(ge=-SITE_POWER_MAX_KW, le=SITE_POWER_MAX_KW)


class LoadPointOut(BaseModel):
    start: UtcDateTime
    power_kw: float


class BuildingLoadIn(Model):
    power_kw: float = Field(ge=-SITE_POWER_MAX_KW, le=SITE_POWER_MAX_KW,
                            description="Building load now (negative = on-site generation exceeds it)")
    forecast: list[LoadPoint] | None = Field(default=None, max_length=10_000,
                                             description="Step forecast; omitted keeps the current one")
    ts: AwareDateTime | None = Field(
        default=None, description="When the reading was taken (default: now). One older than the building load "
                                  "applied last, from REST or MQTT, is refused with 409 (stale)")

    @model_validator(mode="after")
    def _distinct(self) -> BuildingLoadIn:
        if self.forecast is not None:
            check_forecast_starts([p.start for p in self.forecast])  # MQTT's rule too
        return self


class SiteOut(BaseModel):
    time: UtcDateTime
    limits: Limits
    site_power_kw: float = Field(description="Building load plus every session's power now")
    building_load_kw: float
    peak_import_kw: float = Field(description="This billing period's peak demand so far: the highest average "
                                  "import over a demand interval (15 minutes by default)")
    building_load_forecast: list[LoadPointOut]
    active_sessions: int
    stations_connected: int


def _limits_out(limits: SiteLimits) -> Limits:
    return Limits(import_kw=limits.import_kw, export_kw=limits.export_kw)


@router.get("")
async def get_site(gw: GatewayDep, _: Operator) -> SiteOut:
    st = gw.state
    now = gw.clock.now()
    forecast = [LoadPointOut(start=t, power_kw=kw) for t, kw in st.building_load_forecast]
    # The peak of the period holding ``now``: 0 from the first instant of a new month, not only
    # once its first demand interval has closed.
    return SiteOut(time=now, limits=_limits_out(st.limits),
                   site_power_kw=round(st.site_power_kw(), 4), building_load_kw=st.building_load_kw,
                   peak_import_kw=st.demand.peak_at(now), building_load_forecast=forecast,
                   active_sessions=len(st.sessions()), stations_connected=gw.ocpp.registry.count())


@router.get("/limits")
async def get_limits(gw: GatewayDep, _: Operator) -> Limits:
    return _limits_out(gw.state.limits)


@router.put("/limits", responses=responses(422))
async def put_limits(body: Limits, gw: GatewayDep, site: SiteInputsDep, who: Operator) -> Limits:
    """Stored, applied at once, and the site is re-planned against them."""
    await site.set_limits(SiteLimits(body.import_kw, body.export_kw), who.name)
    return _limits_out(gw.state.limits)


@router.put("/building-load", responses=responses(409, 422))
async def put_building_load(body: BuildingLoadIn, gw: GatewayDep, site: SiteInputsDep,
                            who: Operator) -> SiteOut:
    forecast = None if body.forecast is None else [(p.start, p.power_kw) for p in body.forecast]
    try:
        await site.set_building_load(body.power_kw, forecast, who.name, ts=body.ts)
    except StaleInput as exc:
        raise Conflict(str(exc), code="stale") from None
    except Refused as exc:  # a ts ahead of the gateway's clock
        raise Unprocessable(str(exc), {"field": "ts"}) from None
    except Exception as exc:
        if not database_away(exc):
            raise
        # The reading went live before the write (a slow database never delays the plan): the
        # answer says so, rather than a plain "unavailable, try again" for what is in force.
        raise NotStored("the building load is applied (the plan uses it now) but could not be stored: send "
                        "it again to keep it across a restart") from None
    return await get_site(gw, who)
