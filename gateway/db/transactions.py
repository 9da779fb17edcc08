"""Transactions and their events: idempotent on (station, transactionId, seqNo) (RELIABILITY.md D1),
seqNo gaps flagged and closed (D2), offline events kept as offline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.clock import parse_rfc3339
from gateway.db import models as m
from gateway.ocpp.meter import Readings, samples, summarize


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
    soc: float | None


@dataclass(frozen=True, slots=True)
class Recorded:
    inserted: bool  # False: a replay; nothing new was stored
    response: dict[str, Any]
    tx: TxSnapshot | None
    event_type: str


def _snapshot(t: m.Transaction) -> TxSnapshot:
    return TxSnapshot(t.station_id, t.transaction_id, t.evse_id, t.id_token, t.started_at, t.ended_at,
                      t.energy_in_kwh, t.energy_out_kwh, t.last_power_kw, t.last_soc)


def _apply_readings(t: m.Transaction, r: Readings) -> None:
    # Registers are monotonic, so min/max over every event seen gives the session's energy
    # whatever order the (possibly offline, late) events arrive in.
    if r.import_wh_min is not None and r.import_wh_max is not None:
        start = r.import_wh_min if t.meter_start_import_wh is None else min(t.meter_start_import_wh,
                                                                            r.import_wh_min)
        t.meter_start_import_wh = start
        t.energy_in_kwh = max(t.energy_in_kwh, (r.import_wh_max - start) / 1000.0)
    if r.export_wh_min is not None and r.export_wh_max is not None:
        start = r.export_wh_min if t.meter_start_export_wh is None else min(t.meter_start_export_wh,
                                                                            r.export_wh_min)
        t.meter_start_export_wh = start
        t.energy_out_kwh = max(t.energy_out_kwh, (r.export_wh_max - start) / 1000.0)
    if r.power_w is not None:
        t.last_power_kw = r.power_w / 1000.0
    if r.soc is not None:
        t.last_soc = r.soc


class TransactionRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record_event(
        self, station_id: str, payload: dict[str, Any], response: dict[str, Any], now: datetime
    ) -> Recorded:
        """Store one TransactionEvent and update its transaction, in one commit.

        A replay (same station, transactionId, seqNo) stores nothing and returns the answer
        given the first time, so every retry of the station gets the same reply (D1).
        """
        info = payload["transactionInfo"]
        tid: str = info["transactionId"]
        seq: int = payload["seqNo"]
        ts = parse_rfc3339(payload["timestamp"])
        event_type: str = payload["eventType"]
        async with self._sessions.begin() as s:
            ins = (
                insert(m.TransactionEvent)
                .values(station_id=station_id, transaction_id=tid, seq_no=seq, event_type=event_type,
                        trigger_reason=payload["triggerReason"], ts=ts,
                        offline=bool(payload.get("offline", False)), received_at=now,
                        payload=payload, response=response)
                .on_conflict_do_nothing(index_elements=["station_id", "transaction_id", "seq_no"])
                .returning(m.TransactionEvent.id)
            )
            if (await s.execute(ins)).scalar_one_or_none() is None:
                stored = (await s.execute(
                    select(m.TransactionEvent.response).where(
                        m.TransactionEvent.station_id == station_id,
                        m.TransactionEvent.transaction_id == tid, m.TransactionEvent.seq_no == seq)
                )).scalar_one()
                return Recorded(False, stored, None, event_type)

            await s.execute(insert(m.Transaction).values(
                station_id=station_id, transaction_id=tid, updated_at=now,
            ).on_conflict_do_nothing(index_elements=["station_id", "transaction_id"]))
            tx = (await s.execute(select(m.Transaction).where(
                m.Transaction.station_id == station_id, m.Transaction.transaction_id == tid,
            ).with_for_update())).scalar_one()

            evse = payload.get("evse")
            if evse:
                tx.evse_id = evse["id"]
                tx.connector_id = evse.get("connectorId", tx.connector_id)
            token = payload.get("idToken")
            if token and token.get("type") != "NoAuthorization":
                tx.id_token, tx.id_token_type = token["idToken"], token["type"]
            if event_type == "Started" or tx.started_at is None:
                tx.started_at = ts if tx.started_at is None else min(tx.started_at, ts)
            if event_type == "Ended":
                tx.ended_at = ts
                tx.stopped_reason = info.get("stoppedReason", "Local")
            if "chargingState" in info:
                tx.charging_state = info["chargingState"]
            if "meterValue" in payload:
                _apply_readings(tx, summarize(list(samples(payload["meterValue"]))))

            # D2: remember skipped seqNos; a late event closes its gap.
            if seq > tx.max_seq_no + 1 and tx.max_seq_no >= -1:
                missing = range(tx.max_seq_no + 1, seq)
                if len(missing) > 0:
                    await s.execute(insert(m.TransactionSeqGap).values([
                        {"station_id": station_id, "transaction_id": tid, "seq_no": n, "detected_at": now}
                        for n in missing[:1000]
                    ]).on_conflict_do_nothing())
            elif seq < tx.max_seq_no:
                await s.execute(update(m.TransactionSeqGap).where(
                    m.TransactionSeqGap.station_id == station_id, m.TransactionSeqGap.transaction_id == tid,
                    m.TransactionSeqGap.seq_no == seq, m.TransactionSeqGap.closed_at.is_(None),
                ).values(closed_at=now))
            tx.max_seq_no = max(tx.max_seq_no, seq)
            tx.updated_at = now
            return Recorded(True, response, _snapshot(tx), event_type)

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

    async def find(self, transaction_id: str) -> TxSnapshot | None:
        """A transaction by its OCPP id alone (ids are station-assigned UUIDs in practice)."""
        async with self._sessions() as s:
            t = (await s.execute(select(m.Transaction).where(
                m.Transaction.transaction_id == transaction_id).order_by(m.Transaction.id.desc())
                .limit(1))).scalar_one_or_none()
            return _snapshot(t) if t else None

    async def active(self) -> list[TxSnapshot]:
        async with self._sessions() as s:
            res = await s.execute(select(m.Transaction).where(m.Transaction.ended_at.is_(None),
                                                              m.Transaction.started_at.is_not(None)))
            return [_snapshot(t) for t in res.scalars()]

    async def listing(
        self, *, active: bool | None = None, id_token: str | None = None, station_id: str | None = None,
        limit: int = 100, offset: int = 0,
    ) -> tuple[list[TxSnapshot], int]:
        conds = []
        if active is True:
            conds.append(m.Transaction.ended_at.is_(None))
        elif active is False:
            conds.append(m.Transaction.ended_at.is_not(None))
        if id_token is not None:
            conds.append(m.Transaction.id_token == id_token)
        if station_id is not None:
            conds.append(m.Transaction.station_id == station_id)
        where = and_(True, *conds)
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(m.Transaction).where(where))).scalar_one()
            res = await s.execute(select(m.Transaction).where(where)
                                  .order_by(m.Transaction.started_at.desc().nulls_last(), m.Transaction.id.desc())
                                  .limit(limit).offset(offset))
            return [_snapshot(t) for t in res.scalars()], int(total)
