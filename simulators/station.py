"""A simulated OCPP 2.0.1 charging station: the WebSocket link, the outbox and the EVSEs.

One :class:`Station` per charging station. It connects to ``{url}/{station_id}`` with the
``ocpp2.0.1`` subprotocol and HTTP Basic auth, boots once, heartbeats, reports connector status,
runs transactions for the EVs it is given (:meth:`Station.run_arrivals` or :meth:`plug_in` /
:meth:`unplug`) and obeys the charging profiles the CSMS sets. Physics and decisions live in pure
modules (``ev``, ``evse``, ``composite``, ``messages``); this module moves messages and time.

Outbound messages go through one ordered outbox with one sender, so there is never more than one
CALL outstanding (OCPP-J). Transaction messages survive a lost link: those generated offline carry
``offline=true`` (E04) and all are replayed, in order, after the reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import itertools
import json
import logging
import random
import re
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import fastjsonschema
import ocpp.messages
from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType
from ocpp.routing import after, on
from ocpp.v201 import ChargePoint
from ocpp.v201.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from gateway.clock import Clock, parse_rfc3339, to_rfc3339
from gateway.episode import Arrival, StationSpec
from simulators import messages
from simulators.composite import (
    ProfileStore,
    Transaction,
)
from simulators.evse import EvResult, EvSession, EvseState, battery_for, charge_limit_soc, requested_kwh
from simulators.faults import Faults
from simulators.smart_charging import SmartCharging
from simulators.station_clock import StationClock

__all__ = ["DriverApp", "Faults", "Station", "StationConfig"]

log = logging.getLogger(__name__)

SUBPROTOCOL = Subprotocol("ocpp2.0.1")
# The ocpp package checks each CALL a station receives (and its answer) against the schema in the
# default thread pool. The check holds the GIL either way, so a thread only adds a hand-off, and in
# one process with the gateway (``gateway demo``) a burst of SetChargingProfile filled the pool
# ahead of the gateway's solver (measured: a re-plan held up about a second). Checked inline.
ocpp.messages.ASYNC_VALIDATION = False
# Transaction ids must not repeat across runs against the same database: seeded once from the OS.
_TX_IDS = random.Random()
_window_warned = False

# What each refusal of the gateway's handshake means to whoever runs the fleet
# (gateway/ocpp/server.py decides them); any other status is reported as it is.
_HTTP_MEANING = {
    400: "station id not accepted",
    401: "password not accepted: check --password, or the station is disabled or has no password",
    404: "not registered: pass --register, or add it with `gateway station add`",
    429: "locked out after failed logins: wait for the lock-out to lift, then use the right password",
    503: "gateway busy or its database unavailable",
}


def connect_failure(exc: BaseException, base_url: str) -> str:
    """Why a connection attempt failed, in the words the fleet's operator acts on: stations that
    failed alike are counted under the same words (``Station.connect_failures``)."""
    if isinstance(exc, InvalidStatus):
        code = exc.response.status_code
        meaning = _HTTP_MEANING.get(code)
        return f"refused with HTTP {code}" + (f" ({meaning})" if meaning else "")
    if isinstance(exc, ConnectionRefusedError) or _all_refused(exc):
        return f"connection refused (is the gateway running at {base_url}?)"
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {base_url}"
    if isinstance(exc, InvalidHandshake):
        return f"handshake failed: {exc}"
    return f"could not connect to {base_url}: {exc}"


def _all_refused(exc: BaseException) -> bool:
    """A host with several addresses (localhost: ::1 and 127.0.0.1) refused on each: asyncio
    raises one plain OSError that lists them."""
    codes = re.findall(r"\[Errno (\d+)\]", str(exc)) if isinstance(exc, OSError) and exc.errno is None else []
    return bool(codes) and all(int(c) == errno.ECONNREFUSED for c in codes)


# (station_id, evse_id, transaction_id, preferences) -> None: how a driver's app tells the CSMS
# what a car without ISO 15118 cannot (departure, energy). Preference keys follow the REST API.
DriverApp = Callable[[str, int, str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StationConfig:
    """Every fixed number of a simulated station; names carry their units and clocks.

    ``*_sim_s`` run on the simulation clock; ``*_real_s`` are network times in real seconds.
    """

    vendor: str = "OpenSim"
    model: str = "SimCharger-AC"
    firmware: str = "1.0.0"
    meter_interval_sim_s: float = 60.0  # SampledDataCtrlr.TxUpdatedInterval
    aligned_interval_sim_s: float = 900.0  # AlignedDataCtrlr.Interval; 0 turns it off
    heartbeat_default_sim_s: float = 300.0  # until BootNotificationResponse.interval says otherwise
    physics_step_sim_s: float = 10.0
    physics_min_step_real_s: float = 0.25  # never tick faster than this in real time
    call_timeout_real_s: float = 30.0  # how long a CALL waits for its CALLRESULT
    transaction_attempts: int = 3  # OCPPCommCtrlr.MessageAttempts (TransactionEvent)
    transaction_retry_interval_real_s: float = 2.0  # OCPPCommCtrlr.MessageAttemptInterval
    transaction_park_real_s: float = 60.0  # after the attempts: keep queued, try again this late
    retry_backoff_wait_minimum_real_s: float = 3.0  # OCPPCommCtrlr.RetryBackOffWaitMinimum
    retry_backoff_random_range_real_s: float = 5.0  # OCPPCommCtrlr.RetryBackOffRandomRange
    retry_backoff_repeat_times: int = 5  # OCPPCommCtrlr.RetryBackOffRepeatTimes
    open_timeout_real_s: float = 10.0
    ping_interval_real_s: float | None = 60.0  # WebSocket ping (OCPPCommCtrlr.WebSocketPingInterval)
    outbox_max: int = 10_000  # oldest periodic samples are dropped first beyond this
    sync_clock_from_boot: bool = True
    validate_messages: bool = True  # schema-check every outgoing CALL (costs ~1 ms each)
    periods_per_schedule: int = 24  # SmartChargingCtrlr.PeriodsPerSchedule: more is refused


@dataclass(slots=True)
class _Outgoing:
    action: str
    payload: dict[str, Any]
    # "tx": kept and retried; "needs": kept, retried on timeout; "status"/"meter"/"report": dropped offline
    kind: str
    on_reply: Callable[[dict[str, Any]], None] | None = None
    attempts: int = 0


def _changed(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return abs(a - b) > 0.001  # kW: ignore float noise below a watt


@functools.cache
def _request_validator(action: str) -> Callable[[Any], Any]:
    """A compiled validator for an OCPP 2.0.1 request schema (the ocpp package's own schema files);
    about 17x cheaper than the package's per-call jsonschema run in a thread."""
    text = resources.files("ocpp.v201.schemas").joinpath(f"{action}Request.json").read_text()
    schema = json.loads(text)
    schema.pop("$id", None)
    # What the CSMS sent, as it sent it: no schema defaults written into it.
    validator: Callable[[Any], Any] = fastjsonschema.compile(schema, use_default=False)
    return validator


class _Link(ChargePoint):  # type: ignore[misc]
    """One WebSocket connection's OCPP endpoint; the handlers hand over to the station."""

    def __init__(self, station: Station, ws: ClientConnection, connection_no: int) -> None:
        super().__init__(station.id, ws, response_timeout=station.config.call_timeout_real_s)
        self._station = station
        # Message ids: unique per station and connection; uuid4 costs an urandom call each.
        counter = itertools.count(1)
        self._next_id: Callable[[], str] = lambda: f"{connection_no}-{next(counter)}"
        self._unique_id_generator = self._next_id

    async def call_json(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one CALL built from a wire-form payload and return the CALLRESULT payload.

        The package's ``call()`` turns dataclasses into dicts with deep copies and validates in a
        thread; a station that already holds wire-form dicts skips both. A CALLERROR raises its
        OCPPError, no reply within the timeout raises TimeoutError (never swallowed).
        """
        message_id = self._next_id()
        frame = json.dumps([MessageType.Call, message_id, action, payload], separators=(",", ":"))
        async with self._call_lock:
            await self._send(frame)
            response = await self._get_specific_response(message_id, self._response_timeout)
        if response.message_type_id == MessageType.CallError:
            raise response.to_exception()
        result: dict[str, Any] = response.payload
        return result

    @on(Action.set_charging_profile)  # type: ignore[untyped-decorator]
    def _set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        return self._station.smart.set_charging_profile(evse_id, charging_profile)

    @on(Action.clear_charging_profile)  # type: ignore[untyped-decorator]
    def _clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        return self._station.smart.clear_charging_profile(charging_profile_id, charging_profile_criteria)

    @on(Action.get_charging_profiles)  # type: ignore[untyped-decorator]
    def _get_charging_profiles(
        self, request_id: int, charging_profile: dict[str, Any], evse_id: int | None = None, **_: Any
    ) -> Any:
        return self._station.smart.get_charging_profiles(request_id, charging_profile, evse_id)

    @after(Action.get_charging_profiles)  # type: ignore[untyped-decorator]
    def _after_get_charging_profiles(
        self, request_id: int, charging_profile: dict[str, Any], evse_id: int | None = None, **_: Any
    ) -> None:
        self._station.smart.report_charging_profiles(request_id, charging_profile, evse_id)

    @on(Action.get_variables)  # type: ignore[untyped-decorator]
    def _get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return self._station.smart.get_variables(get_variable_data)

    @on(Action.get_composite_schedule)  # type: ignore[untyped-decorator]
    def _get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        return self._station.smart.get_composite_schedule(duration, evse_id, charging_rate_unit)


class Station:
    def __init__(
        self,
        spec: StationSpec,
        url: str,
        *,
        password: str | None = None,
        clock: Clock,
        config: StationConfig | None = None,
        faults: Faults | None = None,
        driver_app: DriverApp | None = None,
        seed: int | None = None,
    ) -> None:
        self.spec = spec
        self.id = spec.id
        self.base_url = url.rstrip("/")
        self.url = self.base_url + "/" + spec.id
        self.password = password
        self.config = config or StationConfig()
        self.faults = faults or Faults()
        self.clock = StationClock(clock)
        self.driver_app = driver_app
        self.evses: dict[int, EvseState] = {e.evse_id: EvseState(e) for e in spec.evses}
        self.profiles = ProfileStore({e.evse_id: e.phases for e in spec.evses})
        self.smart = SmartCharging(
            self.evses,
            self.profiles,
            self.faults,
            self.clock,
            on_change=self._profiles_changed,
            send=lambda action, payload: self._queue(action, payload, kind="report"),
            periods_max=self.config.periods_per_schedule,
        )
        self.booted = asyncio.Event()  # BootNotification accepted (once per power-up)
        self.connected = asyncio.Event()  # booted and the link is up
        self.boot_status: str | None = None
        self.heartbeat_interval_s = self.config.heartbeat_default_sim_s
        self.connections = 0  # how many times the link came up
        self.heartbeats_sent = 0
        self.calls_failed = 0
        # Failed connection attempts by reason (connect_failure), and the latest reason.
        self.connect_failures: dict[str, int] = {}
        self.last_connect_failure: str | None = None
        # TransactionEvents queued, answered by the CSMS, and dropped unsent (periodic ones, past
        # outbox_max): what a bench checks the CSMS's stored events against.
        self.tx_queued = self.tx_acked = self.tx_dropped = 0
        # Adopt the CSMS's time at boot only inside this window (a fleet passes its episode's):
        # a gateway on another calendar would otherwise put every arrival in the past or future.
        self.clock_window: tuple[datetime, datetime] | None = None
        self.on_arrival: Callable[[Station, Arrival], None] | None = None
        self.on_departure: Callable[[Station, EvResult], None] | None = None
        # Real-time lateness of periodic work (for the bench): seconds behind schedule, worst case.
        self.max_lag_real_s = 0.0
        self._rng = random.Random(seed if seed is not None else zlib.crc32(spec.id.encode()))
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self.drained = asyncio.Event()  # the outbox is empty (set by the sender)
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._offline_until: datetime | None = None
        self._last_update: datetime | None = None
        # Set when the profiles change: the physics loop's next wake-up was worked out from the
        # ones installed before (a new period inside its sleep took effect a tick late).
        self._profiles_moved = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._started_acked: dict[str, asyncio.Event] = {}
        # Transactions authorized offline whose token the CSMS then refused (energy suspended).
        self._deauthorized: set[str] = set()

    # ---- public API -------------------------------------------------------------------------

    @property
    def power_kw(self) -> float:
        return sum(e.power_kw for e in self.evses.values())

    def metered_net_kwh(self, now: datetime | None = None) -> float:
        """The EVSE meters' import less export (kWh) as of ``now``: the physics is integrated up
        to ``now`` first, as a real meter counts continuously (None: the registers as of the last
        tick). Carrying the last setpoint forward instead counted full power past the moment an
        EV filled up or tapered, and the next tick took it back."""
        if now is not None and self._last_update is not None and now > self._last_update:
            self.update(now)
        return sum(e.import_wh - e.export_wh for e in self.evses.values()) / 1000.0

    @property
    def results(self) -> list[EvResult]:
        return [r for e in self.evses.values() for r in e.results]

    @property
    def outbox_len(self) -> int:
        return len(self._outbox)

    async def run(self, arrivals: Sequence[Arrival] = ()) -> None:
        """Run until :meth:`stop`: the link (with reconnects), the physics and meter loops, and
        the given arrivals. With ``sync_clock_from_boot`` the simulated world starts moving once
        the first BootNotification is answered, so it runs on the CSMS's time."""
        link = asyncio.create_task(self._link_loop(), name=f"{self.id}-link")
        try:
            if self.config.sync_clock_from_boot:
                boot = asyncio.create_task(self.booted.wait())
                await asyncio.wait({link, boot}, return_when=asyncio.FIRST_COMPLETED)
                boot.cancel()
            if not link.done():
                self._last_update = self.clock.now()
                self._tasks += [
                    asyncio.create_task(self._physics_loop(), name=f"{self.id}-physics"),
                    asyncio.create_task(self._meter_loop(), name=f"{self.id}-meter"),
                ]
                if self.config.aligned_interval_sim_s > 0:
                    self._tasks.append(asyncio.create_task(self._aligned_loop(), name=f"{self.id}-aligned"))
                if arrivals:
                    self._tasks.append(asyncio.create_task(self.run_arrivals(arrivals), name=f"{self.id}-evs"))
            await link
        finally:
            link.cancel()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(link, *self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Close the link (1000) and make :meth:`run` return."""
        self._stopping = True
        self._stop_event.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def run_arrivals(self, arrivals: Iterable[Arrival]) -> None:
        """Plug EVs in, change their needs and unplug them at their episode times."""
        events: list[tuple[datetime, int, Arrival]] = []
        for a in arrivals:
            if a.station_id != self.id:
                continue
            events.append((a.departure, 0, a))  # a departure frees the EVSE before the next arrival
            events.append((a.arrival, 1, a))
            if a.need_change is not None and a.arrival < a.need_change.at < a.departure:
                events.append((a.need_change.at, 2, a))
        events.sort(key=lambda x: (x[0], x[1]))
        for when, kind, a in events:
            await self.clock.sleep_until(when)
            if kind == 1:
                self.plug_in(a)
            elif kind == 2:
                self.change_needs(a)
            else:
                self.unplug(a.evse_id, ev_id=a.id)

    def plug_in(self, arrival: Arrival) -> None:
        """An EV plugs in: transaction Started on cable plug-in, then authorization (E02)."""
        now = self.clock.now()
        self.update(now)
        evse = self.evses[arrival.evse_id]
        if evse.session is not None:
            self.unplug(arrival.evse_id)
        tx = Transaction(id=str(uuid.UUID(int=_TX_IDS.getrandbits(128), version=4)), started=now)
        # The driver asks for the first request; a change comes at its own time (change_needs).
        # The car's charge limit is the final one from the start, as the evaluator's EVs stop at
        # their final request (evaluate.truths).
        s = EvSession(arrival, battery_for(arrival), tx, arrival.requested_kwh)
        evse.session = s
        offline = not self.connected.is_set()
        evse.status = "Occupied"
        self._queue_status(evse, now)
        self._started_acked[tx.id] = acked = asyncio.Event()
        self._queue_tx(
            messages.transaction_event(
                evse,
                event_type="Started",
                trigger="CablePluggedIn",
                when=now,
                offline=offline,
                context="Transaction.Begin",
            ),
            on_reply=lambda _r: acked.set(),
        )
        if offline:
            s.authorized = True  # offline authorization of a known token (C-block, local auth offline)
        self._queue_tx(
            messages.transaction_event(
                evse,
                event_type="Updated",
                trigger="Authorized",
                when=now,
                offline=offline,
                context=None,
                with_token=True,
            ),
            on_reply=lambda r: self._on_authorization(evse.spec.evse_id, tx.id, r),
        )
        if arrival.iso15118:
            departure = arrival.announced_departure
            self._queue(
                "NotifyEVChargingNeeds",
                {
                    "evseId": evse.spec.evse_id,
                    "chargingNeeds": messages.charging_needs(evse, departure, s.requested_kwh),
                },
                kind="needs",
            )
        elif arrival.announced_departure is not None and self.driver_app is not None:
            prefs = {"departure_time": to_rfc3339(arrival.announced_departure), "energy_kwh": s.requested_kwh}
            self._spawn(self._tell_driver_app(evse.spec.evse_id, tx.id, prefs))
        self.update(now)
        if self.on_arrival is not None:
            self.on_arrival(self, arrival)

    def change_needs(self, arrival: Arrival) -> None:
        """The driver changes the session mid-way (OPTIMUS's update injection)."""
        evse = self.evses[arrival.evse_id]
        s = evse.session
        nc = arrival.need_change
        if s is None or nc is None or s.arrival.id != arrival.id:
            return
        if nc.energy_kwh is not None:
            s.requested_kwh = nc.energy_kwh
            # The driver moves the car's charge limit with the request (energy counted from arrival).
            s.battery.max_soc = max(s.battery.soc, charge_limit_soc(arrival, nc.energy_kwh))
        departure = nc.departure or arrival.announced_departure
        if arrival.iso15118:
            # An ISO 15118 EV renegotiates: a fresh NotifyEVChargingNeeds with what is still missing.
            remaining = max(0.0, s.requested_kwh - (s.battery.stored_kwh - s.battery.drawn_kwh))
            self._queue(
                "NotifyEVChargingNeeds",
                {
                    "evseId": evse.spec.evse_id,
                    "chargingNeeds": messages.charging_needs(evse, departure, remaining),
                },
                kind="needs",
            )
        elif self.driver_app is not None:
            prefs: dict[str, Any] = {"energy_kwh": s.requested_kwh}
            if departure is not None:
                prefs["departure_time"] = to_rfc3339(departure)
            self._spawn(self._tell_driver_app(evse.spec.evse_id, s.transaction.id, prefs))

    def unplug(self, evse_id: int, ev_id: str | None = None) -> EvResult | None:
        """The EV leaves: TransactionEvent Ended with EVDeparted (E06), connector Available."""
        evse = self.evses[evse_id]
        s = evse.session
        if s is None or (ev_id is not None and s.arrival.id != ev_id):
            return None
        now = self.clock.now()
        self.update(now)
        offline = not self.connected.is_set()
        evse.target_kw = evse.power_kw = 0.0
        s.charging_state = "Idle"
        self._queue_tx(
            messages.transaction_event(
                evse,
                event_type="Ended",
                trigger="EVDeparted",
                when=now,
                offline=offline,
                context="Transaction.End",
                stopped_reason="EVDisconnected",
            )
        )
        b = s.battery
        result = EvResult(
            id=s.arrival.id,
            station_id=self.id,
            evse_id=evse_id,
            transaction_id=s.transaction.id,
            arrival=s.transaction.started,
            departure=now,
            requested_kwh=requested_kwh(s.arrival),  # scored against the final request, as offline
            delivered_kwh=b.stored_kwh - b.drawn_kwh,
            discharged_kwh=b.drawn_kwh,
            imported_kwh=b.imported_kwh,
            exported_kwh=b.exported_kwh,
            arrival_soc=s.arrival.arrival_soc,
            departure_soc=b.soc,
            capacity_kwh=s.arrival.capacity_kwh,
        )
        evse.results.append(result)
        evse.session = None
        evse.limit_kw = None
        self.profiles.end_transaction(s.transaction.id)
        self._started_acked.pop(s.transaction.id, None)
        self._deauthorized.discard(s.transaction.id)
        evse.status = "Available"
        self._queue_status(evse, now)
        if self.on_departure is not None:
            self.on_departure(self, result)
        return result

    def drop_link(self, offline_for_s: float = 0.0) -> None:
        """Cut the TCP connection without a close frame; stay away ``offline_for_s`` simulated s."""
        self._offline_until = self.clock.now() + timedelta(seconds=offline_for_s)
        ws = self._ws
        if ws is not None and ws.transport is not None:
            ws.transport.abort()

    async def send_malformed(self, text: str = '[2, "broken", "Heartbeat", {') -> None:
        """Send a frame that is not valid OCPP-J (the CSMS must answer, not hang up)."""
        if self._ws is None:
            raise RuntimeError("not connected")
        await self._ws.send(text)

    # ---- physics ----------------------------------------------------------------------------

    def update(self, now: datetime | None = None) -> None:
        """Integrate every EVSE up to ``now`` at its running setpoint, then apply the profiles in
        force now and report what changed: ChargingStateChanged when the charging state moved, else
        ChargingRateChanged when a new limit moved the power (both with a meter value)."""
        now = now or self.clock.now()
        last = self._last_update or now
        dt = (now - last).total_seconds()
        if dt > 0:
            for evse in self.evses.values():
                evse.advance(dt)
        if dt >= 0:
            self._last_update = now
        setpoints: dict[int, float] = {}
        for eid, evse in self.evses.items():
            tx = evse.session.transaction if evse.session else None
            limit_w = None if self.faults.ignore_profiles else self.profiles.limit_w(eid, now, tx)
            evse.limit_kw = None if limit_w is None else limit_w / 1000.0
            setpoints[eid] = evse.setpoint_kw(evse.limit_kw)
        self._enforce_station_max(now, setpoints)
        for eid, evse in self.evses.items():
            before_kw = evse.power_kw
            evse.target_kw = setpoints[eid]
            evse.power_kw = setpoints[eid]
            s = evse.session
            if s is None:
                continue
            # The applied limit moved (a profile was set, cleared or entered a new period); that
            # changes the charging rate only if the EV takes more than the new limit (a full or
            # tapering EV takes the same). One event per change, carrying the new state and power:
            # TransactionEvents are the CSMS's busiest message and each costs a round trip.
            limit_moved = _changed(evse.limit_kw, s.reported_limit_kw)
            if limit_moved:
                s.reported_limit_kw = evse.limit_kw
            rate_moved = limit_moved and s.authorized and _changed(evse.power_kw, before_kw)
            state = evse.charging_state_for(evse.target_kw, evse.limit_kw)
            if s.transaction.id in self._deauthorized:
                state = "SuspendedEVSE"  # the EVSE holds the energy off: the token was refused
            state_moved = state != s.charging_state
            s.charging_state = state
            if state_moved or rate_moved:
                self._queue_tx(
                    messages.transaction_event(
                        evse,
                        event_type="Updated",
                        trigger="ChargingStateChanged" if state_moved else "ChargingRateChanged",
                        when=now,
                        offline=not self.connected.is_set(),
                        context="Trigger",  # sampled because of the event, not the interval
                    )
                )

    def _enforce_station_max(self, now: datetime, setpoints: dict[int, float]) -> None:
        """A ChargingStationMaxProfile caps the station's total import (K01: evseId 0)."""
        if self.faults.ignore_profiles:
            return
        total_w = self.profiles.station_max_w(now)
        charging = sum(p for p in setpoints.values() if p > 0)
        if total_w is None or charging <= max(total_w / 1000.0, 0.0):
            return
        share = max(total_w / 1000.0, 0.0) / charging
        for eid, p in setpoints.items():
            if p > 0:
                setpoints[eid] = p * share

    def _profiles_changed(self) -> None:
        """A profile was set or cleared: applied now, and the physics loop looks again for the
        next boundary."""
        self.update()
        self._profiles_moved.set()

    async def _physics_loop(self) -> None:
        step = max(self.config.physics_step_sim_s, self.config.physics_min_step_real_s * self.clock.scale)
        while True:
            now = self.clock.now()
            wake = now + timedelta(seconds=step)
            # A profile period that starts before the next tick takes effect at its boundary, not
            # up to a tick late (at a high time scale a tick is minutes of simulated time); a
            # profile set meanwhile wakes the loop to look again.
            txs = {eid: e.session.transaction if e.session else None for eid, e in self.evses.items()}
            boundary = self.profiles.next_change(now, timedelta(seconds=step), txs)
            self._profiles_moved.clear()
            sleep = asyncio.ensure_future(self.clock.sleep_until(min(wake, boundary) if boundary is not None else wake))
            moved = asyncio.ensure_future(self._profiles_moved.wait())
            try:
                await asyncio.wait([sleep, moved], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (sleep, moved):
                    t.cancel()
            if sleep.done() and not sleep.cancelled():
                self.update()

    async def _meter_loop(self) -> None:
        """TransactionEvent Updated with MeterValuePeriodic every TxUpdatedInterval (E02 / J02)."""
        every = self.config.meter_interval_sim_s
        # Stations power up at scattered moments, so their sample timers are out of phase.
        due = self.clock.now() + timedelta(seconds=every * (0.5 + self._rng.random()))
        while True:
            await self.clock.sleep_until(due)
            now = self.clock.now()
            self._note_lag(now, due)
            due += timedelta(seconds=every)
            if due <= now:
                # Fell behind by more than an interval: skip the missed samples, never burst.
                due = now + timedelta(seconds=every)
            self.update(now)
            for evse in self.evses.values():
                if evse.session is not None:
                    self._queue_tx(
                        messages.transaction_event(
                            evse,
                            event_type="Updated",
                            trigger="MeterValuePeriodic",
                            when=now,
                            offline=not self.connected.is_set(),
                        ),
                        periodic=True,
                    )

    async def _aligned_loop(self) -> None:
        """Clock-aligned MeterValues per EVSE (J01), sent only while connected."""
        every = self.config.aligned_interval_sim_s
        while True:
            now = self.clock.now()
            epoch = now.timestamp()
            due = datetime.fromtimestamp(epoch - epoch % every + every, tz=now.tzinfo)
            await self.clock.sleep_until(due)
            self.update()
            if not self.connected.is_set():
                continue
            for evse in self.evses.values():
                self._queue(
                    "MeterValues",
                    {
                        "evseId": evse.spec.evse_id,
                        "meterValue": [messages.meter_value(evse, due, "Sample.Clock")],
                    },
                    kind="meter",
                )

    def _note_lag(self, now: datetime, due: datetime) -> None:
        lag_real = self.clock.real_seconds((now - due).total_seconds())
        if lag_real > self.max_lag_real_s:
            self.max_lag_real_s = lag_real

    # ---- outbox -------------------------------------------------------------------------------

    def _queue(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        kind: str,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if kind in ("status", "meter", "report") and not self.connected.is_set():
            return  # not kept across a lost link; status is re-sent on reconnect
        self._outbox.append(_Outgoing(action, payload, kind, on_reply))
        self._trim_outbox()
        self.drained.clear()
        self._outbox_ready.set()

    def _queue_tx(
        self,
        payload: dict[str, Any],
        *,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
        periodic: bool = False,
    ) -> None:
        self.tx_queued += 1
        self._queue("TransactionEvent", payload, kind="tx-periodic" if periodic else "tx", on_reply=on_reply)

    def _trim_outbox(self) -> None:
        if len(self._outbox) <= self.config.outbox_max:
            return
        for i, item in enumerate(self._outbox):
            if item.kind == "tx-periodic" and i > 0:
                del self._outbox[i]
                self.tx_dropped += 1
                return

    def _queue_status(self, evse: EvseState, now: datetime) -> None:
        self._queue(
            "StatusNotification",
            {
                "timestamp": to_rfc3339(now),
                "connectorStatus": evse.status,
                "evseId": evse.spec.evse_id,
                "connectorId": 1,
            },
            kind="status",
        )

    def _on_authorization(self, evse_id: int, tx_id: str, reply: dict[str, Any]) -> None:
        evse = self.evses[evse_id]
        s = evse.session
        if s is None or s.transaction.id != tx_id:
            return
        info = reply.get("idTokenInfo") or {}
        status = info.get("status", "Accepted")
        if s.authorized and status != "Accepted":
            # Authorized offline and now refused: the EVSE suspends the energy flow (C15 / E05
            # deauthorization). The energy up to now flowed under the offline authorization; the
            # Deauthorized event goes first and carries the new state, so the CSMS never sees a
            # state change ahead of the reason for it. The transaction stays open until the EV
            # leaves (StopTxOnInvalidId false).
            now = self.clock.now()
            self.update(now)
            s.authorized = False
            self._deauthorized.add(tx_id)
            evse.target_kw = evse.power_kw = 0.0
            s.charging_state = "SuspendedEVSE"
            self._queue_tx(
                messages.transaction_event(
                    evse,
                    event_type="Updated",
                    trigger="Deauthorized",
                    when=now,
                    offline=not self.connected.is_set(),
                    context="Trigger",
                )
            )
            self.update(now)  # applies the suspension; nothing further to report
            return
        s.authorized = status == "Accepted"
        self.update()

    async def _tell_driver_app(self, evse_id: int, tx_id: str, prefs: dict[str, Any]) -> None:
        acked = self._started_acked.get(tx_id)
        if acked is not None:
            await acked.wait()  # the CSMS must know the transaction before the app can address it
        assert self.driver_app is not None
        try:
            await self.driver_app(self.id, evse_id, tx_id, prefs)
        except Exception:  # the app failing is the driver's problem, not the station's
            log.exception("%s: driver app failed", self.id)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _call(self, link: _Link, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self.config.validate_messages:
            _request_validator(action)(payload)  # only schema-valid messages leave the station
        return await link.call_json(action, payload)

    async def _sender_loop(self, link: _Link) -> None:
        """Deliver the outbox in order, one CALL at a time. A TransactionEvent that gets no reply
        is sent again with a new message id, up to ``transaction_attempts`` times (E-block,
        MessageAttempts); after that it stays queued and is tried again later. An unanswered
        NotifyEVChargingNeeds is sent again as often, then dropped."""
        cfg = self.config
        while True:
            if not self._outbox:
                self._outbox_ready.clear()
                self.drained.set()
                await self._outbox_ready.wait()
                continue
            item = self._outbox[0]
            try:
                reply = await self._call(link, item.action, item.payload)
            except fastjsonschema.JsonSchemaException as exc:
                # Our own bug: never send it, never retry it, say so loudly.
                log.error("%s: dropping schema-invalid %s: %s", self.id, item.action, exc)
                if self._outbox and self._outbox[0] is item:
                    self._outbox.popleft()
                if item.kind.startswith("tx"):
                    self.tx_dropped += 1
                continue
            except (TimeoutError, OCPPError) as exc:
                self.calls_failed += 1
                item.attempts += 1
                log.debug("%s: %s failed (%s), attempt %d", self.id, item.action, exc, item.attempts)
                # An unanswered charging need is asked again like a transaction message (the EV's
                # departure is worth more than a few seconds' wait); a refused one, or one asked
                # MessageAttempts times, is given up: a CALLERROR will not change on its own.
                retry_needs = (
                    item.kind == "needs" and isinstance(exc, TimeoutError) and item.attempts < cfg.transaction_attempts
                )
                if retry_needs:
                    await asyncio.sleep(cfg.transaction_retry_interval_real_s * item.attempts)
                    continue
                if not item.kind.startswith("tx"):
                    if self._outbox and self._outbox[0] is item:
                        self._outbox.popleft()
                    continue
                if item.attempts < cfg.transaction_attempts:
                    await asyncio.sleep(cfg.transaction_retry_interval_real_s * item.attempts)
                else:
                    item.attempts = 0
                    await asyncio.sleep(cfg.transaction_park_real_s)
                continue
            if self._outbox and self._outbox[0] is item:
                self._outbox.popleft()
            if item.kind.startswith("tx"):
                self.tx_acked += 1
            if item.on_reply is not None:
                item.on_reply(reply)

    # ---- link ---------------------------------------------------------------------------------

    def _auth_header(self) -> dict[str, str]:
        if self.password is None:
            return {}
        token = base64.b64encode(f"{self.id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _backoff_s(self, attempt: int) -> float:
        """Reconnect wait: RetryBackOffWaitMinimum doubled per failed attempt up to
        RetryBackOffRepeatTimes doublings, plus 0..RetryBackOffRandomRange (2.0.1 Part 4, 5.3)."""
        cfg = self.config
        doublings = min(attempt, cfg.retry_backoff_repeat_times)
        return cfg.retry_backoff_wait_minimum_real_s * (2.0**doublings) + self._rng.uniform(
            0.0, cfg.retry_backoff_random_range_real_s
        )

    async def _link_loop(self) -> None:
        failures = 0
        first = True
        while not self._stopping:
            if self._offline_until is not None and self.clock.now() < self._offline_until:
                await self._pause(self.clock.sleep_until(self._offline_until))
            if not first:
                await self._pause(asyncio.sleep(self._backoff_s(failures)))
            first = False
            if self._stopping:
                break
            try:
                ws = await self._connect_unless_stopped()
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                failures += 1
                self._note_connect_failure(exc)
                continue
            if ws is None:
                break  # stop() came while connecting
            failures = 0
            self._ws = ws
            self.connections += 1
            try:
                await self._serve(ws)
            finally:
                self.connected.clear()
                self._ws = None
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _connect_unless_stopped(self) -> ClientConnection | None:
        """Open the WebSocket, or give up and return None when :meth:`stop` comes first. stop()
        has no link to close while a handshake is in progress: a connection completing after it
        would otherwise be served and :meth:`run` would never return."""
        attempt = asyncio.ensure_future(
            connect(
                self.url,
                subprotocols=[SUBPROTOCOL],
                additional_headers=self._auth_header(),
                open_timeout=self.config.open_timeout_real_s,
                ping_interval=self.config.ping_interval_real_s,
                compression=None,
                proxy=None,
            )
        )
        stop = asyncio.ensure_future(self._stop_event.wait())
        waited = False
        try:
            await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
            waited = True
        finally:
            stop.cancel()
            attempt.cancel()  # no-op once it has finished
            results = await asyncio.gather(attempt, stop, return_exceptions=True)
            if (self._stopping or not waited) and isinstance(results[0], ClientConnection):
                # The handshake finished in the same moment as the stop (or cancellation).
                with contextlib.suppress(Exception):
                    await results[0].close()
        if self._stopping:
            return None
        return attempt.result()  # the connection, or the reason it failed

    def _note_connect_failure(self, exc: BaseException) -> None:
        reason = connect_failure(exc, self.base_url)
        seen = self.connect_failures.get(reason, 0)
        self.connect_failures[reason] = seen + 1
        self.last_connect_failure = reason
        # Once per reason: the retries repeat it every few seconds, and a 404 or a refused
        # connection would otherwise look like a fleet that merely has not booted yet.
        (log.debug if seen else log.warning)("%s: cannot connect: %s", self.id, reason)

    async def _pause(self, sleeper: Awaitable[None]) -> None:
        """Wait for ``sleeper`` unless the station is stopped first."""
        stop = asyncio.create_task(self._stop_event.wait())
        sleep = asyncio.ensure_future(sleeper)
        await asyncio.wait({stop, sleep}, return_when=asyncio.FIRST_COMPLETED)
        for t in (stop, sleep):
            t.cancel()
        await asyncio.gather(stop, sleep, return_exceptions=True)

    async def _serve(self, ws: ClientConnection) -> None:
        link = _Link(self, ws, self.connections)
        receiver = asyncio.create_task(link.start(), name=f"{self.id}-recv")
        worker = asyncio.create_task(self._connected(link), name=f"{self.id}-work")
        try:
            await asyncio.wait({receiver, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (receiver, worker):
                t.cancel()
            for t in (receiver, worker):
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, Exception):
                    await t

    async def _connected(self, link: _Link) -> None:
        if not self.booted.is_set():
            await self._boot(link)
        self.connected.set()
        now = self.clock.now()
        # After boot (B01) and after every reconnect, report each connector's status (G01).
        # A reconnect needs no new BootNotification.
        for evse in self.evses.values():
            self._queue_status(evse, now)
        # Both loops live and die with this link: when one ends (a send on a closed link raises
        # ConnectionClosed), the other is cancelled and awaited here, so it never runs on after the
        # link has gone (gather would leave it running).
        loops = [
            asyncio.create_task(self._heartbeat_loop(link), name=f"{self.id}-heartbeat"),
            asyncio.create_task(self._sender_loop(link), name=f"{self.id}-sender"),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # re-raise what ended it
        finally:
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _boot(self, link: _Link) -> None:
        """BootNotification until Accepted (B01-B03); adopt the CSMS's time and interval."""
        while True:
            sent = self.clock.base.now()
            try:
                reply = await self._call(
                    link,
                    "BootNotification",
                    {
                        "chargingStation": {
                            "model": self.config.model,
                            "vendorName": self.config.vendor,
                            "firmwareVersion": self.config.firmware,
                            "serialNumber": self.id[:25],
                        },
                        "reason": "PowerUp",
                    },
                )
            except (TimeoutError, OCPPError):
                await asyncio.sleep(self._backoff_s(0))
                continue
            self.boot_status = reply["status"]
            if reply.get("interval", 0) > 0:
                self.heartbeat_interval_s = float(reply["interval"])
            if self.config.sync_clock_from_boot:
                self._adopt_time(parse_rfc3339(reply["currentTime"]), sent)
            if reply["status"] == "Accepted":
                self.booted.set()
                return
            # Pending / Rejected: try again after the interval the CSMS gave (B02, B03).
            await self.clock.sleep(self.heartbeat_interval_s)

    def _adopt_time(self, current: datetime, sent: datetime) -> None:
        global _window_warned
        window = self.clock_window
        if window is not None and not window[0] <= current <= window[1]:
            (log.debug if _window_warned else log.warning)(
                "%s: the CSMS's time %s is outside the simulated window %s..%s; keeping the simulation "
                "clock (start the gateway with the same --sim-start and --time-scale)",
                self.id,
                to_rfc3339(current),
                to_rfc3339(window[0]),
                to_rfc3339(window[1]),
            )
            return
        self.clock.set_time(current, sent)
        self._last_update = self.clock.now()

    async def _heartbeat_loop(self, link: _Link) -> None:
        first = True
        while True:
            wait = self.heartbeat_interval_s * ((0.5 + self._rng.random()) if first else 1.0)
            first = False
            due = self.clock.now() + timedelta(seconds=wait)
            await self.clock.sleep_until(due)
            self._note_lag(self.clock.now(), due)
            try:
                await self._call(link, "Heartbeat", {})
                self.heartbeats_sent += 1
            except (TimeoutError, OCPPError):
                self.calls_failed += 1
