"""Episodes: one simulated site over a time window, as a JSON file.

The simulators replay an episode over real WebSockets and the offline evaluator replays it
through the planning code; both read it through this module so they agree on its meaning.
The JSON Schema is ``gateway/schemas/episode.schema.json``.

Meaning of an arrival's fields: ``departure`` is when the EV really leaves; ``announced_departure``
is what the EV (ISO 15118) or driver declares, which may be earlier or later (``None``: nothing is
declared and the gateway must forecast). ``energy_kwh`` is the energy the driver wants delivered
by departure (``None``: derived from ``target_soc``). ``need_change`` changes the declared need
mid-session. ``surprise`` marks an arrival no history would have predicted.

The building load is the truth the site meter shows (``values_kw``); ``forecast_kw``, when
present, is the day-ahead forecast the building's energy system sends, on the same grid: what a
gateway may plan with, where the truth is only for metering and scoring.

An episode's EVs charge at their ``max_charge_kw`` up to ``EV_CV_SOC``; above it (the battery's
constant-voltage phase) they take linearly less, towards nothing at 100 %, and stop (full) once
they would take less than ``EV_TAPER_CUTOFF`` of it (a battery's termination current): at 99.6 %.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema

from gateway import sitetime
from gateway.clock import parse_rfc3339, to_rfc3339
from gateway.domain import EvseSpec, GridEvent, GridEventKind, SiteLimits, Tariff, TouPeriod

# The CC-CV taper of every episode EV (the simulators' batteries and the evaluator's physics).
EV_CV_SOC = 0.8
EV_TAPER_CUTOFF = 0.02


def ev_full_soc(cv_soc: float = EV_CV_SOC, cutoff: float = EV_TAPER_CUTOFF) -> float:
    """The SoC at which an episode EV's charge ends (its acceptance down to the cutoff)."""
    return 1.0 - cutoff * (1.0 - cv_soc)


class EpisodeError(ValueError):
    """An episode file that does not follow the schema or is inconsistent."""


@dataclass(frozen=True, slots=True)
class StationSpec:
    id: str
    evses: tuple[EvseSpec, ...]


@dataclass(frozen=True, slots=True)
class NeedChange:
    at: datetime
    energy_kwh: float | None = None
    departure: datetime | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    id: str
    station_id: str
    evse_id: int
    arrival: datetime
    departure: datetime
    arrival_soc: float
    capacity_kwh: float
    announced_departure: datetime | None = None
    energy_kwh: float | None = None
    target_soc: float | None = None
    reserve_soc: float = 0.0
    max_charge_kw: float = 11.0
    max_discharge_kw: float = 0.0
    bidirectional: bool = False
    iso15118: bool = False
    id_token: str = ""
    eff_charge: float = 0.92
    eff_discharge: float = 0.92
    surprise: bool = False
    need_change: NeedChange | None = None

    @property
    def requested_kwh(self) -> float:
        """Energy the driver wants delivered into the battery by departure (kWh)."""
        if self.energy_kwh is not None:
            return self.energy_kwh
        if self.target_soc is not None:
            return max(0.0, (self.target_soc - self.arrival_soc) * self.capacity_kwh)
        return max(0.0, (1.0 - self.arrival_soc) * self.capacity_kwh)


