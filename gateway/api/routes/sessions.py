"""Sessions, addressed by their OCPP transactionId: list (operator: all; driver: their own),
one session with its energy, needs, preferences and current plan, and the driver's
preferences (``PUT .../preferences``), which re-plan the site before the answer is sent.

A driver asking for a session that is not theirs gets the same 404 as for one that does not
exist, so a token cannot probe which transaction ids are in use.

Only (station, transactionId) is unique: stations assign the ids and two of them may use the
same one. A lookup sees only the rows the caller may see (a driver: their idToken's), takes the
open session over ended ones, and answers 409 naming the stations when that still leaves more
than one; ``?station_id=`` picks one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from gateway import events as ev
from gateway.api.deps import CurrentPrincipal, GatewayDep, Principal, QueriesDep
from gateway.api.errors import Conflict, NotFound, Unprocessable, responses
from gateway.api.schemas import AwareDateTime, Limit, Model, Offset, Page, StationId, TransactionId, UtcDateTime
from gateway.app import Gateway
from gateway.clock import to_rfc3339
from gateway.db import models as m
from gateway.db.planning import StoredNeeds, preferences_of
from gateway.db.queries import Queries
from gateway.db.transactions import TxSnapshot
from gateway.domain import ChargeMode, EvNeeds, PlannedSession, Preferences, Session

log = logging.getLogger(__name__)
router = APIRouter(prefix="/sessions", tags=["sessions"], responses=responses(401, 422))

# A request further out than this is a typo, not a plan (the planner looks 24 h ahead).
DEPARTURE_AHEAD_MAX_DAYS = 14
# No passenger EV battery holds more; an energy wish beyond it is refused when the EV did not
# report its capacity.
SESSION_ENERGY_MAX_KWH = 300.0
# The re-plan a driver's change triggers is awaited at most this long before answering.
REPLAN_WAIT_S = 30.0
# "Fully met" allows for the solver's rounding.
MET_TOLERANCE_KWH = 0.05

# Annotated, not a default: as `x: TransactionId = Path()` FastAPI drops the type's length and
# pattern (a NUL in the path reached the database as a 500).
TxPath = Annotated[TransactionId, Path(description="The OCPP transactionId the station assigned")]
StationQuery = Query(default=None, description="The station that assigned the transactionId: needed only "
                                               "when several stations used the same id (409 otherwise)")


class PreferencesIn(Model):
    """Every field is optional: fields left out keep their current value, ``null`` clears one."""

    departure_time: AwareDateTime | None = Field(default=None, description="When the EV leaves (RFC 3339)")
    energy_kwh: float | None = Field(default=None, ge=0, le=SESSION_ENERGY_MAX_KWH,
                                     description="Energy wanted in this session, counted from its start")
    target_soc: float | None = Field(default=None, ge=0, le=1, description="Wanted state of charge, 0..1")
    reserve_soc: float | None = Field(default=None, ge=0, le=1,
                                      description="Never discharge below this state of charge, 0..1")
    allow_discharge: bool | None = None
    mode: ChargeMode | None = Field(default=None, strict=False,
                                    description="smart: plan for cost; charge_now: as fast as the site "
                                                "allows, no discharge")


class PreferencesOut(BaseModel):
    departure_time: UtcDateTime | None
    energy_kwh: float | None
    target_soc: float | None
    reserve_soc: float | None
    allow_discharge: bool | None
    mode: ChargeMode | None
    set_by: str
    set_at: UtcDateTime


class NeedsOut(BaseModel):
    departure_time: UtcDateTime | None
    energy_kwh: float | None
    capacity_kwh: float | None
    soc: float | None
    target_soc: float | None
    min_soc: float | None
    ev_max_charge_kw: float | None
    ev_max_discharge_kw: float | None
    source: str


class ResolvedOut(BaseModel):
    """What the planner works with after merging EV needs, driver preferences and forecast."""

    departure_time: UtcDateTime
    departure_source: str
    energy_wanted_kwh: float
    energy_source: str
    reserve_soc: float
    allow_discharge: bool
    mode: ChargeMode


class SessionPlanOut(BaseModel):
    plan_id: int | None
    created_at: UtcDateTime
    status: str
    energy_by_departure_kwh: float = Field(description="Energy into the EV from session start to departure "
                                                       "if the plan is followed")
    step_starts: list[UtcDateTime]
    power_kw: list[float] = Field(description="Planned power per step (negative = discharge)")


class SessionOut(BaseModel):
    transaction_id: str
    station_id: str
    evse_id: int | None
    id_token: str | None
    active: bool
    started_at: UtcDateTime | None
    ended_at: UtcDateTime | None
    energy_in_kwh: float
    energy_out_kwh: float
    power_kw: float | None
    soc: float | None = Field(description="State of charge, 0..1, as last reported")


class SessionDetail(SessionOut):
    needs: NeedsOut | None
    preferences: PreferencesOut | None
    resolved: ResolvedOut | None
    plan: SessionPlanOut | None = Field(description="null when the session is over, not in the latest plan, "
                                                    "or the scheduler is disabled")
    scheduler_enabled: bool


class Delivery(BaseModel):
    departure_time: UtcDateTime
    energy_wanted_kwh: float
    energy_by_departure_kwh: float | None = Field(description="What the re-plan this change triggered delivers "
                                                              "by departure; null when there was none "
                                                              "(replanned false, or the scheduler disabled)")
    fully_met: bool | None = Field(description="null when energy_by_departure_kwh is")
    replanned: bool = Field(description="false: the re-plan failed or was still running after "
                                        f"{REPLAN_WAIT_S:.0f} s (it comes later); session.plan is then "
                                        "the plan made before this change")


class PreferencesResult(BaseModel):
    session: SessionDetail
    delivery: Delivery


def _out(tx: TxSnapshot) -> dict[str, Any]:
    return {"transaction_id": tx.transaction_id, "station_id": tx.station_id, "evse_id": tx.evse_id,
            "id_token": tx.id_token, "active": tx.ended_at is None and tx.started_at is not None,
            "started_at": tx.started_at, "ended_at": tx.ended_at, "energy_in_kwh": tx.energy_in_kwh,
            "energy_out_kwh": tx.energy_out_kwh, "power_kw": tx.power_kw, "soc": tx.soc_fraction}


async def _visible(gw: Gateway, who: Principal, transaction_id: str, station_id: str | None) -> TxSnapshot:
    """The one session ``transaction_id`` names for this caller (see the module's docstring)."""
    if not who.is_operator and who.id_token is None:
        raise NotFound(f"no session {transaction_id!r}")
    # A driver's lookup never looks past their own idToken: another station's session with the
    # same id can neither hide theirs nor be seen.
    rows = await gw.transactions.find(transaction_id, id_token=None if who.is_operator else who.id_token,
                                      station_id=station_id)
    if not rows:
        raise NotFound(f"no session {transaction_id!r}")
    open_rows = [t for t in rows if t.ended_at is None]
    candidates = open_rows or rows
    if len(candidates) > 1:
        stations = sorted({t.station_id for t in candidates})
        raise Conflict(f"transactionId {transaction_id!r} is in use at stations {', '.join(stations)}: "
                       "add ?station_id= to choose one",
                       {"transaction_id": transaction_id, "station_ids": stations}, code="ambiguous_session")
    return candidates[0]


def _live(gw: Gateway, tx: TxSnapshot) -> Session | None:
    """The live session of ``tx``, by its station and EVSE: the transactionId alone may be another
    station's too."""
    st = gw.state.evses.get((tx.station_id, tx.evse_id)) if tx.evse_id is not None else None
    live = st.session if st is not None else None
    return live if live is not None and live.transaction_id == tx.transaction_id else None


def _session(gw: Gateway, tx: TxSnapshot, needs: StoredNeeds | None, prefs: Preferences | None) -> Session | None:
    """The live session (kept current by events), or one rebuilt from storage (its needs counted
    from the energy stored with them, as a restarted gateway does)."""
    live = _live(gw, tx)
    return live if live is not None else tx.as_session(needs, prefs)


def _planned(gw: Gateway, tx: TxSnapshot) -> tuple[PlannedSession, Any] | None:
    sched = gw.scheduler
    if sched is None or sched.latest is None:
        return None
    ps: PlannedSession | None = sched.session_plan(tx.station_id, tx.transaction_id)
    if ps is None:
        return None
    return ps, sched.latest


async def _detail(gw: Gateway, q: Queries, tx: TxSnapshot) -> SessionDetail:
    """The session as GET shows it."""
    needs = None
    if tx.evse_id is not None and tx.started_at is not None:
        needs = await gw.planning.session_needs(tx.station_id, tx.evse_id, tx.transaction_id, tx.started_at)
    return _detail_of(gw, tx, needs, await q.preference_record(tx.station_id, tx.transaction_id))


def _detail_of(gw: Gateway, tx: TxSnapshot, needs: StoredNeeds | None, pref_rec: m.Preference | None) -> SessionDetail:
    """The session with the needs and preferences given (read by the caller)."""
    prefs = preferences_of(pref_rec) if pref_rec is not None else None
    live = _session(gw, tx, needs, prefs)
    resolved = None
    if live is not None:
        r = gw.state.resolve(live, gw.clock.now())
        resolved = ResolvedOut(departure_time=r.departure, departure_source=r.departure_source,
                               energy_wanted_kwh=round(r.energy_wanted_kwh, 4), energy_source=r.energy_source,
                               reserve_soc=r.reserve_soc, allow_discharge=r.allow_discharge, mode=r.mode)
    plan = None
    hit = _planned(gw, tx) if tx.ended_at is None else None
    if hit is not None:
        ps, outcome = hit
        plan = SessionPlanOut(plan_id=outcome.plan_id, created_at=outcome.plan.created_at,
                              status=outcome.plan.status,
                              energy_by_departure_kwh=round(ps.energy_by_departure_kwh, 4),
                              step_starts=list(outcome.plan.starts),
                              power_kw=[round(p, 4) for p in ps.power_kw])
    return SessionDetail(
        **_out(tx),
        needs=None if needs is None else NeedsOut(**{f: getattr(needs.needs, f) for f in NeedsOut.model_fields}),
        preferences=None if pref_rec is None or prefs is None else PreferencesOut(
            departure_time=prefs.departure_time, energy_kwh=prefs.energy_kwh, target_soc=prefs.target_soc,
            reserve_soc=prefs.reserve_soc, allow_discharge=prefs.allow_discharge, mode=prefs.mode,
            set_by=pref_rec.set_by, set_at=pref_rec.set_at),
        resolved=resolved, plan=plan, scheduler_enabled=gw.scheduler is not None,
    )


@router.get("")
async def list_sessions(
    gw: GatewayDep, who: CurrentPrincipal,
    active: bool | None = Query(default=None, description="true: open sessions; false: ended ones"),
    limit: Limit = 100, offset: Offset = 0,
) -> Page[SessionOut]:
    """Operator: every session; driver: the sessions started with their idToken."""
    id_token = None if who.is_operator else who.id_token
    rows, total = await gw.transactions.listing(active=active, id_token=id_token, limit=limit, offset=offset)
    return Page(items=[SessionOut(**_out(t)) for t in rows], total=total, limit=limit, offset=offset)


@router.get("/{transaction_id}", responses=responses(404, 409))
async def get_session(gw: GatewayDep, q: QueriesDep, who: CurrentPrincipal,
                      transaction_id: TxPath,
                      station_id: StationId | None = StationQuery) -> SessionDetail:
    """409 (``ambiguous_session``) when stations share the id and none of them is picked."""
    return await _detail(gw, q, await _visible(gw, who, transaction_id, station_id))


def _merge(old: Preferences, body: PreferencesIn) -> Preferences:
    given = body.model_fields_set
    merged = {f: getattr(body, f) if f in given else getattr(old, f)
              for f in ("departure_time", "energy_kwh", "target_soc", "reserve_soc", "allow_discharge", "mode")}
    # Two ways of saying how much: the one this request sets replaces the other (kept, the older
    # kWh would win over a newer target SoC, whichever the driver meant last).
    # (A null clears only itself.)
    if "target_soc" in given and body.target_soc is not None and "energy_kwh" not in given:
        merged["energy_kwh"] = None
    elif "energy_kwh" in given and body.energy_kwh is not None and "target_soc" not in given:
        merged["target_soc"] = None
    return Preferences(**merged)


def _validate(p: Preferences, given: set[str], now: datetime, needs: EvNeeds | None,
              taken_before_kwh: float) -> None:
    """The rules a schema cannot state, on the fields this request sets: a stored value is not
    this client's to fix (a departure stored earlier is in the past once it has gone by)."""
    if "departure_time" in given and p.departure_time is not None:
        if p.departure_time <= now:
            # RFC 3339 with Z, as every time the API writes (docs/api.md, Conventions).
            raise Unprocessable("departure_time is in the past", {"field": "departure_time",
                                                                   "now": to_rfc3339(now)})
        if p.departure_time > now + timedelta(days=DEPARTURE_AHEAD_MAX_DAYS):
            raise Unprocessable(f"departure_time is more than {DEPARTURE_AHEAD_MAX_DAYS} days ahead",
                                {"field": "departure_time"})
    capacity = needs.capacity_kwh if needs is not None else None
    if "energy_kwh" in given and p.energy_kwh is not None and capacity is not None:
        # The wish counts from session start: the room at the SoC reading plus what the EV had
        # taken by then (``taken_before_kwh``); with no SoC, at most the whole battery.
        room = capacity
        soc = needs.soc if needs is not None else None
        if soc is not None:
            room = capacity * (1.0 - soc) + taken_before_kwh
        if p.energy_kwh > room + 1e-6:
            raise Unprocessable(f"energy_kwh {p.energy_kwh:g} exceeds what the battery can take "
                                f"({room:.1f} kWh)",
                                {"field": "energy_kwh", "battery_capacity_kwh": capacity})
    if ({"reserve_soc", "target_soc"} & given and p.reserve_soc is not None and p.target_soc is not None
            and p.reserve_soc > p.target_soc):
        raise Unprocessable("reserve_soc is above target_soc", {"field": "reserve_soc"})


def _apply_live(gw: Gateway, tx: TxSnapshot, needs: StoredNeeds | None, prefs: Preferences,
                stored: Preferences) -> Callable[[], None]:
    """Put ``prefs`` on the live session; returns what undoes it (if the change is not stored),
    which puts back the preferences in force before: those ``stored``, for a session this
    change brought into the live state."""
    assert tx.evse_id is not None
    st = gw.state.evse(tx.station_id, tx.evse_id)
    live = _live(gw, tx)
    if live is None:
        if gw.scheduler is None:
            return lambda: None
        # The scheduler folds SessionStarted in from its queue; a change that comes first must
        # not be lost, so the session enters the live state here (the later event keeps it).
        # Undone, the session stays: it is active in storage, and taking it out again would
        # lose the SessionStarted folded in meanwhile (which kept it).
        replaced = st.session
        if replaced is not None and tx.started_at is not None and replaced.started_at > tx.started_at:
            # A later session is live on this EVSE: this one ended without its Ended event reaching
            # us. The change is stored; the live session is not this one to replace.
            return lambda: None
        live = st.session = tx.as_session(needs, prefs)
        if live is None:  # not open on an EVSE (the caller checked it is)
            return lambda: None
        before = stored
    else:
        before = live.preferences
    live.preferences = prefs
    target = live

    def undo() -> None:
        if target.preferences is prefs:  # not a change stored after this one failed
            target.preferences = before
    return undo


@router.put("/{transaction_id}/preferences", responses=responses(404, 409))
async def set_preferences(body: PreferencesIn, gw: GatewayDep, q: QueriesDep, who: CurrentPrincipal,
                          transaction_id: TxPath,
                          station_id: StationId | None = StationQuery) -> PreferencesResult:
    """Change departure, energy or SoC wanted, reserve, discharge permission or mode.

    The change is merged into the preferences in force and stored (with who and when) under the
    session's row lock, so concurrent changes of different fields all survive; it is applied,
    and the site is re-planned before the answer, which shows what was stored and what the new
    plan delivers by departure.
    """
    tx = await _visible(gw, who, transaction_id, station_id)
    if tx.ended_at is not None or tx.evse_id is None or tx.started_at is None:
        raise Conflict("the session is not active", {"transaction_id": transaction_id})
    now = gw.clock.now()
    needs = await gw.planning.session_needs(tx.station_id, tx.evse_id, tx.transaction_id, tx.started_at)
    given = set(body.model_fields_set)
    undo: list[Callable[[], None]] = []
    stored: list[Preferences] = []

    def change(old: Preferences) -> Preferences:
        stored.append(old)
        prefs = _merge(old, body)
        # What the EV had taken when it read its SoC (the needs' baseline, battery side), else now.
        taken = needs.baseline_kwh if needs is not None and needs.baseline_kwh is not None else (
            tx.energy_in_kwh - tx.energy_out_kwh)
        _validate(prefs, given, now, None if needs is None else needs.needs, taken)
        return prefs

    def applied(prefs: Preferences) -> None:
        # Under the row lock: the live state takes concurrent changes in the order they are stored.
        undo.append(_apply_live(gw, tx, needs, prefs, stored[-1]))

    try:
        rec = await gw.transactions.change_preferences(tx.station_id, tx.transaction_id, change,
                                                       set_by=who.name, now=now, applied=applied)
    except BaseException:
        for u in undo:  # applied, then the commit failed: the live state must not run ahead of storage
            u()
        raise
    if rec is None:
        raise Conflict("the session is not active", {"transaction_id": transaction_id})
    gw.bus.publish(ev.NeedsUpdated(now, tx.station_id, tx.evse_id, tx.transaction_id, "driver"))
    log.info("preferences of session %s at %s set by %s", tx.transaction_id, tx.station_id, who.name)

    replanned = False
    if gw.scheduler is not None:
        # Shielded: the answer stops waiting after REPLAN_WAIT_S, the re-plan (and its pushes) does
        # not stop with it (MpcScheduler.replan_task).
        replan = gw.scheduler.replan_task("driver")
        try:
            replanned = await asyncio.wait_for(asyncio.shield(replan), REPLAN_WAIT_S) is not None
        except TimeoutError:
            log.warning("re-plan after the driver's change of %s still running after %.0f s; answering "
                        "without it", tx.transaction_id, REPLAN_WAIT_S)
        except Exception:
            # The change is stored and the debounced re-plan will still come: report, do not fail
            # (the task logs the failure itself).
            pass
    # No database read from here on: the change is stored and in force, and an answer saying the
    # database failed would tell the driver it was not (docs/api.md, 503). The needs shown are
    # those the change was checked against.
    detail = _detail_of(gw, tx, needs, rec)
    assert detail.resolved is not None  # an active session always resolves
    # Only a plan made after this change answers it: without the re-plan, the plan in force was
    # made for the request before, and its energy would pass for what the new one gets.
    planned = detail.plan.energy_by_departure_kwh if replanned and detail.plan is not None else None
    wanted = detail.resolved.energy_wanted_kwh
    return PreferencesResult(session=detail, delivery=Delivery(
        departure_time=detail.resolved.departure_time,
        energy_wanted_kwh=wanted,
        energy_by_departure_kwh=planned,
        fully_met=None if planned is None else planned + MET_TOLERANCE_KWH >= wanted,
        replanned=replanned,
    ))
