"""`gateway demo`: the whole system on one machine, end to end.

A generated workplace day (50 bidirectional chargers, a grid event in the afternoon) runs through
the real gateway (OCPP over WebSockets, Postgres, the MPC) at ``--time-scale`` (600: a day in
2.4 minutes). The simulated fleet and the gateway share one scaled clock; a simulated building
energy system sends the building's load now and the episode's day-ahead forecast of it (never the
true load to come). At the end it prints what the drivers got, what the site paid and earned, the
same day under uncontrolled charging (the offline evaluator on the same episode), and writes an
HTML report and a JSON summary.

The simulated day begins only once the gateway is up and every station booted, or after
``BOOT_WAIT_REAL_S`` saying how many did (``DemoClock``).
The demo exits 1, saying why on stderr, when its figures do not describe the day it set out to
show: the site over a limit, a station that never booted or whose task failed, an EV due that never
plugged in, no plan or only fallback plans, the event loop lagging by simulated minutes, or a
worker thread (a hung solve) still busy at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
import numpy as np

from gateway import metrics
from gateway.app import Gateway
from gateway.bus.site_inputs import SiteInputs
from gateway.clock import ScaledClock, parse_rfc3339, to_rfc3339
from gateway.config import UNMET_PENALTY_PER_KWH, Settings, SiteConfig, TouPeriodConfig
from gateway.db import migrate
from gateway.db.admin import register_stations
from gateway.db.embedded import embedded_postgres
from gateway.domain import TxKey
from gateway.episode import Episode
from gateway.logs import setup_logging
from gateway.scheduler.slots import SlotRules, announcement_margin
from simulators.evse import FULLY_SERVED_TOLERANCE_KWH
from simulators.fleet import Fleet, run_failures, run_fed
from simulators.models import FORECAST_HEAT_SD
from simulators.site_feed import pushed_forecast
from simulators.station import StationConfig

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

STEP_S = 300  # the bill is computed on 5-minute averages, as the evaluator does
SAMPLE_S = 60
# Simulated seconds between heartbeats. A station has one CALL in flight at a time, so at 600x a
# 300 s heartbeat (two a real second per station) queued ahead of its TransactionEvents: measured,
# the gateway heard of plug-ins, meter values and departures 30-60 simulated minutes late in the
# afternoon. An hour is 6 real seconds at 600x, and liveness needs no more.
HEARTBEAT_SIM_S = 3600
# The building's load is sent when it changes, and at least this often (simulated seconds).
LOAD_REFRESH_SIM_S = 900
# How long the day waits for every station to boot (real seconds): one that never does (refused,
# unreachable) is then left out, and the demo fails naming it.
BOOT_WAIT_REAL_S = 30.0
# An EV that plugged in later than this after its arrival time is flagged (simulated minutes):
# its stay, and what it could be given, was shorter than the episode's.
PLUG_IN_LATE_MIN = 5.0
# The worst lateness of the stations' timed work (simulated minutes) the demo accepts: beyond it
# the machine, not the gateway, decided when things happened (one 5-minute step of the bill).
LAG_LIMIT_SIM_MIN = 5.0
# At the end, how long a worker thread (a solve) still running is waited for (real seconds).
WORKERS_STOP_WAIT_S = 10.0


class DemoClock(ScaledClock):
    """The demo's scaled clock: it stands at its start until :meth:`begin`, so the simulated day
    begins once the gateway is up and the stations booted. Started before, at 600x the few real
    seconds of start-up were half an hour of the day: the EVs due then plugged in late. A sleep
    begun meanwhile wakes at the simulated time it was for (not after as many real seconds, when
    the clock may still stand at its start)."""

    def __init__(self, start: datetime, scale: float) -> None:
        super().__init__(start, scale)
        self._began: float | None = None  # real monotonic seconds at begin()
        self._begun = asyncio.Event()

    def now(self) -> datetime:
        if self._began is None:
            return self.start
        return self.start + timedelta(seconds=(time.monotonic() - self._began) * self.scale)

    async def sleep(self, seconds: float) -> None:
        if self._began is None:
            wake = self.start + timedelta(seconds=max(0.0, seconds))
            await self._begun.wait()
            seconds = (wake - self.now()).total_seconds()
        await super().sleep(seconds)

    def begin(self) -> None:
        if self._began is None:
            self._began = time.monotonic()
            self._begun.set()

    @property
    def began(self) -> bool:
        return self._began is not None


class WorkerPool(ThreadPoolExecutor):
    """The demo's default executor (``asyncio.to_thread``'s). A thread cannot be stopped, and
    ``asyncio.run`` waits for every worker at its end: a hung solve (one past its time limit, which
    the scheduler already replaced by its fallback) kept the demo from ever exiting. This pool waits
    for running work a bounded time at shutdown; :meth:`busy` tells what is left."""

    def __init__(self, stop_wait_s: float = WORKERS_STOP_WAIT_S) -> None:
        super().__init__(thread_name_prefix="demo-worker")
        self.stop_wait_s = stop_wait_s
        self._running: set[Future[Any]] = set()
        self._running_lock = threading.Lock()

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        fut = super().submit(fn, *args, **kwargs)
        with self._running_lock:
            self._running.add(fut)
        fut.add_done_callback(self._finished)
        return fut

    def _finished(self, fut: Future[Any]) -> None:
        with self._running_lock:
            self._running.discard(fut)

    def busy(self) -> int:
        """Work submitted and not finished (running, or queued behind what runs)."""
        with self._running_lock:
            return len(self._running)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        if wait:
            with self._running_lock:
                running = list(self._running)
            wait_futures(running, timeout=self.stop_wait_s)


def run_bounded(main: Coroutine[Any, Any, int], workers: WorkerPool) -> int:
    """``asyncio.run(main)`` with ``workers`` as the default executor; if a worker is still busy at
    the end (past ``workers.stop_wait_s``), say so and end the process at once with a failure:
    the interpreter would otherwise wait for that thread at exit, for ever. ``main`` has cleaned up
    by then (the embedded Postgres is stopped inside it)."""

    terminated = False

    async def with_workers() -> int:
        nonlocal terminated
        loop = asyncio.get_running_loop()
        loop.set_default_executor(workers)
        task = asyncio.current_task()
        assert task is not None

        def on_term() -> None:
            # SIGTERM (timeout, docker stop, systemd) as Ctrl-C is: the run is cancelled and its
            # clean-up runs. The default action killed the process at once, leaving the embedded
            # Postgres running and its data directory behind.
            nonlocal terminated
            terminated = True
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        status = asyncio.run(with_workers())
    except KeyboardInterrupt:
        status = 130
    except asyncio.CancelledError:
        if not terminated:
            raise
        status = 128 + signal.SIGTERM
    busy = workers.busy()
    if busy:
        print(f"gateway demo: FAILED: {busy} worker thread(s) still busy {workers.stop_wait_s:g} s after the "
              "day ended (a solve that ignored its time limit?); exiting without waiting for them",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status or 1)
    return status


@dataclass
class Belief:
    """What the gateway knew of one session, sampled from its live site state while it ran."""

    seen_at: datetime  # first sample with the session in the gateway's state
    planned_at: datetime | None = None  # first sample with the session in the latest plan
    gone_at: datetime | None = None  # first sample without it, after it was seen
    departure: datetime | None = None
    departure_source: str = ""
    plan_by: datetime | None = None  # the departure less the margin kept for EV announcements
    need_kwh: float | None = None
    need_source: str = ""
    delivered_kwh: float = 0.0  # battery side, from the gateway's meter readings


@dataclass
class Beliefs:
    """Per transaction id, what the gateway believed (sampled every STEP_S)."""

    by_tx: dict[TxKey, Belief] = field(default_factory=dict)
    _last: datetime | None = None

    def sample(self, gw: Gateway, now: datetime) -> None:
        if self._last is not None and (now - self._last).total_seconds() < STEP_S:
            return
        self._last = now
        state = gw.state
        margin = SlotRules().announced_margin
        if gw.scheduler is not None:
            margin = announcement_margin(gw.scheduler.forecaster, gw.settings.site.name)
        live: set[TxKey] = set()
        for s in state.sessions():
            tx = s.tx_key
            live.add(tx)
            b = self.by_tx.get(tx)
            if b is None:
                b = self.by_tx[tx] = Belief(seen_at=now)
            if b.planned_at is None and gw.scheduler is not None and gw.scheduler.session_plan(*tx) is not None:
                b.planned_at = now
            r = state.resolve(s, now)
            b.departure, b.departure_source = r.departure, r.departure_source
            b.plan_by = r.departure - margin if r.departure_source == "ev" else r.departure
            b.need_kwh, b.need_source = r.energy_wanted_kwh, r.energy_source
            b.delivered_kwh = s.stored_kwh(gw.settings.ev_efficiency)
        for tx, b in self.by_tx.items():
            if b.gone_at is None and tx not in live:
                b.gone_at = now


@dataclass
class SiteMeter:
    """The site's net import per 5-minute step of the whole episode, counted as the evaluator
    counts its baseline: the building's load at each step's start plus what the EVs took from the
    grid over the step. That EV energy is the rise of the simulated EVSE meters' registers (the
    sum of import less export), read every simulated minute and interpolated at the step edges:
    the power setpoints sampled instead overstate what a battery near its taper takes, and a step
    with no reading (before the fleet starts, or while the event loop lags) would drop its energy
    from the bill and make the savings look larger."""

    episode: Episode
    times: list[datetime] = field(default_factory=list)
    net_kw: list[float] = field(default_factory=list)
    ev_kw: list[float] = field(default_factory=list)
    # (seconds since the episode's start, the EVSEs' net grid energy so far in kWh)
    _readings: list[tuple[float, float]] = field(default_factory=list)

    def read(self, now: datetime, ev_net_kwh: float) -> None:
        t = (now - self.episode.start).total_seconds()
        if not self._readings or t > self._readings[-1][0]:
            self._readings.append((t, ev_net_kwh))

    def finish(self) -> None:
        ep = self.episode
        n = int((ep.end - ep.start).total_seconds() // STEP_S)
        # The registers start at zero with the fleet: nothing was taken before the first reading.
        xs = [0.0] + [t for t, _ in self._readings if t > 0.0]
        ys = [0.0] + [kwh for t, kwh in self._readings if t > 0.0]
        energy = np.interp(np.arange(n + 1) * STEP_S, xs, ys)
        ev_kw = np.diff(energy) / (STEP_S / 3600.0)
        self.times = [ep.start + timedelta(seconds=STEP_S * i) for i in range(n)]
        self.ev_kw = [float(x) for x in ev_kw]
        self.net_kw = [ep.building_load_at(t) + x for t, x in zip(self.times, self.ev_kw, strict=True)]

    def bill(self) -> dict[str, float]:
        from gateway.scheduler.inputs import prorated_demand_charge

        ep = self.episode
        h = STEP_S / 3600.0
        net = np.array(self.net_kw)
        imp, exp = np.maximum(net, 0.0), np.maximum(-net, 0.0)
        prices = np.array([ep.tariff.prices_at(t) for t in self.times]).reshape(-1, 2)
        building = np.array([ep.building_load_at(t) for t in self.times])
        pay = np.array([max([g.payment_per_kwh for g in ep.grid_events
                             if g.active_at(t) and g.kind.value == "export_request"], default=0.0)
                        for t in self.times])
        demand = prorated_demand_charge(ep.tariff.demand_charge_per_kw, ep.end - ep.start)
        energy_cost = float(h * (prices[:, 0] @ imp - prices[:, 1] @ exp))
        peak = float(imp.max(initial=0.0))
        over_import, over_export = self.excess_kw()
        return {"bill": energy_cost + demand * peak, "energy_cost": energy_cost, "demand_charge": demand * peak,
                "grid_event_revenue": float(h * pay @ (building - net)), "peak_import_kw": peak,
                "limit_excess_kw_max": float(np.maximum(over_import, over_export).max(initial=0.0))}

    def excess_kw(self) -> tuple[np.ndarray, np.ndarray]:
        """Per step, the kW over the import limit and over the export limit (0 where within).
        Both ways, as the evaluator counts a limit excess."""
        net = np.array(self.net_kw, dtype=float)
        lim = self.episode.limits
        return np.maximum(net - lim.import_kw, 0.0), np.maximum(-net - lim.export_kw, 0.0)


# What the demo tolerates over a limit: float noise, not power.
LIMIT_EXCESS_TOLERANCE_KW = 1e-6


def limit_exceeded(meter: SiteMeter) -> str | None:
    """Why the demo fails when the site went over its import or export limit (None: it never did):
    by how much at worst, in which 5-minute step, and in how many steps."""
    over_import, over_export = meter.excess_kw()
    excess = np.maximum(over_import, over_export)
    if excess.max(initial=0.0) <= LIMIT_EXCESS_TOLERANCE_KW:
        return None
    i = int(np.argmax(excess))
    kind, limit = (("import", meter.episode.limits.import_kw) if over_import[i] >= over_export[i]
                   else ("export", meter.episode.limits.export_kw))
    steps = int((excess > LIMIT_EXCESS_TOLERANCE_KW).sum())
    return (f"the site exceeded its {kind} limit of {limit:g} kW by {excess[i]:.3f} kW at worst "
            f"(the {STEP_S // 60}-minute average from {to_rfc3339(meter.times[i])}; "
            f"{steps} of {len(excess)} steps over a limit)")


def exit_status(meter: SiteMeter, failures: Iterable[str] = ()) -> int:
    """The demo's exit code: 1 when the site went over a limit or anything in ``failures`` (see
    :func:`run_problems`) happened, each said on stderr (``make demo`` would otherwise report only
    its Error 1), else 0."""
    found = [f for f in (limit_exceeded(meter), *failures) if f is not None]
    for failure in found:
        print(f"gateway demo: FAILED: {failure}", file=sys.stderr)
    return 1 if found else 0


def run_problems(result: dict[str, Any]) -> list[str]:
    """Why the demo's figures do not describe the day it set out to show (empty: they do): what
    the fleet lost (stations that never booted or failed, EVs that never plugged in), no plan or
    only fallback plans, and the event loop lagging by more than ``LAG_LIMIT_SIM_MIN``."""
    live = result["live"]
    out = run_failures(result["fleet"])
    plans, fallback = live["plans"], live["plans_fallback"]
    if plans == 0:
        out.append("the scheduler made no plan: the EVs charged on the stations' defaults")
    elif fallback >= plans:
        out.append(f"all {plans} plans were the scheduler's fallback (greedy), none solved: see the log "
                   "(--log-level WARNING shows each solver failure)")
    lag = live["max_lag_sim_min"]
    if lag > LAG_LIMIT_SIM_MIN:
        out.append(f"the event loop lagged by up to {lag:.1f} simulated minutes (limit {LAG_LIMIT_SIM_MIN:g}): "
                   "the machine is too busy for this time scale; try a lower --time-scale")
    return out


def _port_or_any(port: int) -> int:
    """The asked port if it is free, else 0 (any free port; the demo prints the one it got)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def site_config(ep: Episode) -> SiteConfig:
    return SiteConfig(
        name=ep.name or "demo", import_limit_kw=ep.limits.import_kw, export_limit_kw=ep.limits.export_kw,
        demand_charge_per_kw=ep.tariff.demand_charge_per_kw, wear_cost_per_kwh=ep.wear_cost_per_kwh,
        # The demo bills the peak of 5-minute averages (as the evaluator does): the gateway's peak
        # so far is measured the same way.
        demand_interval_min=STEP_S / 60.0,
        tou=[TouPeriodConfig(start_hour=p.start_hour, end_hour=p.end_hour, import_price=p.import_price,
                             export_price=p.export_price) for p in ep.tariff.periods])


