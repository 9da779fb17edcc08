"""What the scheduler reads and writes: EV needs, driver preferences, plans, profiles sent,
grid events, tariffs, operator site settings, billing peaks and the building's readings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db import models as m
from gateway.domain import ChargeMode, EvNeeds, GridEvent, GridEventKind, Preferences

# How long before its transaction's start an EV's needs may come and still be its own: ISO 15118
# needs arrive before TransactionEvent Started where a station starts the transaction late
# (TxStartPoint PowerPathClosed), and a station's clock (its started_at) may run ahead of ours.
NEEDS_BEFORE_START = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class StoredNeeds:
    id: int
    needs: EvNeeds
    baseline_kwh: float | None


def preferences_of(rec: m.Preference) -> Preferences:
    """A stored preferences row as the domain's value."""
    return Preferences(rec.departure_time, rec.energy_kwh, rec.target_soc, rec.reserve_soc,
                       rec.allow_discharge, ChargeMode(rec.mode) if rec.mode else None)


class PlanningRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    # --- EV needs -------------------------------------------------------------------------
    async def add_needs(
        self, station_id: str, evse_id: int, transaction_id: str | None, needs: EvNeeds,
        payload: dict[str, Any] | None, now: datetime,
    ) -> None:
        async with self._sessions.begin() as s:
            s.add(m.EvNeed(
                station_id=station_id, evse_id=evse_id, transaction_id=transaction_id, source=needs.source,
                departure_time=needs.departure_time, energy_kwh=needs.energy_kwh,
                capacity_kwh=needs.capacity_kwh, soc=needs.soc, target_soc=needs.target_soc,
                min_soc=needs.min_soc, ev_max_charge_kw=needs.ev_max_charge_kw,
                ev_max_discharge_kw=needs.ev_max_discharge_kw, max_schedule_tuples=needs.max_schedule_tuples,
                payload=payload, received_at=now,
            ))

    async def latest_needs(self, station_id: str, evse_id: int, since: datetime | None,
                           transaction_id: str | None = None) -> StoredNeeds | None:
        """The newest needs of an EVSE (received at or after ``since``), with the row's id and
        the energy the EV had when they arrived (None until ``set_needs_baseline`` wrote it).
        With ``transaction_id``: only needs of that transaction or of none (sent before it began)."""
        async with self._sessions() as s:
            q = select(m.EvNeed).where(m.EvNeed.station_id == station_id, m.EvNeed.evse_id == evse_id)
            if since is not None:
                q = q.where(m.EvNeed.received_at >= since)
            if transaction_id is not None:
                q = q.where(or_(m.EvNeed.transaction_id.is_(None), m.EvNeed.transaction_id == transaction_id))
            n = (await s.execute(q.order_by(m.EvNeed.received_at.desc(), m.EvNeed.id.desc())
                                 .limit(1))).scalar_one_or_none()
            if n is None:
                return None
            return StoredNeeds(n.id, EvNeeds(n.departure_time, n.energy_kwh, n.capacity_kwh, n.soc, n.target_soc,
                                             n.min_soc, n.ev_max_charge_kw, n.ev_max_discharge_kw, n.source,
                                             n.max_schedule_tuples),
                               n.baseline_kwh)

    async def session_needs(self, station_id: str, evse_id: int, transaction_id: str,
                            started_at: datetime) -> StoredNeeds | None:
        """The newest needs of the session ``transaction_id`` that began at ``started_at`` (the
        station's time): received (our time) from NEEDS_BEFORE_START before it, of this
        transaction or sent before it began."""
        return await self.latest_needs(station_id, evse_id, started_at - NEEDS_BEFORE_START,
                                       transaction_id=transaction_id)

    async def set_needs_baseline(self, row_id: int, baseline_kwh: float) -> float:
        """Store ``baseline_kwh`` with the needs unless one is stored already (another node's, or
        an earlier pass's); returns the one stored, which every node then counts from."""
        t = m.EvNeed
        async with self._sessions.begin() as s:
            got = (await s.execute(update(t).where(t.id == row_id)
                                   .values(baseline_kwh=func.coalesce(t.baseline_kwh, baseline_kwh))
                                   .returning(t.baseline_kwh))).scalar_one_or_none()
            return baseline_kwh if got is None else float(got)

    async def set_needs_transaction(self, row_id: int, transaction_id: str) -> None:
        """Mark needs stored before their transaction began as that transaction's."""
        async with self._sessions.begin() as s:
            await s.execute(update(m.EvNeed).where(m.EvNeed.id == row_id, m.EvNeed.transaction_id.is_(None))
                            .values(transaction_id=transaction_id))

    # --- driver preferences ---------------------------------------------------------------
    async def preferences(self, station_id: str, transaction_id: str) -> Preferences | None:
        async with self._sessions() as s:
            p = (await s.execute(select(m.Preference).where(
                m.Preference.station_id == station_id, m.Preference.transaction_id == transaction_id)
                .order_by(m.Preference.set_at.desc(), m.Preference.id.desc()).limit(1))).scalar_one_or_none()
            return None if p is None else preferences_of(p)

    # --- plans and profiles ---------------------------------------------------------------
    async def add_plan(
        self, *, created_at: datetime, trigger: str, inputs_hash: str, status: str, fallback: bool,
        objective: float | None, terms: dict[str, float], solve_s: float, horizon_start: datetime,
        horizon_end: datetime, sessions: dict[str, Any],
    ) -> int:
        async with self._sessions.begin() as s:
            rec = m.PlanRecord(created_at=created_at, trigger=trigger, inputs_hash=inputs_hash, status=status,
                               fallback=fallback, objective=objective, terms=terms, solve_s=solve_s,
                               horizon_start=horizon_start, horizon_end=horizon_end, sessions=sessions)
            s.add(rec)
            await s.flush()
            return rec.id

    async def add_profile_sent(
        self, *, plan_id: int | None, station_id: str, evse_id: int, transaction_id: str | None,
        profile_id: int, stack_level: int, payload: dict[str, Any], status: str,
        response: dict[str, Any] | None, sent_at: datetime,
    ) -> None:
        async with self._sessions.begin() as s:
            s.add(m.ProfileSent(plan_id=plan_id, station_id=station_id, evse_id=evse_id,
                                transaction_id=transaction_id, profile_id=profile_id, stack_level=stack_level,
                                payload=payload, status=status, response=response, sent_at=sent_at))

    # --- grid events, tariffs, site settings ----------------------------------------------
    async def upsert_grid_event(self, ev: GridEvent, source: str, now: datetime) -> bool:
        """Store ``ev`` (the same id updates it). False, and nothing written, when that id was
        cancelled: a cancel is final, so a create replayed later (a retained MQTT message after a
        reconnect) cannot bring the event back. One statement, so a cancel cannot slip in between
        the check and the write."""
        t = m.GridEventRecord
        async with self._sessions.begin() as s:
            values = {"start": ev.start, "end": ev.end, "kind": ev.kind.value,
                      "payment_per_kwh": ev.payment_per_kwh, "cap_kw": ev.cap_kw, "source": source}
            stmt = (insert(t).values(id=ev.id, created_at=now, **values)
                    .on_conflict_do_update(index_elements=[t.id], set_=values, where=t.cancelled_at.is_(None))
                    .returning(t.id))
            return (await s.execute(stmt)).first() is not None

    async def cancel_grid_event(self, event_id: str, now: datetime) -> bool:
        async with self._sessions.begin() as s:
            res = await s.execute(update(m.GridEventRecord).where(
                m.GridEventRecord.id == event_id, m.GridEventRecord.cancelled_at.is_(None))
                .values(cancelled_at=now))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    async def active_grid_events(self, after: datetime) -> list[GridEvent]:
        """The events not cancelled that end after ``after``, filtered in the database: every
        event a site ever had was read back at each start to keep a handful."""
        async with self._sessions() as s:
            q = (select(m.GridEventRecord)
                 .where(m.GridEventRecord.cancelled_at.is_(None), m.GridEventRecord.end > after)
                 .order_by(m.GridEventRecord.start))
            rows = (await s.execute(q)).scalars()
            return [GridEvent(r.id, r.start, r.end, GridEventKind(r.kind), r.payment_per_kwh, r.cap_kw) for r in rows]

    async def raise_peak(self, site: str, period_start: datetime, peak_kw: float, now: datetime) -> float:
        """Store ``peak_kw`` as the period's peak unless a higher one is stored; returns the stored one."""
        t = m.BillingPeak.__table__
        async with self._sessions.begin() as s:
            stmt = (insert(m.BillingPeak).values(site=site, period_start=period_start, peak_kw=peak_kw, updated_at=now)
                    .on_conflict_do_update(index_elements=[t.c.site, t.c.period_start],
                                           set_={"peak_kw": func.greatest(t.c.peak_kw, peak_kw), "updated_at": now})
                    .returning(t.c.peak_kw))
            return float((await s.execute(stmt)).scalar_one())

    async def peak(self, site: str, period_start: datetime) -> float | None:
        async with self._sessions() as s:
            rec = await s.get(m.BillingPeak, (site, period_start))
            return rec.peak_kw if rec else None

    # --- building readings (the learned building profile) -------------------------------
    async def record_building(self, site: str, slot_start: datetime, power_kw: float) -> None:
        """The building's load in the five-minute slot starting at ``slot_start`` (a later write
        for the same slot replaces it, as the profile keeps a slot's last reading)."""
        t = m.BuildingReading.__table__
        async with self._sessions.begin() as s:
            await s.execute(insert(m.BuildingReading).values(site=site, slot_start=slot_start, power_kw=power_kw)
                            .on_conflict_do_update(index_elements=[t.c.site, t.c.slot_start],
                                                   set_={"power_kw": power_kw}))

    async def building_readings(self, site: str, since: datetime) -> list[tuple[datetime, float]]:
        """The site's building readings from ``since`` on, oldest first."""
        async with self._sessions() as s:
            rows = await s.execute(select(m.BuildingReading.slot_start, m.BuildingReading.power_kw)
                                   .where(m.BuildingReading.site == site, m.BuildingReading.slot_start >= since)
                                   .order_by(m.BuildingReading.slot_start))
            return [(ts, float(kw)) for ts, kw in rows.all()]

    async def prune_building_readings(self, site: str, before: datetime) -> int:
        """Forget the site's readings older than ``before``; returns how many."""
        async with self._sessions.begin() as s:
            res = await s.execute(delete(m.BuildingReading)
                                  .where(m.BuildingReading.site == site, m.BuildingReading.slot_start < before))
            return int(getattr(res, "rowcount", 0) or 0)

    async def set_setting(self, key: str, value: dict[str, Any], by: str, now: datetime) -> None:
        async with self._sessions.begin() as s:
            await s.execute(insert(m.SiteSetting).values(key=key, value=value, updated_at=now, updated_by=by)
                            .on_conflict_do_update(index_elements=[m.SiteSetting.key],
                                                   set_={"value": value, "updated_at": now,
                                                         "updated_by": by}))

    async def setting(self, key: str) -> dict[str, Any] | None:
        async with self._sessions() as s:
            rec = await s.get(m.SiteSetting, key)
            return rec.value if rec else None

