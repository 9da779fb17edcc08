"""The live loop: when to plan, what to push.

Every ``replan_period_s`` of (simulated) time, coalesced and never two at once (APScheduler),
and within ``replan_debounce_s`` real seconds of any event that changes what the site needs
(plug-in, departure, new needs, a driver override, a price or grid event), the whole site is
re-planned with one LP (:class:`gateway.scheduler.problem.Planner`, run in a worker thread so the
OCPP loop keeps answering). The first steps of the plan go to each charger as its TxProfile
(:mod:`gateway.ocpp.profiles`), re-sent only when they change. On a solver failure or timeout the
planner's limit-respecting fallback is pushed instead, never nothing (docs/reliability.md M1).
Every solve and every profile sent is stored (profile records in the background, in order).

What the loop adds to the site state from how each session behaves (:class:`live_inputs.Observed`):
an EV whose station reports it takes nothing although offered (SuspendedEV) is planned as full;
the energy since the last meter reading is carried forward over the limits the EVSE had; a draw
counts as ignoring the limit only above every limit of the last NONCOMPLIANCE_WINDOW. Triggers
that arrive while a re-plan runs make one more re-plan, not one each.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from gateway import events as ev
from gateway import metrics
from gateway.clock import to_rfc3339
from gateway.domain import Plan, PlannedSession, TxKey
from gateway.ocpp import capabilities, profiles
from gateway.ocpp.errors import CallFailed, GatewayOcppError
from gateway.ordered import OrderedTasks
from gateway.scheduler import live_inputs
from gateway.scheduler.arrivals import ArrivalModel
from gateway.scheduler.building import KEEP_DAYS, SLOT_MIN, BuildingProfile
from gateway.scheduler.forecast import SessionForecaster
from gateway.scheduler.peak_price import KEEP_DAYS as PEAK_KEEP_DAYS
from gateway.scheduler.peak_price import DoneSession, NeededPeaks
from gateway.scheduler.problem import Planner, PlanResult, SiteInputs, SlotInput, TimeGrid, greedy_fallback
from gateway.scheduler.slots import DrawSeen
from gateway.state import CompletedSession

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.db.transactions import TxSnapshot

log = logging.getLogger(__name__)

DEBOUNCE_MAX_SIM_S = 30.0
# Pushes that failed without an answer: the station may have applied them (a timed-out call, or
# one the link dropped under, may have reached it).
UNANSWERED = frozenset({"CallTimeout", "ConnectionReplaced"})
# A station's refusals of a profile: its answer, or a CALLERROR (NotSupported, a property it
# cannot take). Either way it runs what it ran before and the same profile would be refused again.
REFUSED = frozenset({"Rejected", "CallErrorReceived"})
# A plan's stored id, or the storing still under way (None: not stored).
PlanId: TypeAlias = "int | asyncio.Future[int | None] | None"
STOP_WAIT_S = 5.0
# chargingState of an EV that does not take the energy its EVSE offers (OCPP 2.0.1: full, or
# holding at its own charge limit).
SUSPENDED_EV = "SuspendedEV"
# A limit must have been in force this long before a meter reading for a lower draw to count as
# the EV's own limit (slots.DrawSeen): a car takes a moment to follow a rise.
DRAW_SETTLE = timedelta(minutes=2)
# An EV planned as full is offered energy again after this long (simulated), in case it only paused.
FULL_RECHECK = timedelta(hours=2)
# A charger counts as ignoring its limit only if it draws more than every limit it had over this
# long (simulated): a reading may predate the last profile or period change (meter values arrive
# every few minutes, later under load), and a draw that was allowed then is no proof of anything.
NONCOMPLIANCE_WINDOW = timedelta(minutes=15)
# How long the profiles each EVSE accepted are remembered (the energy since the last meter reading
# is carried forward over them, up to live_inputs.EXTRAPOLATE_MAX).
LIMITS_KEPT = max(NONCOMPLIANCE_WINDOW, live_inputs.EXTRAPOLATE_MAX)
# A station that refused its planned profile runs a safe constant limit and is planned at it; it is
# sent a plan again after this long (simulated), not at every re-plan (each refusal costs two calls).
REJECTED_RETRY = timedelta(minutes=30)
# Completed transactions read from Postgres at start (one read) to seed the departure forecast,
# the arrival model and the needed peaks: those that ended in the last BOOTSTRAP_DAYS (the needed
# peaks' days and the one before; at most BOOTSTRAP_SESSIONS_MAX), or the last BOOTSTRAP_SESSIONS
# whatever their age where those are fewer (a quiet site). A fixed count alone was half a day of a
# 1,000-EVSE site: no weekend, most hours of the day unseen.
BOOTSTRAP_DAYS = PEAK_KEEP_DAYS + 1
BOOTSTRAP_SESSIONS = 500
BOOTSTRAP_SESSIONS_MAX = 20_000
# A building reading older than this at a re-plan is not learned from (the energy system went quiet).
BUILDING_READING_FRESH = timedelta(hours=1)
# Building readings older than this are deleted at start (the profile uses KEEP_DAYS of them).
BUILDING_READINGS_KEPT = timedelta(days=KEEP_DAYS + 7)


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    plan_id: int | None
    plan: Plan
    result: PlanResult
    trigger: str
    profiles_sent: int
    profiles_failed: int

    def session(self, station_id: str, transaction_id: str) -> PlannedSession | None:
        for s in self.plan.sessions:
            if s.transaction_id == transaction_id and s.station_id == station_id:
                return s
        return None


@dataclass(frozen=True, slots=True)
class _Pushed:
    """A re-plan pushed, its plan still being stored (the re-plan lock is not held for that)."""

    seq: int
    at: datetime
    plan: Plan
    result: PlanResult
    trigger: str
    solve_s: float
    sent: int
    failed: int
    storing: asyncio.Future[int | None]


class MpcScheduler:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.planner = Planner(time_limit_s=self.settings.solver_time_limit_s,
                               backend=self.settings.scheduler_backend)
        self.latest: PlanOutcome | None = None
        # Re-plans numbered as pushed: one stored after a later one is not published over it.
        self._pushes = itertools.count(1)
        self._published_seq = 0
        self._storing: set[asyncio.Future[int | None]] = set()  # plans pushed, still being stored
        self.solves = 0
        self._lock = asyncio.Lock()
        # The re-plan replan_task queued that has not started yet (shared by the callers meanwhile).
        self._waiting_replan: asyncio.Task[PlanOutcome | None] | None = None
        self._debounce: asyncio.TimerHandle | None = None
        # The re-plan asked for around the earliest end of a profile in force (one cut to the
        # periods its station takes ends before the plan), and the end it was for.
        self._ends_timer: asyncio.TimerHandle | None = None
        self._end_asked: datetime | None = None
        self._pending_trigger: str | None = None
        self._aps: AsyncIOScheduler | None = None
        # The profile each EVSE last accepted (what it runs, unless its station rebooted since:
        # StationBooted).
        self._sent: dict[tuple[str, int], profiles.TxProfile] = {}
        # EVSEs of a station that reconnected: sent their profile again even if unchanged (it
        # may have rebooted without a word yet), which way it moves still judged against the last
        # one it accepted (a link that only dropped leaves the station running that).
        self._resend: set[tuple[str, int]] = set()
        # EVSEs whose last push did not land: sent again at the next re-plan even if unchanged.
        self._retry: set[tuple[str, int]] = set()
        # A push left unanswered (timed out, or the link dropped under it) may still have been
        # applied: until one is answered, the EVSE may run it as well as its last accepted one.
        self._unanswered: dict[tuple[str, int], profiles.TxProfile] = {}
        # Stations whose last push timed out (the socket lives, the station does not answer):
        # planned as uncontrolled, and pushed to in the background (_in_flight), so that one
        # hung station does not hold every re-plan, and every driver's answer, for the call
        # timeout. The first answer it gives takes it back into the plan.
        self._hung: set[str] = set()
        self._in_flight: dict[tuple[str, int], profiles.TxProfile] = {}
        # EVSEs that refused their plan, since when (they run the safe limit; REJECTED_RETRY).
        self._rejected: dict[tuple[str, int], datetime] = {}
        # The most periods a station takes in a schedule, where it said so after refusing more
        # (capabilities.periods_per_schedule), and the stations asked since they connected.
        self._periods_max: dict[str, int] = {}
        self._periods_asked: set[str] = set()
        # Profiles each EVSE accepted, with when, over the last LIMITS_KEPT (and the one before).
        self._accepted: dict[tuple[str, int], list[tuple[datetime, profiles.TxProfile]]] = {}
        # When each session's meter was last read, and what it said (energy in, out, SoC).
        self._read: dict[TxKey, tuple[datetime, tuple[float | None, ...]]] = {}
        # Each session's last SoC reading: when, the SoC (%), and the meter then (battery-side
        # kWh, and when the registers had been read), see live_inputs.Observed.soc_at.
        self._soc_read: dict[TxKey, tuple[datetime, float, float, datetime | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._solving: asyncio.Future[PlanResult] | None = None  # the solver thread's last solve
        self._queued = False  # a re-plan is waiting for the running one
        # Profile records being written (in the background, in order per EVSE).
        self._writes: OrderedTasks[tuple[str, int]] = OrderedTasks()
        self._stopping = False
        # What a session nobody described will do (dwell, energy, how late announcements run):
        # learned from every session that ends here, as the offline evaluator's MPC learns it.
        self.forecaster: SessionForecaster = live_inputs.new_forecaster(self.settings)
        self.observed = 0
        # How many EVs arrive per hour of the day and what they want: planned as aggregate slots
        # so the morning's first EVs do not spend the peak the later ones will need.
        self.arrivals = ArrivalModel(tz=self.settings.site.timezone)
        # The building's load by time of day, learned from its readings: the forecast when the
        # energy system pushes none (as the evaluator's MPC plans). Each five-minute slot's last
        # reading goes to Postgres once the slot is over, and the profile is rebuilt from them at
        # start, so a restart (or another node) keeps what weeks of readings taught it.
        self.building = BuildingProfile(tz=self.settings.site.timezone)
        self._building_slot: tuple[datetime, float] | None = None  # this slot's reading, not yet stored
        self._building_writes: set[asyncio.Task[None]] = set()  # finished at stop, not cancelled
        # The peak each finished day needed (hindsight LP over its sessions and building readings):
        # what a rise of a month's peak is priced by (gateway/scheduler/peak_price.py).
        self.peaks = NeededPeaks(tz=self.settings.site.timezone, eff=self.settings.ev_efficiency)
        # Sessions whose EV stopped taking energy (transaction id -> since when): planned as full,
        # so the site's capacity is not held for a car that will not draw it. Kept while its EVSE
        # is held at zero (SuspendedEVSE), dropped when it draws or gives energy again, when its
        # needs change, or after FULL_RECHECK.
        self.full: dict[TxKey, datetime] = {}
        # What each session's EV drew against the limit in force (transaction id): an EV that does
        # not tell its own power limit is planned at the EVSE's rating until it shows a lower one.
        self._drawn: dict[TxKey, DrawSeen] = {}

    def observe(self, done: CompletedSession) -> None:
        if done.departure <= done.arrival:
            # A station clock reset, a lost Started: as bootstrap skips such rows. One negative
            # stay planned every later EV of its arrival hour as leaving now.
            log.info("a session ending at or before its start is not learned from (%s .. %s)",
                     done.arrival, done.departure)
            return
        name = self.settings.site.name
        self.forecaster.observe(name, done.arrival, done.departure, done.requested_kwh, done.announced)
        self.arrivals.observe(name, done.arrival, done.departure, done.delivered_kwh, done.max_kw)
        self.peaks.observe(DoneSession(done.arrival, done.departure, max(done.delivered_kwh, 0.0), done.max_kw))
        self.observed += 1

    async def history(self) -> list[TxSnapshot] | None:
        """The completed transactions start-up learns from (see BOOTSTRAP_DAYS), newest first;
        None if Postgres cannot give them (planning then starts without history, not at all)."""
        since = self.gw.clock.now() - timedelta(days=BOOTSTRAP_DAYS)
        try:
            rows = await self.gw.transactions.recently_ended(BOOTSTRAP_SESSIONS_MAX, since=since)
            if len(rows) < BOOTSTRAP_SESSIONS:
                rows = await self.gw.transactions.recently_ended(BOOTSTRAP_SESSIONS)
        except Exception as exc:
            log.warning("no session history for the forecast and the needed peaks: %s", exc)
            return None
        return rows

    async def bootstrap(self, rows: list[TxSnapshot] | None = None) -> int:
        """Seed the forecast and the arrival model from ``rows`` (default: :meth:`history`): their
        dwell only, since what a driver asked for is not kept with the transaction, and what an EV
        took is a lower bound that would bias the energy forecast low. Returns how many were read."""
        rows = await self.history() if rows is None else rows
        if rows is None:
            return 0
        name = self.settings.site.name
        n = 0
        for t in reversed(rows):
            if t.started_at is None or t.ended_at is None or t.ended_at <= t.started_at:
                continue
            self.forecaster.observe(name, t.started_at, t.ended_at, None, None)
            self.arrivals.observe(name, t.started_at, t.ended_at, self._took(t), self._max_kw(t))
            self.arrivals.arrived(name, (t.station_id, t.transaction_id), t.started_at)
            n += 1
        if rows:
            # Every session that started after the oldest of these ended is among them or still
            # open (counted when the scheduler sees it): those hours' arrivals are complete.
            oldest_end = min(t.ended_at for t in rows if t.ended_at is not None)
            self.arrivals.watched(name, oldest_end, self.gw.clock.now())
        self.observed += n
        return n

    async def bootstrap_peaks(self, rows: list[TxSnapshot] | None = None) -> int:
        """Seed the needed peaks' sessions from those of ``rows`` (default: :meth:`history`) that
        started in the last peak_price.KEEP_DAYS days (the days are worked out at the first
        re-plan, with the building readings). Returns how many sessions were read."""
        rows = await self.history() if rows is None else rows
        if rows is None:
            return 0
        since = self.gw.clock.now() - timedelta(days=PEAK_KEEP_DAYS + 1)
        first_day = self.peaks.day(since)
        n = 0
        for t in reversed(rows):
            if t.started_at is None or t.ended_at is None or t.ended_at <= t.started_at:
                continue
            if self.peaks.day(t.started_at) <= first_day:
                continue  # that day's sessions that ended before ``since`` are not among these
            self.peaks.observe(DoneSession(t.started_at, t.ended_at, self._took(t), self._max_kw(t)))
            n += 1
        return n

    def _took(self, t: TxSnapshot) -> float:
        eff = self.settings.ev_efficiency
        return max(t.energy_in_kwh * eff - t.energy_out_kwh / eff, 0.0)

    def _max_kw(self, t: TxSnapshot) -> float:
        spec = self.gw.state.evses.get((t.station_id, t.evse_id or 0))
        return spec.spec.max_charge_kw if spec is not None else self.settings.safe_limit_kw

    async def bootstrap_building(self) -> int:
        """Rebuild the building profile from the readings stored in Postgres (the last KEEP_DAYS
        days) and forget older ones. Returns how many slots were read."""
        name = self.settings.site.name
        now = self.gw.clock.now()
        try:
            await self.gw.planning.prune_building_readings(name, now - BUILDING_READINGS_KEPT)
            rows = await self.gw.planning.building_readings(name, now - timedelta(days=KEEP_DAYS))
        except Exception as exc:  # planning starts with an empty profile rather than not at all
            log.warning("no building readings for the profile: %s", exc)
            return 0
        for at, kw in rows:
            self.building.observe(at, kw)
        return len(rows)

    async def _close_days(self, now: datetime) -> None:
        """Work out the needed peak of every day that has finished (one small LP each, once; in a
        thread, under the re-plan lock, which is all that touches the profile and the peaks)."""
        state = self.gw.state
        self.peaks.watch(now)
        if not self.peaks.due(now):
            return

        plugged = [s.started_at for s in state.sessions()]
        try:
            await asyncio.to_thread(self.peaks.close_days, now, plugged, self.building.reading,
                                    state.limits.import_kw)
        except Exception:  # a failed hindsight LP costs the price's accuracy, never the plan
            log.exception("needed peak of a finished day not worked out")

    def _rise_delay_s(self) -> float:
        """How late a raised limit starts (Settings.profile_rise_delay_s, or 0.1 s of real time
        on a scaled clock, where a tenth of a second of loop latency is many simulated seconds)."""
        return max(self.settings.profile_rise_delay_s, 0.1 * self.gw.clock.scale)

    def _note_building(self, now: datetime, kw: float) -> None:
        """Learn the reading now; store the previous slot's last reading once its slot is over
        (one write per slot, never two racing for the same row)."""
        self.building.observe(now, kw)
        slot = slot_start(now)
        done = self._building_slot
        if done is not None and done[0] != slot:
            self._store_building(*done)
        self._building_slot = (slot, kw)

    def _store_building(self, slot: datetime, kw: float) -> None:
        async def write() -> None:
            try:
                await self.gw.planning.record_building(self.settings.site.name, slot, kw)
            except Exception as exc:  # the profile in memory has it; only a restart would miss it
                log.warning("building reading of %s not stored: %s", to_rfc3339(slot), exc)

        task = asyncio.create_task(write())
        self._building_writes.add(task)
        task.add_done_callback(self._building_writes.discard)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        rows = await self.history() or []  # one read for both (none: no history, not a second try)
        await self.bootstrap(rows)
        await self.bootstrap_peaks(rows)
        await self.bootstrap_building()
        self.gw.state.forecaster = self.forecaster
        period_real_s = self.gw.clock.real_seconds(self.settings.replan_period_s)
        if period_real_s <= 0:
            # A clock that does not move by itself (ManualClock: tests, step-by-step runs): the
            # period passes when its simulated time does. Timed in real seconds it would re-plan
            # every few milliseconds, a full solve each, while simulated time stood still.
            task = asyncio.create_task(self._periodic_on_clock(), name="replan-periodic")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._aps = AsyncIOScheduler()
        self._aps.add_job(self._periodic, "interval", seconds=max(period_real_s, 0.05), coalesce=True,
                          max_instances=1, misfire_grace_time=None, id="replan")
        self._aps.start()

    async def _periodic_on_clock(self) -> None:
        while not self._stopping:
            await self.gw.clock.sleep(self.settings.replan_period_s)
            await self._periodic()

    async def stop(self) -> None:
        self._stopping = True
        if self._aps is not None:
            self._aps.shutdown(wait=False)
        for timer in (self._debounce, self._ends_timer):
            if timer is not None:
                timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        # Let a re-plan in progress finish before the engine goes away, but never hold up the
        # shutdown deadline for it (its pushes fail fast once the stations are gone).
        try:
            await asyncio.wait_for(self._lock.acquire(), STOP_WAIT_S)
            self._lock.release()
        except TimeoutError:
            log.warning("scheduler stopped with a re-plan still running")
        if self._storing:  # plans pushed and still being stored, briefly
            await asyncio.wait(list(self._storing), timeout=STOP_WAIT_S)
        if writes := self._writes.tasks():  # the last profile records, briefly
            await asyncio.wait(writes, timeout=STOP_WAIT_S)
        if self._building_writes:
            await asyncio.wait(list(self._building_writes), timeout=STOP_WAIT_S)
        if self._building_slot is not None:  # the slot in progress: its reading so far
            try:
                await asyncio.wait_for(self.gw.planning.record_building(self.settings.site.name,
                                                                         *self._building_slot), STOP_WAIT_S)
            except Exception as exc:
                log.warning("last building reading not stored: %s", exc)

    # --- triggers ---------------------------------------------------------------------------
    def on_event(self, event: ev.Event, replan: bool) -> None:
        """Called by :class:`gateway.site_sync.SiteSync` after the event is in the site state."""
        key = (getattr(event, "station_id", ""), getattr(event, "evse_id", 0))
        if isinstance(event, ev.SessionUpdated):
            self._note_reading(event)
        if isinstance(event, ev.SessionStarted):
            # What the EVSE's tables hold of another transaction (one superseded before its end
            # was heard) is not what the EVSE runs for this one.
            self._forget_evse(key, but=event.transaction_id)
        if isinstance(event, ev.SessionEnded):
            st = self.gw.state.evses.get(key)
            if st is not None and st.session is not None and st.session.transaction_id != event.transaction_id:
                # The late end of a transaction the EVSE's next session superseded (E04, D2):
                # its tables are that session's now, and only what is left of this one goes.
                self._forget_evse(key, only=event.transaction_id)
            else:
                self._forget_evse(key)
            key = (event.station_id, event.transaction_id)
            self._read.pop(key, None)
            self._soc_read.pop(key, None)
            self._drawn.pop(key, None)
            self.full.pop(key, None)
            for done in self.gw.state.take_completed():
                self.observe(done)
        if isinstance(event, ev.NeedsUpdated):
            # A new need (EV or driver) may move the car's own charge limit: offer energy again.
            st = self.gw.state.evses.get(key)
            if st is not None and st.session is not None:
                self.full.pop(st.session.tx_key, None)
            if event.source == "ev":
                # K15.FR.03/K17.FR.03: the needs were answered Accepted, and the station's ISO
                # 15118 stack waits for a TxProfile to answer the EV: one goes at the next push
                # even if the plan did not change, and even to an EVSE that refused its last one
                # (refused again, it gets its safe profile).
                self._resend.add(key)
                self._rejected.pop(key, None)
        if isinstance(event, ev.StationConnected):
            # A station that reconnects may have lost its profiles (a reboot) or not (the link
            # dropped): its profiles are sent again, and until it says it booted each is taken to
            # run the last one it accepted, so a limit lowered from that goes out in the first
            # round, before the rises it makes room for (profiles.Move). Judged against its
            # default instead, a lowering that stays above the default would travel with them.
            self._resend.update(k for k in self._sent if k[0] == event.station_id)
            for k in [k for k in self._rejected if k[0] == event.station_id]:
                self._rejected.pop(k, None)  # new firmware, maybe: it may take a plan now
            self._periods_asked.discard(event.station_id)  # and be asked again what it takes
            self._hung.discard(event.station_id)  # a new link: its pushes are waited for again
            replan = True
        if isinstance(event, ev.StationBooted):
            # B01: a station boots only when it (re)starts; what it ran before is gone, and it
            # runs its default until sent a profile.
            for k in [k for k in self._sent if k[0] == event.station_id]:
                self._sent.pop(k, None)
                self._resend.discard(k)
            self._forget_accepted(event.station_id)
            for k in [k for k in self._unanswered if k[0] == event.station_id]:
                self._unanswered.pop(k, None)  # whatever it may have taken is gone with the reboot
            self._hung.discard(event.station_id)
            replan = True
        if replan:
            self.request_replan(type(event).__name__)

    def _forget_evse(self, key: tuple[str, int], *, only: str | None = None, but: str | None = None) -> None:
        """Drop what the EVSE's tables hold: of every transaction, of transaction ``only``, or of
        every transaction ``but`` this one. The tables without a transaction (retry, re-send,
        refused) are the EVSE's session's: they go with every transaction, and with every one but
        ``but`` when nothing of ``but`` is known yet (they were about the one before)."""

        def gone(prof: profiles.TxProfile) -> bool:
            return prof.transaction_id == only if only is not None else prof.transaction_id != but

        sent, unanswered = self._sent.get(key), self._unanswered.get(key)
        accepted = self._accepted.get(key, [])
        kept = [(at, p) for at, p in accepted if not gone(p)]
        if kept:
            self._accepted[key] = kept
        else:
            self._accepted.pop(key, None)
        if unanswered is not None and gone(unanswered):
            self._unanswered.pop(key, None)
        ours = [p for p in (sent, unanswered, *(p for _, p in accepted)) if p is not None and not gone(p)]
        if sent is not None and gone(sent):
            self._sent.pop(key, None)
        if only is None and not ours:
            self._retry.discard(key)
            self._resend.discard(key)
            self._rejected.pop(key, None)

    def _forget_accepted(self, station_id: str) -> None:
        """The station's profiles are gone (a reboot, a clear): what its EVSEs accepted before is
        no longer a limit they were offered, and a reading is not judged against it (an EV on
        the default would read as one that cannot take what the old profile gave)."""
        for k in [k for k in self._accepted if k[0] == station_id]:
            self._accepted.pop(k, None)

    def profiles_cleared(self, station_id: str) -> None:
        """An operator cleared charging profiles on ``station_id`` (ClearChargingProfile, K10):
        which ones the station decides (criteria may match ours), so every profile of the station
        is sent again, its default included, and the site re-planned."""
        for k in [k for k in self._sent if k[0] == station_id]:
            self._sent.pop(k, None)
        self._forget_accepted(station_id)
        self._spawn(self.gw.default_profiles.send(station_id))
        self.request_replan("ProfilesCleared")

    def request_replan(self, trigger: str) -> None:
        """Re-plan within ``replan_debounce_s`` real seconds; a burst of events makes one solve."""
        if self._stopping:
            return
        self._pending_trigger = trigger
        if self._debounce is None:
            self._debounce = asyncio.get_running_loop().call_later(self._debounce_real_s(), self._fire)

    def _debounce_real_s(self) -> float:
        # Real seconds, but never more than DEBOUNCE_MAX_SIM_S of simulated time, so an
        # accelerated clock does not turn a short pause into minutes of unplanned charging.
        return min(self.settings.replan_debounce_s, self.gw.clock.real_seconds(DEBOUNCE_MAX_SIM_S))

    def _replan_around_profile_ends(self, plan_end: datetime, solve_s: float) -> None:
        """A profile cut to the periods its station takes (profiles.build_profile), or a safe
        one, ends before the plan does, and the EVSE then runs its default, which the plan did
        not count. A re-plan is asked for ahead of the earliest such end, by two solves and the
        debounce, so the next profile lands first; where that re-plan could not reach past it (a
        station that takes one period, the plan's step ending there), right after it. Not on a
        clock that stands still (the evaluator's, tests'): no real time passes toward the end."""
        if self._ends_timer is not None:
            self._ends_timer.cancel()
            self._ends_timer = None
        now = self.gw.clock.now()
        ends = [p.end for p in self._sent.values() if now < p.end < plan_end]
        if not ends:
            return
        end = min(ends)
        until_real = self.gw.clock.real_seconds((end - now).total_seconds())
        if until_real <= 0.0:
            return
        lead = 2.0 * solve_s + self._debounce_real_s() + 1.0
        if until_real > lead:
            delay = until_real - lead  # ahead of it (a routine re-plan before then moves nothing)
        elif end == self._end_asked:
            delay = until_real + 1.0  # asked for ahead of it already, and the end stayed: after it
        else:
            delay = 0.0  # a re-plan came too late to ask ahead: at once

        def fire() -> None:
            self._ends_timer = None
            self._end_asked = end
            self.request_replan("profile ends")

        self._ends_timer = asyncio.get_running_loop().call_later(delay, fire)

    def _fire(self) -> None:
        self._debounce = None
        trigger = self._pending_trigger or "event"
        self._pending_trigger = None
        task = asyncio.create_task(self._replan_logged(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _periodic(self) -> None:
        # A task of ours, not APScheduler's job: stop() cancels a re-plan still waiting for the lock
        # without the job runner logging the cancellation as a failure. Re-plans never overlap and
        # queue at most one deep (_replan_logged), so the job need not wait for it.
        if self._stopping:
            return
        task = asyncio.create_task(self._replan_logged("periodic"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replan_logged(self, trigger: str) -> None:
        # One re-plan waiting behind the running one is enough: it plans from the newest state when
        # its turn comes. (Measured in the demo: without this, triggers queued up by the dozen
        # behind a slow push and each ran a full re-plan, tens of seconds after its cause.)
        if self._queued:
            return
        self._queued = True
        try:
            await self._lock.acquire()
        finally:
            self._queued = False  # acquired (or cancelled): the next trigger may wait
        try:
            pushed = await self._replan_locked(trigger)
        except Exception:
            log.exception("re-plan (%s) failed", trigger)
            return
        finally:
            self._lock.release()
        if pushed is not None:
            await self._published(pushed)

    # --- one re-plan ----------------------------------------------------------------------
    def replan_task(self, trigger: str) -> asyncio.Task[PlanOutcome | None]:
        """:meth:`replan` as a task of the scheduler's own: a caller that stops waiting for it
        (a REST request's time limit, a client gone) leaves it to finish, since a re-plan cut off
        mid-push leaves some stations on the new plan and the stored plan on the old one; stop()
        cancels it like any other. A failure is logged here, whoever awaits it."""
        waiting = self._waiting_replan
        if waiting is not None and not waiting.done():
            # One is queued behind the running re-plan and reads the site as it starts, this
            # caller's change included: many drivers' changes at once share it, instead of
            # queueing one full re-plan each ahead of the periodic and event ones.
            return waiting
        task = asyncio.create_task(self._replan_queued(trigger))
        self._waiting_replan = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def _replan_queued(self, trigger: str) -> PlanOutcome | None:
        if self._stopping:
            return None
        async with self._lock:
            if self._waiting_replan is asyncio.current_task():
                self._waiting_replan = None  # started: later changes need the next one
            pushed = await self._replan_locked(trigger)
        return None if pushed is None else await self._published(pushed)

    async def replan(self, trigger: str) -> PlanOutcome | None:
        """Solve now, push what changed, store it all; returns the outcome."""
        if self._stopping:
            return None
        async with self._lock:
            pushed = await self._replan_locked(trigger)
        return None if pushed is None else await self._published(pushed)

    async def _published(self, pushed: _Pushed) -> PlanOutcome:
        """Once the pushed plan is stored (or could not be): the outcome, made the latest and
        published unless a later re-plan's already was. Outside the re-plan lock: a database
        that is slow or away (the pool's timeout, a command's) must not hold up the next
        re-plan, which may be the one that puts the site back under its limit."""
        plan_id = await asyncio.shield(pushed.storing)  # _store_plan never raises
        outcome = PlanOutcome(plan_id, pushed.plan, pushed.result, pushed.trigger, pushed.sent, pushed.failed)
        if pushed.seq > self._published_seq:
            self._published_seq = pushed.seq
            self.latest = outcome
            result = pushed.result
            self.gw.bus.publish(ev.PlanPublished(pushed.at, plan_id, result.status, {
                "trigger": pushed.trigger, "sessions": len(pushed.plan.sessions), "solve_s": round(pushed.solve_s, 4),
                "fallback": result.fallback, "objective": round(result.objective, 4),
                "profiles_sent": pushed.sent, "profiles_failed": pushed.failed,
            }))
        return outcome

    async def _replan_locked(self, trigger: str) -> _Pushed | None:
        if self._stopping:
            return None
        now = self.gw.clock.now()
        limits_sent = self._limits_in_force(now)
        state = self.gw.state
        state.prune_grid_events(now)
        observed = self._observed(now)
        if state.building_load_at is not None and now - state.building_load_at <= BUILDING_READING_FRESH:
            self._note_building(now, state.building_load_kw)
        await self._close_days(now)
        site, slots, metas = live_inputs.build(state, now, self.settings, limits_sent, self.forecaster,
                                               observed=observed, building=self.building,
                                               needed_peaks=self.peaks.values(),
                                               uncontrolled=self._uncontrolled(now))
        slots += self._expected_arrivals(site.grid, now)
        started = time.perf_counter()
        result = await self._solve(site, slots)
        solve_s = time.perf_counter() - started
        self.solves += 1
        metrics.SOLVES.labels("fallback" if result.fallback else "ok", trigger).inc()
        metrics.SOLVE_SECONDS.observe(solve_s)
        plan = self._to_plan(now, result, metas, solve_s)
        # Stored beside the push, not before it: a slow or absent database must not hold up the
        # profiles (a plug-in's first plan waited out the pool's timeout). Each profile record
        # waits for the plan's id.
        storing = asyncio.ensure_future(self._store_plan(now, trigger, site, slots, result, plan, solve_s))
        self._storing.add(storing)
        storing.add_done_callback(self._storing.discard)
        # The push's own moment, not the re-plan's start: the solve may have taken a minute, and
        # which way each limit moves (and when it was accepted) is from now on.
        # A push that fails leaves the storing to finish on its own (stop() waits for it briefly).
        sent, failed = await self._push(self.gw.clock.now(), plan, metas, storing)
        self._replan_around_profile_ends(plan.end, solve_s)
        return _Pushed(next(self._pushes), now, plan, result, trigger, solve_s, sent, failed, storing)

    def _limits_in_force(self, now: datetime) -> dict[tuple[str, int], float]:
        """Per EVSE with a limit the gateway knows it runs: the highest of its recent planned
        limits, else the default its station accepted. A draw above it is one that ignores it."""
        out = {}
        for key in self._sent:
            lim = self._highest_recent_limit_kw(key, now)
            if lim is not None:
                out[key] = lim
        taken = self.gw.default_profiles.limit_taken
        for key, st in self.gw.state.evses.items():
            if st.session is not None and key not in out and key[0] in taken:
                # No planned profile in force (none sent yet, or it ran out): the default.
                out[key] = taken[key[0]]
        return out

    async def _solve(self, site: SiteInputs, slots: list[SlotInput]) -> PlanResult:
        """The plan, or the greedy fallback when the solver fails, overruns its time limit, or is
        still busy with an earlier solve that overran it. A thread cannot be stopped: a solve that
        timed out runs on, and a second one beside it would share the planner's compiled models
        (the cvxpy backend's parameters) and the two cores, so none starts until it has ended."""
        running = self._solving
        if running is not None and not running.done():
            log.warning("solver still busy with an earlier solve: pushing the fallback plan")
            return await self._fallback(site, slots, "solver busy")
        solving = asyncio.ensure_future(asyncio.to_thread(self.planner.solve, site, slots))
        # Its outcome is read even when nobody waits for it any more (no "never retrieved" noise).
        solving.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._solving = solving
        try:
            return await asyncio.wait_for(asyncio.shield(solving), timeout=self.settings.solver_time_limit_s + 5.0)
        except Exception as exc:  # timeout or crash outside the planner's own guard
            detail = f": {exc}" if str(exc) else ""  # a TimeoutError says nothing of itself
            log.error("solver failed (%s%s): pushing the fallback plan", type(exc).__name__, detail)
            return await self._fallback(site, slots, type(exc).__name__)

    @staticmethod
    async def _fallback(site: SiteInputs, slots: list[SlotInput], why: str) -> PlanResult:
        # In a thread as well: at 10,000 EVSEs even the greedy plan takes long enough to hold up
        # the OCPP traffic on the event loop.
        result = await asyncio.to_thread(greedy_fallback, site, slots)
        result.status = f"fallback: {why}"
        return result

    def _expected_arrivals(self, grid: TimeGrid, now: datetime) -> list[SlotInput]:
        """Slots for the EVs expected to plug in over the horizon (after the real ones, so a
        plan's rows still line up with the slot metas)."""
        name = self.settings.site.name
        self.arrivals.watch(name, now)
        for st in self.gw.state.evses.values():
            if st.session is not None and st.session.started_at is not None:
                self.arrivals.arrived(name, st.session.tx_key, st.session.started_at)
        if not self.settings.anticipate_arrivals:
            return []
        return self.arrivals.slots(name, grid, now, eff_charge=self.settings.ev_efficiency)

    def _default_kw(self) -> float:
        """The TxDefaultProfile limit the site gives now (what a push or a safe profile sends)."""
        return float(self.gw.default_profiles.limit_kw())

    def _held_default_kw(self, key: tuple[str, int]) -> float:
        """What the EVSE may draw on its TxDefaultProfile (no planned profile in force): the
        default it last took, where that is above today's (a station offline, or one that missed
        the new one, during an import cap); its rating where its station refused the default and
        never took one (no smart charging: it charges unmanaged)."""
        defaults = self.gw.default_profiles
        held = defaults.limit_taken.get(key[0])
        now = self._default_kw()
        if held is None and defaults.sent.get(key[0]) in REFUSED:
            st = self.gw.state.evses.get(key)
            return now if st is None else max(now, st.spec.max_charge_kw)
        return now if held is None else max(held, now)

    def _uncontrolled(self, now: datetime) -> dict[tuple[str, int], live_inputs.Uncontrolled]:
        """EVSEs with a session whose limit a push cannot set now, and the range of limits each
        may run from now on (planned as a fixed draw at the most, so the others share only what
        is left, and at the least on the export side): a station offline runs the last profile it
        accepted and then its default, and so does one whose last push failed; one that refused
        its plan runs the safe limit it accepted instead."""
        horizon_end = now + timedelta(hours=self.settings.horizon_h)
        registry = self.gw.ocpp.registry
        out: dict[tuple[str, int], live_inputs.Uncontrolled] = {}
        for key, st in self.gw.state.evses.items():
            s = st.session
            if s is None or not (registry.get(key[0]) is None or key in self._retry or key in self._rejected
                                 or key[0] in self._hung):
                continue
            hist = self._accepted.get(key)
            running = [hist[-1][1] if hist else None]
            running += [p for p in (self._unanswered.get(key), self._in_flight.get(key)) if p is not None]
            ranges = [self._limit_range_kw(p, s.transaction_id, now, horizon_end, self._held_default_kw(key))
                      for p in running]
            out[key] = live_inputs.Uncontrolled(most_kw=max(hi for _, hi in ranges),
                                                least_kw=min(lo for lo, _ in ranges))
        return out

    def _limit_range_kw(self, prof: profiles.TxProfile | None, transaction_id: str, now: datetime,
                        horizon_end: datetime, default_kw: float) -> tuple[float, float]:
        """The lowest (<= 0) and highest (>= 0) limit an EVSE running ``prof`` may have from now on
        (its default, ``default_kw``, where the profile is not this session's, has run out, or
        runs out within the horizon)."""
        if prof is None or prof.transaction_id != transaction_id or prof.end <= now:
            return 0.0, default_kw
        ends = [p.start for p in prof.periods[1:]] + [prof.end]
        left = [p.limit_w / 1000.0 for p, end in zip(prof.periods, ends, strict=True) if end > now]
        hi, lo = max(left), min(left)
        if prof.end < horizon_end:  # then the station's default applies
            hi = max(hi, default_kw)
        return min(lo, 0.0), max(hi, 0.0)

    def _note_accepted(self, key: tuple[str, int], prof: profiles.TxProfile, now: datetime) -> None:
        self._sent[key] = prof
        hist = self._accepted.setdefault(key, [])
        hist.append((now, prof))
        # Keep what may still be in force over LIMITS_KEPT: the newest entry older than it, and after.
        old = [i for i, (at, _) in enumerate(hist) if at <= now - LIMITS_KEPT]
        if len(old) > 1:
            del hist[:old[-1]]

    def _limits_kw(self, key: tuple[str, int], lo: datetime, now: datetime) -> list[tuple[datetime, float | None]]:
        """The limit (kW; None: no accepted profile in force) the EVSE had from each moment of
        [lo, now] on, from the profiles it accepted."""
        hist = self._accepted.get(key, [])
        moments = {lo} | {at for at, _ in hist if lo < at <= now}
        for _, prof in hist:
            moments |= {p.start for p in prof.periods if lo < p.start <= now}
            if lo < prof.end <= now:
                moments.add(prof.end)
        out: list[tuple[datetime, float | None]] = []
        for t in sorted(moments):
            in_force = [prof for at, prof in hist if at <= t]
            lim = in_force[-1].limit_at(t) if in_force else None
            out.append((t, None if lim is None else lim / 1000.0))
        return out

    def _highest_recent_limit_kw(self, key: tuple[str, int], now: datetime) -> float | None:
        """The highest limit (kW) the EVSE had at any moment of the last NONCOMPLIANCE_WINDOW from
        the profiles it accepted (None: none in force)."""
        lims = [lim for _, lim in self._limits_kw(key, now - NONCOMPLIANCE_WINDOW, now) if lim is not None]
        now_lim = self._limits_kw(key, now, now)[0][1]
        if now_lim is not None:
            lims.append(now_lim)
        return max(lims) if lims else None

    def _note_reading(self, event: ev.SessionUpdated) -> None:
        """A new meter reading when the energy or SoC moved, or nothing flows (an event that only
        repeats the last reading while power flows is no news)."""
        if event.power_kw is not None and event.power_kw >= 0:
            # Offered: the lowest limit in force over the last DRAW_SETTLE, so an EV still ramping
            # up to a limit that has just risen is not taken for one that cannot draw more.
            lims = [lim for _, lim in self._limits_kw((event.station_id, event.evse_id), event.at - DRAW_SETTLE,
                                                      event.at)]
            planned = [lim for lim in lims if lim is not None]
            # Nothing learned while no planned limit was in force (the station's default applies).
            offered = min(planned) if planned and len(planned) == len(lims) else None
            self._drawn.setdefault((event.station_id, event.transaction_id), DrawSeen()).note(event.power_kw, offered)
        key = (event.station_id, event.transaction_id)
        flowing = event.power_kw is not None and abs(event.power_kw) > 1e-3
        # MeterValues carry power and SoC without the transaction's energy registers.
        if event.energy_in_kwh is not None:
            values = (event.energy_in_kwh, event.energy_out_kwh, event.soc)
            last = self._read.get(key)
            if last is None or last[1] != values or not flowing:
                self._read[key] = (event.at, values)
        if event.soc is not None:
            seen = self._soc_read.get(key)
            st = self.gw.state.evses.get((event.station_id, event.evse_id))
            s = None if st is None else st.session
            if (s is not None and s.transaction_id == event.transaction_id
                    and (seen is None or seen[1] != event.soc or not flowing)):
                # A SoC that repeats while power flows is the same reading, not a newer one.
                read = self._read.get(key)
                self._soc_read[key] = (event.at, event.soc, s.stored_kwh(self.settings.ev_efficiency),
                                       read[0] if read is not None else None)

    def _observed(self, now: datetime) -> dict[TxKey, live_inputs.Observed]:
        full = self._full_sessions(now)
        out: dict[TxKey, live_inputs.Observed] = {}
        # A session replaced on its EVSE without a SessionEnded (a lost message, a reboot) leaves
        # no reading behind for good.
        open_tx = {s.tx_key for s in self.gw.state.sessions()}
        tables: tuple[dict[TxKey, Any], ...] = (self._read, self._drawn, self._soc_read)
        for table in tables:
            for tx in [tx for tx in table if tx not in open_tx]:
                del table[tx]
        for s in self.gw.state.sessions():
            read = self._read.get(s.tx_key)
            read_at = read[0] if read is not None else None
            soc = self._soc_read.get(s.tx_key)
            soc_at, soc_meter_kwh, soc_meter_read_at = (soc[0], soc[2], soc[3]) if soc else (None, 0.0, None)
            # Limits from the oldest reading the carry-forwards start at.
            since = min((t for t in (read_at, soc_meter_read_at) if t is not None), default=None)
            limits: tuple[tuple[datetime, float | None], ...] = ()
            if since is not None and since < now:
                limits = tuple(self._limits_kw(s.key, max(since, now - live_inputs.EXTRAPOLATE_MAX), now))
            drawn = self._drawn.get(s.tx_key)
            out[s.tx_key] = live_inputs.Observed(full=s.tx_key in full, read_at=read_at,
                                                 limits=limits,
                                                 ev_max_kw=drawn.limit_kw() if drawn is not None else None,
                                                 soc_at=soc_at, soc_meter_kwh=soc_meter_kwh,
                                                 soc_meter_read_at=soc_meter_read_at)
        return out

    def _full_sessions(self, now: datetime) -> set[TxKey]:
        """Transactions whose EV does not take the energy offered, from the chargingState the
        stations last reported (SuspendedEV; kept with the session in the site state, and read
        from Postgres at start). Measured in the 50-station demo: without it, EVs that had
        reached their own charge limit kept a third of the site's capacity in every plan while
        drawing nothing, and the EVs that did need energy were deferred into the evening."""
        sessions = {s.tx_key: s for s in self.gw.state.sessions()}
        for tx in [tx for tx, since in self.full.items() if tx not in sessions or now - since >= FULL_RECHECK]:
            del self.full[tx]
        for tx, s in sessions.items():
            if s.charging_state == SUSPENDED_EV:
                self.full.setdefault(tx, now)
            elif s.charging_state == "Charging":
                self.full.pop(tx, None)
        return set(self.full)

    def session_plan(self, station_id: str, transaction_id: str) -> PlannedSession | None:
        return self.latest.session(station_id, transaction_id) if self.latest else None

    def _to_plan(self, now: datetime, result: PlanResult, metas: list[live_inputs.SlotMeta],
                 solve_s: float) -> Plan:
        starts = tuple(result.grid.starts())
        sessions = []
        for i, meta in enumerate(metas):
            if meta.session is None:
                continue
            sessions.append(PlannedSession(
                meta.session.station_id, meta.session.evse_id, meta.session.transaction_id,
                tuple(float(x) for x in result.power_kw[i]),
                energy_by_departure_kwh=float(meta.delivered_kwh + result.delivered_kwh[i]),
            ))
        return Plan(created_at=now, starts=starts, end=result.grid.end(), sessions=tuple(sessions),
                    status=result.status, objective=float(result.objective), terms=dict(result.terms),
                    solve_s=solve_s, fallback=result.fallback)

    async def _store_plan(self, now: datetime, trigger: str, site: Any, slots: Any, result: PlanResult,
                          plan: Plan, solve_s: float) -> int | None:
        starts = [to_rfc3339(t) for t in plan.starts]
        body = {
            "starts": starts,
            "sessions": {
                f"{s.station_id}/{s.transaction_id}": {
                    "station_id": s.station_id, "evse_id": s.evse_id, "transaction_id": s.transaction_id,
                    "power_kw": [round(x, 3) for x in s.power_kw],
                    "energy_by_departure_kwh": round(s.energy_by_departure_kwh, 3)}
                for s in plan.sessions
            },
        }
        try:
            return await self.gw.planning.add_plan(
                created_at=now, trigger=trigger[:40], inputs_hash=live_inputs.inputs_digest(site, slots),
                status=result.status[:40], fallback=result.fallback, objective=float(result.objective),
                terms={k: float(v) for k, v in result.terms.items()}, solve_s=solve_s,
                horizon_start=plan.starts[0] if plan.starts else now, horizon_end=plan.end, sessions=body,
            )
        except Exception as exc:
            # Planning goes on while the database is away; the plan is pushed, just not stored.
            log.warning("plan not stored: %s", exc)
            return None

    async def _push(self, now: datetime, plan: Plan, metas: list[live_inputs.SlotMeta],
                    plan_id: PlanId) -> tuple[int, int]:
        by_key = {(s.station_id, s.evse_id): s for s in plan.sessions}
        sem = asyncio.Semaphore(self.settings.profile_push_concurrency)
        # Two rounds (profiles.Move): limits going towards zero, then those going away from it; a
        # flip is in both, at 0 and then at its new limit. Each with whether it changes the limit.
        toward: list[tuple[profiles.TxProfile, bool]] = []
        away: list[tuple[profiles.TxProfile, bool]] = []
        for meta in metas:
            ps = by_key.get(meta.key)
            if ps is None or meta.session is None:
                continue
            st = self.gw.state.evses[meta.key]
            if self.gw.ocpp.registry.get(meta.key[0]) is None:
                continue  # offline: it gets its profile when it is back (StationConnected)
            if st.session is None or st.session.transaction_id != ps.transaction_id:
                # Ended (or replaced) while the plan was solved: a profile for it now would be
                # rejected and hold the EVSE's next session at its safe limit (REJECTED_RETRY).
                continue
            since = self._rejected.get(meta.key)
            if since is not None and now - since < REJECTED_RETRY:
                continue  # it runs its safe limit, and the plan counts it at that
            prof = profiles.build_profile(
                station_id=ps.station_id, evse_id=ps.evse_id, transaction_id=ps.transaction_id,
                starts=plan.starts, end=plan.end, power_kw=ps.power_kw, max_charge_kw=st.spec.max_charge_kw,
                max_discharge_kw=st.spec.max_discharge_kw, bidirectional=st.spec.bidirectional,
                dialect=st.dialect, stack_level=self.settings.profile_stack_level,
                max_periods=min(self.settings.max_profile_periods,
                                self._periods_max.get(ps.station_id, self.settings.max_profile_periods),
                                # K15: the EV's own limit on schedule entries, where it gave one.
                                meta.session.needs.max_schedule_tuples or self.settings.max_profile_periods),
                rise_delay_s=self._rise_delay_s(),
            )
            old = self._sent.get(meta.key)
            if meta.key not in self._retry and meta.key not in self._resend and not profiles.differs(old, prof):
                continue
            if meta.key[0] in self._hung:
                # Planned as uncontrolled (_uncontrolled): no other EVSE's limit waits for this
                # one's, so it is not waited for either. One push at a time per EVSE.
                if meta.key not in self._in_flight:
                    self._in_flight[meta.key] = prof
                    self._spawn(self._send_detached(prof, plan_id, now))
                continue
            # Without a planned profile the EVSE runs on its TxDefaultProfile.
            default_w = 1000.0 * self._held_default_kw(meta.key)
            old_now = old.limit_at(now) if old is not None else None
            before_w = old_now if old_now is not None else default_w
            new_now = prof.limit_at(now)
            after_w = new_now if new_now is not None else prof.periods[0].limit_w
            kind = profiles.move(before_w, after_w)
            if kind == profiles.Move.FLIP:
                toward.append((profiles.held_at_zero(prof), True))
                away.append((prof, True))
            elif after_w != before_w:
                (toward if kind == profiles.Move.TOWARD_ZERO else away).append((prof, True))
            else:
                # The same limit now; later it may go up or down (a swap with another EVSE planned
                # at the next step). One that only ever lowers goes with the first round, so a
                # failure holds back the rises it makes room for, as one lowered now does.
                later = profiles.moves_later(old, prof, default_w, now)
                if later and all(k == profiles.Move.TOWARD_ZERO for k in later):
                    toward.append((prof, True))
                else:
                    away.append((prof, bool(later)))
        # Limits going towards zero first, those going away from it once they are in force: while
        # profiles travel, neither the site's import nor its export passes the old plan's or the
        # new plan's (profiles.Move).
        phases = [toward, away]
        results: list[str] = []
        retrying = set(self._retry)
        newly_failed = False
        for i, phase in enumerate(phases):
            got = list(await asyncio.gather(*(self._send(sem, p, plan_id, now) for p, _ in phase)))
            results += got
            newly_failed |= any(r not in ("Accepted", "TxNotFound") and (p.station_id, p.evse_id) not in retrying
                                for (p, _), r in zip(phase, got, strict=True))
            stuck = [r for (_, changed), r in zip(phase, got, strict=True)
                     if changed and r not in ("Accepted", "TxNotFound")]
            held = sum(len(later) for later in phases[i + 1:])
            if stuck and held:
                # A station still runs its old limit: making the later moves now could pass the
                # site limit. They keep theirs; the re-plan counts that station at its old limit.
                log.warning("%d limit change(s) did not land (%s): %d later change(s) held back until the re-plan",
                            len(stuck), ", ".join(sorted(set(stuck))), held)
                self.request_replan("profile not lowered")
                break
        if newly_failed:
            # Some EVSE runs a limit the plan did not count on (its old one, or a safe one); the
            # others were given the new plan's. A re-plan with that station at what it runs makes
            # the site add up again within seconds rather than at the next period. Only for a
            # failure that is new: one already being retried was counted at what it runs, and a
            # station that keeps timing out would otherwise have the site re-planned every call.
            self.request_replan("profile not taken")
        sent = sum(1 for r in results if r == "Accepted")
        return sent, len(results) - sent

    async def _send(self, sem: asyncio.Semaphore, prof: profiles.TxProfile, plan_id: PlanId,
                    now: datetime) -> str:
        """Push one profile: its status, or "TxNotFound" when the transaction has already ended
        at the station (the EV left before the gateway heard: it draws nothing)."""
        key = (prof.station_id, prof.evse_id)
        async with sem:
            status, response = await self._call_set_profile(prof)
            self._note_answering(prof.station_id, status, response)
            ok = status == "Accepted"
            gone = ((response or {}).get("statusInfo") or {}).get("reasonCode") == "TxNotFound"
            st = self.gw.state.evses.get(key)
            if st is None or st.session is None or st.session.transaction_id != prof.transaction_id:
                # The session ended while the call waited its turn (its SessionEnded has cleared
                # the EVSE's tables): what the station said of a transaction that is gone must not
                # hold the next session on the EVSE at a safe limit (reasonCode TxNotFound is
                # optional in OCPP 2.0.1, so a plain Rejected is what many stations answer).
                metrics.PROFILES.labels("accepted" if ok else status.lower()[:20]).inc()
                self._record_later(prof, plan_id, status, response, now)
                return "TxNotFound" if gone or not ok else status
            if status in UNANSWERED:
                self._unanswered[key] = prof
            else:  # answered (or never sent): what the station runs is known again
                self._unanswered.pop(key, None)
            if ok:
                self._note_accepted(key, prof, now)
                self._retry.discard(key)
                self._resend.discard(key)
                self._rejected.pop(key, None)
            elif not gone:
                # The station runs what it ran before (a refused or unanswered SetChargingProfile
                # changes nothing there): that stays the limit on record, and the profile is sent
                # again at the next re-plan.
                self._retry.add(key)
            metrics.PROFILES.labels("accepted" if ok else status.lower()[:20]).inc()
            self._record_later(prof, plan_id, status, response, now)
            if status in REFUSED and not gone:
                # The station refused the plan (e.g. a negative limit, more periods than it
                # takes), with Rejected or a CALLERROR: give it a safe constant limit so it does
                # not charge unmanaged (K01: the TxProfile id is replaced). Not when the
                # transaction is gone (the EV left before the gateway heard). The limit is its
                # TxDefaultProfile share, but never above what it runs now or the new plan gives
                # it now: the others were just given the rest, and a safe profile that raised this
                # one would pass the site limit until the re-plan. The re-plan this asks for counts
                # the station at it, and it gets no plan for REJECTED_RETRY.
                self._rejected[key] = now
                if len(prof.periods) > 1 and prof.station_id not in self._periods_asked:
                    self._periods_asked.add(prof.station_id)
                    self._spawn(self._learn_periods(prof.station_id, len(prof.periods)))
                safe = profiles.safe_profile(
                    station_id=prof.station_id, evse_id=prof.evse_id, transaction_id=prof.transaction_id,
                    start=prof.periods[0].start, hours=1.0, limit_kw=self._safe_kw(key, prof, now),
                    stack_level=prof.stack_level)
                s2, r2 = await self._call_set_profile(safe)
                st = self.gw.state.evses.get(key)
                if s2 == "Accepted" and st is not None and st.session is not None \
                        and st.session.transaction_id == prof.transaction_id:
                    # Not when the session ended while the call waited: the next one's tables.
                    self._note_accepted(key, safe, now)
                self._record_later(safe, plan_id, f"fallback:{s2}", r2, now)
                self.request_replan("profile rejected")
            return "TxNotFound" if gone else status

    async def _send_detached(self, prof: profiles.TxProfile, plan_id: PlanId, now: datetime) -> None:
        """Push to an EVSE of a station that left its last push unanswered, outside the re-plan
        (started by _push, which put ``prof`` in _in_flight)."""
        key = (prof.station_id, prof.evse_id)
        try:
            await self._send(asyncio.Semaphore(1), prof, plan_id, now)
        finally:
            if self._in_flight.get(key) is prof:
                self._in_flight.pop(key, None)

    def _note_answering(self, station_id: str, status: str, response: dict[str, Any] | None) -> None:
        """Keep _hung: a timed-out push puts the station in, any answer (an accepted or refused
        profile, a CALLERROR) takes it out and has the site re-planned with it under control."""
        if status == "CallTimeout":
            self._hung.add(station_id)
        elif station_id in self._hung and (status == "CallErrorReceived" or "status" in (response or {})):
            self._hung.discard(station_id)
            self.request_replan("station answers again")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _learn_periods(self, station_id: str, refused: int) -> None:
        """After ``station_id`` refused a schedule of ``refused`` periods: if it takes fewer
        (PeriodsPerSchedule), plan it with at most that many, at once rather than after
        REJECTED_RETRY on its safe limit."""
        n = await capabilities.periods_per_schedule(self.gw.commands, station_id)
        if n is None or n >= refused:
            return  # it refused for another reason, or does not say: the safe limit stands
        log.info("%s takes at most %d periods per schedule: its plans are cut to that", station_id, n)
        self._periods_max[station_id] = n
        for k in [k for k in self._rejected if k[0] == station_id]:
            self._rejected.pop(k, None)
            self._retry.add(k)
        self.request_replan("periods per schedule")

    def _safe_kw(self, key: tuple[str, int], prof: profiles.TxProfile, now: datetime) -> float:
        """The safe limit for an EVSE that refused ``prof``: its default share, capped at the
        higher of what it runs now and what ``prof`` gives it now (0 at the least)."""
        default_kw = self._default_kw()
        old = self._sent.get(key)
        old_now = old.limit_at(now) if old is not None else None
        before_kw = self._held_default_kw(key) if old_now is None else old_now / 1000.0
        new_now = prof.limit_at(now)
        after_kw = (new_now if new_now is not None else prof.periods[0].limit_w) / 1000.0
        return min(default_kw, max(before_kw, after_kw, 0.0))

    async def _call_set_profile(self, prof: profiles.TxProfile) -> tuple[str, dict[str, Any] | None]:
        payload = prof.payload()
        try:
            resp = await self.gw.commands.set_charging_profile(
                prof.station_id, prof.evse_id, payload["chargingProfile"])
        except GatewayOcppError as exc:  # CallFailed, or our own payload refused by validation (a bug)
            if not isinstance(exc, CallFailed):
                log.error("SetChargingProfile payload for %s refused by validation: %s", prof.station_id, exc)
            return type(exc).__name__, {"error": str(exc)}
        return str(resp.get("status", "Unknown")), resp

    def _record_later(self, prof: profiles.TxProfile, plan_id: PlanId, status: str,
                      response: dict[str, Any] | None, now: datetime) -> None:
        """Store a profile sent without holding up the push (a commit under load takes longer than
        the station's answer), in the order they were sent per EVSE."""
        async def write() -> None:
            pid = plan_id if plan_id is None or isinstance(plan_id, int) else await asyncio.shield(plan_id)
            await self._record(prof, pid, status, response, now)

        self._writes.add((prof.station_id, prof.evse_id), write)

    async def _record(self, prof: profiles.TxProfile, plan_id: int | None, status: str,
                      response: dict[str, Any] | None, now: datetime) -> None:
        try:
            await self.gw.planning.add_profile_sent(
                plan_id=plan_id, station_id=prof.station_id, evse_id=prof.evse_id,
                transaction_id=prof.transaction_id, profile_id=prof.profile_id, stack_level=prof.stack_level,
                payload=prof.payload(), status=status[:40], response=response, sent_at=now)
        except Exception as exc:
            log.warning("profile record not stored: %s", exc)


def slot_start(when: datetime) -> datetime:
    """Start of the five-minute slot ``when`` falls in (UTC-aligned: every zone's offset is a
    whole number of slots, so it is the same slot of the site's day)."""
    step = SLOT_MIN * 60
    ts = when.timestamp()
    return datetime.fromtimestamp(ts - ts % step, tz=UTC)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("re-plan failed", exc_info=task.exception())
