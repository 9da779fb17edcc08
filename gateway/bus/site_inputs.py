"""The one place where the site's planning inputs change: limits, tariff, price overrides,
building load and grid events. REST (operator) and MQTT (energy systems) both call it, so the
order is always the same: validate (the caller), store, apply to ``gw.state``, tell the scheduler
(``SiteInputsChanged``). :func:`restore` puts the stored values back into the state at start.

Some inputs are refused here, whoever sends them (:class:`Refused`), because they contradict what
was applied before: a create or update of a cancelled grid event id (a cancel is final), and a
building load older than the one applied last. Both matter because MQTT replays retained inputs
on every new subscription, a gateway restart included.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway import billing
from gateway import events as ev
from gateway.clock import parse_rfc3339, to_rfc3339, utc
from gateway.db.queries import Queries
from gateway.domain import GridEvent, GridEventKind, SiteLimits, Tariff, TouPeriod

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

LIMITS_KEY = "limits"
BUILDING_LOAD_KEY = "building_load"

GRID_EVENT_SPAN_MAX_DAYS = 31
# A building-load ``ts`` further ahead of the gateway's clock than this is refused: accepted, it
# would make every honest reading after it stale until the clock caught up (and a restart would
# not help, as the time is stored).
BUILDING_LOAD_TS_AHEAD_MAX = timedelta(minutes=5)


class Refused(ValueError):
    """A well-formed input that contradicts what was applied before; the text says why."""


class GridEventCancelled(Refused):
    def __init__(self, event_id: str) -> None:
        super().__init__(f"grid event {event_id!r} was cancelled; a cancelled id is final "
                         "(send the event again under a new id)")
        self.event_id = event_id


class StaleInput(Refused):
    pass


def check_forecast_starts(starts: list[datetime]) -> None:
    """A building-load forecast is a step function: two points at one start would leave its
    value there to the order they came in (REST and MQTT alike)."""
    if len(set(starts)) != len(starts):
        raise ValueError("forecast starts must be distinct")


def check_grid_event(start: datetime, end: datetime, kind: GridEventKind, cap_kw: float | None) -> None:
    """The rules a grid event obeys however it arrives (REST or MQTT), so the two cannot drift
    apart; raises ``ValueError`` naming the first one broken."""
    if end <= start:
        raise ValueError("end must be after start")
    if end - start > timedelta(days=GRID_EVENT_SPAN_MAX_DAYS):
        raise ValueError(f"a grid event lasts at most {GRID_EVENT_SPAN_MAX_DAYS} days")
    if kind == GridEventKind.IMPORT_CAP and cap_kw is None:
        raise ValueError("an import_cap event needs cap_kw")


@dataclass(slots=True)
class _Shared:
    """What every ``SiteInputs`` of one gateway must agree on: REST and the MQTT bridge each hold
    their own instance, but "older than the building load applied last" and the order of grid
    event writes are one gateway's facts, not one caller's."""

    load_at: datetime | None = None  # ts (else application time) of the building load applied last
    load_by: str = ""
    load_write: asyncio.Lock = field(default_factory=asyncio.Lock)
    grid_write: asyncio.Lock = field(default_factory=asyncio.Lock)
    # One tariff row holds the tariff and the price overrides together: a tariff PUT and a price
    # feed stored at once would each write the other's half as it was, and a restart would bring
    # back the stale half. Limits likewise: the value stored last must be the value in force.
    tariff_write: asyncio.Lock = field(default_factory=asyncio.Lock)
    limits_write: asyncio.Lock = field(default_factory=asyncio.Lock)


_shared: weakref.WeakKeyDictionary[Gateway, _Shared] = weakref.WeakKeyDictionary()


def _shared_for(gw: Gateway) -> _Shared:
    sh = _shared.get(gw)
    if sh is None:
        sh = _shared[gw] = _Shared()
    return sh


def _stamp(t: datetime) -> str:
    # Full precision (to_rfc3339 keeps milliseconds): a stored time rounded down could let a
    # slightly older reading through after a restart.
    return utc(t).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class PriceOverride:
    start: datetime
    end: datetime
    import_price_per_kwh: float
    export_price_per_kwh: float


def _tariff_json(t: Tariff, overrides: list[tuple[datetime, datetime, float, float]], *,
                 tariff_set: bool) -> dict[str, Any]:
    """A tariffs row. ``tariff_set``: the tariff itself was set (REST), not only carried along
    beside a new price forecast; only a set one outlasts the site file at a restart (restore)."""
    return {
        "tariff_set": tariff_set,
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
        self._shared = _shared_for(gw)

    def _changed(self, what: str) -> None:
        self._gw.bus.publish(ev.SiteInputsChanged(self._gw.clock.now(), what))

    async def set_limits(self, limits: SiteLimits, by: str) -> None:
        gw = self._gw
        value = {"import_kw": limits.import_kw, "export_kw": limits.export_kw}
        async with self._shared.limits_write:
            await gw.planning.set_setting(LIMITS_KEY, value, by, gw.clock.now())
            gw.state.limits = limits
        self._changed("limits")

    async def set_tariff(self, tariff: Tariff, source: str) -> None:
        gw = self._gw
        async with self._shared.tariff_write:
            await self._queries.add_tariff(source=source, demand_charge_per_kw=tariff.demand_charge_per_kw,
                                           periods=_tariff_json(tariff, gw.state.price_overrides, tariff_set=True),
                                           now=gw.clock.now())
            gw.state.tariff = tariff
        self._changed("tariff")

    async def set_price_overrides(self, overrides: list[PriceOverride], source: str) -> None:
        """Replace the price forecast (a feed sends its whole window each time)."""
        gw = self._gw
        rows = [(o.start, o.end, o.import_price_per_kwh, o.export_price_per_kwh)
                for o in sorted(overrides, key=lambda o: o.start)]
        async with self._shared.tariff_write:
            tariff = gw.state.tariff
            await self._queries.add_tariff(source=source, demand_charge_per_kw=tariff.demand_charge_per_kw,
                                           periods=_tariff_json(tariff, rows, tariff_set=False), now=gw.clock.now())
            gw.state.price_overrides = rows
        self._changed("prices")

    async def set_building_load(self, power_kw: float, forecast: list[tuple[datetime, float]] | None,
                                by: str, ts: datetime | None = None) -> None:
        """Apply the building's load now. ``ts`` is when the sender measured it; without one the
        reading counts as taken now. A reading older than the one applied last is refused
        (:class:`StaleInput`): retained MQTT messages come back on every reconnect and restart,
        and an old one must not undo a newer value (from MQTT or REST)."""
        gw = self._gw
        sh = self._shared
        now = gw.clock.now()
        if ts is not None:
            if ts > now + BUILDING_LOAD_TS_AHEAD_MAX:
                raise Refused(f"ts {to_rfc3339(ts)} is ahead of the gateway's clock ({to_rfc3339(now)}) by more "
                              f"than {BUILDING_LOAD_TS_AHEAD_MAX.total_seconds():g} s")
            if sh.load_at is not None and ts < sh.load_at:
                raise StaleInput(f"stale: ts {to_rfc3339(ts)} is older than the building load applied last "
                                 f"({to_rfc3339(sh.load_at)})")
        at = now if ts is None else ts
        # Checked and taken with no await in between, so two inputs cannot both pass the check.
        sh.load_at = at if sh.load_at is None else max(sh.load_at, at)
        sh.load_by = by
        gw.state.building_load_kw = power_kw
        gw.state.building_load_at = now
        gw.state.track_peak(now)
        if forecast is not None:
            gw.state.building_load_forecast = sorted(forecast)
        # The live value changes every few seconds: stored so a restart starts from the last one,
        # applied first so a slow database never delays the scheduler's view.
        try:
            # One write at a time, each of the newest value applied (not of its own): writes that
            # finish out of order can then never leave an older reading (and time) stored.
            async with sh.load_write:
                assert sh.load_at is not None
                fc = [{"start": to_rfc3339(t), "power_kw": kw} for t, kw in gw.state.building_load_forecast]
                value = {"power_kw": gw.state.building_load_kw, "forecast": fc, "at": _stamp(sh.load_at)}
                await gw.planning.set_setting(BUILDING_LOAD_KEY, value, sh.load_by, gw.clock.now())
        finally:
            self._changed("building_load")

    async def add_grid_event(self, event: GridEvent, source: str, now: datetime | None = None) -> None:
        """Create or update ``event``; :class:`GridEventCancelled` (nothing changed) when its id was
        cancelled: a cancel is final, so a replayed retained create cannot bring it back. ``now``:
        the time stored with it (the clock's when None; a caller answering with it passes it)."""
        gw = self._gw
        # Serialised with cancels: a cancel landing between this write and the state update
        # below would otherwise leave a cancelled event in the live state.
        async with self._shared.grid_write:
            if not await gw.planning.upsert_grid_event(event, source, now or gw.clock.now()):
                raise GridEventCancelled(event.id)
            gw.state.grid_events[event.id] = event
        self._changed("grid_events")

    async def cancel_grid_event(self, event_id: str, now: datetime | None = None) -> bool:
        gw = self._gw
        async with self._shared.grid_write:
            cancelled = await gw.planning.cancel_grid_event(event_id, now or gw.clock.now())
            popped = gw.state.grid_events.pop(event_id, None) is not None
        if popped or cancelled:
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
        # Back before the bridge connects, so a retained reading older than it is seen as stale.
        # (A row stored before this time was kept has none: the next reading is then accepted.)
        if load.get("at"):
            at = parse_rfc3339(load["at"])
            now = gw.clock.now()
            if at > now + BUILDING_LOAD_TS_AHEAD_MAX:
                # Stored on another clock (a simulation's scaled or later start on this
                # database): every reading until this clock caught up would be refused as stale.
                log.warning("stored building load time %s is ahead of the clock (%s): not kept",
                            to_rfc3339(at), to_rfc3339(now))
            else:
                _shared_for(gw).load_at = at
    # The tariff from the newest row that set it (REST), else the site file's: a row a price feed
    # wrote carries a copy of the tariff then in force, and taken as set it froze the site file's
    # tariff for good after the first MQTT price message. Rows from before the flag count as set.
    tariff_rec = await q.latest_tariff(tariff_set=True)
    if tariff_rec is not None:
        data, old = tariff_rec.periods, gw.state.tariff
        gw.state.tariff = Tariff(
            periods=tuple(TouPeriod(**p) for p in data.get("periods", [])),
            demand_charge_per_kw=tariff_rec.demand_charge_per_kw,
            default_import_price=float(data.get("default_import_price", old.default_import_price)),
            default_export_price=float(data.get("default_export_price", old.default_export_price)),
            timezone=gw.settings.site.timezone,
        )
    rec = await q.latest_tariff()
    if rec is not None:
        data = rec.periods
        gw.state.price_overrides = [
            (parse_rfc3339(o["start"]), parse_rfc3339(o["end"]), float(o["import_price_per_kwh"]),
             float(o["export_price_per_kwh"])) for o in data.get("overrides", [])]
    now = gw.clock.now()
    for g in await gw.planning.active_grid_events(now):
        gw.state.grid_events[g.id] = GridEvent(g.id, g.start, g.end, GridEventKind(g.kind), g.payment_per_kwh,
                                               g.cap_kw)
