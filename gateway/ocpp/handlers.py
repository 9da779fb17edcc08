"""Answers to every CALL an OCPP 2.0.1 charging station sends, and what each one stores.

The transport has validated the request against its schema before a handler runs and validates
the reply after. Rules that come from the spec cite its requirement ids. Storage rules:
- a TransactionEvent is answered only after its row is committed; while the database is away
  the reply is withheld and the station retries (E01-E06, docs/reliability.md D1, D5);
- status and meter samples go through the batched telemetry writer (bounded, drops counted);
- notifications the gateway keeps but does not act on are stored as received.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway import events as ev
from gateway import metrics
from gateway.clock import Clock, parse_rfc3339, to_rfc3339
from gateway.config import Settings
from gateway.db.engine import GaveUp, is_transient, until_committed
from gateway.db.planning import PlanningRepository
from gateway.db.stations import SecurityEventRepository, StationRepository, TokenRepository
from gateway.db.telemetry import TelemetryWriter
from gateway.db.transactions import Recorded, TransactionRepository, TxSnapshot
from gateway.domain import EVSE_ID_MAX, EvNeeds
from gateway.ocpp.errors import NoReply, NotImplementedOcpp, PropertyConstraintViolation, SecurityError
from gateway.ocpp.meter import Readings, Sample, samples, summarize
from gateway.ocpp.ports import StationContext

log = logging.getLogger(__name__)

Payload = dict[str, Any]
Handler = Callable[[StationContext, Payload], Awaitable[Payload]]

# Notifications kept as received; the answer is an empty object (their responses have no
# required fields).
KEPT_AS_RECEIVED = (
    "NotifyChargingLimit", "ClearedChargingLimit", "ReportChargingProfiles", "NotifyReport",
    "NotifyEvent", "LogStatusNotification", "NotifyEVChargingSchedule", "NotifyCustomerInformation",
    "NotifyMonitoringReport", "NotifyDisplayMessages", "ReservationStatusUpdate",
    "PublishFirmwareStatusNotification",
)
# Certificate requests, kept as received and refused: this CSMS runs no certificate authority and
# no OCSP or 15118 contract-certificate backend (A02/A03 SignCertificate, M02/M03
# Get15118EVCertificate, M06 GetCertificateStatus). A clear refusal, not a CALLERROR: the request
# is well formed, the service is what is missing.
NO_PKI = {"reasonCode": "NoCertificateService", "additionalInfo": "this CSMS runs no certificate authority"}
CERTIFICATE_REFUSALS: dict[str, Payload] = {
    "SignCertificate": {"status": "Rejected", "statusInfo": NO_PKI},
    "Get15118EVCertificate": {"status": "Failed", "exiResponse": "", "statusInfo": NO_PKI},
    "GetCertificateStatus": {"status": "Failed", "statusInfo": NO_PKI},
}
PENDING_RETRY_INTERVAL_S = 30
TOKEN_CACHE_S = 60.0
# Tokens whose last answer is kept (the most recently asked): a station sending endless made-up
# tokens must not grow the gateway without bound.
TOKEN_CACHE_KEPT = 50_000
RESUPPLIED_KEPT = 10_000
# Events no call is storing any more (a call that failed) whose stored-at times are still
# remembered, in case a replay finds the row one of them committed (see _apply_event): the most
# recent kept. An event a call or a background task is storing is never forgotten, however many
# stations are in the middle of one (an outage of a large fleet).
CALLS_KEPT = 10_000
CALL_TIME_SLACK = timedelta(seconds=1)
TOUCH_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class EventReading:
    """What one TransactionEvent read: whether it had energy registers, its power and its SoC (%)."""

    registers: bool
    power_kw: float | None
    soc: float | None


class Handlers:
    """Implements :class:`gateway.ocpp.ports.MessageHandler` for OCPP 2.0.1."""

    def __init__(
        self, *, settings: Settings, clock: Clock, stations: StationRepository,
        transactions: TransactionRepository, planning: PlanningRepository, tokens: TokenRepository,
        telemetry: TelemetryWriter, security: SecurityEventRepository, bus: ev.EventBus,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._stations = stations
        self._tx = transactions
        self._planning = planning
        self._tokens = tokens
        self._telemetry = telemetry
        self._security = security
        self._bus = bus
        self._token_cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # (station, evse) -> transactionId of the session on it; MeterValues carry no transactionId.
        self.active_tx: dict[tuple[str, int], str] = {}
        # Replayed events stored before this process started whose meter samples were looked for
        # (see _resupply_samples), so a second replay does not queue them again.
        self._started_at = clock.now()
        self._resupplied: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        # (station, transactionId, seqNo) -> the stored-at times calls of this process gave that
        # event, until one learns the stored row (_apply_event); and the events being stored in
        # the background after their connection closed.
        self._calls: dict[tuple[str, str, int], set[datetime]] = {}
        self._storing: Counter[tuple[str, str, int]] = Counter()  # calls and tasks storing it now
        self._left: OrderedDict[tuple[str, str, int], None] = OrderedDict()  # of _calls, no one's
        self._finishing: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()  # EV needs stored likewise
        self._last_call_time: datetime | None = None
        self._table: dict[str, Handler] = {
            "BootNotification": self.boot_notification,
            "Heartbeat": self.heartbeat,
            "StatusNotification": self.status_notification,
            "Authorize": self.authorize,
            "TransactionEvent": self.transaction_event,
            "MeterValues": self.meter_values,
            "NotifyEVChargingNeeds": self.notify_ev_charging_needs,
            "SecurityEventNotification": self.security_event_notification,
            "FirmwareStatusNotification": self.firmware_status_notification,
            "DataTransfer": self.data_transfer,
        }
        for action in (*KEPT_AS_RECEIVED, *CERTIFICATE_REFUSALS):
            self._table[action] = self._keeper(action)

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(self._table)

    async def __call__(self, ctx: StationContext, action: str, payload: Payload) -> Payload:
        handler = self._table.get(action)
        if handler is None:
            raise NotImplementedOcpp(f"{action} is not handled by this CSMS")
        _check_evse_id(action, payload)
        boot = ctx.scratch.get("boot_status")
        if boot in ("Pending", "Rejected") and action != "BootNotification":
            # B02.FR.09 / B03.FR.07: a station told Pending or Rejected on this connection sends
            # nothing but BootNotification and what the CSMS triggered (a trigger without an EVSE
            # draws one message per EVSE: F06), until accepted.
            if action not in ctx.triggered:
                raise SecurityError(f"{action} before the boot was accepted (answered {boot}): "
                                    "send BootNotification again")
        started = time.perf_counter()
        try:
            reply = await handler(ctx, payload)
        except Exception:
            metrics.MESSAGES.labels(action, "error").inc()
            raise
        metrics.MESSAGES.labels(action, "ok").inc()
        metrics.HANDLER_SECONDS.labels(action).observe(time.perf_counter() - started)
        return reply

    def _now(self) -> datetime:
        return self._clock.now()

    # --- B: provisioning ------------------------------------------------------------------
    async def boot_notification(self, ctx: StationContext, p: Payload) -> Payload:
        now = self._now()
        try:
            status = await self._stations.boot(ctx.station_id, p, now)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # B02: Pending tells the station to boot again later; nothing is lost meanwhile.
            log.warning("boot of %s answered Pending: database unavailable", ctx.station_id)
            status = "Pending"
        ctx.scratch["boot_status"] = status
        ctx.triggered.clear()  # what was triggered before this boot was answered is done
        if status == "Accepted":
            self._bus.publish(ev.StationBooted(now, ctx.station_id))
        interval = self._settings.heartbeat_interval_s if status == "Accepted" else PENDING_RETRY_INTERVAL_S
        # B01: currentTime is the time as the CSMS answers, read after the boot is stored: a station
        # sets its clock from it, and a time read before a slow write would set it behind by that write
        # (at a high --time-scale, by simulated minutes, enough to shift its profiles against its peers').
        return {"currentTime": to_rfc3339(self._now()), "interval": interval, "status": status}

    async def heartbeat(self, ctx: StationContext, p: Payload) -> Payload:
        now = self._now()
        last = ctx.scratch.get("touched")
        real = time.monotonic()
        if last is None or real - last > TOUCH_EVERY_S:
            ctx.scratch["touched"] = real
            try:
                await self._stations.touch(ctx.station_id, now)
            except Exception as exc:
                if not is_transient(exc):
                    raise
        return {"currentTime": to_rfc3339(now)}

    async def status_notification(self, ctx: StationContext, p: Payload) -> Payload:
        ts = parse_rfc3339(p["timestamp"])
        evse_id, connector_id, status = p["evseId"], p["connectorId"], p["connectorStatus"]
        self._telemetry.add("status_history", (ctx.station_id, evse_id, connector_id, status, ts, self._now()))
        try:
            await self._stations.set_connector_status(ctx.station_id, evse_id, connector_id, status, ts)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("connector status of %s kept in history only: database unavailable", ctx.station_id)
        self._bus.publish(ev.StatusChanged(self._now(), ctx.station_id, evse_id, connector_id, status))
        return {}

    # --- C: authorization -----------------------------------------------------------------
    async def _token_status(self, token: Payload, *, stale_if_away: bool = False) -> str:
        """``stale_if_away``: while the database is away, answer with the last status it gave for
        this token rather than fail (what no other answer depends on: Authorize), if it gave it
        within ``authorize_stale_max_s``."""
        if token.get("type") == "NoAuthorization" or not self._settings.known_tokens_only:
            return "Accepted"
        key = f"{token['type']}:{token['idToken'].lower()}"  # an idToken is case-insensitive
        hit = self._token_cache.get(key)
        real = time.monotonic()
        if hit is not None and real - hit[0] < TOKEN_CACHE_S:
            return hit[1]
        try:
            status = await self._tokens.status(token["idToken"]) or "Unknown"
        except Exception as exc:
            if not (stale_if_away and hit is not None and is_transient(exc)
                    and real - hit[0] <= self._settings.authorize_stale_max_s):
                raise
            log.warning("token lookup failed (%s): answering its last known status, %s s old", exc,
                        round(real - hit[0]))
            return hit[1]
        self._token_cache[key] = (real, status)
        self._token_cache.move_to_end(key)
        while len(self._token_cache) > TOKEN_CACHE_KEPT:
            self._token_cache.popitem(last=False)
        return status

    async def authorize(self, ctx: StationContext, p: Payload) -> Payload:
        # A driver waits at the station: with the database away, a token it has answered for
        # before gets that answer (C01: the station would otherwise fall back on its own cache or
        # refuse); one never seen still fails with InternalError, as no answer can be given.
        return {"idTokenInfo": {"status": await self._token_status(p["idToken"], stale_if_away=True)}}

    # --- E: transactions ------------------------------------------------------------------
    async def transaction_event(self, ctx: StationContext, p: Payload) -> Payload:
        station_id = ctx.station_id
        event_key = (station_id, p["transactionInfo"]["transactionId"], p["seqNo"])
        now = self._call_time()
        started = time.perf_counter()
        self._note_call(event_key, now)
        try:
            return await self._store_event(ctx, p, event_key, now, started)
        finally:
            self._done_storing(event_key)

    async def _store_event(self, ctx: StationContext, p: Payload, event_key: tuple[str, str, int],
                           now: datetime, started: float) -> Payload:
        station_id = ctx.station_id
        store = self._event_store(station_id, p, now)
        try:
            recorded = await until_committed(
                store,
                retry_interval_s=self._settings.db_retry_interval_s,
                what=f"storing TransactionEvent of {station_id}",
                on_retry=lambda _e: metrics.DB_RETRIES.labels("transaction_event").inc(),
                give_up=ctx.closed,
            )
        except GaveUp as exc:
            # D5 with the station gone: its reply has nowhere to go, and the station replays the
            # event on its next connection (E04/D1), where it is withheld again. This one is
            # stored all the same, in the background (one task per event, however often the
            # station reconnects meanwhile): a station that has used up its attempts
            # (TransactionMessageAttempts) will not send it again.
            if event_key not in self._finishing:
                task = asyncio.get_running_loop().create_task(self._finish_event(station_id, p, event_key, store))
                self._finishing[event_key] = task
                self._storing[event_key] += 1  # until _finished
                task.add_done_callback(lambda t: self._finished(event_key, t))
            raise NoReply(str(exc)) from exc
        metrics.DB_WRITE_SECONDS.labels("transaction_event").observe(time.perf_counter() - started)
        return await self._apply_event(station_id, p, event_key, recorded)

    def _event_store(self, station_id: str, p: Payload, now: datetime) -> Callable[[], Awaitable[Recorded]]:
        token = p.get("idToken")

        async def store() -> Recorded:
            reply: Payload = {}
            if token is not None:
                # E01/E03 (TransactionEventResponse): idTokenInfo SHALL be given when the request
                # carried an idToken. The lookup may need the database, so it is part of what is
                # retried: during an outage the reply is withheld (D5) instead of failing at once,
                # which would make the station drop the event after its retries.
                reply["idTokenInfo"] = {"status": await self._token_status(token)}
            return await self._tx.record_event(station_id, p, reply, now)

        return store

    def _call_time(self) -> datetime:
        """Now, but never a time an earlier call was given: the stored-at time tells which call
        stored an event (_apply_event), also on a clock that stands still (a simulation's)."""
        now, last = self._now(), self._last_call_time
        if last is not None and last - CALL_TIME_SLACK < now <= last:
            # The same instant (a clock that stands still, or a coarse one): just after the last.
            # A clock stepped back further (an NTP correction) is followed, not outrun.
            now = last + timedelta(microseconds=1)
        self._last_call_time = now
        return now

    def _note_call(self, event_key: tuple[str, str, int], now: datetime) -> None:
        """Remember, before its first attempt, the stored-at time this call gives the event."""
        self._calls.setdefault(event_key, set()).add(now)
        self._storing[event_key] += 1
        self._left.pop(event_key, None)

    def _done_storing(self, event_key: tuple[str, str, int]) -> None:
        """A call or background task stopped storing the event. If none learnt the stored row, its
        times join the bounded set kept for a replay."""
        self._storing[event_key] -= 1
        if self._storing[event_key] > 0:
            return
        del self._storing[event_key]
        if event_key in self._calls:
            self._left[event_key] = None
            while len(self._left) > CALLS_KEPT:
                self._calls.pop(self._left.popitem(last=False)[0], None)

    async def _finish_event(self, station_id: str, p: Payload, event_key: tuple[str, str, int],
                            store: Callable[[], Awaitable[Recorded]]) -> None:
        recorded = await until_committed(
            store, retry_interval_s=self._settings.db_retry_interval_s,
            what=f"storing TransactionEvent of {station_id} (its connection closed)",
            on_retry=lambda _e: metrics.DB_RETRIES.labels("transaction_event").inc())
        await self._apply_event(station_id, p, event_key, recorded)

    def _finished(self, event_key: tuple[str, str, int], task: asyncio.Task[None]) -> None:
        self._finishing.pop(event_key, None)
        self._done_storing(event_key)
        if not task.cancelled() and task.exception() is not None:
            log.error("storing a TransactionEvent of %s in the background failed", event_key[0],
                      exc_info=task.exception())

    async def close(self) -> None:
        """Stop the events and needs still being stored for closed connections (at shutdown). The
        stations replay their events to the next process; one that committed is rebuilt from the
        tables at start."""
        tasks = [*self._finishing.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _apply_event(self, station_id: str, p: Payload, event_key: tuple[str, str, int],
                           recorded: Recorded) -> Payload:
        # Who applies an event's side effects (meter samples, domain events, active_tx), and so
        # exactly once: the first call of this process to learn the stored row, when the row was
        # stored by a call of this process. Every call notes the stored-at time it gives the
        # event before its first attempt (_note_call); the row carries the one that committed.
        # So the owner is found whichever attempt committed, including one whose result was lost
        # with the database's connection (this call's retry, or the station's replay after the
        # call stopped with its connection), and whichever call learns it first; the others find
        # the claim taken. A row stored by another process, or before this one started (D4), is
        # a replay's (D1: a new message id after a lost reply): it gets the first answer and
        # publishes nothing, because its side effects were applied by the call that stored it
        # (or, if that process died, are rebuilt from the tables at start), and a second
        # SessionStarted/Updated/Ended or a second set of meter rows would reach the scheduler,
        # the bus and the history twice. Only idempotent bookkeeping is done for it.
        owner = recorded.stored_at in self._calls.pop(event_key, set())
        self._left.pop(event_key, None)
        info = p["transactionInfo"]
        tid = info["transactionId"]
        tx = recorded.tx
        evse_id = (p.get("evse") or {}).get("id") or (tx.evse_id if tx else None)
        if not owner:
            if tx is not None and evse_id is not None:
                self._note_active(station_id, evse_id, tid, tx)
            if ("meterValue" in p and evse_id is not None and recorded.stored_at is not None
                    and recorded.stored_at < self._started_at):
                await self._resupply_samples(station_id, evse_id, tid, p)
            return recorded.response  # D1: a replay gets the first answer and stores nothing
        if "meterValue" in p and evse_id is not None:
            self._queue_samples(station_id, evse_id, tid, p["meterValue"])
        if tx is None or evse_id is None:
            return recorded.response
        key = (station_id, evse_id)
        at = self._now()
        # E04 (offline transactions): a queued event is sent on reconnection, so the gateway's
        # clock would put the start or end of the session at the reconnection; the station's
        # timestamp says when it happened (never later than now, whatever the station's clock).
        queued = bool(p.get("offline", False))
        if tx.ended_at is not None:
            if self.active_tx.get(key) == tid:
                del self.active_tx[key]
            if p["eventType"] != "Ended":
                # A late event of a session already ended (E04, D2): its readings are stored and
                # the session's end was published; its EVSE may hold the next session by now,
                # whose plan and state a second SessionEnded would wipe.
                return recorded.response
            # The final meter reading first: what the session took is what the forecasts learn.
            reading = self._reading(recorded.readings, queued, tx)
            self._bus.publish(ev.SessionUpdated(at, station_id, evse_id, tid, tx.energy_in_kwh,
                                                tx.energy_out_kwh, reading.power_kw, reading.soc))
            self._bus.publish(ev.SessionEnded(at, station_id, evse_id, tid, info.get("stoppedReason"),
                                              min(tx.ended_at, at) if queued else None))
            return recorded.response
        is_new = self.active_tx.get(key) != tid
        self.active_tx[key] = tid
        if is_new:
            began = tx.started_at if queued else None
            self._bus.publish(ev.SessionStarted(at, station_id, evse_id, tid, tx.id_token,
                                                None if began is None else min(began, at)))
            if tx.started_at is not None:
                self._close_superseded(station_id, evse_id, tid, tx.started_at)
        reading = self._reading(recorded.readings, queued, tx)
        energy_in = energy_out = None
        if reading.registers or is_new:
            # The session's energies (the stored sums) when this event read its registers, or for a
            # session this process did not hold yet.
            energy_in, energy_out = tx.energy_in_kwh, tx.energy_out_kwh
            if is_new and not reading.registers and reading.soc is not None:
                # Apart: an SoC is paired with the energies as one reading only when read with
                # registers (Session.soc_with_registers pins the battery's start from the pair).
                self._bus.publish(ev.SessionUpdated(at, station_id, evse_id, tid, energy_in, energy_out))
                energy_in = energy_out = None
        self._bus.publish(ev.SessionUpdated(at, station_id, evse_id, tid, energy_in, energy_out,
                                            reading.power_kw, reading.soc, tx.charging_state))
        return recorded.response

    @staticmethod
    def _reading(r: Readings, queued: bool, tx: TxSnapshot) -> EventReading:
        """What this TransactionEvent itself read. Not the stored row's power and SoC as such:
        they are the last a TransactionEvent carried, and MeterValues since may have read newer
        ones; published with every event, they put a session's SoC and power back to old values
        (and an old SoC, paired with the newest energies, pinned a wrong battery start). A queued
        event (E04, offline), or a late one whose readings the row did not take (D2: a lower seqNo
        than one stored), read them before the events already here: not the EV's now. ``r``: the
        event's own readings, as ``record_event`` summarised them."""
        registers = r.import_wh_max is not None or r.export_wh_max is not None
        if queued:
            return EventReading(registers, None, None)
        power = None if r.power_w is None else r.power_w / 1000.0
        if power is not None and (tx.power_kw is None or abs(tx.power_kw - power) > 1e-9):
            power = None
        soc = r.soc if r.soc is not None and tx.soc is not None and abs(tx.soc - r.soc) <= 1e-9 else None
        return EventReading(registers, power, soc)

    def _close_superseded(self, station_id: str, evse_id: int, tid: str, started_at: datetime) -> None:
        """Close, in the background, what was left open on the EVSE before ``tid`` started: a
        transaction whose Ended was lost would otherwise come back at the next restart as a
        session drawing its last power, and be planned and billed."""
        async def run() -> None:
            try:
                n = await self._tx.supersede(station_id, evse_id, tid, started_at)
            except Exception as exc:
                log.warning("%s EVSE %d: earlier open transactions not closed: %s", station_id, evse_id, exc)
                return
            if n:
                log.info("%s EVSE %d: %d open transaction(s) before %s closed as superseded", station_id,
                         evse_id, n, tid)

        self._in_background(run())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the replies, kept until it ends (``close`` stops what is left)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _note_active(self, station_id: str, evse_id: int, tid: str, tx: TxSnapshot) -> None:
        """A replay's bookkeeping: idempotent, publishes nothing. MeterValues carry no
        transactionId, so an EVSE whose open transaction this process has not seen (another
        node or process stored it) learns it here; an ended one is forgotten."""
        key = (station_id, evse_id)
        if tx.ended_at is not None:
            if self.active_tx.get(key) == tid:
                del self.active_tx[key]
        elif tx.started_at is not None and key not in self.active_tx:
            self.active_tx[key] = tid

    async def _resupply_samples(self, station_id: str, evse_id: int, tid: str, p: Payload) -> None:
        """A replay of an event an earlier process stored (D4: killed between commit and reply).
        Its meter samples went to that process's telemetry buffer after the commit, and may have
        died with it, all or (a flush batch ending inside the event's samples) some of them; the
        event row keeps them in its payload. Those not in meter_values are queued again. A live
        node's buffer cannot be told from a dead process's: a replay reaching this node of an
        event another node stored just before this one started, not yet flushed there, would
        have its samples stored twice."""
        key = (station_id, tid, int(p["seqNo"]))
        if key in self._resupplied:
            return
        got = list(samples(p["meterValue"]))
        if not got:
            return
        # Taken before the await: a second replay of the same event arriving meanwhile (the
        # station reconnected) must not queue the samples as well.
        self._resupplied[key] = None
        while len(self._resupplied) > RESUPPLIED_KEPT:
            self._resupplied.popitem(last=False)
        try:
            stored = await self._tx.stored_samples(station_id, tid, sorted({s.ts for s in got}))
        except Exception as exc:
            # Not a reason to fail the reply: the station gets its answer, the samples stay in
            # the event's payload, and a later replay looks again.
            self._resupplied.pop(key, None)
            log.warning("meter values of replayed event %s/%s/%s not checked: %s", *key, exc)
            return
        missing = [s for s in got if (s.ts, s.measurand, s.phase, s.context, s.location) not in stored]
        if missing:
            log.info("%d of %d meter values of %s/%s seqNo %s restored from the stored event",
                     len(missing), len(got), *key)
            self._queue(station_id, evse_id, tid, missing)

    def _queue_samples(self, station_id: str, evse_id: int, tid: str | None, mvs: list[Payload]) -> None:
        self._queue(station_id, evse_id, tid, samples(mvs))

    def _queue(self, station_id: str, evse_id: int, tid: str | None, got: Iterable[Sample]) -> None:
        for s in got:
            self._telemetry.add_meter_value(s.ts, station_id, evse_id, tid, s.measurand, s.phase, s.context,
                                            s.value, s.unit, s.location)

    async def meter_values(self, ctx: StationContext, p: Payload) -> Payload:
        evse_id = p["evseId"]
        tid = self.active_tx.get((ctx.station_id, evse_id))
        self._queue_samples(ctx.station_id, evse_id, tid, p["meterValue"])
        if tid is not None:
            r = summarize(list(samples(p["meterValue"])))
            self._bus.publish(ev.SessionUpdated(
                self._now(), ctx.station_id, evse_id, tid,
                power_kw=None if r.power_w is None else r.power_w / 1000.0, soc=r.soc))
        return {}

    # --- K: smart charging ----------------------------------------------------------------
    async def notify_ev_charging_needs(self, ctx: StationContext, p: Payload) -> Payload:
        evse_id = p["evseId"]
        needs = needs_from_payload(p)
        tid = self.active_tx.get((ctx.station_id, evse_id))
        now = self._now()

        async def store() -> None:
            await self._planning.add_needs(ctx.station_id, evse_id, tid, needs, p, now)

        what = f"storing NotifyEVChargingNeeds of {ctx.station_id}"
        try:
            await until_committed(store, retry_interval_s=self._settings.db_retry_interval_s, what=what,
                                  give_up=ctx.closed)
        except GaveUp as exc:
            # No answer can reach the station, but the needs are the EV's: stored (and planned
            # with) once the database is back. Sent again on the next connection, the newest row
            # is the one planned with, so a second copy changes nothing.
            async def finish() -> None:
                await until_committed(store, retry_interval_s=self._settings.db_retry_interval_s, what=what)
                self._bus.publish(ev.NeedsUpdated(now, ctx.station_id, evse_id, tid, "ev"))

            self._in_background(finish())
            raise NoReply(str(exc)) from exc
        self._bus.publish(ev.NeedsUpdated(now, ctx.station_id, evse_id, tid, "ev"))
        if not self._settings.scheduler_enabled:
            # No schedule will come (nothing plans the site), and K15.FR.03 keeps Accepted for a
            # CSMS that provides one; the needs are kept all the same (REST, and the planner once
            # it is on).
            return {"status": "Rejected", "statusInfo": {"reasonCode": "NoScheduler",
                                                         "additionalInfo": "smart charging is off at this CSMS"}}
        # K15.FR.03: Accepted means the CSMS provides a schedule: the MPC's re-plan sends the EVSE
        # a TxProfile within seconds, even an unchanged one (MpcScheduler.on_event).
        return {"status": "Accepted"}

    # --- A/L/N/P: security, firmware, diagnostics, data transfer --------------------------
    async def security_event_notification(self, ctx: StationContext, p: Payload) -> Payload:
        await self._security.security_event(
            ctx.station_id, p["type"], p.get("techInfo", ""), ctx.remote_address, source="station",
            ts=parse_rfc3339(p["timestamp"]),
        )
        return {}

    async def firmware_status_notification(self, ctx: StationContext, p: Payload) -> Payload:
        await self._best_effort(self._stations.set_firmware_status(ctx.station_id, p["status"]))
        await self._best_effort(self._stations.keep_message(ctx.station_id, "FirmwareStatusNotification",
                                                            p, self._now()))
        return {}

    async def data_transfer(self, ctx: StationContext, p: Payload) -> Payload:
        await self._best_effort(self._stations.keep_message(ctx.station_id, "DataTransfer", p, self._now()))
        # P01.FR.?: a CSMS without an extension for this vendor answers UnknownVendorId.
        return {"status": "UnknownVendorId"}

    def _keeper(self, action: str) -> Handler:
        async def keep(ctx: StationContext, p: Payload) -> Payload:
            await self._best_effort(self._stations.keep_message(ctx.station_id, action, p, self._now()))
            if action == "NotifyEVChargingSchedule":
                return {"status": "Accepted"}
            return dict(CERTIFICATE_REFUSALS.get(action, {}))

        return keep

    async def _best_effort(self, op: Awaitable[None]) -> None:
        """Notifications are answered even while the database is away (logged, not retried)."""
        try:
            await op
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("notification not stored, database unavailable: %s", exc)


PHASES = {"AC_single_phase": 1, "AC_two_phase": 2, "AC_three_phase": 3}
PHASE_VOLTAGE_V = 230.0
V2X_VENDOR_ID = "org.ocpp-site-gateway.v2x"


# An EVSE id past EVSE_ID_MAX, or 0 where an EVSE is meant (0 is allowed for MeterValues' main
# meter), would make the gateway keep (and plan, and divide the site limit by) an EVSE that does
# not exist.
_EVSE_FIELDS = {"StatusNotification": 1, "NotifyEVChargingNeeds": 1, "MeterValues": 0}


def _check_evse_id(action: str, p: Payload) -> None:
    if action == "TransactionEvent":
        evse_id, lowest = (p.get("evse") or {}).get("id"), 1
    elif action in _EVSE_FIELDS:
        evse_id, lowest = p.get("evseId"), _EVSE_FIELDS[action]
    else:
        return
    if evse_id is not None and not lowest <= evse_id <= EVSE_ID_MAX:
        name = "evse.id" if action == "TransactionEvent" else "evseId"
        raise PropertyConstraintViolation(f"{name}: an EVSE of this station is numbered {lowest}..{EVSE_ID_MAX}",
                                          {"field": name, "value": evse_id})


# Bounds on the V2X facts read from vendor data: a battery of up to 1 MWh, powers up to 1 MW.
VENDOR_MAX_WH = 1e6
VENDOR_MAX_W = 1e6


def _vendor_number(custom: Payload, key: str, lo: float, hi: float) -> float | None:
    """A number from vendor data (no schema checks it): a finite one within [lo, hi], else it is
    left out of the needs (it stays in the stored payload) with a log line."""
    v = custom.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        log.info("customData.%s ignored: %r is not a number within %g..%g", key, v, lo, hi)
        return None
    return float(v)


def _usable(value: float | None, *, high: float = math.inf, positive: bool = False) -> float | None:
    """A number the schema bounds from neither side, where it says something: from 0 (above 0
    with ``positive``) to ``high``; else None, as if not told."""
    if value is None or value < 0.0 or value > high or (positive and value == 0.0):
        return None
    return float(value)


def schedule_tuples(p: Payload | None) -> int | None:
    """A NotifyEVChargingNeeds request's ``maxScheduleTuples`` where it is a usable count."""
    n = (p or {}).get("maxScheduleTuples")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def needs_from_payload(p: Payload) -> EvNeeds:
    """EvNeeds from a NotifyEVChargingNeeds request (K15/K16/K17).

    Energy amounts are Wh, powers W. V2X facts have no place in the 2.0.1 schema; stations that
    know them put them in ``chargingNeeds.customData`` (``evMaxDischargePower`` W, ``evMinSoC`` %,
    ``evTargetSoC`` %, ``stateOfCharge`` %, ``evEnergyCapacity`` Wh), which is read when present.
    AC power is the per-phase current times 230 V times the phases of ``requestedEnergyTransfer``.
    """
    phases = PHASES.get(p["chargingNeeds"]["requestedEnergyTransfer"], 3)
    cn = p["chargingNeeds"]
    dep = cn.get("departureTime")
    ac, dc = cn.get("acChargingParameters"), cn.get("dcChargingParameters")
    custom = cn.get("customData") or {}
    energy_wh: float | None = None
    max_w: float | None = None
    capacity_wh = _usable(_vendor_number(custom, "evEnergyCapacity", 0.0, VENDOR_MAX_WH), positive=True)
    soc = _vendor_number(custom, "stateOfCharge", 0.0, 100.0)
    target = _vendor_number(custom, "evTargetSoC", 0.0, 100.0)
    # The schema bounds none of these numbers from below: a negative energy, current or power
    # (an EV's firmware, a station's bug) says nothing usable, and is taken as not told rather
    # than planned as an EV that takes nothing (it was: a 0-W profile for the whole stay).
    if ac:
        energy_wh = _usable(ac["energyAmount"])
        current = _usable(ac["evMaxCurrent"], positive=True)
        max_w = None if current is None else current * PHASE_VOLTAGE_V * phases
    if dc:
        energy_wh = _usable(dc.get("energyAmount")) if "energyAmount" in dc else energy_wh
        current, voltage = _usable(dc["evMaxCurrent"], positive=True), _usable(dc["evMaxVoltage"], positive=True)
        max_w = _usable(dc.get("evMaxPower"), positive=True) or (
            None if current is None or voltage is None else current * voltage)
        capacity_wh = _usable(dc.get("evEnergyCapacity"), positive=True) or capacity_wh
        dc_soc, dc_full = _usable(dc.get("stateOfCharge"), high=100.0), _usable(dc.get("fullSoC"), high=100.0)
        soc = soc if dc_soc is None else dc_soc
        target = target if dc_full is None else dc_full
    discharge_w = _vendor_number(custom, "evMaxDischargePower", 0.0, VENDOR_MAX_W)
    min_soc = _vendor_number(custom, "evMinSoC", 0.0, 100.0)
    return EvNeeds(
        departure_time=parse_rfc3339(dep) if dep else None,
        energy_kwh=None if energy_wh is None else energy_wh / 1000.0,
        capacity_kwh=None if capacity_wh is None else capacity_wh / 1000.0,
        soc=None if soc is None else soc / 100.0,
        target_soc=None if target is None else target / 100.0,
        min_soc=None if min_soc is None else min_soc / 100.0,
        ev_max_charge_kw=None if max_w is None else max_w / 1000.0,
        ev_max_discharge_kw=None if discharge_w is None else discharge_w / 1000.0,
        source="ev",
        max_schedule_tuples=schedule_tuples(p),
    )

