"""Pure domain data shared by every layer. No I/O, no OCPP wire types.

Units: power in kW (positive = import/charge, negative = export/discharge), energy in kWh,
prices in currency units per kWh, demand charges per kW, times aware UTC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from gateway import sitetime

# A session's identity: a transactionId is unique only at its station (OCPP 2.0.1 leaves its form
# to the station; some count 1, 2, 3...), so everything kept per session is keyed by both.
TxKey = tuple[str, str]

# EVSEs are numbered from 1 on a station (0 is the station itself where a message allows it); the
# highest id the gateway keeps, from a station's messages and over REST alike.
EVSE_ID_MAX = 1000


class DischargeDialect(enum.StrEnum):
    """How a station accepts a discharge command (see gateway/ocpp/profiles.py)."""

    NONE = "none"  # unidirectional: limits are never negative
    NEGATIVE_LIMIT = "negative_limit"  # OCPP 2.0.1 stations that take a negative W limit
    OCPP21_SETPOINT = "ocpp21_setpoint"  # OCPP 2.1 setpoint/dischargeLimit (later)


@dataclass(frozen=True, slots=True)
class EvseSpec:
    station_id: str
    evse_id: int
    max_charge_kw: float
    max_discharge_kw: float = 0.0
    bidirectional: bool = False
    phases: int = 3

    @property
    def key(self) -> tuple[str, int]:
        return (self.station_id, self.evse_id)


@dataclass(frozen=True, slots=True)
class SiteLimits:
    import_kw: float
    export_kw: float


@dataclass(frozen=True, slots=True)
class TouPeriod:
    """A time-of-use window in the site's local hours [start_hour, end_hour), every day."""

    start_hour: float
    end_hour: float
    import_price: float
    export_price: float


@dataclass(frozen=True, slots=True)
class Tariff:
    periods: tuple[TouPeriod, ...]
    demand_charge_per_kw: float = 0.0
    # Prices outside every period fall back to these.
    default_import_price: float = 0.20
    default_export_price: float = 0.05
    # The IANA zone the periods' hours are in (the site's, gateway/sitetime.py).
    timezone: str = "UTC"

    def prices_at(self, when: datetime) -> tuple[float, float]:
        """(import, export) price per kWh at ``when`` (its hour on the site's clock)."""
        hour = sitetime.hour_of_day(when, self.timezone)
        for p in self.periods:
            inside = (p.start_hour <= hour < p.end_hour) if p.start_hour <= p.end_hour else (
                hour >= p.start_hour or hour < p.end_hour
            )
            if inside:
                return p.import_price, p.export_price
        return self.default_import_price, self.default_export_price


class GridEventKind(enum.StrEnum):
    EXPORT_REQUEST = "export_request"  # the grid pays per kWh of net site export reduction
    IMPORT_CAP = "import_cap"  # the site's import is capped at cap_kw during the window


@dataclass(frozen=True, slots=True)
class GridEvent:
    id: str
    start: datetime
    end: datetime
    kind: GridEventKind
    payment_per_kwh: float = 0.0
    cap_kw: float | None = None

    def active_at(self, when: datetime) -> bool:
        return self.start <= when < self.end


class ChargeMode(enum.StrEnum):
    SMART = "smart"  # plan for cost, deliver the need by departure
    CHARGE_NOW = "charge_now"  # as fast as the site allows, no discharge


@dataclass(frozen=True, slots=True)
class Preferences:
    """A driver's override of a session; ``None`` fields leave the EV's own values in place."""

    departure_time: datetime | None = None
    energy_kwh: float | None = None
    target_soc: float | None = None
    reserve_soc: float | None = None
    allow_discharge: bool | None = None
    mode: ChargeMode | None = None


