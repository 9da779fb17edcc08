"""Transactions and their events: idempotent on (station, transactionId, seqNo) (docs/reliability.md D1),
seqNo gaps flagged and closed (D2), offline events kept as offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, not_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.clock import parse_rfc3339
from gateway.db import models as m
from gateway.db.engine import driver_connection
from gateway.db.planning import StoredNeeds, preferences_of
from gateway.domain import EvNeeds, Preferences, Session
from gateway.ocpp.meter import Readings, samples, summarize

SUPERSEDED = "Superseded"  # stopped_reason of a transaction closed by the next one on its EVSE


@dataclass(frozen=True, slots=True)
class TxSnapshot:
    station_id: str
    transaction_id: str
    evse_id: int | None
    id_token: str | None
    started_at: datetime | None
    ended_at: datetime | None
    energy_in_kwh: float
    energy_out_kwh: float
    power_kw: float | None
    soc: float | None  # percent, as the station reports it and the table stores it
    charging_state: str | None = None  # the last chargingState reported (OCPP 2.0.1 ChargingStateEnumType)
    battery_start_kwh: float | None = None  # the battery's energy at plug-in, once pinned (migration 0007)
    # The highest SoC stored for it (percent, meter_values), where read (:meth:`active`): what a
    # battery lent to the grid held, to have back by its believed departure after a restart too.
    high_soc: float | None = None

    @property
    def soc_fraction(self) -> float | None:
        """The state of charge as 0..1, the unit the live state, the planner and the API use."""
        return None if self.soc is None else self.soc / 100.0

    def as_session(self, needs: StoredNeeds | None, prefs: Preferences | None) -> Session | None:
        """The live session this open transaction is, rebuilt from storage (a restart, or the REST
        API ahead of the events): SoC as 0..1, the EV's needs counted from the energy stored with
        them (0 for rows from before migration 0006), the battery's energy at plug-in where it was
        pinned (migration 0007) and the highest SoC it reported. None unless it is open on an EVSE."""
        if self.evse_id is None or self.started_at is None or self.ended_at is not None:
            return None
        high = max((v for v in (self.high_soc, self.soc) if v is not None), default=None)
        return Session(self.station_id, self.evse_id, self.transaction_id, self.started_at, self.id_token,
                       self.energy_in_kwh, self.energy_out_kwh, soc=self.soc_fraction, power_kw=self.power_kw or 0.0,
                       needs=needs.needs if needs is not None else EvNeeds(), preferences=prefs or Preferences(),
                       charging_state=self.charging_state,
                       needs_baseline_kwh=(needs.baseline_kwh or 0.0) if needs is not None else 0.0,
                       battery_start_kwh=self.battery_start_kwh,
                       high_soc=None if high is None else high / 100.0)


@dataclass(frozen=True, slots=True)
class Recorded:
    inserted: bool  # False: a replay; nothing new was stored
    response: dict[str, Any]
    tx: TxSnapshot | None  # the transaction as stored (also on a replay); None if it has no row
    event_type: str
    # When the stored event was received: ``now`` of the call that stored it. A replay whose
    # stored_at is the caller's own ``now`` is the caller's own earlier commit (its result lost).
    stored_at: datetime | None = None
    # What this event's meter values read (the summary the function was given), so the caller
    # does not parse them again.
    readings: Readings = field(default_factory=Readings)


def _snapshot(t: m.Transaction) -> TxSnapshot:
    return TxSnapshot(t.station_id, t.transaction_id, t.evse_id, t.id_token, t.started_at, t.ended_at,
                      t.energy_in_kwh, t.energy_out_kwh, t.last_power_kw, t.last_soc, t.charging_state,
                      t.battery_start_kwh)


_RECORD = """
SELECT * FROM record_transaction_event($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11, $12, $13, $14,
                                       $15, $16, $17, $18, $19, $20, $21, $22, $23)"""
MAX_GAP_ROWS = 1000  # a seqNo jump larger than this is recorded only for its first 1,000 numbers
# Rows one transactionId lookup returns (open ones first): more than one is already ambiguous, and
# an answer naming the stations that share an id names at most this many.
FIND_ROWS_MAX = 20


def _same_token(id_token: str) -> ColumnElement[bool]:
    """The transactions of ``id_token`` whatever its case (OCPP 2.0.1: an idToken is
    case-insensitive); served by the index on lower(id_token)."""
    return func.lower(m.Transaction.id_token) == func.lower(id_token)


class TransactionRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._engine: AsyncEngine = sessions.kw["bind"]

    async def record_event(
        self, station_id: str, payload: dict[str, Any], response: dict[str, Any], now: datetime
    ) -> Recorded:
        """Store one TransactionEvent and update its transaction, in one commit.

        A replay (same station, transactionId, seqNo) stores nothing and returns the answer
        given the first time, so every retry of the station gets the same reply (D1), with the
        transaction as it stands and the stored event's ``received_at`` (``stored_at``).
        This is the hottest write of the gateway: one call of the SQL function
        ``record_transaction_event`` (migrations 0002, 0005), one round trip, one implicit
        transaction.
        """
        info = payload["transactionInfo"]
        tid: str = info["transactionId"]
        event_type: str = payload["eventType"]
        evse = payload.get("evse") or {}
        token = payload.get("idToken")
        if token is not None and token.get("type") == "NoAuthorization":
            token = None
        r = summarize(list(samples(payload["meterValue"]))) if "meterValue" in payload else Readings()
        async with driver_connection(self._engine) as c:
            row = await c.fetchrow(
                _RECORD, station_id, tid, payload["seqNo"], event_type, payload["triggerReason"],
                parse_rfc3339(payload["timestamp"]), bool(payload.get("offline", False)), now,
                json.dumps(payload), json.dumps(response), evse.get("id"), evse.get("connectorId"),
                token["idToken"] if token else None, token["type"] if token else None,
                info.get("stoppedReason"), info.get("chargingState"), r.import_wh_min, r.import_wh_max,
                r.export_wh_min, r.export_wh_max, None if r.power_w is None else r.power_w / 1000.0, r.soc,
                MAX_GAP_ROWS)
        snap = None if row["energy_in_kwh"] is None else TxSnapshot(
            station_id, tid, row["evse_id"], row["id_token"], row["started_at"], row["ended_at"],
            row["energy_in_kwh"], row["energy_out_kwh"], row["last_power_kw"], row["last_soc"],
            row["charging_state"])
        if not row["inserted"]:
            stored = row["response"]  # SQLAlchemy's asyncpg codec already decodes jsonb
            return Recorded(False, json.loads(stored) if isinstance(stored, str) else stored, snap, event_type,
                            row["stored_at"], r)
        return Recorded(True, response, snap, event_type, row["stored_at"], r)

    async def stored_samples(self, station_id: str, transaction_id: str,
                             stamps: list[datetime]) -> set[tuple[datetime, str, str | None, str | None, str | None]]:
        """(ts, measurand, phase, context, location) of the transaction's meter values stored at
        ``stamps``."""
        mv = m.MeterValue
        async with self._sessions() as s:
            q = select(mv.ts, mv.measurand, mv.phase, mv.context, mv.location).where(
                mv.transaction_id == transaction_id, mv.station_id == station_id, mv.ts.in_(stamps))
            return {(r.ts, r.measurand, r.phase, r.context, r.location) for r in await s.execute(q)}

    async def open_gaps(self, station_id: str, transaction_id: str) -> list[int]:
        async with self._sessions() as s:
            res = await s.execute(select(m.TransactionSeqGap.seq_no).where(
                m.TransactionSeqGap.station_id == station_id,
                m.TransactionSeqGap.transaction_id == transaction_id,
                m.TransactionSeqGap.closed_at.is_(None)).order_by(m.TransactionSeqGap.seq_no))
            return list(res.scalars())

    async def events(self, station_id: str, transaction_id: str) -> list[m.TransactionEvent]:
        async with self._sessions() as s:
            res = await s.execute(select(m.TransactionEvent).where(
                m.TransactionEvent.station_id == station_id,
                m.TransactionEvent.transaction_id == transaction_id).order_by(m.TransactionEvent.seq_no))
            return list(res.scalars())

    async def get(self, station_id: str, transaction_id: str) -> TxSnapshot | None:
        async with self._sessions() as s:
            t = (await s.execute(select(m.Transaction).where(
                m.Transaction.station_id == station_id,
                m.Transaction.transaction_id == transaction_id))).scalar_one_or_none()
            return _snapshot(t) if t else None

    async def find(
        self, transaction_id: str, *, id_token: str | None = None, station_id: str | None = None,
    ) -> list[TxSnapshot]:
        """Every transaction with this OCPP id (narrowed to one idToken and/or station), open ones
        first, then newest first. Only (station, transactionId) is unique: two stations may use
        the same id, so the caller decides what an id that matches several rows means."""
        conds: list[ColumnElement[bool]] = [m.Transaction.transaction_id == transaction_id]
        if id_token is not None:
            conds.append(_same_token(id_token))
        if station_id is not None:
            conds.append(m.Transaction.station_id == station_id)
        open_first = case((m.Transaction.ended_at.is_(None), 0), else_=1)
        async with self._sessions() as s:
            res = await s.execute(select(m.Transaction).where(*conds)
                                  .order_by(open_first, m.Transaction.id.desc()).limit(FIND_ROWS_MAX))
            return [_snapshot(t) for t in res.scalars()]

    async def change_preferences(
        self, station_id: str, transaction_id: str, change: Callable[[Preferences], Preferences], *,
        set_by: str, now: datetime, applied: Callable[[Preferences], None] | None = None,
    ) -> m.Preference | None:
        """Read the preferences in force, ``change`` them, store the result: one DB transaction
        holding the transaction row's lock (``SELECT ... FOR UPDATE``), so concurrent changes of
        one session, from this process or another gateway on the same database, apply one after
        the other and none is lost. ``change`` may raise to refuse (nothing is stored).

        ``applied`` runs under the lock once the row is written, so a caller's in-memory copy
        takes the changes in the order they are stored. Returns the stored row, or ``None`` when
        the transaction is unknown or has ended (checked under the lock)."""
        async with self._sessions.begin() as s:
            tx = (await s.execute(select(m.Transaction).where(
                m.Transaction.station_id == station_id, m.Transaction.transaction_id == transaction_id)
                .with_for_update())).scalar_one_or_none()
            if tx is None or tx.ended_at is not None:
                return None
            prev = (await s.execute(select(m.Preference).where(
                m.Preference.station_id == station_id, m.Preference.transaction_id == transaction_id)
                .order_by(m.Preference.set_at.desc(), m.Preference.id.desc()).limit(1))).scalar_one_or_none()
            prefs = change(Preferences() if prev is None else preferences_of(prev))
            # The newest row (by set_at, then id) is the one in force. ``now`` was read before the
            # lock, so a change that waited behind a later-stamped one must not sort before it.
            set_at = now if prev is None else max(now, prev.set_at)
            rec = m.Preference(
                station_id=station_id, transaction_id=transaction_id, departure_time=prefs.departure_time,
                energy_kwh=prefs.energy_kwh, target_soc=prefs.target_soc, reserve_soc=prefs.reserve_soc,
                allow_discharge=prefs.allow_discharge, mode=prefs.mode.value if prefs.mode else None,
                set_by=set_by, set_at=set_at)
            s.add(rec)
            await s.flush()
            if applied is not None:
                applied(prefs)
            return rec

    async def set_battery_start(self, station_id: str, transaction_id: str, kwh: float) -> float | None:
        """Keep the battery's energy at plug-in with the transaction unless one is kept already
        (another node's, or an earlier pass's); returns the one kept, which every node then counts
        from (None: no such transaction row)."""
        t = m.Transaction
        async with self._sessions.begin() as s:
            got = (await s.execute(update(t).where(t.station_id == station_id, t.transaction_id == transaction_id)
                                   .values(battery_start_kwh=func.coalesce(t.battery_start_kwh, kwh))
                                   .returning(t.battery_start_kwh))).first()
            return None if got is None or got[0] is None else float(got[0])

    async def supersede(self, station_id: str, evse_id: int, transaction_id: str, started_at: datetime) -> int:
        """Close the EVSE's other open transactions that started before ``started_at`` (the start
        of ``transaction_id``, now on it): their Ended event was lost, and an EVSE carries one
        transaction at a time. Each ends at that start, with ``stopped_reason`` "Superseded" and
        the energy last recorded; a late Ended of theirs still writes its own end. Returns how
        many were closed."""
        t = m.Transaction
        async with self._sessions.begin() as s:
            res = await s.execute(update(t).where(
                t.station_id == station_id, t.evse_id == evse_id, t.ended_at.is_(None),
                t.transaction_id != transaction_id, t.started_at < started_at,
            ).values(ended_at=started_at, stopped_reason=SUPERSEDED))
            return int(getattr(res, "rowcount", 0) or 0)

    async def active(self) -> list[TxSnapshot]:
        """The open transactions, each with the highest SoC its meter values stored: of the
        samples the live state takes for a SoC (gateway.ocpp.meter.summarize), a percentage of
        0..100, not per phase; meter_values stores every sample as received."""
        t, mv = m.Transaction, m.MeterValue
        high = (select(func.max(mv.value))
                .where(mv.transaction_id == t.transaction_id, mv.station_id == t.station_id, mv.measurand == "SoC",
                       mv.unit == "Percent", mv.value.between(0.0, 100.0), mv.phase.is_(None))
                .scalar_subquery())
        async with self._sessions() as s:
            res = await s.execute(select(t, high).where(t.ended_at.is_(None), t.started_at.is_not(None)))
            return [replace(_snapshot(row[0]), high_soc=row[1]) for row in res.all()]

    async def recently_ended(self, limit: int = 500, since: datetime | None = None) -> list[TxSnapshot]:
        """The last ``limit`` completed transactions (start and end known; ended at or after
        ``since`` if given), newest first: the history the scheduler's forecasts start from. Read-only."""
        async with self._sessions() as s:
            q = select(m.Transaction).where(m.Transaction.ended_at.is_not(None), m.Transaction.started_at.is_not(None))
            if since is not None:
                q = q.where(m.Transaction.ended_at >= since)
            res = await s.execute(q.order_by(m.Transaction.ended_at.desc(), m.Transaction.id.desc()).limit(limit))
            return [_snapshot(t) for t in res.scalars()]

    async def listing(
        self, *, active: bool | None = None, id_token: str | None = None, station_id: str | None = None,
        limit: int = 100, offset: int = 0,
    ) -> tuple[list[TxSnapshot], int]:
        conds: list[ColumnElement[bool]] = []
        # Active as the API shows it: started and not ended. A row an Updated made before its
        # Started (the station's Started still on its way) is not active yet, and is listed
        # with the inactive ones, as it is shown.
        is_active = and_(m.Transaction.started_at.is_not(None), m.Transaction.ended_at.is_(None))
        if active is True:
            conds.append(is_active)
        elif active is False:
            conds.append(not_(is_active))
        if id_token is not None:
            conds.append(_same_token(id_token))
        if station_id is not None:
            conds.append(m.Transaction.station_id == station_id)
        where = and_(True, *conds)
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(m.Transaction).where(where))).scalar_one()
            res = await s.execute(select(m.Transaction).where(where)
                                  .order_by(m.Transaction.started_at.desc().nulls_last(), m.Transaction.id.desc())
                                  .limit(limit).offset(offset))
            return [_snapshot(t) for t in res.scalars()], int(total)
