"""The tariff the planner prices energy with: time-of-use periods and the demand charge."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from gateway.api.deps import GatewayDep, Operator, SiteInputsDep
from gateway.api.errors import responses
from gateway.api.schemas import (
    TOU_PERIODS_MAX,
    DemandChargePerKw,
    HourOfDay,
    Model,
    PricePerKwh,
    UtcDateTime,
    check_tou_periods,
)
from gateway.domain import Tariff, TouPeriod

router = APIRouter(prefix="/tariff", tags=["tariff"], responses=responses(401, 403))

class Period(Model):
    start_hour: HourOfDay = Field(description="Start of the window, hours on the site's clock "
                                  "(its time zone: see `timezone`)")
    end_hour: HourOfDay = Field(description="End of the window (before start: wraps midnight)")
    import_price: PricePerKwh = Field(description="Per kWh imported")
    export_price: PricePerKwh = Field(description="Per kWh exported")


class TariffIn(Model):
    periods: list[Period] = Field(max_length=TOU_PERIODS_MAX)
    demand_charge_per_kw: DemandChargePerKw
    default_import_price: PricePerKwh = 0.20
    default_export_price: PricePerKwh = 0.05

    @model_validator(mode="after")
    def _windows(self) -> TariffIn:
        check_tou_periods([(p.start_hour, p.end_hour) for p in self.periods])
        return self


class PriceOverrideOut(BaseModel):
    start: UtcDateTime
    end: UtcDateTime
    import_price_per_kwh: float
    export_price_per_kwh: float


class TariffOut(BaseModel):
    timezone: str = Field(description="The site's IANA time zone (set in the site's configuration): the "
                                      "periods' hours are on its clock")
    periods: list[Period]
    demand_charge_per_kw: float
    default_import_price: float
    default_export_price: float
    price_overrides: list[PriceOverrideOut] = Field(description="Prices received over MQTT; they win over "
                                                                "the periods inside their window")


def _out(t: Tariff, overrides: list[tuple[datetime, datetime, float, float]]) -> TariffOut:
    return TariffOut(
        timezone=t.timezone,
        periods=[Period(start_hour=p.start_hour, end_hour=p.end_hour, import_price=p.import_price,
                        export_price=p.export_price) for p in t.periods],
        demand_charge_per_kw=t.demand_charge_per_kw, default_import_price=t.default_import_price,
        default_export_price=t.default_export_price,
        price_overrides=[PriceOverrideOut(start=a, end=b, import_price_per_kwh=i, export_price_per_kwh=x)
                         for a, b, i, x in overrides])


@router.get("")
async def get_tariff(gw: GatewayDep, _: Operator) -> TariffOut:
    return _out(gw.state.tariff, list(gw.state.price_overrides))


@router.put("", responses=responses(422))
async def put_tariff(body: TariffIn, gw: GatewayDep, site: SiteInputsDep, _: Operator) -> TariffOut:
    """Stored in the tariffs table, applied at once, and the site is re-planned."""
    tariff = Tariff(periods=tuple(TouPeriod(p.start_hour, p.end_hour, p.import_price, p.export_price)
                                  for p in body.periods),
                    demand_charge_per_kw=body.demand_charge_per_kw,
                    default_import_price=body.default_import_price,
                    default_export_price=body.default_export_price, timezone=gw.settings.site.timezone)
    await site.set_tariff(tariff, "rest")
    return _out(gw.state.tariff, list(gw.state.price_overrides))