@dataclass(frozen=True, slots=True)
class EvNeeds:
    """What the EV (ISO 15118 NotifyEVChargingNeeds) or the forecast says it needs."""

    departure_time: datetime | None = None
    energy_kwh: float | None = None
    capacity_kwh: float | None = None
    soc: float | None = None  # 0..1
    target_soc: float | None = None
    min_soc: float | None = None
    ev_max_charge_kw: float | None = None
    ev_max_discharge_kw: float | None = None
    source: str = "ev"  # "ev", "driver", "forecast"
    # The most entries the EV takes in a schedule (ISO 15118 MaxEntriesSAScheduleTuple, sent as
    # NotifyEVChargingNeeds.maxScheduleTuples): its TxProfile has no more periods than that.
    max_schedule_tuples: int | None = None


@dataclass(slots=True)
class Session:
    """An active charging session as the scheduler sees it."""

    station_id: str
    evse_id: int
    transaction_id: str
    started_at: datetime
    id_token: str | None = None
    energy_in_kwh: float = 0.0
    energy_out_kwh: float = 0.0
    soc: float | None = None
    power_kw: float = 0.0
    needs: EvNeeds = field(default_factory=EvNeeds)
    preferences: Preferences = field(default_factory=Preferences)
    # The station's last TransactionEvent chargingState (OCPP 2.0.1 ChargingStateEnumType).
    charging_state: str | None = None
    # Energy into the battery when the EV declared its needs: their "energy_kwh more" counts from
    # there (ISO 15118 EnergyAmount is what is still wanted when it is sent).
    needs_baseline_kwh: float = 0.0
    # The battery's energy at plug-in on the EV's own scale (SoC x capacity, less what the meter
    # shows it took before that SoC was read), pinned when both are first known. The energy still
    # wanted is then counted on the EV's readings: counted through an assumed efficiency, an EV
    # whose charger and battery lose more than assumed (0.88 where 0.92 is assumed) would be
    # planned as done with up to 4 % of its request still missing.
    battery_start_kwh: float | None = None
    # The highest SoC the EV reported in this session (0..1): what a battery lent to the grid
    # held before it lent, which it is to have back by its believed departure.
    high_soc: float | None = None
    # Whether ``soc`` was read with the energy registers (a TransactionEvent), not alone (MeterValues
    # carry no registers): only then does the meter show what went in before it was read.
    soc_with_registers: bool = True

    @property
    def key(self) -> tuple[str, int]:
        return (self.station_id, self.evse_id)

    @property
    def tx_key(self) -> TxKey:
        return (self.station_id, self.transaction_id)

    def stored_kwh(self, efficiency: float) -> float:
        """Energy into the battery since plug-in, from the EVSE meter: what goes in loses
        ``efficiency`` on the way, what comes out cost more than was metered. Requests (ISO 15118
        EnergyAmount, a driver's kWh) are counted on this, battery, side."""
        return self.energy_in_kwh * efficiency - self.energy_out_kwh / efficiency

    def pin_battery_start(self, capacity_kwh: float | None, efficiency: float) -> None:
        """Pin :attr:`battery_start_kwh` once the SoC and the battery's capacity are both known,
        from a SoC read with the registers: a newer SoC less an older meter would count the energy
        between them twice, and the EV would be planned to take that much more for its stay."""
        if (self.battery_start_kwh is None and self.soc is not None and self.soc_with_registers
                and capacity_kwh):
            self.battery_start_kwh = self.soc * capacity_kwh - self.stored_kwh(efficiency)


@dataclass(frozen=True, slots=True)
class PlannedSession:
    """One EVSE's part of a plan: power (kW, negative = discharge) per plan step."""

    station_id: str
    evse_id: int
    transaction_id: str
    power_kw: tuple[float, ...]
    energy_by_departure_kwh: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """A site plan: steps start at ``starts[i]`` and last until ``starts[i+1]`` (last until ``end``)."""

    created_at: datetime
    starts: tuple[datetime, ...]
    end: datetime
    sessions: tuple[PlannedSession, ...]
    status: str = "optimal"
    objective: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)
    solve_s: float = 0.0
    fallback: bool = False
