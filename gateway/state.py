"""The live picture of the site that the scheduler plans from and the API shows.

It is a cache: Postgres holds the truth and :meth:`SiteState.load` rebuilds it at start; domain
events keep it current in between (nothing polls the database). Pure apart from ``load``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from gateway import events as ev
from gateway.billing import DemandMeter
from gateway.config import Settings
from gateway.domain import (
    ChargeMode,
    DischargeDialect,
    EvNeeds,
    EvseSpec,
    GridEvent,
    Preferences,
    Session,
    SiteLimits,
    Tariff,
)
from gateway.scheduler.forecast import SessionForecaster


@dataclass(slots=True)
class EvseState:
    spec: EvseSpec
    dialect: DischargeDialect = DischargeDialect.NEGATIVE_LIMIT
    # Whether EVs that did not declare a discharge power are discharged here (None: the site's
    # Settings.discharge_undeclared_evs).
    discharge_undeclared_evs: bool | None = None
    status: str | None = None
    session: Session | None = None
    online: bool = False


@dataclass(frozen=True, slots=True)
class Resolved:
    """A session's effective plan inputs after merging EV needs, driver preferences and forecast."""

    departure: datetime
    departure_source: str  # "driver", "ev", "forecast"
    energy_wanted_kwh: float  # total energy into the EV by departure, counted from session start
    energy_source: str
    reserve_soc: float
    allow_discharge: bool
    mode: ChargeMode
    capacity_kwh: float | None
    soc: float | None


@dataclass(frozen=True, slots=True)
class CompletedSession:
    """What a finished session teaches the forecasts: when it came and left, the energy it asked
    for (``None`` when only a guess was known: what it took is a lower bound that would bias the
    forecast low) and the departure it had announced (driver or EV), to learn how late they run."""

    evse: tuple[str, int]
    arrival: datetime
    departure: datetime
    requested_kwh: float | None
    announced: datetime | None
    max_kw: float
    delivered_kwh: float = 0.0  # into the battery, net, from the meter (what the session took)


# Completed sessions kept for the scheduler to learn from; bounded so a gateway without one does not grow.
COMPLETED_KEPT = 1000


