"""Meter values from OCPP 2.0.1 payloads, normalised to base units (Wh, W, %). Pure."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.clock import parse_rfc3339

DEFAULT_MEASURAND = "Energy.Active.Import.Register"  # OCPP 2.0.1 SampledValueType default
_UNIT_SCALE = {"kWh": ("Wh", 1000.0), "kW": ("W", 1000.0), "kvarh": ("varh", 1000.0), "kvar": ("var", 1000.0),
               "kVA": ("VA", 1000.0)}
# The unit a measurand is in when the station names none (OCPP 2.0.1 UnitOfMeasureType's default
# is "Wh", but a reactive or apparent quantity, or a power factor, is not in Wh or W): the longest
# prefix of the measurand's name that is listed.
_DEFAULT_UNITS = {"Energy": "Wh", "Energy.Reactive": "varh", "Energy.Apparent": "VAh", "Power": "W",
                  "Power.Reactive": "var", "Power.Factor": None, "SoC": "Percent", "Current": "A", "Voltage": "V"}
# Larger than any reading a meter can give (a petawatt-hour): a number past it would only overflow
# the sums the database makes of readings (a transaction's energy, the REST buckets' averages).
VALUE_MAX = 1e15

log = logging.getLogger(__name__)
# Power samples of one batch this close to its latest are one reading (see summarize).
SAME_READING = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Sample:
    ts: datetime
    measurand: str
    value: float  # in ``unit``, multiplier applied, k-prefixed units scaled to base units
    unit: str | None
    phase: str | None
    context: str | None
    # Where the meter is (OCPP 2.0.1 LocationEnumType), None for Outlet (the EVSE's side, the
    # default), whether said or not: one meter is one series. A station may also report its Inlet
    # (its grid connection: every EVSE together), the Cable or the EV (an SoC).
    location: str | None = None


def samples(meter_values: list[dict[str, Any]]) -> Iterator[Sample]:
    for mv in meter_values:
        ts = parse_rfc3339(mv["timestamp"])
        for sv in mv.get("sampledValue", []):
            measurand = sv.get("measurand", DEFAULT_MEASURAND)
            uom = sv.get("unitOfMeasure") or {}
            unit = uom.get("unit") or _default_unit(measurand)
            try:
                value = float(sv["value"]) * (10.0 ** uom.get("multiplier", 0))
            except OverflowError:
                value = math.inf
            if unit in _UNIT_SCALE:
                unit, scale = _UNIT_SCALE[unit]
                value *= scale
            if not math.isfinite(value) or abs(value) > VALUE_MAX:
                # A schema-valid reading no float can hold (a multiplier of 10^400, say), or none
                # a meter gives: it says nothing about the session; the message is still answered
                # (and a TransactionEvent still stored as received).
                log.warning("meter value %r x 10^%r %r out of range: sample skipped", sv["value"],
                            uom.get("multiplier", 0), unit)
                continue
            location = sv.get("location")
            yield Sample(ts, measurand, value, unit, sv.get("phase"), sv.get("context"),
                         None if location == "Outlet" else location)


def _default_unit(measurand: str) -> str | None:
    parts = measurand.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in _DEFAULT_UNITS:
            return _DEFAULT_UNITS[prefix]
    return None


@dataclass(slots=True)
class Readings:
    """The facts a session summary needs, taken from one batch of samples (phase totals only)."""

    import_wh_min: float | None = None
    import_wh_max: float | None = None
    export_wh_min: float | None = None
    export_wh_max: float | None = None
    power_w: float | None = None
    power_ts: datetime | None = None
    soc: float | None = None  # percent (0..100), from SoC samples in unit Percent only
    soc_ts: datetime | None = None


def summarize(batch: list[Sample]) -> Readings:
    r = Readings()
    power_import: dict[datetime, float] = {}
    power_export: dict[datetime, float] = {}
    for s in batch:
        if s.phase is not None:
            continue  # per-phase values would double count the totals
        if s.location is not None and not s.measurand.startswith("SoC"):
            # The session's energy and power are what went through its EVSE (Outlet): the
            # station's Inlet register counts every EVSE, and mixed in it made a session of
            # 10 kWh read as 1,240 (registers are compared highest to lowest).
            continue
        if s.measurand == "Energy.Active.Import.Register":
            r.import_wh_min = s.value if r.import_wh_min is None else min(r.import_wh_min, s.value)
            r.import_wh_max = s.value if r.import_wh_max is None else max(r.import_wh_max, s.value)
        elif s.measurand == "Energy.Active.Export.Register":
            r.export_wh_min = s.value if r.export_wh_min is None else min(r.export_wh_min, s.value)
            r.export_wh_max = s.value if r.export_wh_max is None else max(r.export_wh_max, s.value)
        elif s.measurand == "Power.Active.Import":
            power_import[s.ts] = s.value
        elif s.measurand == "Power.Active.Export":
            power_export[s.ts] = s.value
        elif s.measurand == "SoC" and s.unit == "Percent" and 0.0 <= s.value <= 100.0 \
                and (r.soc_ts is None or s.ts >= r.soc_ts):
            # OCPP 2.0.1 SoC is a percentage (Part 2, Measurand SoC; UnitOfMeasure default
            # "Percent"): Readings.soc is percent, 0..100, and nothing else gets in, so every
            # consumer converts by that unit, never by guessing from the magnitude.
            r.soc, r.soc_ts = s.value, s.ts
    stamps = set(power_import) | set(power_export)
    if stamps:
        # One reading of the power: the latest import and export sampled together. Some stations
        # put each measurand in its own meterValue, milliseconds apart; taken at the one latest
        # timestamp, the other direction read 0 (7 kW charging read as 0). A direction with no
        # reading near the latest is 0: an EVSE that turned to discharging reports export only.
        latest = max(stamps)
        near = latest - SAME_READING

        def at(series: dict[datetime, float]) -> float:
            ts = max((t for t in series if t >= near), default=None)
            return 0.0 if ts is None else series[ts]

        r.power_w = at(power_import) - at(power_export)
        r.power_ts = latest
    return r
