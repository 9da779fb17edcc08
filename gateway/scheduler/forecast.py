"""What the planner assumes about an EV until the EV or its driver says: departure and energy need.

History is kept per (site, arrival hour): the dwell and the energy asked of completed sessions.
A forecast uses the median of the same arrival hour when that hour has enough sessions, else the
site's median, else the configured defaults. An EV still plugged in after its forecast departure
is assumed to stay a little longer (a rolling extension) rather than to have left.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

MIN_SAMPLES = 5  # fewer sessions in an hour bucket than this and the site-wide figure is used
OVERSTAY_EXTENSION = timedelta(hours=1)


@dataclass
class Forecast:
    departure: datetime
    energy_kwh: float
    source: str  # "history-hour", "history-site", "default"


@dataclass
class SessionForecaster:
    default_dwell_h: float = 8.0
    default_energy_kwh: float = 20.0
    energy_quantile: float = 0.5
    dwell_quantile: float = 0.5
    _dwell: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    _energy: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))

    def observe(self, site: str, arrival: datetime, departure: datetime, energy_kwh: float | None) -> None:
        """Record a completed session (true departure; requested energy when it became known)."""
        key = (site, arrival.hour)
        self._dwell[key].append((departure - arrival).total_seconds() / 3600.0)
        if energy_kwh is not None:
            self._energy[key].append(energy_kwh)

    def _pick(self, table: dict[tuple[str, int], list[float]], site: str, hour: int, q: float,
              default: float) -> tuple[float, str]:
        same = table.get((site, hour), [])
        if len(same) >= MIN_SAMPLES:
            return float(np.quantile(same, q)), "history-hour"
        pooled = [v for (s, _), vals in table.items() if s == site for v in vals]
        if len(pooled) >= MIN_SAMPLES:
            return float(np.quantile(pooled, q)), "history-site"
        return default, "default"

    def forecast(self, site: str, arrival: datetime, now: datetime) -> Forecast:
        dwell_h, src = self._pick(self._dwell, site, arrival.hour, self.dwell_quantile, self.default_dwell_h)
        energy, _ = self._pick(self._energy, site, arrival.hour, self.energy_quantile, self.default_energy_kwh)
        dep = arrival + timedelta(hours=dwell_h)
        if dep <= now:
            dep = now + OVERSTAY_EXTENSION
        return Forecast(departure=dep, energy_kwh=energy, source=src)


def believed_departure(announced: datetime | None, forecast: datetime, now: datetime) -> datetime:
    """An announced departure wins over the forecast; one already past means the EV stays longer."""
    dep = announced if announced is not None else forecast
    return dep if dep > now else now + OVERSTAY_EXTENSION
