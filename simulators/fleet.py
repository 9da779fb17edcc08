"""Fleet runner: every station of an episode in one process against a gateway (``gateway sim``).

As a library::

    fleet = Fleet(episode, "ws://127.0.0.1:9000/ocpp", password="secret", clock=clock)
    summary = await fleet.run()            # until the episode's end
    await fleet.departed["EV-00001"].wait()  # hooks: arrived / departed events per EV
    fleet.evse("WORK-0001", 1).power_kw      # per-EVSE power and applied limit (limit_kw)

The summary (also ``--json FILE``) is ``{"evs": [...], "evs_missing": [...], "site": {...},
"stations": {...}}``; an EV is ``fully_served`` when the net energy stored in its battery reached its
(final) request within ``FULLY_SERVED_TOLERANCE_KWH`` (0.5 kWh). ``evs`` are the EVs that came and
went; ``evs_missing`` the ones due before the run ended that never plugged in (their station never
booted, or its task failed), each with why: they count as served nothing (``run_failures``), never
as EVs that were not there. Site import is building load + the sum of EVSE powers, sampled every
``sample_interval_s`` of simulated time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

from gateway.clock import Clock, ScaledClock, parse_rfc3339, to_rfc3339
from gateway.config import env_setting
from gateway.episode import Arrival, Episode, EpisodeError, load
from simulators.evse import FULLY_SERVED_TOLERANCE_KWH, EvResult, EvseState, requested_kwh
from simulators.models import deliverable_kwh
from simulators.site_feed import SiteFeed, SiteFeedError
from simulators.station import DriverApp, Faults, Station, StationConfig
from simulators.station_clock import StationClock

log = logging.getLogger(__name__)

PasswordSource = str | Callable[[str], str | None] | None
T = TypeVar("T")
# The demand interval most utilities bill on (the gateway's meter too; the demo and the
# evaluator bill 5-minute averages).
DEMAND_WINDOW_S = 900
DRAIN_REAL_S = 10.0  # at the end, how long to wait for stations to deliver their outboxes


class ProgressLine(logging.Filter):
    """The progress line, redrawn in place with a carriage return: a log record written to the
    same stream meanwhile (a station that cannot connect, the site feed's warnings) would
    otherwise start at the end of it. Attached to the root handlers writing there, it ends the
    line first; the next redraw starts a new one."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.open = False

    def end(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.end()
        return True

    def _handlers(self) -> list[logging.Handler]:
        return [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and h.stream is self.stream]

    def attach(self) -> None:
        for h in self._handlers():
            h.addFilter(self)

    def detach(self) -> None:
        for h in self._handlers():
            h.removeFilter(self)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class FleetStation(Station):
    """A station of a fleet: what ended its EVs' task early is kept (``Station.run`` gathers its
    tasks' exceptions away, and the EVs it was to plug in then silently never came)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure: str | None = None

    async def run_arrivals(self, arrivals: Iterable[Arrival]) -> None:
        try:
            await super().run_arrivals(arrivals)
        except Exception as exc:
            self.failure = f"its EVs' task failed: {_why(exc)}"
            log.error("%s: %s", self.id, self.failure)
            raise


class Fleet:
    def __init__(
        self,
        episode: Episode,
        url: str,
        *,
        password: PasswordSource = None,
        clock: Clock | None = None,
        config: StationConfig | None = None,
        faults: Callable[[str], Faults] | None = None,
        driver_app: DriverApp | None = None,
        sample_interval_s: float = 60.0,
        stagger_real_s: float | None = None,
        progress: bool = False,
        progress_stream: TextIO | None = None,
        freeze_gc: bool = True,
    ) -> None:
        self.episode = episode
        self.url = url
        base = clock or ScaledClock(episode.start, 1.0)
        self.clock = StationClock(base)  # adopts the first station's boot-time offset
        self.sample_interval_s = sample_interval_s
        self.progress = progress
        self.freeze_gc = freeze_gc
        self._stream = progress_stream or sys.stderr
        self._line = ProgressLine(self._stream)
        self.stations: dict[str, FleetStation] = {}
        self.arrivals: dict[str, Arrival] = {a.id: a for a in episode.arrivals}
        self.arrived: dict[str, asyncio.Event] = {a.id: asyncio.Event() for a in episode.arrivals}
        self.departed: dict[str, asyncio.Event] = {a.id: asyncio.Event() for a in episode.arrivals}
        self.results: dict[str, EvResult] = {}
        # What failed while running, by station id (or the fleet's own task's name): a station's
        # task that raised, a stop that raised, a task that did not stop.
        self.failures: dict[str, str] = {}
        self._ended_at: datetime | None = None  # when stop() began: arrivals before it were due
        self.booted = asyncio.Event()  # every station has booted
        self.peak_import_kw = 0.0
        # When the peak was sampled and what each station drew then: a site-limit excess says who.
        self.peak_import_at: datetime | None = None
        self.peak_import_stations: dict[str, float] = {}
        self.peak_export_kw = 0.0
        self.peak_import_15min_kw = 0.0
        self.import_kwh = 0.0
        self.samples = 0
        self._bucket: tuple[int, float, int] | None = None  # (window index, kW sum, samples)
        self._started_real: float | None = None
        n = len(episode.stations)
        self.stagger_real_s = stagger_real_s if stagger_real_s is not None else min(5.0, 0.002 * n)
        for spec in episode.stations:
            pw = password(spec.id) if callable(password) else password
            st = FleetStation(
                spec,
                url,
                password=pw,
                clock=base,
                config=config,
                faults=faults(spec.id) if faults else None,
                driver_app=driver_app,
            )
            st.clock_window = (episode.start - timedelta(days=1), episode.end)
            st.on_arrival = self._on_arrival
            st.on_departure = self._on_departure
            self.stations[spec.id] = st
        self._by_station: dict[str, list[Arrival]] = {sid: [] for sid in self.stations}
        for a in episode.arrivals:
            self._by_station.setdefault(a.station_id, []).append(a)
        self._tasks: list[asyncio.Task[Any]] = []

    # ---- hooks ------------------------------------------------------------------------------

    def station(self, station_id: str) -> FleetStation:
        return self.stations[station_id]

    def evse(self, station_id: str, evse_id: int) -> EvseState:
        """Live EVSE state: ``power_kw`` (negative: discharging), ``limit_kw`` (None: no profile)."""
        return self.stations[station_id].evses[evse_id]

    def site_import_kw(self, now: datetime | None = None) -> float:
        now = now or self.clock.now()
        return self.episode.building_load_at(now) + sum(s.power_kw for s in self.stations.values())

    def _on_arrival(self, station: Station, arrival: Arrival) -> None:
        ev = self.arrived.get(arrival.id)
        if ev is not None:
            ev.set()

    def _on_departure(self, station: Station, result: EvResult) -> None:
        self.results[result.id] = result
        ev = self.departed.get(result.id)
        if ev is not None:
            ev.set()

    # ---- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every station (staggered so a thousand do not knock at once)."""
        loop = asyncio.get_running_loop()
        self._started_real = loop.time()
        per = self.stagger_real_s / max(1, len(self.stations))
        for i, (sid, st) in enumerate(self.stations.items()):
            self._tasks.append(asyncio.create_task(self._run_station(st, i * per), name=f"fleet-{sid}"))
        self._tasks.append(asyncio.create_task(self._watch_boots(), name="fleet-boots"))
        self._tasks.append(asyncio.create_task(self._sampler(), name="fleet-sampler"))
        if self.progress:
            self._line.attach()
            self._tasks.append(asyncio.create_task(self._progress_loop(), name="fleet-progress"))

    async def _run_station(self, st: Station, delay_real_s: float) -> None:
        if delay_real_s > 0:
            await asyncio.sleep(delay_real_s)
        try:
            await st.run(self._by_station.get(st.id, []))
        except Exception as exc:
            self.failures[st.id] = f"its task failed: {_why(exc)}"
            log.error("%s: %s", st.id, self.failures[st.id])
            raise

    async def _watch_boots(self) -> None:
        first = True
        for st in self.stations.values():
            await st.booted.wait()
            if first:
                self.clock.offset = st.clock.offset
                first = False
        if self.freeze_gc:
            # Thousands of long-lived connection objects make full collections pause the loop
            # for hundreds of ms (measured in bench/sim_fleet.py); frozen, they are not rescanned.
            gc.freeze()
        self.booted.set()

    async def run(self, until: datetime | None = None) -> dict[str, Any]:
        """Run the episode until ``until`` (default: its end), end what is still plugged in,
        let the stations deliver their messages, stop them, and return :meth:`summary`."""
        if not self._tasks:
            await self.start()
        end = until or self.episode.end
        try:
            while self.clock.now() < end:
                remaining = (end - self.clock.now()).total_seconds()
                # Re-check in slices: the fleet's clock may be corrected when the stations boot.
                await self.clock.sleep(min(remaining, max(1.0, 5.0 * self.clock.scale)))
        finally:
            await self.stop()
        return self.summary()

    async def stop(self) -> None:
        """Unplug every EV still connected, drain the outboxes (briefly), close every link. What
        failed on the way (a station's task, its stop) is kept in ``failures``, not dropped."""
        if self._ended_at is None:
            self._ended_at = self.clock.now()
        for st in self.stations.values():
            for eid, e in st.evses.items():
                if e.session is not None:
                    st.unplug(eid)
        waiting = [st.drained.wait() for st in self.stations.values() if st.connected.is_set()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), DRAIN_REAL_S)
        stations = list(self.stations.values())
        stopped = await asyncio.gather(*(st.stop() for st in stations), return_exceptions=True)
        for st, res in zip(stations, stopped, strict=True):
            if isinstance(res, Exception):
                self.failures.setdefault(st.id, f"its stop failed: {_why(res)}")
        for t in self._tasks:
            if t.get_name() in ("fleet-sampler", "fleet-progress", "fleet-boots"):
                t.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=DRAIN_REAL_S)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in self._tasks:
                name = t.get_name().removeprefix("fleet-")
                if t in pending:
                    self.failures.setdefault(name, f"its task did not stop within {DRAIN_REAL_S:g} s")
                elif not t.cancelled() and (exc := t.exception()) is not None:
                    self.failures.setdefault(name, f"its task failed: {_why(exc)}")
        for st in stations:
            if st.failure is not None:
                self.failures.setdefault(st.id, st.failure)
        if self.progress:
            self._line.end()
            self._line.detach()

    async def _sampler(self) -> None:
        # On fixed instants, each reading counted over the time that really passed until the next:
        # a relative sleep stretched by the event loop's latency was counted as one interval
        # (a 24-h demo took 1,391 samples of 1,441, and its import read 4 % low).
        every = timedelta(seconds=self.sample_interval_s)
        due = self.clock.now()
        last: tuple[datetime, float] | None = None
        while True:
            now = self.clock.now()
            kw = self.site_import_kw(now)
            if last is not None:
                self.import_kwh += max(last[1], 0.0) * (now - last[0]).total_seconds() / 3600.0
            last = (now, kw)
            self.samples += 1
            if kw > self.peak_import_kw:
                self.peak_import_kw = kw
                self.peak_import_at = now
                self.peak_import_stations = {sid: round(s.power_kw, 3) for sid, s in self.stations.items()
                                             if abs(s.power_kw) > 1e-6}
            self.peak_export_kw = max(self.peak_export_kw, -kw)
            window = int(now.timestamp() // DEMAND_WINDOW_S)
            if self._bucket is None or self._bucket[0] != window:
                if self._bucket is not None and self._bucket[2]:
                    self.peak_import_15min_kw = max(self.peak_import_15min_kw, self._bucket[1] / self._bucket[2])
                self._bucket = (window, 0.0, 0)
            w, total, count = self._bucket
            self._bucket = (w, total + kw, count + 1)
            due += every
            if due <= now:  # fell behind by more than an interval: the missed instants are skipped
                due = now + every
            try:
                await self.clock.sleep_until(due)
            except asyncio.CancelledError:
                # Stopped: the last reading counts up to the stop.
                self.import_kwh += max(kw, 0.0) * max((self.clock.now() - now).total_seconds(), 0.0) / 3600.0
                raise

    async def _progress_loop(self) -> None:
        start, end = self.episode.start, self.episode.end
        span = max((end - start).total_seconds(), 1.0)
        while True:
            now = self.clock.now()
            frac = min(max((now - start).total_seconds() / span, 0.0), 1.0)
            bar = "#" * int(frac * 30)
            plugged = sum(1 for s in self.stations.values() for e in s.evses.values() if e.session)
            up = sum(1 for s in self.stations.values() if s.connected.is_set())
            self._stream.write(
                f"\r[{bar:<30}] {frac * 100:5.1f}% {to_rfc3339(now)[:16]}Z  up {up}/{len(self.stations)}"
                f"  plugged {plugged}  done {len(self.results)}/{len(self.arrivals)}"
                f"  import {self.site_import_kw(now):7.1f} kW (peak {self.peak_import_kw:.1f})"
            )
            self._stream.flush()
            self._line.open = True
            await asyncio.sleep(1.0)

    # ---- results ----------------------------------------------------------------------------

    def _deliverable(self, a: Arrival, r: EvResult) -> float:
        return _deliverable_kwh(a, r, self.stations[r.station_id].evses[r.evse_id].spec.max_charge_kw)

    def _peak_15min_kw(self) -> float:
        """The highest 15-minute average import, the window still open at the end included."""
        if self._bucket is not None and self._bucket[2]:
            return max(self.peak_import_15min_kw, self._bucket[1] / self._bucket[2])
        return self.peak_import_15min_kw

    def _missing(self, a: Arrival) -> dict[str, Any]:
        """An EV due that never plugged in: what it asked for and could have had (over its planned
        stay), and why it never came."""
        st = self.stations.get(a.station_id)
        evse = st.evses.get(a.evse_id) if st is not None else None
        dwell = (a.departure - a.arrival).total_seconds()
        deliverable = deliverable_kwh(a.capacity_kwh, a.arrival_soc, a.max_charge_kw, a.eff_charge, dwell,
                                      evse.spec.max_charge_kw if evse is not None else None)
        if st is None or evse is None:
            why = f"its station or EVSE ({a.station_id}/{a.evse_id}) is not in the episode"
        elif a.station_id in self.failures:
            why = f"station {a.station_id}: {self.failures[a.station_id]}"
        elif not st.booted.is_set():
            why = f"station {a.station_id} never booted"
        else:
            why = f"station {a.station_id} booted but never plugged it in"
        return {"id": a.id, "station_id": a.station_id, "evse_id": a.evse_id, "arrival": to_rfc3339(a.arrival),
                "planned_departure": to_rfc3339(a.departure), "energy_requested_kwh": round(requested_kwh(a), 3),
                "energy_deliverable_kwh": round(deliverable, 3), "why": why}

    def summary(self) -> dict[str, Any]:
        evs = []
        missing = []
        # Arrivals before the run ended were due; later ones (a run ``until`` an earlier time) were not.
        ended = self._ended_at or self.clock.now()
        not_due = 0
        for a in self.episode.arrivals:
            r = self.results.get(a.id)
            if r is None:
                if a.arrival < ended:
                    missing.append(self._missing(a))
                else:
                    not_due += 1
                continue
            evs.append(
                {
                    "id": r.id,
                    "station_id": r.station_id,
                    "evse_id": r.evse_id,
                    "transaction_id": r.transaction_id,
                    "energy_requested_kwh": round(r.requested_kwh, 3),
                    "energy_delivered_kwh": round(r.delivered_kwh, 3),
                    "energy_discharged_kwh": round(r.discharged_kwh, 3),
                    "energy_imported_kwh": round(r.imported_kwh, 3),
                    "energy_exported_kwh": round(r.exported_kwh, 3),
                    "energy_deliverable_kwh": round(self._deliverable(a, r), 3),
                    "arrival_soc": round(r.arrival_soc, 4),
                    "departure_soc": round(r.departure_soc, 4),
                    "fully_served": r.fully_served,
                    "arrival": to_rfc3339(a.arrival),
                    "plugged_in_at": to_rfc3339(r.arrival),
                    "departed_at": to_rfc3339(r.departure),
                    "planned_departure": to_rfc3339(a.departure),
                }
            )
        stations = list(self.stations.values())
        return {
            "evs": evs,
            "site": {
                "peak_import_kw": round(self.peak_import_kw, 3),
                "peak_import_at": to_rfc3339(self.peak_import_at) if self.peak_import_at else None,
                "peak_import_stations_kw": self.peak_import_stations,
                "peak_import_15min_kw": round(self._peak_15min_kw(), 3),
                "peak_export_kw": round(max(self.peak_export_kw, 0.0), 3),
                "limit_kw": self.episode.limits.import_kw,
                "export_limit_kw": self.episode.limits.export_kw,
                "import_kwh": round(self.import_kwh, 3),
                "samples": self.samples,
                "sample_interval_s": self.sample_interval_s,
            },
            "stations": {
                "count": len(stations),
                "booted": sum(1 for s in stations if s.booted.is_set()),
                "connections": sum(s.connections for s in stations),
                "calls_failed": sum(s.calls_failed for s in stations),
                "max_lag_real_s": round(max((s.max_lag_real_s for s in stations), default=0.0), 4),
                "not_booted": not_booted_reasons(stations),
                "failed": dict(sorted(self.failures.items())),
            },
            "fully_served_tolerance_kwh": FULLY_SERVED_TOLERANCE_KWH,
            "evs_missing": missing,
            "evs_not_arrived": len(missing),
            "evs_not_due": not_due,
        }


async def run_fed(day: Coroutine[Any, Any, T], feed: Coroutine[Any, Any, None]) -> T:
    """Run a fleet's ``day`` beside what ``feed``s the gateway the site's inputs (the demo's
    in-process feed, ``gateway sim --api-url``'s REST one). A feed that ends first, failed, ends
    the day at once with its error: the rest would be planned on inputs the summary does not
    describe, and billed through the gap."""
    feeding, running = asyncio.create_task(feed), asyncio.create_task(day)
    try:
        await asyncio.wait({running, feeding}, return_when=asyncio.FIRST_COMPLETED)
        if feeding.done():
            running.cancel()  # the fleet's own stop closes its stations
            await asyncio.gather(running, return_exceptions=True)
            feeding.result()  # raises what stopped it
            raise RuntimeError("the site feed ended before the day")
        return await running
    finally:
        for task in (feeding, running):
            task.cancel()
        await asyncio.gather(feeding, running, return_exceptions=True)


def not_booted_reasons(stations: Sequence[Station]) -> dict[str, int]:
    """How many stations did not boot, by why (the latest thing that stopped each)."""
    out: dict[str, int] = {}
    for st in stations:
        if st.booted.is_set():
            continue
        if st.boot_status is not None:
            why = f"connected, BootNotification answered {st.boot_status}"
        elif st.last_connect_failure is not None:
            why = st.last_connect_failure
        elif st.connections:
            why = "connected, BootNotification unanswered"
        else:
            why = "no connection attempt finished before the run ended"
        out[why] = out.get(why, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def not_booted_message(summary: dict[str, Any]) -> str | None:
    """The line ``gateway sim`` ends with when some stations never booted (None: all did)."""
    st = summary["stations"]
    if st["booted"] >= st["count"]:
        return None
    reasons = "; ".join(f"{n} {why}" for why, n in st.get("not_booted", {}).items())
    return f"only {st['booted']}/{st['count']} stations booted" + (f": {reasons}" if reasons else "")


def run_failures(summary: dict[str, Any]) -> list[str]:
    """Why a fleet's summary does not describe the whole day (empty: it does): stations that never
    booted, station tasks that failed, EVs due that never plugged in."""
    out = []
    booted = not_booted_message(summary)
    if booted is not None:
        out.append(booted)
    failed = summary["stations"].get("failed", {})
    if failed:
        shown = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
        out.append(f"{len(failed)} station task(s) failed ({shown}{'; ...' if len(failed) > 3 else ''})")
    missing = summary.get("evs_missing", [])
    if missing:
        requested = sum(e["energy_requested_kwh"] for e in missing)
        shown = ", ".join(e["id"] for e in missing[:5])
        out.append(f"{len(missing)} EV(s) due never plugged in ({shown}{', ...' if len(missing) > 5 else ''}; "
                   f"{requested:.1f} kWh requested, counted as delivered 0): {missing[0]['why']}")
    return out


def _deliverable_kwh(a: Arrival, r: EvResult, evse_max_kw: float) -> float:
    dwell = (r.departure - r.arrival).total_seconds()
    return deliverable_kwh(a.capacity_kwh, a.arrival_soc, a.max_charge_kw, a.eff_charge, dwell, evse_max_kw)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'ev':<12} {'req kWh':>8} {'got kWh':>8} {'out kWh':>8} {'SoC':>5}  served"]
    for e in summary["evs"]:
        lines.append(
            f"{e['id']:<12} {e['energy_requested_kwh']:8.2f} {e['energy_delivered_kwh']:8.2f} "
            f"{e['energy_discharged_kwh']:8.2f} {e['departure_soc'] * 100:4.0f}%  "
            + ("yes" if e["fully_served"] else "NO")
        )
    for m in summary.get("evs_missing", []):
        lines.append(f"{m['id']:<12} {m['energy_requested_kwh']:8.2f} {0.0:8.2f} {0.0:8.2f} {'':>5}  "
                     "NO (never plugged in)")
    site = summary["site"]
    served = sum(1 for e in summary["evs"] if e["fully_served"])
    due = len(summary["evs"]) + len(summary.get("evs_missing", []))
    every = site.get("sample_interval_s", 60.0)
    every_text = f"{every / 60:g} min" if every % 60 == 0 else f"{every:g} s"
    # Two peaks that differ by design: the highest single sample of the site's power, and the
    # highest 15-minute average of those samples (the interval most utilities bill demand on;
    # the demo bills 5-minute averages).
    lines.append(
        f"fully served {served}/{due} "
        f"(tolerance {summary['fully_served_tolerance_kwh']} kWh); "
        f"site peak import {site['peak_import_kw']:.1f} kW (power sampled every {every_text}), "
        f"{site['peak_import_15min_kw']:.1f} kW (15-min average) vs limit {site['limit_kw']:g} kW"
    )
    return "\n".join(lines)


def cli(args: argparse.Namespace) -> int:
    """``gateway sim``: run an episode's stations against a gateway and report what the EVs got."""
    from simulators.scenario import ScenarioOptions, generate

    try:
        if args.episode:
            episode = load(args.episode)
        else:
            episode = generate(ScenarioOptions(site="workplace", stations=args.stations, seed=args.seed))
    except (EpisodeError, ValueError) as exc:
        print(f"gateway sim: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "register", False):
        from gateway.db.admin import register_for_sim

        url = args.database_url or env_setting("DATABASE_URL")
        if not url or not args.password:
            print("gateway sim: --register needs --password and --database-url (or GATEWAY_DATABASE_URL)",
                  file=sys.stderr)
            return 2
        asyncio.run(register_for_sim(url, episode.stations, args.password))
    scale = args.time_scale or 1.0
    start = parse_rfc3339(args.sim_start) if args.sim_start else episode.start
    clock = ScaledClock(start, scale)
    until = parse_rfc3339(args.until) if getattr(args, "until", None) else None
    fleet = Fleet(episode, args.url, password=args.password, clock=clock, progress=not args.no_progress)
    api_url = getattr(args, "api_url", None)
    api_key = getattr(args, "api_key", None) or env_setting("API_KEY")
    if api_url and not api_key:
        print("gateway sim: --api-url needs --api-key (or GATEWAY_API_KEY)", file=sys.stderr)
        return 2
    if not api_url:
        print("gateway sim: the gateway plans with its own site limits, tariff and building load; "
              "--api-url and --api-key send it the episode's", file=sys.stderr)

    async def main() -> dict[str, Any]:
        if not api_url:
            return await fleet.run(until=until)
        assert api_key is not None
        # The fleet's clock, which takes on the gateway's time when the stations boot: readings
        # stamped on the episode's clock would be as old as the fleet started late.
        feed = SiteFeed(api_url, api_key, episode, fleet.clock)
        try:
            await feed.start()
            summary = await run_fed(fleet.run(until=until), feed.run())
            if feed.readings_stale and not feed.readings_sent:
                print(f"gateway sim: none of the {feed.readings_stale} building-load readings was applied (each "
                      "older than one the gateway had): it planned with an earlier run's", file=sys.stderr)
            return summary
        finally:
            await feed.close()

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:
        summary = fleet.summary()
    except SiteFeedError as exc:
        print(f"gateway sim: the site's inputs were refused: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    failed = run_failures(summary)
    for why in failed:
        print(f"gateway sim: {why}", file=sys.stderr)
    return 1 if failed else 0


__all__ = ["Fleet", "FleetStation", "PasswordSource", "cli", "format_summary", "run_failures"]
