"""Keeps the live site picture (:class:`gateway.state.SiteState`) current from domain events,
whether or not the scheduler runs, and tells the scheduler (when there is one) what changed.

One subscriber applies every event in order, so the REST API, the MQTT bridge and the scheduler
all read the same picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from gateway import events as ev
from gateway import metrics
from gateway.db.engine import is_transient, until_committed
from gateway.db.planning import NEEDS_BEFORE_START, StoredNeeds
from gateway.domain import Session

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

WATCHED = (ev.SessionStarted, ev.SessionUpdated, ev.SessionEnded, ev.NeedsUpdated, ev.SiteInputsChanged,
           ev.StatusChanged, ev.StationConnected, ev.StationDisconnected, ev.StationBooted)

# Called with each applied event and whether it changes what the site should plan.
Listener = Callable[[ev.Event, bool], None]


class SiteSync:
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._sub: ev.Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[Listener] = []
        self.applied = 0
        self._peak_write: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()  # events applied again once the database answers
        # Per EVSE: the EV needs that came while it had no session (when, and the row), for the
        # session that begins next (_needs_sent_before). One per EVSE at most.
        self._early_needs: dict[tuple[str, int], tuple[datetime, StoredNeeds]] = {}

    def start(self) -> None:
        self._sub = self._gw.bus.subscribe(*WATCHED)
        self._task = asyncio.create_task(self._run(), name="site-sync")

    async def stop(self) -> None:
        if self._peak_write is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._peak_write), 2.0)
        retries = list(self._retries)
        for retry in retries:
            retry.cancel()
        await asyncio.gather(*retries, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            self._sub.close()

    async def _run(self) -> None:
        assert self._sub is not None
        while True:
            event = await self._sub.get()
            try:
                await self.apply(event)
            except Exception:
                log.exception("site state could not apply %s", type(event).__name__)
            metrics.EVENTS_DROPPED.labels("site_sync").set(self._sub.dropped)

    async def apply(self, event: ev.Event, *, retried: bool = False) -> None:
        """Apply ``event`` to the site state and tell the listeners. ``retried``: a NeedsUpdated
        whose needs could not be read back before (see :meth:`_apply_later`)."""
        state = self._gw.state
        if isinstance(event, ev.NeedsUpdated) and event.transaction_id is not None and not self._still_on(event):
            # The EV left meanwhile (a retried read, or needs stored in the background after an
            # outage and published once it ended): they are not the next EV's, and not kept for it.
            return
        pinned = self._battery_start(event)
        if isinstance(event, ev.NeedsUpdated) and event.source == "ev":
            try:
                row = await self._gw.planning.latest_needs(event.station_id, event.evse_id, None,
                                                           event.transaction_id)
            except Exception as exc:
                if retried or not is_transient(exc):
                    raise
                # The EV's needs are stored (their handler waited for that); only reading them
                # back failed. Applied again in the background once the database answers, so the
                # plan gets them without holding up every other event meanwhile.
                log.warning("EV needs of %s/%s not read yet: %s", event.station_id, event.evse_id, exc)
                self._apply_later(event)
                return
            if event.transaction_id is not None and not self._still_on(event):
                return  # it left while they were read (a retry runs beside the events' own loop)
            if row is not None and not await self._adopt_needs(event.station_id, event.evse_id, row):
                # No session on the EVSE yet (a station that starts the transaction when power
                # flows, TxStartPoint PowerPathClosed): kept for the session that begins next.
                self._early_needs[(event.station_id, event.evse_id)] = (event.at, row)
        replan = state.apply(event)
        if isinstance(event, ev.SessionStarted):
            await self._needs_sent_before(event)
        if pinned is not None and pinned.battery_start_kwh is not None:
            await self._store_battery_start(pinned)
        self.applied += 1
        if state.demand.unsaved and (self._peak_write is None or self._peak_write.done()):
            self._peak_write = asyncio.create_task(self._store_peak(), name="billing-peak")
        for listener in self.listeners:
            listener(event, replan)

    async def _needs_sent_before(self, event: ev.SessionStarted) -> None:
        """The session that begins takes the needs its EV sent shortly before (kept in memory,
        so a plug-in costs no query), and they are marked as its own in the table: a restart then
        finds them with the session, and no later session takes them for its own."""
        key = (event.station_id, event.evse_id)
        early = self._early_needs.pop(key, None)
        if early is None or event.at - early[0] > NEEDS_BEFORE_START:
            return
        st = self._gw.state.evses.get(key)
        if st is None or st.session is None or st.session.transaction_id != event.transaction_id:
            return
        row = early[1]
        await self._adopt_needs(event.station_id, event.evse_id, row)
        try:
            await self._gw.planning.set_needs_transaction(row.id, event.transaction_id)
        except Exception as exc:
            log.warning("EV needs sent before %s began not marked as its own: %s", event.transaction_id, exc)

    async def _adopt_needs(self, station_id: str, evse_id: int, row: StoredNeeds) -> bool:
        """The EVSE's session takes the needs of ``row``, counted from the energy it had when
        they came. Another node (or an earlier pass) may have fixed that point already: the same
        for all. False when the EVSE has no session."""
        state = self._gw.state
        st = state.evses.get((station_id, evse_id))
        tx = None if st is None or st.session is None else st.session.transaction_id
        base = state.set_needs(station_id, evse_id, row.needs, row.baseline_kwh, tx)
        if base is None:
            return False
        if row.baseline_kwh is None:
            kept = await self._store_baseline(row.id, base)
            if kept != base:  # another node stored its reading first: count from that one
                # Only if the session is still the one they were given to (a retried read runs
                # beside the events' loop, and the EV may have left while the baseline was stored).
                state.set_needs(station_id, evse_id, row.needs, kept, tx)
        return True

    def _still_on(self, event: ev.NeedsUpdated) -> bool:
        st = self._gw.state.evses.get((event.station_id, event.evse_id))
        return st is not None and st.session is not None and st.session.transaction_id == event.transaction_id

    def _apply_later(self, event: ev.Event) -> None:
        # Retried with until_committed's back-off: the retried apply raises while the database
        # is away instead of queueing itself again.
        task = asyncio.create_task(until_committed(
            lambda: self.apply(event, retried=True), retry_interval_s=self._gw.settings.db_retry_interval_s,
            what="reading EV needs back"), name="site-sync-retry")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _battery_start(self, event: ev.Event) -> Session | None:
        """The session ``event`` may pin the battery's energy at plug-in of (a SoC reading or
        the EV's needs, while it is not pinned yet): its pin is then stored once."""
        if not isinstance(event, ev.SessionUpdated | ev.NeedsUpdated):
            return None
        st = self._gw.state.evses.get((event.station_id, event.evse_id))
        s = None if st is None else st.session
        return s if s is not None and s.battery_start_kwh is None else None

    async def _store_battery_start(self, s: Session) -> None:
        """Kept with the transaction, so a restarted gateway (or another node) counts the energy
        the EV still wants from the same point; another node's value, stored first, is adopted."""
        pinned = s.battery_start_kwh
        assert pinned is not None
        try:
            kept = await self._gw.transactions.set_battery_start(s.station_id, s.transaction_id, pinned)
        except Exception as exc:
            # The live plan has it; only a restart before the session ends pins it anew.
            log.warning("battery start not stored: %s", exc)
            return
        if kept is not None:
            s.battery_start_kwh = kept

    async def _store_baseline(self, row_id: int, kwh: float) -> float:
        """Kept with the needs, so a restarted gateway (or another node) counts their energy from
        the same point; returns the one stored first."""
        try:
            return await self._gw.planning.set_needs_baseline(row_id, kwh)
        except Exception as exc:
            # The live plan has it; only a restart before the next needs would count from 0.
            log.warning("needs baseline not stored: %s", exc)
            return kwh

    async def _store_peak(self) -> None:
        """Keep the billing period's new peak in Postgres (in the background: a reading is never
        held up by it). Another node's higher peak, if stored, comes back and is adopted."""
        gw, demand = self._gw, self._gw.state.demand
        if demand.period is None:
            return
        demand.unsaved = False
        period, kw = demand.period, demand.peak_kw
        try:
            stored = await gw.planning.raise_peak(gw.settings.site.name, period, kw, gw.clock.now())
        except Exception as exc:  # kept in memory; the next rise tries again
            demand.unsaved = True
            log.warning("billing peak not stored: %s", exc)
            return
        demand.restore(period, stored)
