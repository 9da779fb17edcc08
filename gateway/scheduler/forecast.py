"""What the planner assumes about an EV until the EV or its driver says: departure and energy need.

History is kept per (site, arrival hour): the dwell and the energy asked of completed sessions
(and, for a new site until sessions have ended, the stays and needs EVs present announced).
A forecast uses the median of the same arrival hour when that hour has enough sessions, else the
site's median, else the configured defaults. An EV still plugged in after its forecast departure
is assumed to stay a little longer (a rolling extension) rather than to have left.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from gateway import sitetime

FloatArr = NDArray[np.float64]

MIN_SAMPLES = 5  # fewer sessions in an hour bucket than this and the site-wide figure is used
NEAR_HOURS = 3  # how far from an arrival hour with too little history to look for similar sessions
# Stays and needs announced by EVs present, kept per (site, arrival hour) for a new site (the newest this many).
PEERS_KEPT = 200
OVERSTAY_EXTENSION = timedelta(minutes=30)
DUE_EXTENSION = timedelta(minutes=15)
# The newest this many dwells and needs per (site, arrival hour), and announcement errors per site:
# a long-running gateway's history stays bounded (a year of a busy hour is far more than the
# quantiles need) and follows the site as it changes.
HISTORY_KEPT = 5_000


def _keep(history: list[float], value: float) -> None:
    history.append(value)
    if len(history) > HISTORY_KEPT:
        del history[: len(history) - HISTORY_KEPT]


@dataclass
class Forecast:
    departure: datetime
    energy_kwh: float
    source: str  # "history-hour", "history-near" (hours around it), "history-site", "default"


@dataclass
class SessionForecaster:
    default_dwell_h: float = 8.0
    default_energy_kwh: float = 20.0
    energy_quantile: float = 0.5
    dwell_quantile: float = 0.5
    tz: str = sitetime.UTC_NAME  # the site's: arrival hours are hours of its day
    _dwell: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    _energy: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    _early: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Stays (h) and needs (kWh) announced by EVs plugged in, by (site, arrival hour) and session:
    # what a new site plans its unannounced EVs with until enough sessions have ended.
    _peer_stays: dict[tuple[str, int], dict[object, float]] = field(default_factory=lambda: defaultdict(dict))
    _peer_needs: dict[tuple[str, int], dict[object, float]] = field(default_factory=lambda: defaultdict(dict))
    # Both caches are cleared by every observation (the planner asks per EV and step).
    _cache: dict[tuple[object, ...], FloatArr] = field(default_factory=dict)
    _picked: dict[tuple[object, ...], tuple[float, str]] = field(default_factory=dict)

    def observe(self, site: str, arrival: datetime, departure: datetime, energy_kwh: float | None,
                announced: datetime | None = None) -> None:
        """Record a completed session (true departure; requested energy when it became known;
        the departure the EV had announced, to learn how far announcements are off)."""
        key = (site, self._hour(arrival))
        self._cache.clear()
        self._picked.clear()
        _keep(self._dwell[key], (departure - arrival).total_seconds() / 3600.0)
        if energy_kwh is not None:
            _keep(self._energy[key], energy_kwh)
        if announced is not None:
            _keep(self._early[site], (announced - departure).total_seconds() / 3600.0)

    def note_present(self, site: str, session: object, arrival: datetime, departure: datetime | None,
                     need_kwh: float | None) -> None:
        """What an EV plugged in now told (ISO 15118 or its driver): when it leaves, how much it
        needs. Until enough sessions have ended at the site, the stays and needs its EVs announce
        are the guess for the ones that say nothing, instead of "leaving any minute, 20 kWh",
        which charged every such van of a depot's first night at the evening's price (measured:
        docs/benchmarks-scheduler.md, "A spread cut to its points")."""
        hour = self._hour(arrival)
        changed = False
        for table, value in ((self._peer_stays, None if departure is None else
                              (departure - arrival).total_seconds() / 3600.0),
                             (self._peer_needs, need_kwh)):
            if value is None:
                continue
            mine = table[(site, hour)]
            if mine.get(session) == value:
                continue
            mine.pop(session, None)
            mine[session] = value
            if len(mine) > PEERS_KEPT:
                del mine[next(iter(mine))]
            changed = True
        if changed:
            self._cache.clear()
            self._picked.clear()

    def _peer_dwells(self, site: str, hour: int, margin: timedelta) -> list[float]:
        """Stays announced by EVs present that arrived near ``hour`` (never the whole site's: a
        surprise visit at noon is not planned like the depot's evening vans), ``margin`` shorter."""
        stays, _ = self._similar(self._peer_lists(self._peer_stays, site), site, hour, site_wide=False)
        cut = margin.total_seconds() / 3600.0
        return [max(h - cut, 0.0) for h in stays]

    def need_above(self, site: str, arrival: datetime, taken_kwh: float) -> float | None:
        """The need of an unannounced EV that has already taken ``taken_kwh``: the planned quantile
        of the past needs above that (sessions of the same arrival hour, or near it, or the site's),
        ``None`` with fewer than ``MIN_SAMPLES`` of them."""
        vals, _ = self._similar(self._energy, site, self._hour(arrival))
        above = [v for v in vals if v > taken_kwh]
        return float(np.quantile(above, self.energy_quantile)) if len(above) >= MIN_SAMPLES else None

    def _peer_lists(self, table: dict[tuple[str, int], dict[object, float]],
                    site: str) -> dict[tuple[str, int], list[float]]:
        return {key: list(vals.values()) for key, vals in table.items() if key[0] == site}

    def announcement_margin(self, site: str, default: timedelta, quantile: float = 0.95) -> timedelta:
        """How long before an announced departure to plan to finish: the ``quantile`` of how much
        earlier than announced EVs of this site have left (the default until there is history)."""
        early = self._early.get(site, [])
        if len(early) < MIN_SAMPLES:
            return default
        return timedelta(hours=max(float(np.quantile(early, quantile)), 0.0))

    def departure_samples(self, site: str, arrival: datetime, announced: datetime | None,
                          peer_margin: timedelta = timedelta(0)) -> FloatArr | None:
        """Where a session like this one may end (POSIX seconds, ascending), from history; ``None``
        when there is too little.

        Not announced: the arrival plus the dwells of sessions that arrived at the same hour (or
        near it); on a new site, with too few of them, the stays EVs present announced, each
        ``peer_margin`` shorter (announcements run late as often as early). Announced:
        the announcement shifted by how much earlier than announced this site's EVs left.
        (Weighting the dwell history by how likely each made the announcement was measured too
        and did no better: docs/benchmarks-scheduler.md.) The planner prices a shortfall at each
        by its probability (:func:`gateway.scheduler.slots.departure_scenarios`)."""
        if announced is not None:
            early = self._sorted(("early", site), lambda: self._early.get(site, []))
            if len(early) < MIN_SAMPLES:
                return None
            return announced.timestamp() - early[::-1] * 3600.0
        hour = self._hour(arrival)
        dwell = self._sorted(("dwell", site, hour), lambda: self._similar(self._dwell, site, hour)[0])
        if len(dwell) < MIN_SAMPLES:
            # A new site: what the EVs plugged in now announced (noisy, but the stays of this site).
            dwell = self._sorted(("peers", site, hour, peer_margin), lambda: self._peer_dwells(site, hour, peer_margin))
        if len(dwell) < MIN_SAMPLES:
            return None
        return arrival.timestamp() + dwell * 3600.0

    def _hour(self, when: datetime) -> int:
        return sitetime.local(when, self.tz).hour

    def _sorted(self, key: tuple[object, ...], values: Callable[[], list[float]]) -> FloatArr:
        """Sorted history, cached until the next observation."""
        got = self._cache.get(key)
        if got is None:
            got = np.sort(np.asarray(values(), dtype=float))
            self._cache[key] = got
        return got

    def _similar(self, table: dict[tuple[str, int], list[float]], site: str, hour: int,
                 site_wide: bool = True) -> tuple[list[float], str]:
        """Sessions that arrived in the same hour; too few: widen to the hours around it (an
        evening arrival is not like a morning one), then (``site_wide``) the whole site."""
        for width in range(NEAR_HOURS + 1):
            hours = {(hour + d) % 24 for d in range(-width, width + 1)}
            vals = [v for h in hours for v in table.get((site, h), [])]
            if len(vals) >= MIN_SAMPLES:
                return vals, "history-hour" if width == 0 else "history-near"
        if not site_wide:
            return [], "history-site"
        return [v for (s, _), vals in table.items() if s == site for v in vals], "history-site"

    def _pick(self, name: str, table: Callable[[], dict[tuple[str, int], list[float]]], site: str, hour: int,
              q: float, default: float) -> tuple[float, str]:
        key = (name, site, hour, q)
        got = self._picked.get(key)
        if got is None:
            vals, src = self._similar(table(), site, hour)
            got = (float(np.quantile(vals, q)), src) if len(vals) >= MIN_SAMPLES else (default, "default")
            self._picked[key] = got
        return got

    def forecast(self, site: str, arrival: datetime, now: datetime) -> Forecast:
        hour = self._hour(arrival)
        dwell_h, src = self._pick("dwell", lambda: self._dwell, site, hour, self.dwell_quantile,
                                  self.default_dwell_h)
        energy, got = self._pick("energy", lambda: self._energy, site, hour, self.energy_quantile,
                                 self.default_energy_kwh)
        if got == "default":  # a new site: what the EVs plugged in now asked for
            energy, _ = self._pick("peer-energy", lambda: self._peer_lists(self._peer_needs, site), site, hour,
                                   self.energy_quantile, self.default_energy_kwh)
        dep = arrival + timedelta(hours=dwell_h)
        if dep <= now:
            dep = now + OVERSTAY_EXTENSION
        return Forecast(departure=dep, energy_kwh=energy, source=src)


# The share of past needs an unannounced EV's guessed need covers. The 90th percentile, planned for
# every such EV at once, set a night's peak for energy most of them never took; since a guessed
# need is wanted early (slots.REVEAL_WEIGHT), an EV that needs more shows it in time, and the 75th
# did better on every draw measured (docs/benchmarks-scheduler.md, "A guessed need, wanted early").
PLANNED_NEED_QUANTILE = 0.75


def planning_forecaster(default_energy_kwh: float = 20.0) -> SessionForecaster:
    """The forecaster the MPC plans with, live and offline: unknown EVs are planned for a short
    stay and a large need (before any session has ended: from what the EVs present announced;
    with nothing announced either, as leaving now, i.e. as soon as possible on a rolling half
    hour), because leaving early with too little costs the unmet-energy price while charging a
    little earlier than needed costs a few cents."""
    return SessionForecaster(dwell_quantile=0.05, energy_quantile=PLANNED_NEED_QUANTILE, default_dwell_h=0.0,
                             default_energy_kwh=default_energy_kwh)


def believed_departure(announced: datetime | None, forecast: datetime, now: datetime,
                       margin: timedelta = timedelta(0)) -> tuple[datetime, bool]:
    """(departure to plan for, still free to discharge).

    An announced departure wins over the forecast and is planned ``margin`` early (announcements
    run late as often as early). Once that point has passed the EV is due: whatever it still
    lacks is planned for a short rolling deadline (as soon as possible), with no discharge;
    spreading it to the announced time would bet on the EV staying that long. A forecast that has
    passed means the EV stays longer than its like usually do: a rolling extension.
    """
    if announced is not None:
        if announced - margin > now:
            return announced - margin, True
        return now + DUE_EXTENSION, False
    return (forecast if forecast > now else now + OVERSTAY_EXTENSION), True