def cli(settings: Settings, args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        # The demo's site is its episode's (limits, tariff, grid event): the offline baseline it is
        # compared with is planned on the same one.
        print("gateway demo: error: --config is not used by the demo (its site comes with the simulated "
              "day); give it to `gateway serve`", file=sys.stderr)
        return 2
    # Quiet unless asked: the fleet's progress line shares the terminal.
    setup_logging(getattr(args, "log_level", None) or "WARNING", settings.log_json)
    return run_bounded(_main(settings, args), WorkerPool())


# The demo's day by default. On most of the days the generator draws, the MPC lends a few EVs to
# the export request; on this one it lends most (66.6 kWh offline), while four drivers use the
# app, so a first run shows V2G and the REST API at work (``bench/demo_days.py`` plans 24 of them:
# on seeds 7, 12, 15 and 20, the earlier default among them, it discharges nothing).
DEMO_SEED = 17


def demo_episode(stations: int, seed: int = DEMO_SEED) -> Episode:
    """The demo's day: one workplace day, every charger bidirectional, an export request in the
    afternoon (the benchmarks that replay it offline take it from here)."""
    from simulators.scenario import ScenarioOptions, generate

    return generate(ScenarioOptions(site="workplace", stations=stations, days=1, seed=seed,
                                    bidirectional_share=1.0, grid_event="always"))


async def transactions_held(url: str) -> int:
    """How many charging transactions the database at ``url`` holds."""
    from sqlalchemy import text

    from gateway.db.engine import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM transactions"))).scalar_one())
    finally:
        await engine.dispose()


async def _main(settings: Settings, args: argparse.Namespace) -> int:
    episode = demo_episode(args.stations, DEMO_SEED if args.seed is None else args.seed)
    with ExitStack() as stack:
        url = settings.database_url
        if not url:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-demo-pg-"))
            print("starting an embedded Postgres (no GATEWAY_DATABASE_URL given) ...", flush=True)
            url = stack.enter_context(embedded_postgres(Path(data) / "pgdata"))
        await migrate.upgrade_async(url)
        if settings.database_url and (held := await transactions_held(url)):
            # The scheduler learns dwell, arrivals and peaks from the sessions it finds: an earlier
            # run's on this date would tell it the very day it is about to be shown.
            print(f"gateway demo: error: the database given (--database-url / GATEWAY_DATABASE_URL) already "
                  f"holds {held} charging transaction(s), an earlier run's: the gateway would learn the day "
                  "it simulates from them; give --database-url an empty database, or none for an embedded one",
                  file=sys.stderr)
            return 2
        return await _run(settings, args, episode, url)


def solve_counts() -> tuple[int, int]:
    """The scheduler's solves so far in this process, and how many of them were its fallback
    (greedy) plan: ``MpcScheduler.solves`` counts both alike; the solves metric tells them apart."""
    total = fallback = 0
    for family in metrics.SOLVES.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                total += int(sample.value)
                if sample.labels.get("status") == "fallback":
                    fallback += int(sample.value)
    return total, fallback


async def _run(settings: Settings, args: argparse.Namespace, episode: Episode, url: str) -> int:
    from simulators.fleet import format_summary

    password = secrets.token_urlsafe(18)
    api_key = settings.api_key or secrets.token_urlsafe(18)
    clock = DemoClock(episode.start, args.time_scale)  # stands still until everything is up
    cfg = settings.model_copy(update={
        "database_url": url, "api_key": api_key, "site": site_config(episode), "time_scale": args.time_scale,
        "ocpp_host": "127.0.0.1", "api_host": "127.0.0.1", "ocpp_port": _port_or_any(args.ocpp_port),
        "api_port": _port_or_any(args.api_port), "mqtt_url": args.mqtt_url or settings.mqtt_url,
        "replan_debounce_s": 0.5, "heartbeat_interval_s": HEARTBEAT_SIM_S,
    })
    gw = Gateway(cfg, clock)
    app: DriverApp | None = None
    solves_before = solve_counts()
    try:
        # Inside the try: a start that fails half way still closes what it opened.
        await _register(gw, episode, password)
        await gw.start()
        # A key made for this run is shown so the REST API can be tried; the operator's own is never
        # printed (it is a secret, and they know it).
        shown = "GATEWAY_API_KEY" if settings.api_key else api_key
        print(f"gateway up: OCPP ws://127.0.0.1:{gw.ocpp_port}/ocpp, REST http://127.0.0.1:{gw.api_port}/docs "
              f"(operator key: {shown})", flush=True)
        print(f"simulating {episode.name or 'a workplace day'}: {len(episode.stations)} bidirectional chargers, "
              f"{len(episode.arrivals)} EVs, site limit {episode.limits.import_kw:.0f} kW, "
              f"{len(episode.grid_events)} grid event(s), at {args.time_scale:g}x", flush=True)
        meter = SiteMeter(episode)
        beliefs = Beliefs()
        app = DriverApp(f"http://127.0.0.1:{gw.api_port}", api_key, clock)
        # Sampling every 15 simulated minutes: at 600x a 1-minute cadence would be 1,000 TransactionEvents
        # a second from 100 EVSEs, more than one gateway core commits (docs/benchmarks.md), and every
        # station's queue (one CALL in flight) would fall hours of simulated time behind.
        stations = StationConfig(meter_interval_sim_s=900.0, aligned_interval_sim_s=0.0)
        fleet = Fleet(episode, f"ws://127.0.0.1:{gw.ocpp_port}/ocpp", password=password, clock=clock,
                      progress=True, driver_app=app, config=stations)
        app.fleet = fleet
        # A feed that fails on the way (the meter unread since, the building load frozen) ends
        # the day at once with its error, rather than a bill drawn through the gap at the end.
        summary = await run_fed(fleet.run(until=episode.end), _feed_site(gw, episode, clock, meter, fleet, beliefs))
    finally:
        solves_after = solve_counts()
        if app is not None:
            await app.close()
        await gw.stop()
    plans, fallback = solves_after[0] - solves_before[0], solves_after[1] - solves_before[1]
    stopped = min(clock.now(), episode.end)
    meter.read(stopped, fleet_net_kwh(fleet))
    meter.finish()
    live = meter.bill()
    print(format_summary(summary).splitlines()[-1])
    print(f"driver app: {app.updates} preference updates over REST ({app.failures} refused)")
    penalty = UNMET_PENALTY_PER_KWH  # the evaluator's: it prices the uncontrolled run's shortfall too
    baseline = _offline_baseline(episode, penalty)
    lag_sim_min = summary["stations"]["max_lag_real_s"] * args.time_scale / 60.0
    result = _report(args, episode, summary, live, baseline, Plans(plans, fallback), meter, beliefs,
                     penalty=penalty, lag_sim_min=lag_sim_min)
    print(_summary_text(result, report=Path(args.report), json_file=Path(args.json)))
    return exit_status(meter, run_problems(result))


@dataclass(frozen=True)
class Plans:
    """The re-plans the scheduler pushed over the run, and how many were its fallback plan."""

    made: int
    fallback: int


class DriverApp:
    """Drivers without ISO 15118 tell their departure and energy through the REST API, each with a
    driver token the operator issued for their idToken (what a real driver app does)."""

    def __init__(self, api_url: str, api_key: str, clock: ScaledClock) -> None:
        self._http = httpx.AsyncClient(base_url=api_url, timeout=60.0)
        self._operator = {"Authorization": f"Bearer {api_key}"}
        self._clock = clock
        self._tokens: dict[str, str] = {}
        self.fleet: Fleet | None = None
        self.updates = 0
        self.failures = 0

    async def _token(self, id_token: str) -> str:
        if id_token not in self._tokens:
            r = await self._http.post("/api/v1/driver-tokens", headers=self._operator,
                                      json={"id_token": id_token, "label": "demo driver app"})
            r.raise_for_status()
            self._tokens[id_token] = r.json()["token"]
        return self._tokens[id_token]

    async def __call__(self, station_id: str, evse_id: int, transaction_id: str, prefs: dict[str, Any]) -> None:
        assert self.fleet is not None
        session = self.fleet.evse(station_id, evse_id).session
        if session is None:
            return
        try:
            token = await self._token(session.arrival.id_token)
            for _ in range(5):
                r = await self._http.put(f"/api/v1/sessions/{transaction_id}/preferences", json=prefs,
                                         headers={"Authorization": f"Bearer {token}"})
                if r.status_code != 404:
                    break
                await self._clock.sleep(60)  # the gateway has not seen the session start yet
            if r.status_code == 200:
                self.updates += 1
            else:
                self.failures += 1
                log.info("driver app refused (%s): %s", r.status_code, r.text[:200])
        except httpx.HTTPError as exc:
            self.failures += 1
            log.warning("driver app could not reach the gateway: %s", exc)

    async def close(self) -> None:
        await self._http.aclose()


async def _register(gw: Gateway, episode: Episode, password: str) -> None:
    now = gw.clock.now()
    await register_stations(gw.stations, episode.stations, password, now)
    for g in episode.grid_events:
        await gw.planning.upsert_grid_event(g, "demo", now)


def forecast_label(episode: Episode) -> str:
    """Which building forecast the demo pushed, for its report."""
    if not pushed_forecast(episode):
        return "none"
    return f"energy system day-ahead (heat forecast error sd {FORECAST_HEAT_SD:g})"


def fleet_net_kwh(fleet: Fleet, now: datetime | None = None) -> float:
    """What the simulated EVSEs' meters counted from the grid by ``now``, less what they gave back
    (None: as of each station's last physics tick, all there is once the fleet has stopped)."""
    return sum(st.metered_net_kwh(now) for st in fleet.stations.values())


async def _feed_site(gw: Gateway, episode: Episode, clock: DemoClock, meter: SiteMeter, fleet: Fleet,
                     beliefs: Beliefs) -> None:
    """What a building energy system would send over MQTT (the load now, with its day-ahead
    forecast first), applied as the bridge applies it (``SiteInputs``: the reading's time, the
    peak so far, the stored value, a re-plan); and once every station booted, the day begins.
    A reading goes when the load changes (each step of the episode's series) and at least every
    ``LOAD_REFRESH_SIM_S``: each one re-plans, and fifteen identical ones a step would only make
    the scheduler solve the same site again."""
    site = SiteInputs(gw)
    for g in episode.grid_events:
        await site.add_grid_event(g, "demo")
    sent = (clock.now(), episode.building_load_at(clock.now()))
    await site.set_building_load(sent[1], pushed_forecast(episode), "demo site")
    boots = asyncio.ensure_future(fleet.booted.wait())
    try:
        await asyncio.wait_for(asyncio.shield(boots), BOOT_WAIT_REAL_S)
    except TimeoutError:
        up = sum(1 for st in fleet.stations.values() if st.booted.is_set())
        print(f"only {up}/{len(fleet.stations)} stations booted in {BOOT_WAIT_REAL_S:g} s: the day starts "
              "without the rest", file=sys.stderr, flush=True)
    finally:
        boots.cancel()
    clock.begin()
    while True:
        now = clock.now()
        meter.read(now, fleet_net_kwh(fleet, now))
        kw = episode.building_load_at(now)
        if kw != sent[1] or (now - sent[0]).total_seconds() >= LOAD_REFRESH_SIM_S:
            await site.set_building_load(kw, None, "demo site")
            sent = (now, kw)
        beliefs.sample(gw, now)
        await clock.sleep(SAMPLE_S)


def _offline_baseline(episode: Episode, penalty: float) -> dict[str, Any]:
    from gateway.scheduler.evaluate import evaluate

    result, _runs = evaluate([episode], ["uncontrolled"], penalty=penalty, progress=False)
    return dict(result["policies"]["uncontrolled"])


def live_total_cost(episode: Episode, rows: list[dict[str, Any]], live: dict[str, float],
                    penalty: float) -> dict[str, float]:
    """The live run priced as the evaluator prices a policy (``evaluate.price_run``): total cost =
    bill - grid-event revenue + wear + shortfall x ``penalty``, the shortfall being each EV's
    energy deliverable over its planned stay (``evaluate.truths``) less what it got (an EV that
    never plugged in got nothing). A bill alone is lower the less is delivered."""
    from gateway.scheduler.evaluate import truths

    got = {r["id"]: max(r["energy_delivered_kwh"], 0.0) for r in rows}
    shortfall = sum(max(t.deliverable - got.get(t.arrival.id, 0.0), 0.0) for t in truths(episode))
    wear = episode.wear_cost_per_kwh * sum(r["energy_exported_kwh"] for r in rows)
    return {"shortfall_kwh": shortfall, "shortfall_cost": shortfall * penalty, "wear_cost": wear,
            "total_cost": live["bill"] - live["grid_event_revenue"] + wear + shortfall * penalty}


def _minutes(a: datetime | None, b: datetime) -> float | None:
    return None if a is None else round((a - b).total_seconds() / 60.0, 1)


def ev_breakdown(episode: Episode, summary: dict[str, Any], beliefs: Beliefs) -> list[dict[str, Any]]:
    """One row per EV of the episode due in the run: what it was, what it got, what the gateway
    believed, and why it fell short.

    The shortfall (``requested - delivered``) is split into what no policy could deliver
    (``undeliverable_kwh``: above what the battery takes at full power over the real stay) and the
    rest, put down to one cause: ``not_arrived`` (it never plugged in: its station never booted or
    failed; it counts as delivered nothing), ``plugged_in_late`` (it plugged in more than
    ``PLUG_IN_LATE_MIN`` after its arrival time), ``not_seen`` (the gateway never had the session in
    its state at any sample), ``left_before_planned`` (it left before the departure it announced
    less the margin the plan keeps for announcements that run late), ``unannounced`` (the gateway
    only had a forecast of its departure or need) or ``scheduled_short`` (it stayed as long as the
    plan assumed and still fell short: capacity, deferral, late data).
    """
    arrivals = {a.id: a for a in episode.arrivals}
    rows = []
    for e in summary.get("evs", []):
        a = arrivals[e["id"]]
        b = beliefs.by_tx.get((e["station_id"], e["transaction_id"]))
        departed = parse_rfc3339(e["departed_at"])
        plugged_in = parse_rfc3339(e["plugged_in_at"]) if e.get("plugged_in_at") else a.arrival
        late_min = max((plugged_in - a.arrival).total_seconds() / 60.0, 0.0)
        requested, delivered = e["energy_requested_kwh"], e["energy_delivered_kwh"]
        short = max(requested - delivered, 0.0)
        undeliverable = min(max(requested - e["energy_deliverable_kwh"], 0.0), short)
        rest = short - undeliverable
        cause = None
        if rest > FULLY_SERVED_TOLERANCE_KWH:
            if late_min > PLUG_IN_LATE_MIN:
                cause = "plugged_in_late"
            elif b is None:
                cause = "not_seen"
            elif b.departure_source != "forecast" and b.plan_by is not None and b.plan_by > departed:
                cause = "left_before_planned"
            elif b.departure_source == "forecast" or b.need_source == "forecast":
                cause = "unannounced"
            else:
                cause = "scheduled_short"
        rows.append({
            "id": a.id, "station_id": a.station_id, "evse_id": a.evse_id, "transaction_id": e["transaction_id"],
            "arrival": to_rfc3339(a.arrival), "plugged_in": to_rfc3339(plugged_in),
            "plugged_in_late_min": round(late_min, 1), "departure": e["departed_at"],
            "announced_departure": to_rfc3339(a.announced_departure) if a.announced_departure else None,
            "iso15118": a.iso15118, "surprise": a.surprise, "need_changed": a.need_change is not None,
            "energy_requested_kwh": requested, "energy_deliverable_kwh": e["energy_deliverable_kwh"],
            "energy_delivered_kwh": delivered, "energy_discharged_kwh": e["energy_discharged_kwh"],
            "energy_exported_kwh": e["energy_exported_kwh"], "fully_served": e["fully_served"],
            "shortfall_kwh": round(short, 3), "undeliverable_kwh": round(undeliverable, 3),
            "shortfall_cause": cause,
            "gateway": None if b is None else {
                "seen_after_min": _minutes(b.seen_at, a.arrival),
                "first_planned_after_min": _minutes(b.planned_at, a.arrival),
                "gone_after_departure_min": _minutes(b.gone_at, departed),
                "believed_departure": to_rfc3339(b.departure) if b.departure else None,
                "departure_source": b.departure_source,
                "planned_by": to_rfc3339(b.plan_by) if b.plan_by else None,
                "believed_need_kwh": None if b.need_kwh is None else round(b.need_kwh, 3),
                "need_source": b.need_source, "delivered_kwh": round(b.delivered_kwh, 3)},
        })
    for m in summary.get("evs_missing", []):
        a = arrivals[m["id"]]
        requested = m["energy_requested_kwh"]
        undeliverable = max(requested - m["energy_deliverable_kwh"], 0.0)
        rows.append({
            "id": a.id, "station_id": a.station_id, "evse_id": a.evse_id, "transaction_id": None,
            "arrival": to_rfc3339(a.arrival), "plugged_in": None, "plugged_in_late_min": None, "departure": None,
            "announced_departure": to_rfc3339(a.announced_departure) if a.announced_departure else None,
            "iso15118": a.iso15118, "surprise": a.surprise, "need_changed": a.need_change is not None,
            "energy_requested_kwh": requested, "energy_deliverable_kwh": m["energy_deliverable_kwh"],
            "energy_delivered_kwh": 0.0, "energy_discharged_kwh": 0.0, "energy_exported_kwh": 0.0,
            "fully_served": requested <= FULLY_SERVED_TOLERANCE_KWH,
            "shortfall_kwh": round(requested, 3), "undeliverable_kwh": round(undeliverable, 3),
            "shortfall_cause": "not_arrived" if requested - undeliverable > FULLY_SERVED_TOLERANCE_KWH else None,
            "not_arrived_why": m["why"], "gateway": None,
        })
    return rows


def late_plug_ins(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The EVs that plugged in more than ``PLUG_IN_LATE_MIN`` after their arrival time."""
    late = [r for r in rows if (r["plugged_in_late_min"] or 0.0) > PLUG_IN_LATE_MIN]
    return {"evs": len(late), "ids": [r["id"] for r in late],
            "worst_min": max((r["plugged_in_late_min"] for r in late), default=0.0)}


def shortfall_by_cause(rows: list[dict[str, Any]]) -> dict[str, float]:
    out = {"undeliverable": round(sum(r["undeliverable_kwh"] for r in rows), 1)}
    for r in rows:
        cause = r["shortfall_cause"]
        if cause is not None:
            out[cause] = round(out.get(cause, 0.0) + r["shortfall_kwh"] - r["undeliverable_kwh"], 1)
    return out


def lenders(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The EVs lent to the grid: how many, the kWh they gave (at the grid, as the evaluator counts
    it and as the event pays for it; the battery gave more, by its losses), and the kWh they still
    left short of what their stay could have delivered (a driver who lends the battery is to get
    it back)."""
    lent = [r for r in rows if r["energy_exported_kwh"] > 0.1]
    return {"evs": len(lent), "discharged_kwh": round(sum(r["energy_exported_kwh"] for r in lent), 1),
            "short_kwh": round(sum(r["shortfall_kwh"] - r["undeliverable_kwh"] for r in lent), 1)}


def live_figures(episode: Episode, summary: dict[str, Any], live: dict[str, float], rows: list[dict[str, Any]],
                 plans: Plans, penalty: float, lag_sim_min: float) -> dict[str, Any]:
    """The live run's totals, over every EV due (``rows``: an EV that never plugged in asked for
    its energy and got none; it is no EV that was not there)."""
    return {**live, "evs": len(rows),
            "energy_requested_kwh": sum(r["energy_requested_kwh"] for r in rows),
            "energy_delivered_kwh": sum(r["energy_delivered_kwh"] for r in rows),
            "energy_discharged_kwh": sum(r["energy_discharged_kwh"] for r in rows),  # battery side
            "energy_exported_kwh": sum(r["energy_exported_kwh"] for r in rows),  # grid side
            "evs_fully_served_share": (sum(1 for r in rows if r["fully_served"]) / len(rows)) if rows else 1.0,
            "evs_not_arrived": len(summary.get("evs_missing", [])),
            **live_total_cost(episode, rows, live, penalty), "unmet_penalty_per_kwh": penalty,
            "plans": plans.made, "plans_fallback": plans.fallback, "max_lag_sim_min": round(lag_sim_min, 2),
            "late_plug_ins": late_plug_ins(rows),
            "shortfall_by_cause_kwh": shortfall_by_cause(rows), "lenders": lenders(rows)}


def _report(args: argparse.Namespace, episode: Episode, summary: dict[str, Any], live: dict[str, float],
            baseline: dict[str, Any], plans: Plans, meter: SiteMeter, beliefs: Beliefs, *, penalty: float,
            lag_sim_min: float) -> dict[str, Any]:
    rows = ev_breakdown(episode, summary, beliefs)
    result = {
        "episode": {"name": episode.name, "start": to_rfc3339(episode.start), "end": to_rfc3339(episode.end),
                    "stations": len(episode.stations), "evs": len(episode.arrivals),
                    "import_limit_kw": episode.limits.import_kw, "building_forecast": forecast_label(episode)},
        "live": live_figures(episode, summary, live, rows, plans, penalty, lag_sim_min),
        "uncontrolled": baseline,
        "evs": rows,
        "site_series": {"times": [to_rfc3339(t) for t in meter.times],
                        "net_kw": [round(x, 2) for x in meter.net_kw], "ev_kw": [round(x, 2) for x in meter.ev_kw]},
        "fleet": summary,
    }
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    _write_html(Path(args.report), result, episode, meter)
    return result


def _write_html(path: Path, result: dict[str, Any], episode: Episode, meter: SiteMeter) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    site = make_subplots(specs=[[{"secondary_y": True}]])
    building = [episode.building_load_at(t) for t in meter.times]
    site.add_trace(go.Scatter(x=meter.times, y=meter.net_kw, name="site import (kW)"))
    site.add_trace(go.Scatter(x=meter.times, y=building, name="building load (kW)"))
    if episode.has_building_forecast:
        site.add_trace(go.Scatter(x=meter.times, y=[episode.building_forecast_at(t) for t in meter.times],
                                  name="building forecast pushed (kW)", line={"dash": "dot"}))
    site.add_trace(go.Scatter(x=meter.times, y=meter.ev_kw, name="EV charging - discharging (kW)"))
    site.add_trace(go.Scatter(x=meter.times, y=[episode.limits.import_kw] * len(meter.times), name="site limit",
                              line={"dash": "dash"}))
    site.add_trace(go.Scatter(x=meter.times, y=[episode.tariff.prices_at(t)[0] for t in meter.times],
                              name="import price (per kWh)", line={"shape": "hv"}), secondary_y=True)
    for g in episode.grid_events:
        site.add_vrect(x0=g.start, x1=g.end, fillcolor="orange", opacity=0.15, line_width=0,
                       annotation_text=f"grid event {g.id}")
    site.update_layout(title="Site power (5-minute averages) against the limit, with the grid event shaded")
    live, base = result["live"], result["uncontrolled"]
    parts = ["energy_cost", "demand_charge", "grid_event_revenue"]
    fig = go.Figure([go.Bar(name=name, x=parts, y=[float(d.get(p, 0.0)) for p in parts])
                     for name, d in (("gateway (live)", live), ("uncontrolled", base))])
    fig.update_layout(title="The day's bill by part", barmode="group")
    rows = "".join(f"<tr><td>{k}</td><td>{live.get(k, '')}</td><td>{base.get(k, '')}</td></tr>"
                   for k in ("bill", "total_cost", "shortfall_kwh", "peak_import_kw", "grid_event_revenue",
                             "energy_requested_kwh", "energy_delivered_kwh", "evs_fully_served_share",
                             "limit_excess_kw_max"))
    path.write_text(
        "<html><head><meta charset='utf-8'><title>Demo report</title></head><body>"
        f"<h1>Demo: {result['episode']['name']}</h1>"
        f"<p>Building forecast pushed: {result['episode']['building_forecast']}</p>"
        "<table border=1><tr><th></th><th>gateway (live)</th>"
        f"<th>uncontrolled</th></tr>{rows}</table>" + site.to_html(full_html=False, include_plotlyjs=True)
        + fig.to_html(full_html=False, include_plotlyjs=False) + "</body></html>")


def _summary_text(result: dict[str, Any], report: Path, json_file: Path) -> str:
    live, base = result["live"], result["uncontrolled"]
    saved = base["total_cost"] - live["total_cost"]
    late = live["late_plug_ins"]
    missing = f", {live['evs_not_arrived']} never plugged in" if live["evs_not_arrived"] else ""
    return "\n".join([
        "",
        "=== demo summary ===",
        f"energy delivered / requested : {live['energy_delivered_kwh']:.1f} / {live['energy_requested_kwh']:.1f} kWh"
        f" ({100 * live['evs_fully_served_share']:.0f}% of {live['evs']} EVs fully served{missing})",
        # A bill is lower the less is delivered: each beside what it bought.
        f"bill (energy + demand)       : {live['bill']:.2f} for {live['energy_delivered_kwh']:.1f} kWh delivered vs "
        f"{base['bill']:.2f} uncontrolled for {base['energy_delivered_kwh']:.1f} kWh",
        f"total cost, like for like    : {live['total_cost']:.2f} vs {base['total_cost']:.2f} uncontrolled"
        f" (saved {saved:.2f}): bill - grid-event revenue + wear + {live['unmet_penalty_per_kwh']:.2f}/kWh x"
        f" deliverable energy not delivered ({live['shortfall_kwh']:.1f} vs {base['shortfall_kwh']:.1f} kWh)",
        # The fleet's line above has the peak of its 1-minute power samples and of their 15-minute
        # averages; the bill is drawn on the meters' 5-minute averages, as the evaluator's is.
        f"peak import (5-min average)  : {live['peak_import_kw']:.1f} kW vs {base['peak_import_kw']:.1f} kW "
        f"uncontrolled (limit {result['episode']['import_limit_kw']:.0f} kW); the peak the demand charge bills",
        f"grid-event revenue           : {live['grid_event_revenue']:.2f}"
        f" ({live['energy_exported_kwh']:.1f} kWh discharged into the grid)",
        f"EVs lent to the grid         : {live['lenders']['evs']}, left {live['lenders']['short_kwh']:.1f} kWh"
        " short of what their stay could deliver",
        "shortfall by cause (kWh)     : "
        + ", ".join(f"{k} {v:.1f}" for k, v in live["shortfall_by_cause_kwh"].items()),
        f"plans                        : {live['plans']} ({live['plans_fallback']} fallback)",
        f"event-loop lag (worst)       : {live['max_lag_sim_min']:.1f} simulated min"
        f" (limit {LAG_LIMIT_SIM_MIN:g})",
        f"EVs plugged in late          : {late['evs']}"
        + (f" (> {PLUG_IN_LATE_MIN:g} min after their arrival time, worst {late['worst_min']:.1f} min)"
           if late["evs"] else ""),
        f"building forecast pushed     : {result['episode']['building_forecast']}",
        f"report (HTML)                : {report.resolve()}",
        f"summary (JSON)               : {json_file.resolve()}",
    ])