@dataclass(frozen=True, slots=True)
class LoadSeries:
    """A load on a regular grid; ``forecast_kw`` (None: none sent) is its forecast on the same grid."""

    start: datetime
    step_s: int
    values_kw: tuple[float, ...]
    forecast_kw: tuple[float, ...] | None = None

    def _index(self, when: datetime, n: int) -> int:
        """The step holding ``when``; before the first or after the last, the nearest."""
        i = int((when - self.start).total_seconds() // self.step_s)
        return min(max(i, 0), n - 1)

    def at(self, when: datetime) -> float:
        if not self.values_kw:
            return 0.0
        return self.values_kw[self._index(when, len(self.values_kw))]

    def forecast_at(self, when: datetime) -> float | None:
        """The forecast for ``when`` (None: no forecast)."""
        if not self.forecast_kw:
            return None
        return self.forecast_kw[self._index(when, len(self.forecast_kw))]


@dataclass(frozen=True, slots=True)
class Episode:
    start: datetime
    end: datetime
    limits: SiteLimits
    tariff: Tariff
    stations: tuple[StationSpec, ...]
    arrivals: tuple[Arrival, ...]
    building_load: LoadSeries | None = None
    grid_events: tuple[GridEvent, ...] = ()
    wear_cost_per_kwh: float = 0.03
    name: str = ""
    site_type: str = ""
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def evses(self) -> list[EvseSpec]:
        return [e for s in self.stations for e in s.evses]

    def building_load_at(self, when: datetime) -> float:
        return self.building_load.at(when) if self.building_load else 0.0

    @property
    def has_building_forecast(self) -> bool:
        return self.building_load is not None and bool(self.building_load.forecast_kw)

    def building_forecast_at(self, when: datetime) -> float | None:
        """The energy system's forecast of the building load at ``when`` (None: it sent none)."""
        return self.building_load.forecast_at(when) if self.building_load else None

    def duration(self) -> timedelta:
        return self.end - self.start


@cache
def _validator() -> Any:
    text = resources.files("gateway.schemas").joinpath("episode.schema.json").read_text()
    return fastjsonschema.compile(json.loads(text))


def schema() -> dict[str, Any]:
    text = resources.files("gateway.schemas").joinpath("episode.schema.json").read_text()
    result: dict[str, Any] = json.loads(text)
    return result


def _time(text: str, where: str) -> datetime:
    """``text`` parsed; a timestamp the schema's format lets through but no datetime can hold
    (year 0000, 30 February) is a bad episode, refused as such rather than as a bare ValueError."""
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise EpisodeError(f"{where}: bad timestamp {text!r}: {exc}") from exc


def _opt_time(v: str | None, where: str) -> datetime | None:
    return _time(v, where) if v else None


# OCPP's IdTokenType.idToken (and the schema's id_token) holds at most this many characters.
ID_TOKEN_MAX = 36


def default_id_token(arrival_id: str) -> str:
    """The token of an arrival whose file names none: its id, or for an id too long to be a token
    a deterministic one (its head and a hash of it) of at most ``ID_TOKEN_MAX`` characters, so
    an episode written back by :func:`dump` is one :func:`load` accepts (the schema's maxLength)
    and the simulators send an idToken OCPP accepts."""
    if len(arrival_id) <= ID_TOKEN_MAX:
        return arrival_id
    digest = hashlib.sha256(arrival_id.encode()).hexdigest()[:12]
    return f"{arrival_id[:ID_TOKEN_MAX - len(digest) - 1]}-{digest}"


def from_dict(data: dict[str, Any]) -> Episode:
    try:
        _validator()(data)
    except fastjsonschema.JsonSchemaException as exc:
        raise EpisodeError(f"episode does not follow the schema: {exc}") from exc
    t = data["tariff"]
    tz = t.get("timezone", sitetime.UTC_NAME)
    try:
        sitetime.zone(tz)
    except sitetime.UnknownTimezoneError as exc:
        raise EpisodeError(f"tariff.timezone: {exc}") from exc
    tariff = Tariff(
        periods=tuple(TouPeriod(**p) for p in t["periods"]),
        demand_charge_per_kw=t.get("demand_charge_per_kw", 0.0),
        default_import_price=t.get("default_import_price", 0.20),
        default_export_price=t.get("default_export_price", 0.05),
        timezone=tz,
    )
    stations = tuple(
        StationSpec(
            id=s["id"],
            evses=tuple(
                EvseSpec(
                    station_id=s["id"],
                    evse_id=e["evse_id"],
                    max_charge_kw=e["max_charge_kw"],
                    max_discharge_kw=e.get("max_discharge_kw", 0.0),
                    bidirectional=e.get("bidirectional", False),
                    phases=e.get("phases", 3),
                )
                for e in s["evses"]
            ),
        )
        for s in data["stations"]
    )
    arrivals = []
    for a in data["arrivals"]:
        nc = a.get("need_change")
        where = f"arrival {a['id']}"
        arrivals.append(
            Arrival(
                id=a["id"],
                station_id=a["station_id"],
                evse_id=a["evse_id"],
                arrival=_time(a["arrival"], f"{where}: arrival"),
                departure=_time(a["departure"], f"{where}: departure"),
                arrival_soc=a["arrival_soc"],
                capacity_kwh=a["capacity_kwh"],
                announced_departure=_opt_time(a.get("announced_departure"), f"{where}: announced_departure"),
                energy_kwh=a.get("energy_kwh"),
                target_soc=a.get("target_soc"),
                reserve_soc=a.get("reserve_soc", 0.0),
                max_charge_kw=a.get("max_charge_kw", 11.0),
                max_discharge_kw=a.get("max_discharge_kw", 0.0),
                bidirectional=a.get("bidirectional", False),
                iso15118=a.get("iso15118", False),
                id_token=a.get("id_token", "") or default_id_token(a["id"]),
                eff_charge=a.get("eff_charge", 0.92),
                eff_discharge=a.get("eff_discharge", 0.92),
                surprise=a.get("surprise", False),
                need_change=(
                    NeedChange(
                        at=_time(nc["at"], f"{where}: need_change.at"),
                        energy_kwh=nc.get("energy_kwh"),
                        departure=_opt_time(nc.get("departure"), f"{where}: need_change.departure"),
                    )
                    if nc
                    else None
                ),
            )
        )
    episode = Episode(
        start=_time(data["start"], "start"),
        end=_time(data["end"], "end"),
        limits=SiteLimits(data["site"]["import_limit_kw"], data["site"]["export_limit_kw"]),
        tariff=tariff,
        stations=stations,
        arrivals=tuple(sorted(arrivals, key=lambda x: x.arrival)),
        building_load=_load_series(data.get("building_load")),
        grid_events=tuple(
            GridEvent(
                id=g["id"],
                start=_time(g["start"], f"grid event {g['id']}: start"),
                end=_time(g["end"], f"grid event {g['id']}: end"),
                kind=GridEventKind(g["kind"]),
                payment_per_kwh=g.get("payment_per_kwh", 0.0),
                cap_kw=g.get("cap_kw"),
            )
            for g in data.get("grid_events", [])
        ),
        wear_cost_per_kwh=data.get("wear_cost_per_kwh", 0.03),
        name=data.get("name", ""),
        site_type=data.get("site_type", ""),
        seed=data.get("seed"),
    )
    _check_consistency(episode)
    return episode


def _load_series(bl: dict[str, Any] | None) -> LoadSeries | None:
    if not bl:
        return None
    values = tuple(bl["values_kw"])
    fc = bl.get("forecast_kw")
    if fc is not None and len(fc) != len(values):
        # Both are on one grid: a forecast of another length would be read at the wrong times.
        raise EpisodeError(
            f"building_load.forecast_kw has {len(fc)} values, values_kw {len(values)}: they share one grid"
        )
    start = _time(bl["start"], "building_load.start")
    return LoadSeries(start, bl["step_s"], values, tuple(fc) if fc is not None else None)


def _check_consistency(ep: Episode) -> None:
    if ep.end <= ep.start:
        raise EpisodeError("episode end must be after its start")
    _check_stations(ep)
    _check_building_load(ep)
    for g in ep.grid_events:
        if g.end <= g.start:
            raise EpisodeError(f"grid event {g.id} ends before it starts")
        if g.kind == GridEventKind.IMPORT_CAP and g.cap_kw is None:
            # Read as no cap at all: the site would be planned and scored as if the event never came.
            raise EpisodeError(f"grid event {g.id} is an import cap without cap_kw")
    evses = {e.key for e in ep.evses}
    busy: dict[tuple[str, int], list[Arrival]] = {}
    for a in ep.arrivals:
        if (a.station_id, a.evse_id) not in evses:
            raise EpisodeError(f"arrival {a.id} uses unknown EVSE {a.station_id}/{a.evse_id}")
        if a.departure <= a.arrival:
            raise EpisodeError(f"arrival {a.id} departs before it arrives")
        if a.arrival < ep.start:
            # The replay starts at the episode's start: such an EV would never be plugged in, yet
            # its energy would count as deliverable. (A departure after the end is fine: the
            # evaluator's window runs on until the last EV has left.)
            raise EpisodeError(f"arrival {a.id} arrives before the episode starts")
        nc = a.need_change
        if nc is not None and not a.arrival <= nc.at < a.departure:
            # A change before plug-in or after the EV left could never be told to the gateway.
            raise EpisodeError(f"arrival {a.id}: need_change.at is outside its stay")
        busy.setdefault((a.station_id, a.evse_id), []).append(a)
    for key, items in busy.items():
        items.sort(key=lambda x: x.arrival)
        for prev, nxt in itertools.pairwise(items):
            if nxt.arrival < prev.departure:
                raise EpisodeError(f"arrivals {prev.id} and {nxt.id} overlap on EVSE {key[0]}/{key[1]}")


def _check_stations(ep: Episode) -> None:
    """Station ids and EVSE ids are keys (the simulators connect one station per id, the
    evaluator meters one EVSE per key): a repeated one would merge two into one."""
    seen: set[str] = set()
    for s in ep.stations:
        if s.id in seen:
            raise EpisodeError(f"station id {s.id} is repeated")
        seen.add(s.id)
        ids = [e.evse_id for e in s.evses]
        for evse_id in ids:
            if ids.count(evse_id) > 1:
                raise EpisodeError(f"station {s.id} has EVSE id {evse_id} more than once")


def _check_building_load(ep: Episode) -> None:
    """The load must cover the episode: outside its series :meth:`LoadSeries.at` repeats the
    nearest value (meant for the evaluator's run-on past the end until the last EV leaves), so a
    series that stopped early would silently repeat its last value, and an empty one read 0 kW."""
    bl = ep.building_load
    if bl is None:
        return
    covered_until = bl.start + timedelta(seconds=bl.step_s * len(bl.values_kw))
    if bl.start > ep.start or covered_until < ep.end:
        raise EpisodeError(
            f"building_load covers {to_rfc3339(bl.start)} to {to_rfc3339(covered_until)}, "
            f"not the episode's {to_rfc3339(ep.start)} to {to_rfc3339(ep.end)}"
        )


def to_dict(ep: Episode) -> dict[str, Any]:
    def opt(t: datetime | None) -> str | None:
        return to_rfc3339(t) if t else None

    out: dict[str, Any] = {
        "version": 1,
        "name": ep.name,
        "site_type": ep.site_type,
        "seed": ep.seed,
        "start": to_rfc3339(ep.start),
        "end": to_rfc3339(ep.end),
        "wear_cost_per_kwh": ep.wear_cost_per_kwh,
        "site": {"import_limit_kw": ep.limits.import_kw, "export_limit_kw": ep.limits.export_kw},
        "tariff": {
            "periods": [
                {
                    "start_hour": p.start_hour,
                    "end_hour": p.end_hour,
                    "import_price": p.import_price,
                    "export_price": p.export_price,
                }
                for p in ep.tariff.periods
            ],
            "demand_charge_per_kw": ep.tariff.demand_charge_per_kw,
            "default_import_price": ep.tariff.default_import_price,
            "default_export_price": ep.tariff.default_export_price,
            "timezone": ep.tariff.timezone,
        },
        "stations": [
            {
                "id": s.id,
                "evses": [
                    {
                        "evse_id": e.evse_id,
                        "max_charge_kw": e.max_charge_kw,
                        "max_discharge_kw": e.max_discharge_kw,
                        "bidirectional": e.bidirectional,
                        "phases": e.phases,
                    }
                    for e in s.evses
                ],
            }
            for s in ep.stations
        ],
        "arrivals": [
            {
                "id": a.id,
                "station_id": a.station_id,
                "evse_id": a.evse_id,
                "arrival": to_rfc3339(a.arrival),
                "departure": to_rfc3339(a.departure),
                "announced_departure": opt(a.announced_departure),
                "energy_kwh": a.energy_kwh,
                "target_soc": a.target_soc,
                "arrival_soc": a.arrival_soc,
                "reserve_soc": a.reserve_soc,
                "capacity_kwh": a.capacity_kwh,
                "max_charge_kw": a.max_charge_kw,
                "max_discharge_kw": a.max_discharge_kw,
                "bidirectional": a.bidirectional,
                "iso15118": a.iso15118,
                "id_token": a.id_token,
                "eff_charge": a.eff_charge,
                "eff_discharge": a.eff_discharge,
                "surprise": a.surprise,
                "need_change": (
                    {
                        "at": to_rfc3339(a.need_change.at),
                        "energy_kwh": a.need_change.energy_kwh,
                        "departure": opt(a.need_change.departure),
                    }
                    if a.need_change
                    else None
                ),
            }
            for a in ep.arrivals
        ],
        "grid_events": [
            {
                "id": g.id,
                "start": to_rfc3339(g.start),
                "end": to_rfc3339(g.end),
                "kind": g.kind.value,
                "payment_per_kwh": g.payment_per_kwh,
                "cap_kw": g.cap_kw,
            }
            for g in ep.grid_events
        ],
    }
    if ep.building_load is not None:
        out["building_load"] = {
            "start": to_rfc3339(ep.building_load.start),
            "step_s": ep.building_load.step_s,
            "values_kw": list(ep.building_load.values_kw),
        }
        if ep.building_load.forecast_kw is not None:
            out["building_load"]["forecast_kw"] = list(ep.building_load.forecast_kw)
    return out


def load(path: str | Path) -> Episode:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EpisodeError(f"cannot read episode {path}: {exc}") from exc
    return from_dict(data)


def dump(ep: Episode, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(ep), indent=1))
