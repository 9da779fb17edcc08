"""One EVSE's state and how it turns a composite limit into power. Pure: no I/O.

The station owns one :class:`EvseState` per EVSE; while an EV is plugged in it holds an
:class:`EvSession` (the EV's battery, its transaction and what it asked for). When the session
ends it becomes an :class:`EvResult`, the row the fleet summary reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain import EvseSpec
from gateway.episode import Arrival, ev_full_soc
from simulators.composite import Transaction
from simulators.ev import EvBattery

FULLY_SERVED_TOLERANCE_KWH = 0.5  # a session counts as fully served within this of its request


def requested_kwh(arrival: Arrival) -> float:
    """The energy the driver finally asks for: a mid-session change replaces the first request."""
    if arrival.need_change is not None and arrival.need_change.energy_kwh is not None:
        return arrival.need_change.energy_kwh
    return arrival.requested_kwh


def charge_limit_soc(arrival: Arrival, requested: float) -> float:
    """The SoC at which the car itself stops charging: its driver's target (the in-car charge
    limit), i.e. arrival SoC + the requested energy, at most full."""
    return min(1.0, arrival.arrival_soc + requested / arrival.capacity_kwh)


def battery_for(arrival: Arrival) -> EvBattery:
    return EvBattery(
        capacity_kwh=arrival.capacity_kwh,
        soc=arrival.arrival_soc,
        max_charge_kw=arrival.max_charge_kw,
        # V2G needs ISO 15118 (-20): basic IEC 61851 signalling can only offer an EV current, never
        # ask it to give energy back. The evaluator's EVs follow the same rule (evaluate.truths).
        max_discharge_kw=arrival.max_discharge_kw if arrival.bidirectional and arrival.iso15118 else 0.0,
        eff_charge=arrival.eff_charge,
        eff_discharge=arrival.eff_discharge,
        reserve_soc=arrival.reserve_soc,
        max_soc=max(arrival.arrival_soc, charge_limit_soc(arrival, requested_kwh(arrival))),
    )


@dataclass(slots=True)
class EvSession:
    arrival: Arrival
    battery: EvBattery
    transaction: Transaction
    requested_kwh: float
    seq_no: int = 0
    authorized: bool | None = None  # None: waiting for the CSMS to answer the idToken
    charging_state: str = "EVConnected"
    time_charging_s: float = 0.0
    reported_limit_kw: float | None = None  # the applied limit as of the last change reported

    def next_seq(self) -> int:
        """seqNo starts at 0 and rises by one per TransactionEvent of the transaction (E01, E02)."""
        n = self.seq_no
        self.seq_no += 1
        return n


@dataclass(frozen=True, slots=True)
class EvResult:
    id: str
    station_id: str
    evse_id: int
    transaction_id: str
    arrival: datetime
    departure: datetime
    requested_kwh: float
    delivered_kwh: float  # net energy into the battery (stored - drawn), battery side
    discharged_kwh: float  # gross energy drawn out of the battery, battery side
    imported_kwh: float  # grid side, through the EVSE meter
    exported_kwh: float
    arrival_soc: float
    departure_soc: float
    capacity_kwh: float | None = None  # the battery's (None: not known, the request is the bar)

    @property
    def fully_served(self) -> bool:
        """Delivered the request, or all the battery takes where that is less (it stops at
        ``ev_full_soc``, 99.6 %: a big battery asking for 100 % would miss the tolerance whatever
        the plan did), within the tolerance: the evaluator's rule (``evaluate.price_run``)."""
        bar = self.requested_kwh
        if self.capacity_kwh is not None:
            bar = min(bar, max(self.capacity_kwh * ev_full_soc() - self.arrival_soc * self.capacity_kwh, 0.0))
        return self.delivered_kwh >= bar - FULLY_SERVED_TOLERANCE_KWH


@dataclass(slots=True)
class EvseState:
    spec: EvseSpec
    status: str = "Available"
    session: EvSession | None = None
    target_kw: float = 0.0  # the setpoint for the interval now running
    power_kw: float = 0.0  # grid power now (negative: discharging)
    limit_kw: float | None = None  # composite limit applied now; None: no profile limits it
    import_wh: float = 0.0  # the EVSE meter's registers, lifetime
    export_wh: float = 0.0
    results: list[EvResult] = field(default_factory=list)

    @property
    def can_discharge(self) -> bool:
        s = self.session
        return (
            self.spec.bidirectional
            and self.spec.max_discharge_kw > 0
            and s is not None
            and s.battery.max_discharge_kw > 0
        )

    def setpoint_kw(self, limit_kw: float | None) -> float:
        """The power the EVSE drives the EV at under ``limit_kw`` (None: charge at full power).

        A negative limit is a discharge order (the 2.0.1 negative-limit dialect); a unidirectional
        EVSE or EV never discharges, it stops instead.
        """
        s = self.session
        if s is None or not s.authorized:
            return 0.0
        if limit_kw is None or limit_kw >= 0:
            cap = self.spec.max_charge_kw if limit_kw is None else min(limit_kw, self.spec.max_charge_kw)
            return min(cap, s.battery.charge_limit_kw())
        if not self.can_discharge:
            return 0.0
        return -min(-limit_kw, self.spec.max_discharge_kw, s.battery.discharge_limit_kw())

    def advance(self, dt_s: float) -> None:
        """Let ``dt_s`` seconds pass at the current setpoint and update the meter registers."""
        s = self.session
        if s is None or dt_s <= 0:
            return
        before_in, before_out = s.battery.imported_kwh, s.battery.exported_kwh
        avg = s.battery.step(self.target_kw, dt_s)
        self.import_wh += (s.battery.imported_kwh - before_in) * 1000.0
        self.export_wh += (s.battery.exported_kwh - before_out) * 1000.0
        if avg > 0:
            s.time_charging_s += dt_s

    def charging_state_for(self, setpoint_kw: float, limit_kw: float | None) -> str:
        """OCPP chargingState for the current situation (E-block ChargingStateEnumType)."""
        s = self.session
        if s is None:
            return "Idle"
        if not s.authorized:
            return "EVConnected"
        if abs(setpoint_kw) > 1e-6:
            return "Charging"
        if limit_kw is not None and limit_kw <= 0:
            return "SuspendedEVSE"  # the CSMS (or a profile) holds power at zero
        return "SuspendedEV"  # the EV takes nothing: full, or at its reserve
