"""Composition root: builds every part of the gateway on one event loop and shuts it down cleanly.

    OcppServer ──handlers──▶ repositories ──▶ Postgres
        │                        │
        └──events──▶ EventBus ◀──┘──▶ SiteState ──▶ MpcScheduler ──profiles──▶ StationCommands
                        │
                        └──▶ MqttBridge (optional)          FastAPI (REST, /metrics) on uvicorn
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn

from gateway import events as ev
from gateway import metrics
from gateway.bus.site_inputs import restore as restore_site_inputs
from gateway.clock import Clock, make_clock
from gateway.config import Settings
from gateway.db import migrate
from gateway.db.engine import make_engine, sessionmaker
from gateway.db.models import Evse
from gateway.db.planning import PlanningRepository
from gateway.db.station_changes import StationChangeListener
from gateway.db.stations import SecurityEventRepository, StationRepository, StationRow, TokenRepository
from gateway.db.telemetry import TelemetryWriter
from gateway.db.transactions import TransactionRepository, TxSnapshot
from gateway.domain import DischargeDialect, EvseSpec
from gateway.logs import setup_logging
from gateway.ocpp.commands import StationCommands
from gateway.ocpp.defaults import DefaultProfiles
from gateway.ocpp.handlers import Handlers
from gateway.ocpp.ports import StationContext
from gateway.ocpp.server import OcppServer
from gateway.ordered import OrderedTasks
from gateway.site_sync import SiteSync
from gateway.state import SiteState

log = logging.getLogger(__name__)

# The longest wait between two reads of a connected station's registration while the database
# is away.
REFRESH_RETRY_MAX_S = 60.0
# Registration reads at once: a bulk registration (`gateway sim --register` of a thousand
# stations) notifies once per station, and its reads must not take the pool the stations'
# messages are stored through.
REGISTRATION_READS_AT_ONCE = 2
# How long a stop waits for background writes (connected flags) before cancelling them.
BACKGROUND_STOP_WAIT_S = 2.0


class _Observer:
    """Connection bookkeeping: the station row, the connected gauge and the domain event."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        # The connected flags being written, in order per station.
        self.flag_writes: OrderedTasks[str] = OrderedTasks(gw.spawn)

    def _write_connected(self, ctx: StationContext, connected: bool) -> None:
        """Store the connected flag in the background: the connection is served meanwhile (a slow
        or absent database held every station's first messages for the pool's timeout), and one
        station's writes land in the order they happened (across nodes, by when each connection
        was opened: :meth:`StationRepository.set_connected`)."""
        now = self._gw.clock.now()
        station_id = ctx.station_id

        async def write() -> None:
            with contextlib.suppress(Exception):  # the flag is informative; the registry decides
                await self._gw.stations.set_connected(station_id, connected, now, self._gw.settings.node_id,
                                                      ctx.opened_at)

        self.flag_writes.add(station_id, write)

    async def station_connected(self, ctx: StationContext) -> None:
        metrics.STATIONS_CONNECTED.set(self._gw.ocpp.registry.count())
        self._gw.bus.publish(ev.StationConnected(self._gw.clock.now(), ctx.station_id))
        # Registered from another process (`gateway station add --evse`, `gateway sim --register`)
        # while this one ran, or while no notification reached it: its EVSEs' ratings are read as
        # it comes, in the background (a slow database must not hold up the connection).
        self._gw.read_registration(ctx.station_id)
        self._write_connected(ctx, True)

    async def station_disconnected(self, ctx: StationContext, close_code: int | None) -> None:
        metrics.STATIONS_CONNECTED.set(self._gw.ocpp.registry.count())
        if self._gw.ocpp.registry.get(ctx.station_id) is not None:
            return  # replaced by a newer connection: the station is still online
        self._gw.bus.publish(ev.StationDisconnected(self._gw.clock.now(), ctx.station_id))
        self._write_connected(ctx, False)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn on our loop: signals belong to the gateway (close stations first), not to uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """The running central system. ``await start()``; ``await stop()``."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        if not settings.database_url:
            raise ValueError("a database URL is required (--database-url or GATEWAY_DATABASE_URL)")
        self.settings = settings
        self.clock = clock or make_clock(settings.time_scale, settings.sim_start)
        self.engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
        self.sessions = sessionmaker(self.engine)
        self.bus = ev.EventBus()
        self.stations = StationRepository(self.sessions)
        self.transactions = TransactionRepository(self.sessions)
        self.planning = PlanningRepository(self.sessions)
        self.tokens = TokenRepository(self.sessions)
        self.security = SecurityEventRepository(self.sessions, self.clock.now)
        self.telemetry = TelemetryWriter(
            self.engine, max_rows=settings.meter_buffer_rows_max, flush_rows=settings.meter_flush_rows,
            flush_interval_s=settings.meter_flush_interval_s, retry_interval_s=settings.db_retry_interval_s,
        )
        self.handlers = Handlers(
            settings=settings, clock=self.clock, stations=self.stations, transactions=self.transactions,
            planning=self.planning, tokens=self.tokens, telemetry=self.telemetry, security=self.security,
            bus=self.bus,
        )
        self.ocpp = OcppServer(settings, self.clock, self.stations, self.handlers, self.security, _Observer(self))
        self.commands = StationCommands(self.ocpp.registry, settings)
        self.state = SiteState.from_settings(settings)
        self.site_sync = SiteSync(self)
        self.default_profiles = DefaultProfiles(self)
        self.scheduler: Any = None
        self.mqtt: Any = None
        self._uvicorn: uvicorn.Server | None = None
        self._api_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._released: list[str] = []  # stations marked disconnected at start (see _load_state)
        # Registration changes written by any process (another node's REST API, `gateway station
        # add|disable`), read again one after the other per station.
        self._refreshes: OrderedTasks[str] = OrderedTasks(self.spawn)
        self._registration_reads = asyncio.Semaphore(REGISTRATION_READS_AT_ONCE)
        self.station_changes = StationChangeListener(
            self.engine, self.registration_changed, self._read_connected_stations,
            retry_interval_s=settings.db_retry_interval_s)
        self.ocpp_port = 0
        self.api_port = 0

    async def start(self) -> None:
        if self.settings.migrate:
            await migrate.upgrade_async(self.settings.database_url or "")
        await self._load_state()
        self.telemetry.start()
        self.station_changes.start()
        self.site_sync.start()
        if self.settings.scheduler_enabled:
            from gateway.scheduler.mpc import MpcScheduler

            # Only a planning gateway caps chargers until their plan arrives; a plain CSMS doesn't.
            self.default_profiles.start()
            self.scheduler = MpcScheduler(self)
            self.site_sync.listeners.append(self.scheduler.on_event)
            await self.scheduler.start()
        if self.settings.mqtt_url:
            from gateway.bus.mqtt import MqttBridge

            self.mqtt = MqttBridge(self)
            await self.mqtt.start()
        for station_id in self._released:
            # Said on the bus (so MQTT's retained station status) before any station is let in.
            self.bus.publish(ev.StationDisconnected(self.clock.now(), station_id))
        self._released = []
        self.ocpp_port = await self.ocpp.start()
        await self._start_api()
        log.info("gateway up: OCPP on port %d, REST on port %d", self.ocpp_port, self.api_port)

    async def _load_state(self) -> None:
        """Rebuild the live picture from Postgres: site inputs set over REST/MQTT, EVSEs, dialects
        and the open sessions with their needs and preferences."""
        await restore_site_inputs(self)
        # Stations this node held when it last stopped without closing them (a crash, SIGKILL):
        # no connection is open here yet, so none is connected through this node. Another node's
        # stations are left to it.
        self._released = await self.stations.release_node(self.settings.node_id)
        if self._released:
            log.info("%d station(s) held by this node (%s) before it stopped marked disconnected",
                     len(self._released), self.settings.node_id)
        stations = {s.id: s for s in await self.stations.list(limit=1_000_000)}
        self.default_profiles.limit_taken.update(
            {s.id: s.default_limit_kw for s in stations.values() if s.default_limit_kw is not None})
        self.default_profiles.sent.update(
            {s.id: s.default_answer for s in stations.values() if s.default_answer is not None})
        for e in await self.stations.evses():
            self._adopt_evse(e, stations.get(e.station_id))
        newest: dict[tuple[str, int], TxSnapshot] = {}
        crowded: set[tuple[str, int]] = set()  # EVSEs with more than one open transaction
        for tx in await self.transactions.active():
            if tx.evse_id is None or tx.started_at is None:
                continue
            key = (tx.station_id, tx.evse_id)
            known = newest.get(key)
            if known is not None:
                crowded.add(key)
            if known is None or (known.started_at is not None and tx.started_at > known.started_at):
                newest[key] = tx
        for key in crowded:
            tx = newest[key]
            assert tx.started_at is not None
            # An EVSE carries one transaction: any other left open (its Ended lost) is closed.
            await self.transactions.supersede(key[0], key[1], tx.transaction_id, tx.started_at)
        for tx in newest.values():
            assert tx.evse_id is not None and tx.started_at is not None
            needs = await self.planning.session_needs(tx.station_id, tx.evse_id, tx.transaction_id, tx.started_at)
            prefs = await self.planning.preferences(tx.station_id, tx.transaction_id)
            self.state.evse(tx.station_id, tx.evse_id).session = tx.as_session(needs, prefs)
            self.handlers.active_tx[(tx.station_id, tx.evse_id)] = tx.transaction_id

    def _adopt_evse(self, e: Evse, row: StationRow | None) -> bool:
        """A stored EVSE and its station's row into the live state (:meth:`adopt_evse`)."""
        spec = EvseSpec(e.station_id, e.evse_id, e.max_charge_kw, e.max_discharge_kw, e.bidirectional, e.phases)
        if row is None:
            return self.adopt_evse(spec)
        return self.adopt_evse(spec, DischargeDialect(row.discharge_dialect), row.discharge_undeclared_evs)

    def adopt_evse(self, spec: EvseSpec, dialect: DischargeDialect | None = None,
                   discharge_undeclared_evs: bool | None = None) -> bool:
        """Put a registered EVSE (its ratings; its station's discharge dialect and switch, where
        ``dialect`` is given) in the live state; True when that changed what the site plans with."""
        st = self.state.evse(spec.station_id, spec.evse_id)
        before = (st.spec, st.dialect, st.discharge_undeclared_evs)
        st.spec = spec
        if dialect is not None:
            st.dialect = dialect
            st.discharge_undeclared_evs = discharge_undeclared_evs
        return (st.spec, st.dialect, st.discharge_undeclared_evs) != before

    def registration_changed(self, station_id: str) -> None:
        """Another process (or this one) changed the station's registration: the copy read at its
        last login is not used while the database is away (its password may have changed), and it
        is read again (:meth:`read_registration`)."""
        self.ocpp.forget_registration(station_id)
        self.read_registration(station_id)

    def read_registration(self, station_id: str) -> None:
        """:meth:`refresh_station` in the background, after any read of the station still under
        way: reads land in the order they were asked for."""
        self._refreshes.add(station_id, lambda: self.refresh_station(station_id))

    def _read_connected_stations(self) -> None:
        """Listening (again): changes notified while no one listened are lost, so every station
        connected here is read again."""
        for station_id in self.ocpp.registry.connected_ids():
            self.read_registration(station_id)

    async def refresh_station(self, station_id: str) -> None:
        """Read a station's registration again (at its connection, and whenever any process
        changed it: :mod:`gateway.db.station_changes`): a disabled station's live connection is
        closed, as is one logged in with a password since replaced, and the site is re-planned if
        its EVSEs changed. Tried again while the database is away, as long as the station stays
        connected (a connection may last days)."""
        wait = self.settings.db_retry_interval_s
        while True:
            read_from = time.monotonic()
            try:
                async with self._registration_reads:
                    found = await self.stations.registration(station_id)
                    evses = await self.stations.evses([station_id])
                break
            except Exception as exc:  # what was known stands meanwhile
                log.warning("registration of %s not read again yet: %s", station_id, exc)
            await asyncio.sleep(wait)
            wait = min(2 * wait, REFRESH_RETRY_MAX_S)
            if self.ocpp.registry.get(station_id) is None:
                return  # gone: its next connection reads it
        row, creds = found if found is not None else (None, None)
        if row is not None and not row.enabled:
            await self.ocpp.shut_out(station_id)  # disabled by any node or `gateway station disable`
            return
        # A new password (`station add` again) or security profile ends a session logged in on the
        # old one: a password is replaced because it leaked, or the station's set-up changed.
        await self.ocpp.check_terms(station_id, creds, read_from)
        # Enabled again: a disable heard before this read is not outlived (one after it stands).
        self.ocpp.let_in(station_id, enabled_as_of=read_from)
        changed = [self._adopt_evse(e, row) for e in evses]
        if any(changed):
            log.info("%s: EVSE ratings or discharge dialect registered meanwhile, now in force", station_id)
            self.bus.publish(ev.SiteInputsChanged(self.clock.now(), "evses"))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background until it ends or the gateway stops."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _start_api(self) -> None:
        from gateway.api.app import create_api

        api = create_api(self)
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.api_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.api_host, self.settings.api_port))
        sock.listen(128)
        sock.setblocking(False)
        self.api_port = int(sock.getsockname()[1])
        config = uvicorn.Config(api, lifespan="off", log_config=None, access_log=False)
        self._uvicorn = _EmbeddedUvicorn(config)
        self._api_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="api")
        while not self._uvicorn.started:
            if self._api_task.done():
                self._api_task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Close every station with 1001, flush telemetry, stop planning and serving."""
        await self.station_changes.stop()
        await self.ocpp.stop()
        await self.handlers.close()
        if self._background:  # the stations' last connected flags, briefly
            await asyncio.wait(self._background, timeout=BACKGROUND_STOP_WAIT_S)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        # Flushed now: only the stations' handlers feed it, and they are closed. Last, it waited
        # behind the scheduler, MQTT and the API (several 5-s waits each), and a process killed at
        # its stop deadline lost meter values the stations had been answered for.
        await self.telemetry.close()
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.site_sync.stop()
        await self.default_profiles.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self._uvicorn is not None and self._api_task is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._api_task, 5)
        await self.engine.dispose()


async def run_until_signal(settings: Settings) -> None:
    gw = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gw.start()
    except BaseException:
        # A start that failed half way (a port taken, a database not migrated) closes what it had
        # opened: stations already connected get their 1001, the pool is given back.
        await gw.stop()
        raise
    await stop.wait()
    log.info("shutting down: closing stations with 1001")
    await gw.stop()


def serve(settings: Settings) -> int:
    setup_logging(settings.log_level, settings.log_json)
    if not settings.database_url:
        print("error: no database URL (--database-url or GATEWAY_DATABASE_URL)", file=sys.stderr)
        return 2
    asyncio.run(run_until_signal(settings))
    return 0
