"""The one place where the site's planning inputs change: limits, tariff, price overrides,
building load and grid events. REST (operator) and MQTT (energy systems) both call it, so the
order is always the same: validate (the caller), store, apply to ``gw.state``, tell the scheduler
(``SiteInputsChanged``). :func:`restore` puts the stored values back into the state at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway import billing
from gateway import events as ev
from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.db.queries import Queries
from gateway.domain import GridEvent, GridEventKind, SiteLimits, Tariff, TouPeriod

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

LIMITS_KEY = "limits"
BUILDING_LOAD_KEY = "building_load"


@dataclass(frozen=True, slots=True)
class PriceOverride:
    start: datetime
    end: datetime
    import_price_per_kwh: float
    export_price_per_kwh: float


def _tariff_json(t: Tariff, overrides: list[tuple[datetime, datetime, float, float]]) -> dict[str, Any]:
    return {
        "timezone": t.timezone,
        "periods": [{"start_hour": p.start_hour, "end_hour": p.end_hour, "import_price": p.import_price,
                     "export_price": p.export_price} for p in t.periods],
        "default_import_price": t.default_import_price,
        "default_export_price": t.default_export_price,
        "overrides": [{"start": to_rfc3339(a), "end": to_rfc3339(b), "import_price_per_kwh": i,
                       "export_price_per_kwh": x} for a, b, i, x in overrides],
    }


class SiteInputs:
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._queries = Queries(gw.sessions)

    def _changed(self, what: str) -> None:
        self._gw.bus.publish(ev.SiteInputsChanged(self._gw.clock.now(), what))

    async def set_limits(self, limits: SiteLimits, by: str) -> None:
        gw = self._gw
        value = {"import_kw": limits.import_kw, "export_kw": limits.export_kw}
        await gw.planning.set_setting(LIMITS_KEY, value, by, gw.clock.now())
        gw.state.limits = limits
        self._changed("limits")

    async def set_tariff(self, tariff: Tariff, source: str) -> None:
        gw = self._gw
        await self._queries.add_tariff(source=source, demand_charge_per_kw=tariff.demand_charge_per_kw,
                                       periods=_tariff_json(tariff, gw.state.price_overrides),
                                       now=gw.clock.now())
        gw.state.tariff = tariff
        self._changed("tariff")

    async def set_price_overrides(self, overrides: list[PriceOverride], source: str) -> None:
        """Replace the price forecast (a feed sends its whole window each time)."""
        gw = self._gw
        rows = [(o.start, o.end, o.import_price_per_kwh, o.export_price_per_kwh)
                for o in sorted(overrides, key=lambda o: o.start)]
        tariff = gw.state.tariff
        await self._queries.add_tariff(source=source, demand_charge_per_kw=tariff.demand_charge_per_kw,
                                       periods=_tariff_json(tariff, rows), now=gw.clock.now())
        gw.state.price_overrides = rows
        self._changed("prices")

    async def set_building_load(self, power_kw: float, forecast: list[tuple[datetime, float]] | None,
                                by: str) -> None:
        gw = self._gw
        gw.state.building_load_kw = power_kw
        gw.state.building_load_at = gw.clock.now()
        gw.state.track_peak(gw.clock.now())
        if forecast is not None:
            gw.state.building_load_forecast = sorted(forecast)
        # The live value changes every few seconds: stored so a restart starts from the last one,
        # applied first so a slow database never delays the scheduler's view.
        try:
            fc = [{"start": to_rfc3339(t), "power_kw": kw} for t, kw in gw.state.building_load_forecast]
            await gw.planning.set_setting(BUILDING_LOAD_KEY, {"power_kw": power_kw, "forecast": fc}, by,
                                          gw.clock.now())
        finally:
            self._changed("building_load")

    async def add_grid_event(self, event: GridEvent, source: str) -> None:
        gw = self._gw
        await gw.planning.upsert_grid_event(event, source, gw.clock.now())
        gw.state.grid_events[event.id] = event
        self._changed("grid_events")

    async def cancel_grid_event(self, event_id: str) -> bool:
        gw = self._gw
        cancelled = await gw.planning.cancel_grid_event(event_id, gw.clock.now())
        if gw.state.grid_events.pop(event_id, None) is not None or cancelled:
            self._changed("grid_events")
        return cancelled


async def restore(gw: Gateway) -> None:
    """Load stored limits, the billing period's peak so far, tariff, price overrides, building load
    and open grid events into ``gw.state`` (meant for :meth:`Gateway._load_state`; the site file
    gives the defaults)."""
    q = Queries(gw.sessions)
    limits = await gw.planning.setting(LIMITS_KEY)
    if limits is not None:
        gw.state.limits = SiteLimits(float(limits["import_kw"]), float(limits["export_kw"]))
    period = billing.period_start(gw.clock.now(), gw.settings.site.billing_day, gw.settings.site.timezone)
    peak = await gw.planning.peak(gw.settings.site.name, period)
    if peak is not None:
        gw.state.demand.restore(period, peak)
    load = await gw.planning.setting(BUILDING_LOAD_KEY)
    if load is not None:
        gw.state.building_load_kw = float(load.get("power_kw", 0.0))
        gw.state.building_load_forecast = [(parse_rfc3339(f["start"]), float(f["power_kw"]))
                                           for f in load.get("forecast", [])]
    rec = await q.latest_tariff()
    if rec is not None:
        data, old = rec.periods, gw.state.tariff
        gw.state.tariff = Tariff(
            periods=tuple(TouPeriod(**p) for p in data.get("periods", [])),
            demand_charge_per_kw=rec.demand_charge_per_kw,
            default_import_price=float(data.get("default_import_price", old.default_import_price)),
            default_export_price=float(data.get("default_export_price", old.default_export_price)),
            timezone=gw.settings.site.timezone,
        )
        gw.state.price_overrides = [
            (parse_rfc3339(o["start"]), parse_rfc3339(o["end"]), float(o["import_price_per_kwh"]),
             float(o["export_price_per_kwh"])) for o in data.get("overrides", [])]
    now = gw.clock.now()
    for g in await gw.planning.active_grid_events(now):
        gw.state.grid_events[g.id] = GridEvent(g.id, g.start, g.end, GridEventKind(g.kind), g.payment_per_kwh,
                                               g.cap_kw)
