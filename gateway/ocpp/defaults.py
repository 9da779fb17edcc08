"""A safe default for every station that boots (when the scheduler runs): a TxDefaultProfile on EVSE 0 (all EVSEs).

Between a plug-in and the first planned TxProfile (a re-plan takes a moment, and a station can be
unreachable for longer) a charger would otherwise draw its full power. The default caps each EVSE
at ``safe_limit_kw``, and lower when the site limit shared by every known EVSE is lower, so the
EVs' draw stays within the site limit however many plug in at once. The building's own load is
not taken off that share (it moves all the time, and every move would resend every default): the
planner counts every idle EVSE at the default beside the building's forecast, and keeps room for a
few plug-ins between re-plans. The planned TxProfile replaces it for the
transaction (K01: a TxProfile overrules the TxDefaultProfile); it is sent again after every boot
because a reboot may have cleared it. A new site limit (or one shared by more EVSEs) moves it:
it is sent again to every connected station that took another one, and to a station that holds
another one when it reconnects (the planner counts every idle EVSE at the current default: one
holding a higher default would draw more than counted). What each station accepted, or that it
refused, is stored (``stations.default_limit_kw``, ``default_answer``), since a station keeps its
default across a gateway restart and most reconnect without booting. The limit shared is the
site's import limit, or the lowest import cap of a grid event in force now or starting before the
next re-plan. Every station is checked again on every re-plan and every change of the site's
inputs (a send that got no answer is tried again then), and whenever the limit moves as the site
learns of another EVSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway import events as ev
from gateway import metrics
from gateway.domain import GridEventKind
from gateway.ocpp.errors import CallErrorReceived, GatewayOcppError

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.state import SiteState

log = logging.getLogger(__name__)

DEFAULT_PROFILE_ID = 1  # one per station; TxProfiles use ids derived from their transaction
DEFAULT_STACK_LEVEL = 0
STALE_BY_KW = 0.01  # a default this far from the current one is sent again (the profile's W resolution)
# Answers that say what the station holds, stored so a restarted gateway knows it too (a station
# that refused charges unmanaged, and is planned at its rating: MpcScheduler._held_default_kw).
DEFINITE = ("Accepted", "Rejected", CallErrorReceived.__name__)


def default_limit_kw(safe_limit_kw: float, import_limit_kw: float, evse_count: int) -> float:
    return max(0.0, min(safe_limit_kw, import_limit_kw / max(evse_count, 1)))


def import_limit_kw(state: SiteState, now: datetime, ahead: timedelta) -> float:
    """The site's import limit, or the lowest import cap of a grid event in force at some moment
    of [now, now + ahead] (a default is constant: it must hold through the cap)."""
    caps = [g.cap_kw for g in state.grid_events.values()
            if g.kind == GridEventKind.IMPORT_CAP and g.cap_kw is not None and g.start <= now + ahead and g.end > now]
    return min([state.limits.import_kw, *caps])


def default_profile(limit_kw: float) -> dict[str, Any]:
    """A Relative TxDefaultProfile: it starts with each transaction and needs no clock."""
    return {
        "id": DEFAULT_PROFILE_ID,
        "stackLevel": DEFAULT_STACK_LEVEL,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": [{
            "id": DEFAULT_PROFILE_ID,
            "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(limit_kw * 1000.0)}],
        }],
    }


class DefaultProfiles:
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._sub: ev.Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[str]] = set()
        self.sent: dict[str, str] = {}  # station -> last answer (status or error)
        # station -> the default (kW) it last accepted (stored; read back at start: Gateway._load_state)
        self.limit_taken: dict[str, float] = {}
        self._checked: float | None = None  # the limit the stations were last checked against
        self._sending_to: set[str] = set()  # stations a send is under way to

    def start(self) -> None:
        # Besides boots, connects and input changes: every re-plan (at least every period, so a
        # grid event's cap coming or going is seen in time) and the events that may show the site
        # an EVSE it did not know (each EVSE is a share of the limit).
        self._sub = self._gw.bus.subscribe(ev.StationBooted, ev.StationConnected, ev.SiteInputsChanged,
                                           ev.PlanPublished, ev.StatusChanged, ev.SessionStarted)
        self._task = asyncio.create_task(self._run(), name="default-profiles")

    async def stop(self) -> None:
        for t in [self._task, *self._sends]:
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        if self._sub is not None:
            self._sub.close()

    async def _run(self) -> None:
        assert self._sub is not None
        while True:
            event = await self._sub.get()
            if isinstance(event, ev.StationBooted):
                # Never from inside the BootNotification handler: the reply must go out first.
                self._spawn(event.station_id)
            elif isinstance(event, ev.StationConnected):
                if self._due(event.station_id, self.limit_kw()):
                    self._spawn(event.station_id)
            else:
                # The EVSE a status or a session names may not be in the site state yet: the site
                # sync applies the same event from its own queue, maybe later, and nothing would
                # look again until the next re-plan.
                named = ((event.station_id, event.evse_id) if isinstance(event, ev.StatusChanged | ev.SessionStarted)
                         else None)
                limit = self.limit_kw(named)
                # Every re-plan and input change looks at every station (a send that failed is
                # tried again); the frequent events only when the limit has moved.
                if limit == self._checked and not isinstance(event, ev.SiteInputsChanged | ev.PlanPublished):
                    continue
                self._checked = limit
                for sid in [s for s in {*self.limit_taken, *self.sent} if self._due(s, limit)]:
                    if self._gw.ocpp.registry.get(sid) is not None and not self._sending(sid):
                        self._spawn(sid, limit)

    def limit_kw(self, also: tuple[str, int] | None = None) -> float:
        """Today's default: the limit shared by every EVSE the site knows, and ``also``."""
        gw = self._gw
        ahead = timedelta(seconds=gw.settings.replan_period_s)
        count = len(gw.state.evses) + (also is not None and also not in gw.state.evses)
        return default_limit_kw(gw.settings.safe_limit_kw, import_limit_kw(gw.state, gw.clock.now(), ahead), count)

    def _stale(self, station_id: str, limit: float) -> bool:
        taken = self.limit_taken.get(station_id)
        return taken is not None and abs(taken - limit) > STALE_BY_KW

    def _due(self, station_id: str, limit: float) -> bool:
        """Holding another default than the site's now, or its last send got no answer (a
        timeout, the link lost; a refusal, Rejected or a CALLERROR, would only be refused again)."""
        last = self.sent.get(station_id)
        failed = last is not None and last not in DEFINITE
        return failed or (last in (None, "Accepted") and self._stale(station_id, limit))

    def _sending(self, station_id: str) -> bool:
        return station_id in self._sending_to

    def _spawn(self, station_id: str, limit: float | None = None) -> None:
        task = asyncio.create_task(self.send(station_id, limit))
        self._sends.add(task)
        self._sending_to.add(station_id)

        def done(t: asyncio.Task[str]) -> None:
            self._sends.discard(t)
            self._sending_to.discard(station_id)
        task.add_done_callback(done)

    async def send(self, station_id: str, limit: float | None = None) -> str:
        """Send the station ``limit`` (default: today's) as its default."""
        if limit is None:
            limit = self.limit_kw()
        try:
            reply = await self._gw.commands.set_charging_profile(station_id, 0, default_profile(limit))
            status = str(reply.get("status", "Unknown"))
        except GatewayOcppError as exc:
            status = type(exc).__name__
            why = str(exc)  # the class name alone said "ConnectionReplaced" for a plain close
        else:
            why = status
        metrics.PROFILES.labels("default_" + status.lower()[:20]).inc()
        if status != "Accepted":
            log.warning("%s did not take the default profile: %s", station_id, why)
        self.sent[station_id] = status
        if status == "Accepted":
            self.limit_taken[station_id] = limit
        if status in DEFINITE:
            try:
                await self._gw.stations.set_default_answer(station_id, status,
                                                           limit if status == "Accepted" else None)
            except Exception as exc:
                # Known in this process all the same; only a restart before the next definite
                # answer would not know what the station holds.
                log.warning("default profile answer of %s not stored: %s", station_id, exc)
        return status
