"""Read queries for the REST API and the MQTT bridge (and the few writes that only they make:
driver tokens and tariffs). The OCPP path's repositories stay as they are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import load_only

from gateway.db import models as m

# The columns a plan's summary shows (GET /api/v1/plans).
PLAN_SUMMARY = (m.PlanRecord.id, m.PlanRecord.created_at, m.PlanRecord.trigger, m.PlanRecord.status,
                m.PlanRecord.fallback, m.PlanRecord.objective, m.PlanRecord.solve_s, m.PlanRecord.horizon_start,
                m.PlanRecord.horizon_end)


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    station_id: str
    evse_id: int
    measurand: str
    phase: str | None
    unit: str | None
    location: str | None
    avg: float
    min: float
    max: float
    count: int


def _meter_filter(station_id: str | None, transaction_id: str | None, evse_id: int | None,
                  measurand: str | None, start: datetime, end: datetime) -> ColumnElement[bool]:
    mv = m.MeterValue
    return _where(
        mv.station_id == station_id if station_id is not None else None,
        mv.transaction_id == transaction_id if transaction_id is not None else None,
        mv.evse_id == evse_id if evse_id is not None else None,
        mv.measurand == measurand if measurand is not None else None,
        mv.ts >= start, mv.ts < end,
    )


def _where(*conds: ColumnElement[bool] | None) -> ColumnElement[bool]:
    return and_(literal(True), *(c for c in conds if c is not None))


class Queries:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    # --- driver tokens --------------------------------------------------------------------
    async def add_driver_token(self, token_hash: str, id_token: str, label: str | None,
                               now: datetime) -> m.DriverToken:
        async with self._sessions.begin() as s:
            rec = m.DriverToken(token_hash=token_hash, id_token=id_token, label=label, created_at=now)
            s.add(rec)
            await s.flush()
            return rec

    async def driver_token(self, token_hash: str) -> m.DriverToken | None:
        """The live (not revoked) token with this sha256, if any."""
        async with self._sessions() as s:
            q = select(m.DriverToken).where(m.DriverToken.token_hash == token_hash,
                                            m.DriverToken.revoked_at.is_(None))
            return (await s.execute(q)).scalar_one_or_none()

    async def driver_tokens(self, limit: int, offset: int) -> tuple[list[m.DriverToken], int]:
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(m.DriverToken))).scalar_one()
            rows = (await s.execute(select(m.DriverToken).order_by(m.DriverToken.id)
                                    .limit(limit).offset(offset))).scalars()
            return list(rows), int(total)

    async def revoke_driver_token(self, token_id: int, now: datetime) -> m.DriverToken | None:
        async with self._sessions.begin() as s:
            rec = await s.get(m.DriverToken, token_id, with_for_update=True)
            if rec is None:
                return None
            if rec.revoked_at is None:
                rec.revoked_at = now
            return rec

    # --- stations -------------------------------------------------------------------------
    async def evses(self, station_ids: list[str]) -> list[m.Evse]:
        async with self._sessions() as s:
            return list((await s.execute(select(m.Evse).where(m.Evse.station_id.in_(station_ids)))).scalars())

    async def station_count(self) -> int:
        async with self._sessions() as s:
            return int((await s.execute(select(func.count()).select_from(m.Station))).scalar_one())

    # --- preferences (with who and when) --------------------------------------------------
    async def preference_record(self, station_id: str, transaction_id: str) -> m.Preference | None:
        async with self._sessions() as s:
            return (await s.execute(select(m.Preference).where(
                m.Preference.station_id == station_id, m.Preference.transaction_id == transaction_id)
                .order_by(m.Preference.set_at.desc(), m.Preference.id.desc()).limit(1))).scalar_one_or_none()

    # --- telemetry ------------------------------------------------------------------------
    async def meter_values(
        self, *, station_id: str | None, transaction_id: str | None, evse_id: int | None,
        measurand: str | None, start: datetime, end: datetime, limit: int, offset: int,
    ) -> tuple[list[m.MeterValue], int]:
        mv = m.MeterValue
        where = _meter_filter(station_id, transaction_id, evse_id, measurand, start, end)
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(mv).where(where))).scalar_one()
            rows = (await s.execute(select(mv).where(where).order_by(mv.ts, mv.id)
                                    .limit(limit).offset(offset))).scalars()
            return list(rows), int(total)

    async def meter_buckets(
        self, *, station_id: str | None, transaction_id: str | None, evse_id: int | None,
        measurand: str | None, start: datetime, end: datetime, bucket_s: int, limit: int, offset: int,
    ) -> tuple[list[Bucket], int]:
        """Samples averaged per ``bucket_s`` window with Postgres ``date_bin``; buckets are
        aligned on ``start`` so the first one begins exactly where the query does."""
        mv = m.MeterValue
        where = _meter_filter(station_id, transaction_id, evse_id, measurand, start, end)
        bucket = func.date_bin(timedelta(seconds=bucket_s), mv.ts, start).label("bucket")
        keys = (bucket, mv.station_id, mv.evse_id, mv.measurand, mv.phase, mv.unit, mv.location)
        grouped = (select(*keys, func.avg(mv.value), func.min(mv.value), func.max(mv.value), func.count())
                   .where(where).group_by(*keys))
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(grouped.subquery()))).scalar_one()
            # Ordered by every key grouped by: groups differing only in one left out (the unit)
            # would come in whatever order the plan gives, and OFFSET paging skip or repeat them.
            res = await s.execute(grouped.order_by(bucket, mv.station_id, mv.evse_id, mv.measurand,
                                                   mv.phase.nulls_first(), mv.unit.nulls_first(),
                                                   mv.location.nulls_first())
                                  .limit(limit).offset(offset))
            out = [Bucket(r[0], r[1], r[2], r[3], r[4], r[5], r[6], float(r[7]), float(r[8]), float(r[9]),
                          int(r[10])) for r in res.all()]
            return out, int(total)

    # --- plans and profiles ---------------------------------------------------------------
    async def plans(self, limit: int, offset: int) -> tuple[list[m.PlanRecord], int]:
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(m.PlanRecord))).scalar_one()
            # Only what a summary shows: a plan's per-session powers are megabytes at fleet scale.
            rows = (await s.execute(select(m.PlanRecord).options(load_only(*PLAN_SUMMARY))
                                    .order_by(m.PlanRecord.id.desc()).limit(limit).offset(offset))).scalars()
            return list(rows), int(total)

    async def plan(self, plan_id: int | None) -> m.PlanRecord | None:
        """One plan by id, or the newest when ``plan_id`` is None."""
        async with self._sessions() as s:
            if plan_id is not None:
                return await s.get(m.PlanRecord, plan_id)
            return (await s.execute(select(m.PlanRecord).order_by(m.PlanRecord.id.desc())
                                    .limit(1))).scalar_one_or_none()

    async def profiles_sent(
        self, *, station_id: str | None, transaction_id: str | None, plan_id: int | None, limit: int,
        offset: int,
    ) -> tuple[list[m.ProfileSent], int]:
        p = m.ProfileSent
        where = _where(
            p.station_id == station_id if station_id is not None else None,
            p.transaction_id == transaction_id if transaction_id is not None else None,
            p.plan_id == plan_id if plan_id is not None else None,
        )
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(p).where(where))).scalar_one()
            rows = (await s.execute(select(p).where(where).order_by(p.id.desc()).limit(limit)
                                    .offset(offset))).scalars()
            return list(rows), int(total)

    # --- tariffs and grid events ----------------------------------------------------------
    async def add_tariff(self, *, source: str, demand_charge_per_kw: float, periods: dict[str, Any],
                         now: datetime) -> None:
        async with self._sessions.begin() as s:
            s.add(m.TariffRecord(created_at=now, source=source, demand_charge_per_kw=demand_charge_per_kw,
                                 periods=periods))

    async def latest_tariff(self, *, tariff_set: bool = False) -> m.TariffRecord | None:
        """The newest tariffs row; with ``tariff_set``, the newest that set the tariff itself
        (not one a price forecast wrote: its ``tariff_set`` is false; older rows have none)."""
        t = m.TariffRecord
        q = select(t)
        if tariff_set:
            q = q.where(t.periods["tariff_set"].as_boolean().is_not(False))
        async with self._sessions() as s:
            return (await s.execute(q.order_by(t.id.desc()).limit(1))).scalar_one_or_none()

    async def grid_event(self, event_id: str) -> m.GridEventRecord | None:
        async with self._sessions() as s:
            return await s.get(m.GridEventRecord, event_id)

    async def grid_events(self, *, include_cancelled: bool, limit: int,
                          offset: int) -> tuple[list[m.GridEventRecord], int]:
        g = m.GridEventRecord
        where = _where(None if include_cancelled else g.cancelled_at.is_(None))
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(g).where(where))).scalar_one()
            rows = (await s.execute(select(g).where(where).order_by(g.start, g.id).limit(limit)
                                    .offset(offset))).scalars()
            return list(rows), int(total)