@dataclass(slots=True)
class SiteState:
    settings: Settings
    limits: SiteLimits
    tariff: Tariff
    evses: dict[tuple[str, int], EvseState] = field(default_factory=dict)
    grid_events: dict[str, GridEvent] = field(default_factory=dict)
    building_load_kw: float = 0.0
    building_load_at: datetime | None = None  # when the last reading arrived (None: none since start)
    building_load_forecast: list[tuple[datetime, float]] = field(default_factory=list)
    price_overrides: list[tuple[datetime, datetime, float, float]] = field(default_factory=list)
    # The billing period's peak demand so far (average import over demand intervals).
    demand: DemandMeter = field(default_factory=DemandMeter)
    # Sessions that ended, oldest first, until the scheduler takes them (``take_completed``).
    completed: deque[CompletedSession] = field(default_factory=lambda: deque(maxlen=COMPLETED_KEPT))
    # The scheduler's forecaster once it runs: what the API shows as a forecast is then what the
    # plan assumes (else the configured default dwell and energy).
    forecaster: SessionForecaster | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SiteState:
        demand = DemandMeter(interval_s=settings.site.demand_interval_min * 60.0,
                             billing_day=settings.site.billing_day, timezone=settings.site.timezone)
        return cls(settings=settings, limits=settings.site.limits(), tariff=settings.site.tariff(), demand=demand)

    # --- EVSEs and sessions ---------------------------------------------------------------
    def evse(self, station_id: str, evse_id: int) -> EvseState:
        key = (station_id, evse_id)
        st = self.evses.get(key)
        if st is None:
            st = EvseState(EvseSpec(station_id, evse_id, max_charge_kw=self.settings.safe_limit_kw * 3))
            self.evses[key] = st
        return st

    def sessions(self) -> list[Session]:
        return [e.session for e in self.evses.values() if e.session is not None]

    def session_by_tx(self, station_id: str, transaction_id: str) -> Session | None:
        """A transactionId is only unique at its station (a station may count 1, 2, 3...)."""
        for s in self.sessions():
            if s.transaction_id == transaction_id and s.station_id == station_id:
                return s
        return None

    def site_power_kw(self) -> float:
        return self.building_load_kw + sum(s.power_kw for s in self.sessions())

    def apply(self, event: ev.Event) -> bool:
        """Fold an event into the picture; True when the plan should be recomputed."""
        if isinstance(event, ev.SessionStarted):
            st = self.evse(event.station_id, event.evse_id)
            if st.session is None or st.session.transaction_id != event.transaction_id:
                st.session = Session(event.station_id, event.evse_id, event.transaction_id,
                                     event.started_at or event.at, id_token=event.id_token)
            return True
        if isinstance(event, ev.SessionUpdated):
            st = self.evse(event.station_id, event.evse_id)
            s = st.session
            if s is None or s.transaction_id != event.transaction_id:
                return False
            if event.energy_in_kwh is not None:
                s.energy_in_kwh = event.energy_in_kwh
            if event.energy_out_kwh is not None:
                s.energy_out_kwh = event.energy_out_kwh
            if event.power_kw is not None:
                s.power_kw = event.power_kw
            if event.soc is not None:
                # SessionUpdated.soc is in percent, always: it comes from SoC samples whose unit is
                # Percent (gateway/ocpp/meter.py keeps no other), as transactions.last_soc and the
                # bus's soc_percent. Session.soc is 0..1. Converted here, once, by that unit, never
                # guessed from the magnitude (1 % is not 100 %).
                s.soc = event.soc / 100.0
                s.soc_with_registers = event.energy_in_kwh is not None
                s.high_soc = s.soc if s.high_soc is None else max(s.high_soc, s.soc)
                s.pin_battery_start(s.needs.capacity_kwh, self.settings.ev_efficiency)
            if event.charging_state is not None:
                s.charging_state = event.charging_state
            self.track_peak(event.at)
            return False
        if isinstance(event, ev.SessionEnded):
            st = self.evse(event.station_id, event.evse_id)
            if st.session is not None and st.session.transaction_id == event.transaction_id:
                self.completed.append(self.completion(st, st.session, event.ended_at or event.at))
                st.session = None
                self.track_peak(event.at)
                return True
            return False
        if isinstance(event, ev.StatusChanged):
            self.evse(event.station_id, event.evse_id).status = event.status
            return False
        if isinstance(event, ev.StationConnected | ev.StationDisconnected):
            online = isinstance(event, ev.StationConnected)
            for (sid, _), st in self.evses.items():
                if sid == event.station_id:
                    st.online = online
            return False
        return isinstance(event, ev.NeedsUpdated | ev.SiteInputsChanged)

    def completion(self, st: EvseState, s: Session, ended_at: datetime) -> CompletedSession:
        r = self.resolve(s)
        max_kw = st.spec.max_charge_kw
        if s.needs.ev_max_charge_kw is not None:
            max_kw = min(max_kw, s.needs.ev_max_charge_kw)
        return CompletedSession(
            st.spec.key, s.started_at, ended_at,
            r.energy_wanted_kwh if r.energy_source != "forecast" else None,
            r.departure if r.departure_source != "forecast" else None, max_kw,
            max(s.stored_kwh(self.settings.ev_efficiency), 0.0))

    def take_completed(self) -> list[CompletedSession]:
        out = list(self.completed)
        self.completed.clear()
        return out

    def set_needs(self, station_id: str, evse_id: int, needs: EvNeeds,
                  baseline_kwh: float | None = None, transaction_id: str | None = None) -> float | None:
        """The EV's newest needs; their energy counts from ``baseline_kwh`` (default: the energy
        in it now, i.e. they have just arrived). With ``transaction_id``: only for that session
        (the needs were read while it was on the EVSE). Returns the baseline, None without one."""
        s = self.evse(station_id, evse_id).session
        if s is None or (transaction_id is not None and s.transaction_id != transaction_id):
            return None
        s.needs = needs
        s.needs_baseline_kwh = s.stored_kwh(self.settings.ev_efficiency) if baseline_kwh is None else baseline_kwh
        s.pin_battery_start(needs.capacity_kwh, self.settings.ev_efficiency)
        return s.needs_baseline_kwh

    def set_preferences(self, station_id: str, transaction_id: str, prefs: Preferences) -> None:
        s = self.session_by_tx(station_id, transaction_id)
        if s is not None:
            s.preferences = prefs

    def prune_grid_events(self, now: datetime) -> None:
        """Forget grid events that are over: they plan nothing, and a year of hourly events
        would be walked at every re-plan (they stay in the database)."""
        for k in [k for k, g in self.grid_events.items() if g.end <= now]:
            del self.grid_events[k]

    def track_peak(self, at: datetime) -> None:
        """The site's import changed at ``at`` (a reading, a session's end, the building load)."""
        self.demand.sample(at, self.site_power_kw())

    # --- the inputs of one session --------------------------------------------------------
    def resolve(self, s: Session, now: datetime | None = None) -> Resolved:
        """``now``: when a forecast departure is asked for (default: at plug-in), so what the API
        shows is what the plan assumes, never a time already past."""
        p, n, cfg = s.preferences, s.needs, self.settings
        asked_at = max(now, s.started_at) if now is not None else s.started_at
        delivered = s.stored_kwh(cfg.ev_efficiency)
        if p.departure_time is not None:
            departure, dep_src = p.departure_time, "driver"
        elif n.departure_time is not None:
            departure, dep_src = n.departure_time, "ev"
        elif self.forecaster is not None:
            departure, dep_src = self.forecaster.forecast(cfg.site.name, s.started_at, asked_at).departure, \
                "forecast"
        else:
            departure, dep_src = s.started_at + timedelta(hours=cfg.default_dwell_h), "forecast"
        # A battery of 0 kWh is one nobody told (a vendor field set to 0): taken as known, it made
        # every target 0 and the EV was planned to get nothing.
        capacity = n.capacity_kwh if n.capacity_kwh is not None and n.capacity_kwh > 0 else None
        soc = s.soc
        if soc is None and n.soc is not None:
            # The SoC the EV told with its needs, carried forward by the energy metered since (a
            # station that sends no SoC readings would otherwise leave it there: a target SoC
            # never reached however much went in, and the battery planned as it was at plug-in).
            soc = n.soc
            if capacity:
                soc = min(max(n.soc + (delivered - s.needs_baseline_kwh) / capacity, 0.0), 1.0)
        if p.energy_kwh is not None:
            wanted, e_src = p.energy_kwh, "driver"
        elif p.target_soc is not None and capacity is not None and soc is not None:
            wanted, e_src = delivered + max(0.0, (p.target_soc - soc) * capacity), "driver"
        elif n.energy_kwh is not None:
            wanted = s.needs_baseline_kwh + n.energy_kwh
            e_src = "ev"
        elif n.target_soc is not None and capacity is not None and soc is not None:
            wanted, e_src = delivered + max(0.0, (n.target_soc - soc) * capacity), "ev"
        elif self.forecaster is not None:
            wanted, e_src = self.forecaster.forecast(cfg.site.name, s.started_at, asked_at).energy_kwh, "forecast"
        else:
            wanted, e_src = cfg.default_energy_kwh, "forecast"
        mode = p.mode or ChargeMode.SMART
        reserve = p.reserve_soc if p.reserve_soc is not None else (n.min_soc or 0.0)
        allow = p.allow_discharge if p.allow_discharge is not None else True
        return Resolved(departure, dep_src, max(0.0, wanted), e_src, reserve,
                        allow and mode == ChargeMode.SMART, mode, capacity, soc)

    def with_spec(self, station_id: str, evse_id: int, **changes: float | bool | int) -> None:
        st = self.evse(station_id, evse_id)
        st.spec = replace(st.spec, **changes)  # type: ignore[arg-type]
